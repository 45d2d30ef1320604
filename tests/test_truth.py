"""Truthful verdicts (issue 10): each case against real processes, with the kernel's own behaviour
as the expectation: a real restart or bind, a real entry watched until it vanishes.

Sysctls are only ever set inside a network namespace of the test's own: a forked child unshares
CLONE_NEWNET, brings up its lo and writes /proc/sys/net there (per-namespace), runs the scenario
and reports back through a pipe; the namespace dies with the child. Not root: those tests skip."""

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
from addrinuse.sockets import has_ipv6_loopback

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
    before = host_sysctls()
    yield
    assert host_sysctls() == before, "a test changed the host's sysctls"


# --- helpers --------------------------------------------------------------------------------------

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
    return [e for e in snapshot(port, [state], local=True) if e.laddr == "127.0.0.1" and not e.owners]


def killed_with_clients_holding(clients: int = 2):
    """A server killed while its clients hold their ends: its side is orphaned FIN_WAIT2."""
    proc, port, socks = hold_server(clients)
    kill(proc)
    wait_for(lambda: len(orphans(port)) == clients, what="orphaned FIN_WAIT2 on the server port")
    return port, socks


# --- 1. how long it really takes ------------------------------------------------------------------

def test_killed_server_whose_clients_hold_their_ends_is_an_upper_bound_naming_them():
    port, socks = killed_with_clients_holding(2)
    try:
        t0 = time.monotonic()
        code, d = why(port)
        est = d["free_in"]
        assert code == 3 and est["kind"] == "upper_bound"
        assert f"peer pid {os.getpid()} (" in est["reason"] and "60 s TIME_WAIT begins" in est["reason"]
        assert "has not closed its end" in d["verdict"] and "upper bound" in d["verdict"]
        # The bound is the FIN_WAIT2 wait (tcp_fin_timeout of this netns) + a fresh 60 s TIME_WAIT.
        fin = float(open("/proc/sys/net/ipv4/tcp_fin_timeout").read())
        assert est["max_s"] >= 60 + min(fin, 60) - 1
        # wait and table say the same kind
        code, out = cli("wait", port, "--timeout", "0", "--json")
        assert code == 4 and json.loads(out)["free_in"]["kind"] == "upper_bound"
        assert json.loads(cli("table", "--port", port, "--json")[1])["free_in"]["kind"] == "upper_bound"
        # The clients close later: a fresh 60 s TIME_WAIT begins; its kernel deadline is inside the bound.
        for s in socks:
            s.close()
        tws = wait_for(lambda: (lambda es: es if len(es) == 2 else None)(orphans(port, "TIME_WAIT")),
                       what="TIME_WAIT after the clients' FIN")
        elapsed = time.monotonic() - t0
        for e in tws:
            assert elapsed + e.expires_in_s <= est["max_s"]
            assert e.expires_in_s > 58  # fresh: the FIN restarted the wait at 60 s, not fin_timeout
        assert why(port)[1]["free_in"]["kind"] == "exact"
        assert not can_bind("127.0.0.1", port)
    finally:
        for s in socks:
            s.close()


def _lowered_fin_timeout_scenario():
    """In the namespace: tcp_fin_timeout=2, clients that never close. The orphans must vanish by
    themselves within the announced bound, and then a real plain bind succeeds."""
    from addrinuse.diagnose import diagnose

    port, socks = killed_with_clients_holding(2)
    t0 = time.monotonic()
    d = diagnose(port)
    est = d.free_in
    gone = wait_for(lambda: not orphans(port) and time.monotonic(), timeout=30, what="FIN_WAIT2 to end")
    observed = gone - t0
    result = {"kind": est.kind, "min_s": est.min_s, "max_s": est.max_s, "reason": est.reason,
              "observed_s": observed, "bind_after": can_bind("127.0.0.1", port),
              "fin_timeout": open("/proc/sys/net/ipv4/tcp_fin_timeout").read().strip()}
    for s in socks:
        s.close()
    return result


