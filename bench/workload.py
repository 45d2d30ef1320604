"""The benchmark's workload: N background TIME_WAIT entries and a small target port, made fresh
for each scale, inside a network namespace of the benchmark's own.

Why a namespace: the host's tcp_max_tw_buckets (131072 here) caps TIME_WAIT below the 200k point,
and the benchmark must neither change the host's sysctls nor crowd the loopback ports other people's
tests use. The process unshares CLONE_NEWNET once per scale: a new, empty table (the previous one
dies with its last socket, its TIME_WAIT entries purged by the kernel), loopback up, the cap raised
inside it only. Everything the benchmark starts (ss, the CLI) inherits it. Without root it stays on
the host and skips the scales the host's cap cannot hold.

Background entries are server-first closes on a few listener ports; every client binds an explicit,
distinct source (127.1.x.y x ports 1024-32767, below the ephemeral range the listeners' ports come
from), so no 4-tuple repeats (a repeated one would recycle an old entry) and no background entry has
the target's port on either side. Two worker processes make them (~1.5x one on two cores)."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import time

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
SOURCE_PORTS = range(1024, 32768)
TARGET_TIME_WAIT = 5
TARGET_MAX_AGE_S = 30.0  # targets are made again past this age: TIME_WAIT lasts 60 s


def private_netns(max_tw: int) -> bool:
    """Move this process into a new network namespace with loopback up and tcp_max_tw_buckets at
    `max_tw`. False (and nothing changed) where that is not allowed."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        return False
    with socket.socket() as s:
        ifr = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
    # /proc/sys/net resolves to the namespace of the process that opens it: this one's own.
    with open("/proc/sys/net/ipv4/tcp_max_tw_buckets", "w") as f:
        f.write(str(max_tw))
    return True


def max_time_wait() -> int:
    with open("/proc/sys/net/ipv4/tcp_max_tw_buckets") as f:
        return int(f.read())


def time_wait_count() -> int:
    """TIME_WAIT entries in this namespace (/proc/net/sockstat 'tw')."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("tw") + 1])
    return -1


def source(k: int) -> tuple[str, int]:
    """The k-th distinct client source address:port."""
    block, port = divmod(k, len(SOURCE_PORTS))
    return f"127.1.{block // 250}.{block % 250 + 1}", SOURCE_PORTS[port]


def cycle(listener: socket.socket, src: tuple[str, int] | None = None) -> bool:
    """One connection the server closes first: TIME_WAIT on the server's side."""
    client = socket.socket()
    try:
        if src:
            client.bind(src)
        client.connect(listener.getsockname())
    except OSError as err:
        client.close()
        if err.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            return False  # that source is taken (on the host, by someone else): skip it
        raise
    conn, _ = listener.accept()
    conn.close()
    client.recv(1)  # the server's FIN has arrived: the client's close ends it, no simultaneous close
    client.close()
    return True


class Background:
    """N TIME_WAIT entries on a few listener ports held open (so that no target can get their port)."""

    def __init__(self, count: int, workers: int = 2) -> None:
        self.listeners = [socket.create_server(("127.0.0.1", 0), backlog=4096) for _ in range(3 * workers)]
        began = time.monotonic()
        share = -(-count // workers)
        pids = []
        for w in range(workers):
            pid = os.fork()
            if pid == 0:  # a worker: its own listeners, its own range of sources
                code = 1
                try:
                    mine = self.listeners[3 * w:3 * w + 3]
                    k = w * share
                    made = 0
                    while made < min(share, count - w * share):
                        made += cycle(mine[k % 3], source(k))
                        k += 1
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        failed = [pid for pid in pids if os.waitpid(pid, 0)[1] != 0]
        if failed:
            raise RuntimeError(f"background workers failed: {failed}")
        self.made_in_s = time.monotonic() - began
        self.made_at = time.monotonic()

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()


class Target:
    """The ports the benchmark asks about, made again by `fresh()` when near their 60 s end:
    - `quiet`: TARGET_TIME_WAIT server-side TIME_WAIT entries and nothing else (its listener is
      closed): what a port looks like while it cannot be bound again, no process holding anything;
    - `live`: a listener and one held connection as well (both sides of the port have an entry, and
      a process holds them: the owners are looked up)."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.made_at = 0.0
        self.quiet = self.live = 0
        self.fresh()

    def fresh(self) -> "Target":
        if self.sockets and time.monotonic() - self.made_at < TARGET_MAX_AGE_S:
            return self
        self.close()
        ports = []
        for keep in (False, True):
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))  # no SO_REUSEADDR: the kernel picks a port without TIME_WAIT
            listener.listen(64)
            for _ in range(TARGET_TIME_WAIT):
                cycle(listener)
            ports.append(listener.getsockname()[1])
            if keep:
                client = socket.create_connection(listener.getsockname())
                conn, _ = listener.accept()
                self.sockets += [listener, client, conn]
            else:
                self.sockets.append(listener)  # closed below, after the live one has its port
        self.sockets.pop(0).close()
        self.quiet, self.live = ports
        self.made_at = time.monotonic()
        return self

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []
