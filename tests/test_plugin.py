"""The pytest plugin: fixtures over real servers and sockets, and the "addrinuse diagnosis" section.

Report tests run a real inner pytest (pytester, in a subprocess, as a user's CI would) whose test
fails with EADDRINUSE / EADDRNOTAVAIL for real, and read what it printed. Fixture tests use the
fixtures directly: the plugin is installed in this venv, so this session has them too."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from addrinuse.errors import BadInput
from addrinuse.testing import PortAssertion, ServerFactory
from addrinuse.testing import procs
from addrinuse.testing.culprit import find
from tests.helpers import wait_for

pytest_plugins = ["pytester"]

SECTION = "addrinuse diagnosis"
CAN_NETNS = os.geteuid() == 0 and bool(shutil.which("unshare")) and bool(shutil.which("ip"))
# Where a test needs a table that holds only its own sockets (an exact count of TIME_WAIT entries,
# a narrowed ip_local_port_range), its inner run gets a network namespace of its own; elsewhere
# the busy machine's listeners and connections on 127.0.0.2-5 share the port numbers under test.
needs_netns = pytest.mark.skipif(not CAN_NETNS, reason="a network namespace of its own needs root, unshare and ip")
# The busy-machine process (tests/busy.py; None when ADDRINUSE_TEST_BUSY=0): it may listen on
# 127.0.0.2:PORT for any PORT a test listens on at 127.0.0.1, so a verdict must never blame it.
BUSY_PID = os.environ.get("ADDRINUSE_TEST_BUSY_PID")
NOT_IN_THE_WAY = "Also on this port, does not conflict:"


def inner(pytester, source: str, *args: str, netns: bool = False):
    """Run SOURCE as a test file in a real pytest subprocess; with netns, in a network namespace of
    its own (lo brought up there), which ends with the process."""
    path = pytester.makepyfile(source)
    if not netns:
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)
    return pytester.run("unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$0" -m pytest "$@"',
                        sys.executable, "-p", "no:cacheprovider", f"--basetemp={pytester.path / 'tmp'}", *args,
                        str(path), timeout=120)


def section(result) -> dict[str, str]:
    """The diagnosis section as fields: "head" (its first line), then one field per unindented
    "label: text" line with its indented continuation lines ("found from", "frees", "verdict",
    "listeners", ...); each field's text wrapped lines joined, spaces collapsed."""
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if SECTION in line and line.startswith("-"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:3] in ("___", "---", "===")), len(lines))
    fields = {"head": lines[start + 1]}
    label = None
    for line in lines[start + 2:end]:
        if not line.startswith(" "):
            label, _, line = line.partition(":")
            fields[label] = ""
        fields[label] = " ".join((fields[label] + " " + line).split())
    return fields


def blamed(verdict: str) -> str:
    """The part of a verdict that says what is in the way (before the listeners it clears)."""
    return verdict.partition(NOT_IN_THE_WAY)[0]


def assert_busy_not_blamed(verdict: str) -> None:
    if BUSY_PID:
        assert f"pid {BUSY_PID}" not in blamed(verdict), verdict


# The failing test writes the facts to check (its pid, the port) before it fails.
LISTENER_TEST = """
import os, socket

def test_restart_while_listening():
    old = socket.create_server(("127.0.0.1", 0))
    port = old.getsockname()[1]
    open("facts", "w").write(f"{os.getpid()} {port}")
    new = socket.socket()
    new.bind(("127.0.0.1", port))
"""


def facts(pytester) -> tuple[int, int]:
    pid, port = (pytester.path / "facts").read_text().split()
    return int(pid), int(port)


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


# --- fixtures, used directly -------------------------------------------------------------------

def test_server_options_decide_the_restart(addrinuse_server, assert_bind_fails, wait_port_free):
    srv = addrinuse_server(reuseaddr=True, close="server-first")
    assert srv.connect(3).server_closed_first == 3
    assert srv.stop().stopped[0].exited
    assert assert_bind_fails(srv.port) == "bind"  # its TIME_WAIT entries refuse a plain server
    assert wait_port_free(srv.port, as_="reuseaddr", timeout=5) < 5  # ...not one that sets it too