@needs_root
def test_lowered_fin_timeout_in_our_own_namespace_bounds_the_orphans(host_unchanged):
    r = in_netns(_lowered_fin_timeout_scenario, sysctls={"ipv4/tcp_fin_timeout": 2})
    assert r["fin_timeout"] == "2" and r["kind"] == "upper_bound"
    assert r["min_s"] <= 2.1 and r["max_s"] >= 62
    assert r["min_s"] - 0.1 <= r["observed_s"] <= r["max_s"]  # the entries vanished for real, inside it
    assert r["observed_s"] < 5 and r["bind_after"] is True


def _fin_timeout_above_60_scenario():
    """tcp_fin_timeout=61 (> TCP_TIMEWAIT_LEN): the full socket waits fin_timeout - 60 on the
    keepalive timer, then a timewait FIN_WAIT2 for fin_timeout - 60 more: ~2 s in all, not 61."""
    from addrinuse.diagnose import diagnose

    port, socks = killed_with_clients_holding(1)
    t0 = time.monotonic()
    first = orphans(port)[0]
    est = diagnose(port).free_in
    timers = {first.timer}
    wait_for(lambda: timers.update(e.timer for e in orphans(port)) or not orphans(port), timeout=30,
             interval=0.02, what="the orphan to end")
    observed = time.monotonic() - t0
    socks[0].close()
    return {"timers": sorted(t for t in timers if t), "first_left": first.expires_in_s, "observed_s": observed,
            "min_s": est.min_s, "max_s": est.max_s, "kind": est.kind}


@needs_root
def test_fin_timeout_above_60_follows_the_kernel_two_stage_timer(host_unchanged):
    r = in_netns(_fin_timeout_above_60_scenario, sysctls={"ipv4/tcp_fin_timeout": 61})
    assert r["timers"] == ["keepalive", "timewait"] and r["first_left"] <= 1.0
    assert 1.0 <= r["observed_s"] <= 4.0  # the kernel's truth: 2 x (61 - 60) s, not 61 s
    assert r["kind"] == "upper_bound" and r["min_s"] - 0.1 <= r["observed_s"] <= r["max_s"]


def _clients_close_later_scenario():
    from addrinuse.diagnose import diagnose

    port, socks = killed_with_clients_holding(2)
    t0 = time.monotonic()
    est = diagnose(port).free_in
    time.sleep(1.0)  # the clients close one second later: the part of the scenario being measured
    for s in socks:
        s.close()
    gone = wait_for(lambda: not snapshot(port, ["TIME_WAIT", "FIN_WAIT2"], local=True) and time.monotonic(),
                    timeout=90, interval=0.05, what="the port's entries to vanish")
    return {"kind": est.kind, "min_s": est.min_s, "max_s": est.max_s, "observed_s": gone - t0,
            "bind_after": can_bind("127.0.0.1", port)}


@needs_root
def test_clients_that_close_later_free_the_port_within_the_bound_for_real(host_unchanged):
    """The 60 s of a real TIME_WAIT, watched until it vanishes (the only slow test here)."""
    r = in_netns(_clients_close_later_scenario, sysctls={"ipv4/tcp_fin_timeout": 5})
    assert r["kind"] == "upper_bound" and r["bind_after"] is True
    assert 61.0 <= r["observed_s"] <= r["max_s"], r  # 1 s + 60 s TIME_WAIT (+ the timer wheel)


def test_connections_a_live_process_holds_are_unknown_and_named():
    proc, port, socks = hold_server(1)
    try:
        socks[0].close()  # the server now holds a CLOSE_WAIT it never closes
        wait_for(lambda: snapshot(port, ["CLOSE_WAIT"], local=True), what="CLOSE_WAIT on the server")
        est = why(port)[1]["free_in"]
        assert est["kind"] == "unknown" and est["min_s"] is None and f"pid {proc.pid} (" in est["reason"]
    finally:
        kill(proc)


