"""`make bench`: how fast one port's TIME_WAIT entries can be read at 1k, 10k and 50k background
TIME_WAIT entries, against the peers (psutil, /proc parsing, ss), and how long the CLI takes to start.

Background entries: server-first closes, so every entry is a server-side TIME_WAIT on one of a few
background listener ports. Past ~28k the ephemeral range (ip_local_port_range) would run out and,
worse, a reused 4-tuple would recycle an old entry, so each client binds an explicit, distinct
source (127.0.0.2, 127.0.0.3, ... x ports 20000-44999) before connecting: every 4-tuple is new.
Entries expire after 60 s, so each scale reports the count really present when it was measured."""

from __future__ import annotations

import errno
import socket
import statistics
import subprocess
import sys
import time

import psutil

from addrinuse.conntable import get_backend
from bench.peers import proc_rows, ss_time_wait

SCALES = (1_000, 10_000, 50_000)
TARGET_ENTRIES = 5
REPEATS = 9
SOURCE_PORTS = range(20_000, 45_000)


class Workload:
    def __init__(self) -> None:
        self.listeners = [socket.create_server(("127.0.0.1", 0), backlog=1024) for _ in range(3)]
        self.made = 0
        self.cursor = 0

    def add(self, count: int) -> None:
        made = 0
        while made < count:
            k = self.cursor
            self.cursor += 1
            listener = self.listeners[k % len(self.listeners)]
            source = (f"127.0.0.{2 + k // len(SOURCE_PORTS)}", SOURCE_PORTS[k % len(SOURCE_PORTS)])
            if cycle(listener, source):
                made += 1
        self.made += made

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()


def cycle(listener: socket.socket, source=None) -> bool:
    client = socket.socket()
    try:
        if source:
            client.bind(source)
        client.connect(listener.getsockname())
    except OSError as err:
        client.close()
        if err.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            return False  # that source is taken by something else on the machine: skip it
        raise
    conn, _ = listener.accept()
    conn.close()  # the server closes first: TIME_WAIT on the server's side
    client.recv(1)
    client.close()
    return True


def median_ms(fn, repeats: int = REPEATS) -> float:
    fn()  # warm: first-call imports and caches are not what is measured
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def time_wait_count() -> int:
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("tw") + 1])
    return -1


def measure(port: int) -> dict[str, float]:
    netlink, plain = get_backend("netlink"), get_backend("psutil")
    try:
        results = {
            "netlink backend": median_ms(lambda: netlink.snapshot(port, ["TIME_WAIT"], local=True)),
            "psutil backend": median_ms(lambda: plain.snapshot(port, ["TIME_WAIT"], local=True), 5),
            "psutil.net_connections": median_ms(lambda: psutil.net_connections("tcp"), 5),
            "/proc/net/tcp parsing": median_ms(lambda: proc_rows(port), 5),
            "ss subprocess": median_ms(lambda: ss_time_wait(port)),
        }
        got = len(netlink.snapshot(port, ["TIME_WAIT"], local=True))
        assert got == TARGET_ENTRIES, f"netlink found {got} target entries, expected {TARGET_ENTRIES}"
        assert len(ss_time_wait(port).splitlines()) == TARGET_ENTRIES
    finally:
        netlink.close()
        plain.close()
    return results


def startup() -> dict[str, float]:
    py = sys.executable
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    commands = {
        "python -c pass": [py, "-c", "pass"],
        "python -c 'import click'": [py, "-c", "import click"],
        "addrinuse --version": [py, "-m", "addrinuse", "--version"],
        "addrinuse rebind": [py, "-m", "addrinuse", "rebind", str(port)],
        "addrinuse demo": [py, "-m", "addrinuse", "demo"],
    }
    out = {}
    for name, argv in commands.items():
        out[name] = median_ms(lambda: subprocess.run(argv, stdout=subprocess.DEVNULL, check=True),
                              3 if "demo" in name else 15)
    return out


def main() -> None:
    print(f"addrinuse benchmark on {socket.gethostname()}, Linux {__import__('platform').release()}, "
          f"{psutil.cpu_count()} CPUs; median of {REPEATS} (psutil, /proc: 5) snapshots of one port\n")
    target = socket.create_server(("127.0.0.1", 0))
    target_port = target.getsockname()[1]
    for _ in range(TARGET_ENTRIES):
        cycle(target)
    target.close()
    work = Workload()
    checks = []
    try:
        for scale in SCALES:
            began = time.monotonic()
            work.add(scale - work.made)
            made_in = time.monotonic() - began
            present = time_wait_count()
            r = measure(target_port)
            nl = r["netlink backend"]
            print(f"--- {scale:,} background TIME_WAIT entries made ({made_in:.1f} s to make; "
                  f"{present:,} TIME_WAIT in the kernel now) ---")
            print(f"{'method':<26} {'median ms':>10} {'x netlink':>10}")
            for name, ms in r.items():
                print(f"{name:<26} {ms:>10.2f} {ms / nl:>10.1f}")
            print(f"netlink/ss = {nl / r['ss subprocess']:.3f}   netlink/psutil backend = {nl / r['psutil backend']:.4f}\n")
            if scale == SCALES[-1]:
                checks += [("netlink snapshot <= 3 ms at 50k", nl <= 3.0, f"{nl:.2f} ms"),
                           ("netlink <= 0.5 x ss at 50k", nl <= 0.5 * r["ss subprocess"],
                            f"{nl / r['ss subprocess']:.3f} x")]
    finally:
        work.close()
    s = startup()
    base = s["python -c 'import click'"]
    print("--- start-up, whole process (median ms) ---")
    print(f"{'command':<26} {'median ms':>10} {'x import click':>15}")
    for name, ms in s.items():
        print(f"{name:<26} {ms:>10.1f} {ms / base:>15.2f}")
    checks += [("addrinuse rebind start-up <= 1.5 x import click", s["addrinuse rebind"] <= 1.5 * base,
                f"{s['addrinuse rebind'] / base:.2f} x"),
               ("addrinuse demo < 2 s", s["addrinuse demo"] < 2000, f"{s['addrinuse demo']:.0f} ms")]
    print("\n--- targets ---")
    for what, ok, value in checks:
        print(f"{'met ' if ok else 'MISSED'}  {what}: {value}")
