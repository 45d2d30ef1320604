"""The pytest plugin's "addrinuse diagnosis" section, and its fixtures' clean-up, seen from outside.

Each test runs a real inner pytest (pytester, in a subprocess, as a user's CI would) whose test
fails with EADDRINUSE / EADDRNOTAVAIL for real, and reads what it printed: the facts (port, holder
pid, kind of estimate, the fix), never whole sentences. The fixtures used directly, and where the
port comes from: tests/test_plugin_fixtures.py."""

from __future__ import annotations

import os
import subprocess
import sys

from addrinuse.testing import procs
from tests.plugin_helpers import (NOT_IN_THE_WAY, SECTION, assert_busy_not_blamed, blamed, facts, inner, needs_netns,
                                  section)

pytest_plugins = ["pytester"]


LISTENER_TEST = """
import os, socket

def test_restart_while_listening():
    old = socket.create_server(("127.0.0.1", 0))
    port = old.getsockname()[1]
    open("facts", "w").write(f"{os.getpid()} {port}")
    new = socket.socket()
    new.bind(("127.0.0.1", port))
"""


def assert_listener_facts(fields: dict, pid: int, port: int) -> None:
    """The port, the holder (this pid, listening on it, the inner pytest itself), the kind of
    estimate (none: a live listener frees when its holder lets go), the fix (stop it)."""
    assert fields["head"] == f"EADDRINUSE (98) from bind() on 127.0.0.1:{port}"
    verdict = fields["verdict"]
    assert f"127.0.0.1:{port}" in verdict and "fails" in verdict.split(". ")[0]  # both answers first
    assert f"pid {pid}" in blamed(verdict) and f"listens on 127.0.0.1:{port}: stop it" in verdict
    assert_busy_not_blamed(verdict)
    assert f"held by this pytest process itself (pid {pid})" in fields
    assert fields["frees"].startswith("when it is released (unknown:") and f"pid {pid}" in fields["frees"]


def test_failure_gets_diagnosis_section(pytester):
    result = inner(pytester, LISTENER_TEST)
    result.assert_outcomes(failed=1)
    fields = section(result)
    line = (pytester.path / "test_failure_gets_diagnosis_section.py").read_text().splitlines().index(
        '    new.bind(("127.0.0.1", port))') + 1
    assert fields["found from"] == f'the call `new.bind(("127.0.0.1", port))` at test_failure_gets_diagnosis_section.py:{line}'
    assert_listener_facts(fields, *facts(pytester))


def test_disabled_with_p_no(pytester):
    result = inner(pytester, LISTENER_TEST, "-p", "no:addrinuse")
    result.assert_outcomes(failed=1)
    assert "Address already in use" in result.stdout.str()
    assert SECTION not in result.stdout.str()


def test_section_reaches_junit_xml_and_xdist(pytester):
    result = inner(pytester, LISTENER_TEST, "-n", "1", "--junit-xml=report.xml")
    result.assert_outcomes(failed=1)
    pid, port = facts(pytester)  # the xdist worker's pid: the section was computed there, then shipped
    assert_listener_facts(section(result), pid, port)
    xml = (pytester.path / "report.xml").read_text()
    assert "addrinuse diagnosis" in xml and f"listens on 127.0.0.1:{port}: stop it" in " ".join(xml.split())


def test_listener_on_another_address_is_not_blamed(pytester):
    """Another process listens on the same port number at 127.0.0.7 (as the busy machine does at
    127.0.0.2, but every run): the verdict names it as not in the way, and blames only the holder
    of 127.0.0.1:PORT."""
    result = inner(pytester, """
        import os, socket, subprocess, sys
        import pytest

        @pytest.fixture
        def old():
            s = socket.create_server(("127.0.0.1", 0))
            port = s.getsockname()[1]
            other = subprocess.Popen([sys.executable, "-c", "import socket, sys; "
                                      f"s = socket.create_server(('127.0.0.7', {port})); print('ready', flush=True); "
                                      "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert other.stdout.readline() == "ready\\n"
            open("facts", "w").write(f"{os.getpid()} {port} {other.pid}")
            yield s
            other.stdin.close()  # it exits at EOF; waited for here
            other.wait(timeout=10)
            other.stdout.close()

        def test_restart(old):
            new = socket.socket()
            new.bind(old.getsockname())
    """)
    result.assert_outcomes(failed=1)
    pid, port, other = map(int, (pytester.path / "facts").read_text().split())
    fields = section(result)
    assert_listener_facts(fields, pid, port)
    # The address read from the old socket by its getsockname(); diagnosed as the new one binds: plain.
    assert fields["found from"].startswith("the call `new.bind(old.getsockname())`")
    assert any(label.startswith(f"port {port} on 127.0.0.1, for a plain server") for label in fields)
    verdict = fields["verdict"]
    assert f"pid {other}" not in blamed(verdict)
    assert f"pid {other}, user root) on 127.0.0.7:{port}: 127.0.0.7 is another address" in verdict.partition(
        NOT_IN_THE_WAY)[2]


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
    fields = section(result)
    assert fields["found from"] == "the exception (AddressInUse.port)"
    port = int(fields["head"].rpartition(":")[2])
    assert fields["head"] == f"EADDRINUSE (98) from bind() on 127.0.0.1:{port}"
    # The listener is gone (the fixture closed it) and the run started no server: nothing here says which end.
    assert "TIME_WAIT 3 closed first here; last ends in" in fields["kernel-held entries"]
    assert fields["frees"].startswith("in ") and "(exact: the last of 3 TIME_WAIT timers)" in fields["frees"]
    verdict = fields["verdict"]
    assert verdict.startswith(f"A bind of 127.0.0.1:{port} fails, plain and with SO_REUSEADDR")
    assert "3 TIME_WAIT entries left by connections this host closed first" in verdict
    assert "SO_REUSEADDR will not help" in verdict  # the fix: the old listener did not set it