# --- 2. only conflicting listeners block ----------------------------------------------------------

def _listener(family, addr, port, v6only=None, reuseport=False):
    s = socket.socket(family)
    if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((addr, port))
    s.listen()
    return s


def _beside_127_0_0_1(family, addr, v6only=None):
    """A listener on addr at a port that is free on 127.0.0.1 too (both picked by the kernel)."""
    holder = socket.create_server(("127.0.0.1", 0))
    try:
        return _listener(family, addr, holder.getsockname()[1], v6only)
    finally:
        holder.close()


NON_CONFLICTING = [
    pytest.param(socket.AF_INET6, "::", True, "IPV6_V6ONLY", id="v6only-wildcard"),
    pytest.param(socket.AF_INET6, "::1", False, "does not cover IPv4", id="ipv6-loopback"),
    pytest.param(socket.AF_INET, "127.0.0.2", None, "another address", id="another-ipv4"),
]


@pytest.mark.parametrize("family,addr,v6only,because", NON_CONFLICTING)
def test_a_listener_that_does_not_conflict_is_listed_and_the_port_is_free(family, addr, v6only, because):
    if family == socket.AF_INET6 and not has_ipv6_loopback():
        pytest.skip("no IPv6 on this machine")
    other = _beside_127_0_0_1(family, addr, v6only)
    port = other.getsockname()[1]
    try:
        code, d = why(port)
        assert code == 0 and d["free"] is True
        (h,) = d["listeners"]
        assert h["conflicts"] is False and because in h["reason"]
        assert h["owners"][0]["pid"] == os.getpid()
        assert "Also on this port, does not conflict" in d["verdict"]
        assert can_bind("127.0.0.1", port)  # the arbiter agrees
        text = cli("why", port)[1]
        assert "also on this port, does not conflict:" in text and max(map(len, text.splitlines())) <= 80
    finally:
        other.close()


def _sockets_for_matrix():
    out = [(4, a, None) for a in ("127.0.0.1", "127.0.0.2", "0.0.0.0")]
    if has_ipv6_loopback():
        out += [(6, a, v) for a in ("::1", "::") for v in (False, True)]
        out += [(6, a, False) for a in ("::ffff:127.0.0.1", "::ffff:0.0.0.0")]
    return out


def test_conflict_rules_agree_with_real_binds_for_every_pair():
    """not_in_the_way() against the kernel: a listener, then a plain bind beside it, every pair."""
    from addrinuse.conntable import get_backend
    from addrinuse.diagnose.conflict import Bind, not_in_the_way

    disagree = []
    backend = get_backend("netlink")
    try:
        for old in _sockets_for_matrix():
            for new in _sockets_for_matrix():
                s = _listener(socket.AF_INET if old[0] == 4 else socket.AF_INET6, old[1], 0, old[2])
                port = s.getsockname()[1]
                try:
                    (entry,) = [e for e in backend.snapshot(port, ["LISTEN"], local=True)]
                    fam = socket.AF_INET if new[0] == 4 else socket.AF_INET6
                    real = can_bind(new[1], port, family=fam, v6only=new[2])
                    rule = not_in_the_way(Bind(new[0], new[1], bool(new[2]), port), entry) is not None
                    if real != rule:
                        disagree.append((old, new, real))
                finally:
                    s.close()
    finally:
        backend.close()
    assert not disagree


# uid 65534 cannot run the venv's interpreter under /root: the system one needs only socket.
NOBODY_PYTHON = "/usr/bin/python3"


