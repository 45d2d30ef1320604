"""The pytest plugin: fixtures over real servers and sockets, and the "addrinuse diagnosis" section.

Report tests run a real inner pytest (pytester, in a subprocess, as a user's CI would) whose test
fails with EADDRINUSE / EADDRNOTAVAIL for real, and read what it printed. Fixture tests use the
fixtures directly: the plugin is installed in this venv, so this session has them too."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys

import pytest

from addrinuse.errors import BadInput
from addrinuse.server import ServerConfig
from addrinuse.testing import PortAssertion, ServerFactory
from addrinuse.testing import procs
from addrinuse.testing.culprit import find
from addrinuse.testing.servers import new_registry

pytest_plugins = ["pytester"]

SECTION = "addrinuse diagnosis"
HAS_COMMAND = "command" in {f.name for f in dataclasses.fields(ServerConfig)}
needs_command = pytest.mark.skipif(not HAS_COMMAND, reason="ServerConfig.command (the user's own server) is not "
                                                           "in this addrinuse yet (branch security)")
CAN_NETNS = os.geteuid() == 0 and bool(shutil.which("unshare")) and bool(shutil.which("ip"))
# Other people's programs on this machine use the same port numbers on other loopback addresses,
# and the diagnosis (diagnose.diagnose) counts every entry on the port number: exact verdicts are
# checked where only this test's sockets exist.
needs_netns = pytest.mark.skipif(not CAN_NETNS, reason="a network namespace of its own needs root, unshare and ip")


def inner(pytester, source: str, *args: str, netns: bool = False):
    """Run SOURCE as a test file in a real pytest subprocess; with netns, in a network namespace of
    its own (lo brought up there), which ends with the process."""
    path = pytester.makepyfile(source)
    if not netns:
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)
    return pytester.run("unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$0" -m pytest "$@"',
                        sys.executable, "-p", "no:cacheprovider", f"--basetemp={pytester.path / 'tmp'}", *args,
                        str(path), timeout=120)


def section(result) -> str:
    """The diagnosis section's text (between its header and the next header), as one line."""
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if SECTION in line and line.startswith("-"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:3] in ("___", "---", "===")), len(lines))
    return " ".join(" ".join(lines[start + 1:end]).split())  # wrapped lines joined, spaces collapsed


LISTENER_TEST = """
import socket

def test_restart_while_listening():
    old = socket.create_server(("127.0.0.1", 0))
    port = old.getsockname()[1]
    new = socket.socket()
    new.bind(("127.0.0.1", port))
"""


def test_failure_gets_diagnosis_section(pytester):
    result = inner(pytester, LISTENER_TEST)
    result.assert_outcomes(failed=1)
    text = section(result)
    assert "EADDRINUSE (98) from bind() on 127.0.0.1:" in text
    assert 'found from: the call `new.bind(("127.0.0.1", port))`' in text
    assert "is listening on it" in text and "held by this pytest process itself" in text
    assert "frees: when the holder closes it or exits" in text


def test_disabled_with_p_no(pytester):
    result = inner(pytester, LISTENER_TEST, "-p", "no:addrinuse")
    result.assert_outcomes(failed=1)
    assert "Address already in use" in result.stdout.str()
    assert SECTION not in result.stdout.str()


def test_section_reaches_junit_xml_and_xdist(pytester):
    result = inner(pytester, LISTENER_TEST, "-n", "1", "--junit-xml=report.xml")
    result.assert_outcomes(failed=1)
    assert "is listening on it" in section(result)  # shipped from the xdist worker
    xml = (pytester.path / "report.xml").read_text()
    assert "addrinuse diagnosis" in xml and "is listening on it" in xml


@needs_netns
def test_time_wait_diagnosis_from_socket_call_error(pytester):
    """TIME_WAIT from the fixture, EADDRINUSE from the library (SocketCallError carries the port)."""
    result = inner(pytester, """
        from addrinuse.sockets import SocketOptions, bind_listen

        def test_restart_over_time_wait(addrinuse_time_wait):
            tw = addrinuse_time_wait(3, side="server")
            bind_listen("127.0.0.1", tw.port, SocketOptions(reuseaddr=True))
    """, netns=True)
    result.assert_outcomes(failed=1)
    text = section(result)
    assert "found from: the exception (AddressInUse.port)" in text
    assert "TIME_WAIT 3 the last expires in" in text and "frees: in " in text
    assert "3 TIME_WAIT entries from a server-side close" in text