def test_user_command_server(addrinuse_server, assert_bind_fails, wait_port_free, tmp_path):
    """The user's own server (python3 -m http.server), stopped with its chosen signal."""
    srv = addrinuse_server(command=[sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1",
                                    "--directory", str(tmp_path)], stop_signal="INT")
    assert procs.stat(srv.pid).session == srv.pid  # a session of its own: what it forks is found at teardown
    assert procs.cmdline(srv.pid).endswith(f"-m http.server {srv.port} --bind 127.0.0.1 --directory {tmp_path}")
    assert assert_bind_fails(srv.port, as_="reuseaddr") == "bind"  # it listens on 127.0.0.1:port
    outcome = srv.stop().stopped[0]
    assert outcome.exited and outcome.signal == "INT"
    assert wait_port_free(srv.port, timeout=5) < 5  # no connections, so nothing left behind


def test_user_command_bad_stop_signal(addrinuse_server):
    with pytest.raises(BadInput, match="stop_signal='USR1' is not one of TERM, INT, HUP, QUIT, KILL"):
        addrinuse_server(command=["true", "{port}"], stop_signal="USR1")


def test_server_from_another_thread_is_refused(addrinuse_server):
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(BadInput, match="call it from the test's main thread"):
            pool.submit(addrinuse_server).result()
    assert addrinuse_server.handles == []


def test_server_started_from_a_thread_dies_with_it():
    """Why the factory refuses other threads: PR_SET_PDEATHSIG fires when the parent *thread*
    exits (prctl(2)), so a tied server started from a short-lived thread is killed when it ends."""
    from addrinuse.control import start_server
    from addrinuse.registry import MemoryRegistry
    from addrinuse.server import ServerConfig

    with MemoryRegistry() as registry:
        with ThreadPoolExecutor(1) as pool:  # the thread ends when the pool shuts down
            record = pool.submit(start_server, registry, ServerConfig()).result()
        wait_for(lambda: not procs.alive(record.pid), what=f"server pid {record.pid} to die with its thread")
        assert registry.load()[0] == []  # its record went with it
    try:
        os.waitpid(record.pid, 0)
    except ChildProcessError:
        pass  # reaped already


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


def test_finish_reports_and_kills_survivors():
    factory = ServerFactory(stop_timeout=0.3)
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
    with pytest.raises(PortAssertion) as info:
        wait_port_free(port, timeout=0.2)
    message, d = str(info.value), info.value.diagnosis
    assert message.startswith(f"127.0.0.1:{port} still not free for plain after ")
    assert f"pid {os.getpid()}" in blamed(message) and f"listens on 127.0.0.1:{port}: stop it" in message
    assert_busy_not_blamed(message)
    # The same facts, from the Diagnosis the message was made of: only this process's listener is in the way.
    assert not d.free and d.free_in.kind == "unknown"
    assert [(h.laddr, h.pid) for h in d.listeners if h.conflicts] == [("127.0.0.1", os.getpid())]
    listener.close()
    assert wait_port_free(port, timeout=5) < 5


def test_assert_bind_fails_messages(assert_bind_fails):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    # Free: others' entries on this port number at other addresses do not block a bind to 127.0.0.1.
    with pytest.raises(PortAssertion) as info:
        assert_bind_fails(port)
    assert str(info.value).startswith(f"expected bind+listen of 127.0.0.1:{port} as plain to fail with EADDRINUSE; "
                                      "it succeeded. ")
    assert info.value.diagnosis.free and info.value.diagnosis.free_in.kind == "now"
    assert assert_bind_fails(port, errno=errno.EADDRNOTAVAIL, host="192.0.2.1") == "bind"
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with pytest.raises(PortAssertion) as info:
        assert_bind_fails(port, errno=errno.EADDRNOTAVAIL)
    assert "to fail with EADDRNOTAVAIL; it failed with EADDRINUSE instead. " in str(info.value)
    assert f"pid {os.getpid()}" in blamed(str(info.value)) and f"listens on 127.0.0.1:{port}" in str(info.value)
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
    assert c.mode == "plain"  # the fixture's SO_REUSEADDR is the holder's option, not the failing socket's
    server.close()