@needs_root
@pytest.mark.skipif(not os.access(NOBODY_PYTHON, os.X_OK), reason=f"needs {NOBODY_PYTHON} to run as uid 65534")
@pytest.mark.parametrize("reuseport", [True, False])
def test_reuseport_group_says_which_uid_can_join(reuseport):
    code = ("import socket, time; s = socket.socket(); "
            + ("s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); " if reuseport else "")
            + "s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(600)")
    proc = subprocess.Popen([NOBODY_PYTHON, "-c", code], user=65534, group=65534, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        rc, d = why(port, "--as", "reuseport")
        (h,) = d["listeners"]
        assert rc == 3 and h["uid"] == 65534 and h["joinable_by_uid"] is reuseport
        if reuseport:
            assert "a server running as uid 65534" in d["verdict"] and "with SO_REUSEPORT can join" in d["verdict"]
        else:
            assert "did not set SO_REUSEPORT" in d["verdict"]
        # The kernel's answer: a real SO_REUSEPORT listener as uid 65534 joins (or not); as root never.
        join = subprocess.run([NOBODY_PYTHON, "-c", "import socket, sys; s = socket.socket(); "
                               "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); "
                               f"s.bind(('127.0.0.1', {port})); s.listen()"], user=65534, group=65534,
                              capture_output=True, text=True, timeout=30)
        assert (join.returncode == 0) is reuseport, join.stderr
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError):
            s.bind(("127.0.0.1", port))
        s.close()
    finally:
        kill(proc)


def test_a_socket_made_for_another_uid_carries_that_uid():
    """The fsuid trick the join probe relies on, checked against sock_diag's uid."""
    if not ROOT:
        pytest.skip("needs root (CAP_SETUID) to create a socket as another uid")
    from addrinuse.diagnose.conflict import _socket_as

    s = _socket_as(socket.AF_INET, 65534)
    try:
        s.bind(("127.0.0.1", 0))
        s.listen()
        (e,) = snapshot(s.getsockname()[1], ["LISTEN"], local=True)
        assert e.uid == 65534 and os.geteuid() == 0
    finally:
        s.close()


# --- 3. which end --------------------------------------------------------------------------------

def test_an_outgoing_connections_time_wait_is_the_client_end():
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        c = socket.create_connection(("127.0.0.1", listener.getsockname()[1]))
        port = c.getsockname()[1]
        a, _ = listener.accept()
        c.close()  # the client closes first: TIME_WAIT on its (ephemeral) port
        a.close()
        wait_for(lambda: orphans(port, "TIME_WAIT"), what="the client's TIME_WAIT")
        code, d = why(port)
        (g,) = [g for g in d["lingering"] if g["state"] == "TIME_WAIT"]
        assert code == 3 and g["end"] == "client" and "client end" in d["verdict"]
        assert "server-side" not in d["verdict"] and d["ephemeral"] is True
        assert "ip_local_reserved_ports" in d["verdict"] and "tcp_tw_reuse does not help a bind" in d["verdict"]
        assert not can_bind("127.0.0.1", port)
    finally:
        listener.close()


def test_an_accepted_connection_on_an_ephemeral_port_is_the_server_end():
    listener = socket.create_server(("127.0.0.1", 0))  # kernel-picked: inside ip_local_port_range
    port = listener.getsockname()[1]
    try:
        c = socket.create_connection(("127.0.0.1", port))
        a, _ = listener.accept()
        a.close()  # the server closes first
        c.recv(1)
        c.close()
        wait_for(lambda: orphans(port, "TIME_WAIT"), what="the server's TIME_WAIT")
        d = why(port)[1]
        (g,) = [g for g in d["lingering"] if g["state"] == "TIME_WAIT"]
        assert g["end"] == "server" and "outgoing" not in d["verdict"]
    finally:
        listener.close()


def test_records_name_the_server_end_after_the_server_is_gone():
    from addrinuse.diagnose import diagnose
    from addrinuse.registry import ServerRecord

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    c = socket.create_connection(("127.0.0.1", port))
    a, _ = listener.accept()
    a.close()
    c.recv(1)
    c.close()
    listener.close()
    wait_for(lambda: orphans(port, "TIME_WAIT"), what="the server's TIME_WAIT")
    plain = diagnose(port)
    assert plain.lingering[0].end is None and "closed first" in plain.verdict
    record = ServerRecord("gone", 1, 0.0, "127.0.0.1", port, "server-first")
    assert diagnose(port, records=[record]).lingering[0].end == "server"


