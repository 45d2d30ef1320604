"""Helpers for the diagnosis tests (test_truth, test_diagnose, test_bind_conflict): real servers,
real clients, real binds as the arbiter, and a network namespace of the test's own.

Sysctls are only ever set inside such a namespace: a forked child unshares CLONE_NEWNET, brings up
its lo and writes /proc/sys/net there (per-namespace), runs the scenario and reports back through
a pipe; the namespace dies with the child. Not root: the tests that need one skip."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback

import pytest

from addrinuse.conntable import snapshot

from tests.helpers import wait_for

CLONE_NEWNET = 0x40000000
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root: a network namespace of the test's own, or setuid")

HOLD_SERVER = """
import socket, sys, time
s = socket.create_server(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
conns = [s.accept()[0] for _ in range(int(sys.argv[1]))]
print("accepted", flush=True)
time.sleep(600)
"""


# --- a network namespace of the test's own -------------------------------------------------------

def _lo_up() -> None:
    import fcntl

    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0))
        flags = struct.unpack("16sH22x", ifr)[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def in_netns(fn, *args, sysctls: dict | None = None, timeout: float = 120):
    """Run fn(*args) in a forked child inside a fresh network namespace; return its result, or
    re-raise its failure as an AssertionError carrying the child's traceback."""
    if not ROOT:
        pytest.skip("needs root to create a network namespace")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 0
        try:
            os.close(r)
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, f"unshare(CLONE_NEWNET): {os.strerror(code)}")
            _lo_up()
            for name, value in (sysctls or {}).items():
                with open(f"/proc/sys/net/{name}", "w") as f:
                    f.write(str(value))
            result = ("ok", fn(*args))
        except BaseException as err:  # noqa: BLE001 - everything goes back to the parent
            result = ("skip" if isinstance(err, OSError) and err.errno == errno.EPERM else "error",
                      traceback.format_exc())
            status = 1
        data = pickle.dumps(result)
        view = memoryview(data)
        while view:
            view = view[os.write(w, view):]
        os._exit(status)
    os.close(w)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)  # our own child, by its pid
                raise AssertionError(f"namespace child timed out after {timeout} s")
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "skip":
        pytest.skip(f"cannot create a network namespace here: {value.splitlines()[-1]}")
    if kind == "error":
        raise AssertionError(f"in the namespace child:\n{value}")
    return value


def host_sysctls() -> dict:
    names = ("tcp_fin_timeout", "ip_local_port_range", "tcp_tw_reuse", "ip_local_reserved_ports")
    return {n: open(f"/proc/sys/net/ipv4/{n}").read() for n in names}


@pytest.fixture
def host_unchanged():
    """Import into a test module to check that the host's sysctls are the same after the test."""
    before = host_sysctls()
    yield
    assert host_sysctls() == before, "a test changed the host's sysctls"


# --- helpers --------------------------------------------------------------------------------------

def quiet_port() -> int:
    """A port no socket of any address or family is on: the kernel picks it for a dual-stack [::]
    bind, which conflicts with everything. The machine is shared, and other people's sockets on
    127.0.0.2:P or [::1]:P would otherwise share the port number with ours."""
    try:
        s = socket.socket(socket.AF_INET6)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 0))
    except OSError:
        s = socket.socket()
        s.bind(("0.0.0.0", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def mine(port: int, state: str, laddr: str = "127.0.0.1") -> list:
    """Entries of port in state whose local address is ours (never by port number alone)."""
    return [e for e in snapshot(port, [state], local=True) if e.laddr == laddr]


def listening_on(d: dict, laddr: str) -> list[dict]:
    """why's listeners bound to laddr: the ones a test made (others may share the port number)."""
    return [h for h in d["listeners"] if h["laddr"] == laddr]


def cli(*args) -> tuple[int, str]:
    """The CLI in this process (also inside a namespace child): exit code and stdout."""
    from click.testing import CliRunner

    from addrinuse.cli import run as run_cli

    with CliRunner().isolation() as streams:
        code = run_cli([str(a) for a in args])
        return code, streams[0].getvalue().decode()


def why(port: int, *extra) -> tuple[int, dict]:
    code, out = cli("why", port, "--json", *extra)
    return code, json.loads(out)


def can_bind(host: str, port: int, reuseaddr: bool = False, family=socket.AF_INET, v6only=None) -> bool:
    """A real bind + listen, released at once: the arbiter."""
    s = socket.socket(family)
    try:
        if reuseaddr:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if v6only is not None:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        s.bind((host, port))
        s.listen()
        return True
    except OSError as err:
        assert err.errno == errno.EADDRINUSE, err
        return False
    finally:
        s.close()


def hold_server(clients: int):
    """A server process that accepts `clients` connections and holds them; the clients are ours."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SERVER, str(clients)], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(clients)]
    assert proc.stdout.readline().strip() == "accepted"
    return proc, port, socks


def kill(proc) -> None:
    if proc.poll() is None:
        proc.kill()  # our own child, by its pid
    proc.wait()
    if proc.stdout:
        proc.stdout.close()


def orphans(port: int, state: str = "FIN_WAIT2") -> list:
    return [e for e in mine(port, state) if not e.owners]


def killed_with_clients_holding(clients: int = 2):
    """A server killed while its clients hold their ends: its side is orphaned FIN_WAIT2."""
    proc, port, socks = hold_server(clients)
    kill(proc)
    wait_for(lambda: len(orphans(port)) == clients, what="orphaned FIN_WAIT2 on the server port")
    return port, socks




def listener(family, addr, port, v6only=None, reuseport=False):
    s = socket.socket(family)
    if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((addr, port))
    s.listen()
    return s