# The README's example, verbatim: a server restarted on its port over the TIME_WAIT entries its
# predecessor left (captured in a network namespace of its own, as here).
README_TEST = """
import socket


def serve(port):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_restart_on_the_same_port(addrinuse_server):
    old = addrinuse_server(reuseaddr=True)  # like nginx, redis, http.server
    old.connect(3)                          # three clients; the server closes first
    old.stop()
    serve(old.port)                         # the new server does not set SO_REUSEADDR
"""


@needs_netns
def test_readme_example(pytester):
    result = inner(pytester, README_TEST, netns=True)
    result.assert_outcomes(failed=1)
    fields = section(result)
    port = int(fields["head"].rpartition(":")[2])
    assert fields["head"] == f"EADDRINUSE (98) from bind() on 127.0.0.1:{port}"
    assert fields["found from"] == 'the call `s.bind(("127.0.0.1", port))` at test_readme_example.py:6'
    # Its own server's port, so the entries are known to be the server end although it has stopped.
    assert "TIME_WAIT 3 server end; last ends in" in fields["kernel-held entries"]
    assert fields["frees"].startswith("in ") and "(exact: the last of 3 TIME_WAIT timers)" in fields["frees"]
    verdict = fields["verdict"]
    assert verdict.startswith(f"A plain bind of 127.0.0.1:{port} fails (EADDRINUSE); one with SO_REUSEADDR succeeds.")
    assert "3 TIME_WAIT entries left by a server-side close" in verdict
    assert "A server that sets SO_REUSEADDR can bind now" in verdict  # the fix


@needs_netns
def test_diagnosis_names_the_fixture_server(pytester):
    result = inner(pytester, """
        import socket

        def test_second_server(addrinuse_server):
            srv = addrinuse_server(reuseaddr=True)
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            addr = srv.address
            open("facts", "w").write(f"{srv.pid} {srv.port}")
            s.bind(addr)
    """, netns=True)
    result.assert_outcomes(failed=1)
    fields = section(result)
    pid, port = facts(pytester)
    # Diagnosed as the failing socket was set up (SO_REUSEADDR), read from it.
    assert any(label.startswith(f"port {port} on 127.0.0.1, for a server that sets SO_REUSEADDR") for label in fields)
    assert fields["found from"].startswith("the call `s.bind(addr)`")
    assert f"this test's addrinuse_server 'srv-{port}' (pid {pid}) on 127.0.0.1" in fields
    assert f"pid {pid}" in blamed(fields["verdict"]) and "stop it" in fields["verdict"]


def test_not_an_address_of_this_machine(pytester):
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never configured here, so bind() fails for real.
    result = inner(pytester, """
        import socket

        def test_bind_elsewhere():
            socket.socket().bind(("192.0.2.1", 0))
    """)
    result.assert_outcomes(failed=1)
    fields = section(result)
    assert fields["head"] == "EADDRNOTAVAIL (99) from bind() on 192.0.2.1:0"
    assert fields["verdict"].startswith("192.0.2.1 is not an address of this machine")


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
            open("facts", "w").write(f"{{os.getpid()}} {{addr[1]}}")
            with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
                f.write("40000 40001")
            clients = []
            for _ in range(3):
                c = socket.socket()
                clients.append(c)
                c.connect(addr)
    """, netns=True)
    result.assert_outcomes(failed=1)
    fields = section(result)
    pid, port = facts(pytester)
    assert fields["head"] == f"EADDRNOTAVAIL (99) from connect() on 127.0.0.1:{port}"
    assert fields["local ports"] == f"ip_local_port_range 40000-40001, 2 usable; 2 of them connected to 127.0.0.1:{port} (2 ESTABLISHED)"
    assert fields[f"held by pid {pid} (this pytest process itself)"] == ""
    verdict = fields["verdict"]
    assert verdict.startswith(f"connect() to 127.0.0.1:{port} fails with EADDRNOTAVAIL")
    assert "widen net.ipv4.ip_local_port_range" in verdict and "tcp_tw_reuse" in verdict


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
        import os, pytest, socket

        @pytest.fixture
        def second():
            first = socket.create_server(("127.0.0.1", 0))
            open("facts", "w").write(f"{os.getpid()} {first.getsockname()[1]}")
            yield socket.create_server(first.getsockname())

        def test_uses_it(second):
            pass
    """)
    result.assert_outcomes(errors=1)
    pid, port = facts(pytester)
    fields = section(result)
    assert fields["verdict"].startswith(f"A bind of 127.0.0.1:{port} fails")
    assert f"pid {pid}" in blamed(fields["verdict"]) and f"held by this pytest process itself (pid {pid})" in fields
    assert_busy_not_blamed(fields["verdict"])


def test_plugin_import_stays_light():
    code = ("import sys, addrinuse.pytest_plugin; heavy = {'psutil', 'click', 'addrinuse.conntable.netlink',"
            " 'addrinuse.testing.servers', 'addrinuse.diagnose'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
