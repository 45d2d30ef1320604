"""Only conflicting listeners block (issue 10, section 2): the kernel's bind-conflict rules for the
address, family and v6only asked for, checked pair by pair against real binds; a SO_REUSEPORT group
says which uid can join, and the kernel is asked for real as that uid."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from addrinuse.conntable import snapshot
from addrinuse.sockets import has_ipv6_loopback

from tests.diagnose_helpers import ROOT, can_bind, cli, kill, listener, listening_on, needs_root, quiet_port, why


def _beside_127_0_0_1(family, addr, v6only=None):
    """A listener on addr at a port no other socket is on (picked by the kernel)."""
    return listener(family, addr, quiet_port(), v6only)


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
        (h,) = listening_on(d, addr)
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
                for _ in range(5):  # a pair whose port another program took meanwhile runs again
                    verdict = _pair(backend, old, new, Bind, not_in_the_way)
                    if verdict is not None:
                        break
                if verdict is not True:
                    disagree.append((old, new, verdict))
    finally:
        backend.close()
    assert not disagree


def _pair(backend, old, new, Bind, not_in_the_way):
    """True when the rule agrees with a real bind; the real outcome when not; None when a socket
    that is not ours appeared on the port meanwhile (the busy machine mirrors a listener of
    127.0.0.1:P on 127.0.0.2:P after two polls, and a loaded machine gives it the time)."""
    s = listener(socket.AF_INET if old[0] == 4 else socket.AF_INET6, old[1], quiet_port(), old[2])
    port, inode = s.getsockname()[1], os.fstat(s.fileno()).st_ino
    try:
        (entry,) = [e for e in backend.snapshot(port, ["LISTEN"], local=True) if e.inode == inode]
        fam = socket.AF_INET if new[0] == 4 else socket.AF_INET6
        real = can_bind(new[1], port, family=fam, v6only=new[2])
        rule = not_in_the_way(Bind(new[0], new[1], bool(new[2]), port), entry) is not None
        if real == rule:
            return True
        if any(e.inode != inode for e in backend.snapshot(port, None, local=True)):
            return None
        return real
    finally:
        s.close()


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
        (h,) = listening_on(d, "127.0.0.1")
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
        (e,) = [e for e in snapshot(s.getsockname()[1], ["LISTEN"], local=True)
                if e.inode == os.fstat(s.fileno()).st_ino]
        assert e.uid == 65534 and os.geteuid() == 0
    finally:
        s.close()


def _probes_leave_the_answer_unchanged():
    """In the namespace: a plain IPv4 listener; `why --host :: --v6only` probes SO_REUSEPORT on a
    v6only [::] (it binds: no conflict). Afterwards a dual-stack [::] SO_REUSEPORT server must
    still get EADDRINUSE, as it did before the probe (see conflict._scrub for the kernel's stale
    fast-path mark that would otherwise let it in)."""
    from addrinuse.diagnose import diagnose

    def dual_stack_reuseport_binds(port):
        s = socket.socket(socket.AF_INET6)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.bind(("::", port))
            s.listen()
            return True
        except OSError:
            return False
        finally:
            s.close()

    held = socket.create_server(("127.0.0.1", 0))
    port = held.getsockname()[1]
    before = dual_stack_reuseport_binds(port)
    d = diagnose(port, "::", "reuseport", v6only=True)
    after = dual_stack_reuseport_binds(port)
    held.close()
    return before, d.probes["reuseport"].ok, after


@needs_root
def test_probes_do_not_change_what_the_users_server_gets():
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 on this machine")
    from tests.diagnose_helpers import in_netns

    before, probed, after = in_netns(_probes_leave_the_answer_unchanged)
    assert probed is True and before is False and after is False


def test_a_reuseport_group_of_our_own_uid_is_joined_not_stopped():
    held = listener(socket.AF_INET, "127.0.0.1", quiet_port(), reuseport=True)
    port = held.getsockname()[1]
    try:
        code, d = why(port, "--as", "reuseport")
        assert code == 0 and "joins its group" in d["verdict"] and "stop it" not in d["verdict"]
        joined = listener(socket.AF_INET, "127.0.0.1", port, reuseport=True)  # the kernel agrees
        joined.close()
        assert why(port)[0] == 3  # a plain server is still refused
    finally:
        held.close()