# --- 4. every process that holds a listener -------------------------------------------------------

PREFORK = """
import os, socket, sys, time
s = socket.create_server(("127.0.0.1", 0))
kids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    kids.append(pid)
print(s.getsockname()[1], *kids, flush=True)
time.sleep(600)
"""


def test_a_forked_listener_names_every_pid_and_stop_names_them_all():
    parent = subprocess.Popen([sys.executable, "-c", PREFORK], stdout=subprocess.PIPE, text=True)
    port, *kids = map(int, parent.stdout.readline().split())
    try:
        code, d = why(port)
        (h,) = d["listeners"]
        pids = [o["pid"] for o in h["owners"]]
        assert sorted(pids) == sorted([parent.pid, *kids])
        assert all(o["cmdline"] and o["user"] and o["name"] for o in h["owners"])
        assert f"stop all 3 of them: {' '.join(map(str, pids))}" in d["verdict"]
        assert f"pid {parent.pid} is their parent" in d["verdict"]
        ss = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert all(f"pid={p}," in ss for p in pids)
        # The parent alone gone: its children still hold the socket, and a real bind says so.
        kill(parent)
        left = why(port)[1]["listeners"][0]["owners"]
        assert sorted(o["pid"] for o in left) == sorted(kids) and not can_bind("127.0.0.1", port)
    finally:
        kill(parent)
        for pid in kids:  # our grandchildren, by the pids they reported
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: all(_gone(p) for p in kids), what="the forked children to exit")


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# --- 5. the announced lifetime --------------------------------------------------------------------

def _fin_wait2_lifetime_scenario():
    """watch's tracker on a real orphaned FIN_WAIT2 (tcp_fin_timeout=1): the announced latest end
    holds the observed lifetime when it vanishes."""
    from addrinuse.conntable import get_backend
    from addrinuse.tracker import Tracker

    proc, port, socks = hold_server(1)
    backend, tracker, began, events = get_backend("netlink"), Tracker(), time.monotonic(), []
    try:
        tracker.update(backend.snapshot(port, ["FIN_WAIT2"], local=True), 0.0)
        kill(proc)
        while time.monotonic() - began < 20:
            time.sleep(0.02)
            t = time.monotonic() - began
            events += [ev.to_dict() for ev in tracker.update(backend.snapshot(port, ["FIN_WAIT2"], local=True), t)]
            if any(ev["event"] == "vanished" for ev in events):
                break
    finally:
        backend.close()
        socks[0].close()
    return events


@needs_root
def test_watch_announces_a_bound_the_real_fin_wait2_lifetime_keeps(host_unchanged):
    events = in_netns(_fin_wait2_lifetime_scenario, sysctls={"ipv4/tcp_fin_timeout": 1})
    appeared = next(ev for ev in events if ev["event"] == "appeared")
    vanished = next(ev for ev in events if ev["event"] == "vanished")
    assert "lifetime_expected_min_s" not in appeared  # the peer's FIN could end it at any moment
    assert vanished["lifetime_max_s"] <= appeared["lifetime_expected_max_s"]
    assert vanished["lifetime_expected_max_s"] == appeared["lifetime_expected_max_s"]