@needs_netns
def test_diagnosis_names_the_fixture_server(pytester):
    result = inner(pytester, """
        import socket

        def test_second_server(addrinuse_server):
            srv = addrinuse_server(reuseaddr=True)
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            addr = srv.address
            s.bind(addr)
    """, netns=True)
    result.assert_outcomes(failed=1)
    text = section(result)
    assert "for a server that sets SO_REUSEADDR" in text  # read from the failing socket's options
    assert "found from: the call `s.bind(addr)`" in text
    assert "this test's addrinuse_server 'srv-" in text


def test_not_an_address_of_this_machine(pytester):
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never configured here, so bind() fails for real.
    result = inner(pytester, """
        import socket

        def test_bind_elsewhere():
            socket.socket().bind(("192.0.2.1", 0))
    """)
    result.assert_outcomes(failed=1)
    assert "is not an address of this machine" in section(result)


@needs_netns
def test_connect_ports_exhausted_in_own_namespace(pytester):
    """EADDRNOTAVAIL from connect(): two local ports (ip_local_port_range set inside the inner run's
    own network namespace), two live connections, a third connect() fails."""
    host_netns = os.stat("/proc/self/ns/net").st_ino
    result = inner(pytester, f"""
        import os, socket

        def test_third_connection():
            # The sysctl below is written only inside the namespace unshare made for this run.
            assert os.stat("/proc/self/ns/net").st_ino != {host_netns}, "not in a network namespace of our own"
            listener = socket.create_server(("127.0.0.1", 0))  # before the range shrinks: it takes none of it
            addr = listener.getsockname()
            with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
                f.write("40000 40001")
            clients = []
            for _ in range(3):
                c = socket.socket()
                clients.append(c)
                c.connect(addr)
    """, netns=True)
    result.assert_outcomes(failed=1)
    text = section(result)
    assert "EADDRNOTAVAIL (99) from connect()" in text
    assert "ip_local_port_range 40000-40001 (2 ports)" in text
    assert "2 ESTABLISHED" in text and "every local port toward this destination is taken" in text


def test_other_failures_get_no_section(pytester):
    result = inner(pytester, """
        import socket

        def test_refused():
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.close()
            socket.create_connection(("127.0.0.1", port))

        def test_passes():
            pass
    """)
    result.assert_outcomes(failed=1, passed=1)
    assert "ConnectionRefusedError" in result.stdout.str() and SECTION not in result.stdout.str()


def test_factories_clean_up(pytester, tmp_path):
    pids = tmp_path / "pids"
    result = inner(pytester, f"""
        def test_servers(addrinuse_server):
            a = addrinuse_server(reuseaddr=True, close="server-first")
            b = addrinuse_server(spawn_child=True, close="never")
            a.connect(2)
            b.stop()  # b's child keeps the port; the factory ends it at teardown
            open({str(pids)!r}, "w").write(f"{{a.pid}} {{b.pid}} {{b.child_pid}}")
    """)
    result.assert_outcomes(passed=1)
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 3 and not [p for p in started if procs.alive(p)]


def test_leaked_process_fails_the_test(pytester, tmp_path):
    """A server that does not exit on SIGTERM (stopped with SIGSTOP: the signal stays pending) is
    reported at teardown and killed."""
    pid_file = tmp_path / "pid"
    result = inner(pytester, f"""
        import os, signal

        def test_hung_server(addrinuse_server):
            addrinuse_server.stop_timeout = 0.3
            srv = addrinuse_server()
            open({str(pid_file)!r}, "w").write(str(srv.pid))
            os.kill(srv.pid, signal.SIGSTOP)
    """)
    result.assert_outcomes(passed=1, errors=1)
    pid = int(pid_file.read_text())
    result.stdout.fnmatch_lines(["*processes started by addrinuse_server survived the stop (killed now):*",
                                 f"*pid {pid} (server srv-*): * -m addrinuse.server *"])
    assert not procs.alive(pid)


@needs_command
def test_user_command_that_forks_fails_the_test(pytester):
    """The user's server forks a worker into its session and the stop signal ends only the shell:
    the worker still listens, so the fixture fails the test and kills it."""
    result = inner(pytester, """
        import sys

        def test_shell_server(addrinuse_server, tmp_path):
            addrinuse_server.stop_timeout = 1.0
            addrinuse_server(command=["sh", "-c", sys.executable + " -m http.server {port} --bind 127.0.0.1 "
                                      "--directory " + str(tmp_path) + " & wait"])
    """)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*survived the stop*", "*-m http.server*"])