def test_watch_announces_a_time_wait_interval_from_zero_age():
    from addrinuse.conntable import get_backend
    from addrinuse.tracker import Tracker

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    backend, tracker = get_backend("netlink"), Tracker()
    try:
        tracker.update(backend.snapshot(port, ["TIME_WAIT"], local=True), 0.0)
        c = socket.create_connection(("127.0.0.1", port))
        a, _ = listener.accept()
        a.close()
        c.recv(1)
        c.close()
        wait_for(lambda: orphans(port, "TIME_WAIT"), what="TIME_WAIT")
        (ev,) = [e.to_dict() for e in tracker.update(backend.snapshot(port, ["TIME_WAIT"], local=True), 5.0)]
    finally:
        backend.close()
        listener.close()
    # Age between 0 and the 5 s since the previous poll: the interval starts at the time left.
    assert ev["lifetime_expected_min_s"] == ev["expires_in_s"] and ev["age_s"] == 5.0
    assert ev["lifetime_expected_max_s"] >= ev["expires_in_s"] + 5.0 + 2.0


# --- 6. both answers first ------------------------------------------------------------------------

def test_the_first_sentence_always_gives_both_answers():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        busy = why(port)[1]["verdict"].split(". ")[0]
    finally:
        listener.close()
    free = why(port)[1]["verdict"].split(". ")[0]
    for sentence in (busy, free):
        assert "plain" in sentence and "SO_REUSEADDR" in sentence
    assert "fails" in busy and "both succeed" in free


# --- client port exhaustion (issue 12, section 3) -------------------------------------------------

def _exhaustion_scenario():
    from addrinuse.client import open_connections
    from addrinuse.diagnose import diagnose
    from addrinuse.errors import NoLocalPort

    listener = socket.create_server(("127.0.0.1", 0))  # picked before the range is narrowed
    port = listener.getsockname()[1]
    low = 40000 if not 40000 <= port <= 40009 else 41000
    with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
        f.write(f"{low} {low + 9}")
    for _ in range(10):  # ten short connections, each closed by the client first
        c = socket.create_connection(("127.0.0.1", port))
        a, _ = listener.accept()
        c.close()
        a.close()
    wait_for(lambda: len(snapshot(port, ["TIME_WAIT"])) == 10, what="10 client TIME_WAIT")
    out = {}
    try:
        open_connections("127.0.0.1", port, 1)
        out["error"] = None
    except NoLocalPort as err:
        out.update(error=str(err), errno=err.errno, code=err.exit_code)
    out["cli"] = cli("connect", port)
    out["verdict"] = diagnose(port).verdict
    # The kernel's own fix: tcp_tw_reuse=1 lets connect() take over a TIME_WAIT older than 1 s.
    with open("/proc/sys/net/ipv4/tcp_tw_reuse", "w") as f:
        f.write("1")
    from addrinuse.diagnose import explain_exhaustion

    wait_for(lambda: explain_exhaustion("127.0.0.1", port).reusable > 0, timeout=5, what="a reusable TIME_WAIT")
    try:
        socks = open_connections("127.0.0.1", port, 1)
        out["after_tw_reuse"] = "connected"
        socks[0].close()
    except NoLocalPort:
        out["after_tw_reuse"] = "EADDRNOTAVAIL"
    listener.close()
    return out


@needs_root
def test_client_port_exhaustion_names_the_cause_and_the_fixes(host_unchanged):
    r = in_netns(_exhaustion_scenario, sysctls={"ipv4/tcp_tw_reuse": 0})
    assert r["errno"] == errno.EADDRNOTAVAIL and r["code"] == 1
    for words in ("EADDRNOTAVAIL", "ip_local_port_range", "(10)", "10 TIME_WAIT", "keep-alive",
                  "tcp_tw_reuse=1", "timestamps", "not help a bind"):
        assert words in r["error"], words
    code, _ = r["cli"]
    assert code == 1
    assert "fails with EADDRNOTAVAIL" in r["verdict"]
    assert r["after_tw_reuse"] == "connected"


@needs_root
def test_a_reserved_port_is_not_called_ephemeral(host_unchanged):
    def scenario():
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        with open("/proc/sys/net/ipv4/ip_local_reserved_ports", "w") as f:
            f.write(str(port))
        from addrinuse.diagnose import diagnose

        d = diagnose(port)
        listener.close()
        return d.ephemeral, d.reserved

    assert in_netns(scenario) == (True, True)