def test_setup_failure_gets_section(pytester):
    result = inner(pytester, """
        import pytest, socket

        @pytest.fixture
        def second():
            first = socket.create_server(("127.0.0.1", 0))
            yield socket.create_server(first.getsockname())

        def test_uses_it(second):
            pass
    """)
    result.assert_outcomes(errors=1)
    assert "is listening on it" in section(result)


def test_plugin_import_stays_light():
    code = ("import sys, addrinuse.pytest_plugin; heavy = {'psutil', 'click', 'addrinuse.conntable.netlink',"
            " 'addrinuse.testing.servers', 'addrinuse.diagnose'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- fixtures, used directly -------------------------------------------------------------------

def test_server_options_decide_the_restart(addrinuse_server, assert_bind_fails, wait_port_free):
    srv = addrinuse_server(reuseaddr=True, close="server-first")
    assert srv.connect(3).server_closed_first == 3
    assert srv.stop().stopped[0].exited
    assert assert_bind_fails(srv.port) == "bind"  # its TIME_WAIT entries refuse a plain server
    assert wait_port_free(srv.port, as_="reuseaddr", timeout=5) < 5  # ...not one that sets it too


@needs_command
def test_user_command_server(addrinuse_server, assert_bind_fails, tmp_path):
    srv = addrinuse_server(command=[sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1",
                                    "--directory", str(tmp_path)])
    assert_bind_fails(srv.port)  # it listens (http.server sets SO_REUSEADDR: so must the next one)
    srv.stop()


@pytest.mark.skipif(HAS_COMMAND, reason="this addrinuse has ServerConfig.command")
def test_user_command_needs_support(addrinuse_server):
    with pytest.raises(BadInput, match="command= needs an addrinuse whose ServerConfig has 'command'"):
        addrinuse_server(command=["true", "{port}"])


def test_linger0_server_leaves_nothing(addrinuse_server, wait_port_free):
    srv = addrinuse_server(linger0=True, close="server-first")
    srv.connect(3)
    srv.stop()
    assert wait_port_free(srv.port, timeout=5) < 5  # RST instead of FIN: no TIME_WAIT


def test_reuseport_servers_share_a_port(addrinuse_server, assert_bind_fails):
    first = addrinuse_server(reuseport=True)
    second = addrinuse_server(reuseport=True, port=first.port)
    assert second.port == first.port and second.pid != first.pid
    assert_bind_fails(first.port)  # a plain server still cannot


def test_server_killed_by_the_test_is_reaped(addrinuse_server):
    srv = addrinuse_server()
    os.kill(srv.pid, signal.SIGKILL)  # our own server, by its pid
    addrinuse_server.finish()
    assert procs.stat(srv.pid) is None  # reaped: no zombie left behind


def test_finish_reports_and_kills_survivors(tmp_path):
    factory = ServerFactory(new_registry(lambda: tmp_path / "state"), stop_timeout=0.3)
    srv = factory()
    os.kill(srv.pid, signal.SIGSTOP)  # SIGTERM stays pending: the stop cannot end it
    survivors = factory.finish()
    assert len(survivors) == 1 and survivors[0].startswith(f"pid {srv.pid} (server {srv.name})")
    assert not procs.alive(srv.pid)
    assert factory.finish() == []


@pytest.mark.parametrize("reuseaddr", [False, True])
def test_time_wait_server_side(addrinuse_time_wait, assert_bind_fails, wait_port_free, reuseaddr):
    tw = addrinuse_time_wait(3, side="server", reuseaddr=reuseaddr)
    assert len(tw.entries) == 3 and {(e.laddr, e.lport) for e in tw.entries} == {("127.0.0.1", tw.port)}
    assert 50 < tw.expires_in_s <= 60
    assert_bind_fails(tw.port)
    if reuseaddr:  # both the old listener and the new one set it: Linux lets it through
        assert wait_port_free(tw.port, as_="reuseaddr", timeout=5) < 5
    else:
        assert_bind_fails(tw.port, as_="reuseaddr")


def test_time_wait_client_side(addrinuse_time_wait, assert_bind_fails, wait_port_free):
    tw = addrinuse_time_wait(3, side="client", reuseaddr=True)
    assert {e.lport for e in tw.entries} == {tw.port} and len({e.rport for e in tw.entries}) == 3
    assert_bind_fails(tw.port)
    assert wait_port_free(tw.port, as_="reuseaddr", timeout=5) < 5


def test_time_wait_one_ordinary_client(addrinuse_time_wait, assert_bind_fails):
    tw = addrinuse_time_wait(1, side="client")
    assert len(tw.entries) == 1 and tw.entries[0].lport == tw.port
    assert_bind_fails(tw.port)


@pytest.mark.parametrize("kwargs, words", [
    (dict(n=0), "is not positive"), (dict(side="middle"), "is not one of server, client"),
    (dict(n=2, side="client"), "needs reuseaddr=True"), (dict(host="192.0.2.1"), "not a loopback address")])
def test_time_wait_bad_input(addrinuse_time_wait, kwargs, words):
    with pytest.raises(BadInput, match=words):
        addrinuse_time_wait(**kwargs)


def test_wait_port_free_times_out_with_the_verdict(wait_port_free):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with pytest.raises(PortAssertion, match=r"is listening on it .*still not free for plain after"):
        wait_port_free(port, timeout=0.2)
    listener.close()
    assert wait_port_free(port, timeout=5) < 5


def test_assert_bind_fails_messages(assert_bind_fails):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    # "free", or "free for a plain server (N TIME_WAIT entries on the port allow it)": others' entries
    # on this port number at other addresses do not block a bind to 127.0.0.1.
    with pytest.raises(PortAssertion, match=r"^free\b.*\(expected bind\+listen as plain to fail with EADDRINUSE; "
                                            r"it succeeded\)$"):
        assert_bind_fails(port)
    assert assert_bind_fails(port, errno=errno.EADDRNOTAVAIL, host="192.0.2.1") == "bind"
    listener = socket.create_server(("127.0.0.1", 0))
    with pytest.raises(PortAssertion, match="is listening on it .*failed with EADDRINUSE instead"):
        assert_bind_fails(listener.getsockname()[1], errno=errno.EADDRNOTAVAIL)
    listener.close()


# --- where the port comes from (culprit heuristics), on real failures ------------------------------

def _caught(fn) -> BaseException:
    with pytest.raises(OSError) as info:
        fn()
    return info.value


@pytest.fixture
def busy_port():
    listener = socket.create_server(("127.0.0.1", 0))
    yield listener.getsockname()[1]
    listener.close()


def test_culprit_from_socketserver_attributes(busy_port):
    c = find(_caught(lambda: socketserver.TCPServer(("127.0.0.1", busy_port), socketserver.BaseRequestHandler)))
    assert (c.port, c.syscall) == (busy_port, "bind") and "self.socket.bind(self.server_address)" in c.how


def test_culprit_from_asyncio_locals(busy_port):
    """asyncio re-raises `from None` with a new OSError: the address is a local of that frame."""
    async def serve():
        await asyncio.start_server(lambda r, w: None, "127.0.0.1", busy_port)

    c = find(_caught(lambda: asyncio.run(serve())))
    assert c.port == busy_port and "local variable 'sa'" in c.how


def test_culprit_from_listen():
    """Two SO_REUSEADDR sockets bind one port; the conflict is decided at listen()."""
    a, b = (socket.socket() for _ in range(2))
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    a.bind(("127.0.0.1", 0))
    b.bind(a.getsockname())
    a.listen()
    c = find(_caught(lambda: b.listen()))
    assert (c.port, c.syscall, c.mode) == (a.getsockname()[1], "listen", "reuseaddr")
    a.close(), b.close()


def _bind_and_forget(port: int) -> None:
    s, code = socket.socket(), None
    try:
        s.bind(("127.0.0.1", port))
    except OSError as err:
        code = err.errno
    s.close()
    raise OSError(code, "bind failed")  # outside the except: no __context__, no address anywhere


def test_culprit_not_found_then_fixture(busy_port):
    exc = _caught(lambda: _bind_and_forget(busy_port))
    assert find(exc) is None
    server = socket.create_server(("127.0.0.1", 0))
    c = find(exc, {"my_server": server})
    assert c.port == server.getsockname()[1] and c.how == "the fixture 'my_server'"
    server.close()
