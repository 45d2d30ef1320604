"""The pytest plugin's fixtures, used directly (the plugin is installed in this venv, so this
session has them), and where a failure's port comes from (the culprit heuristics), on real
failures. Everything here shares the machine with the busy-machine fixture: ports are the
kernel's picks, and entries are matched by address and 4-tuple."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import socketserver
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from addrinuse.errors import BadInput
from addrinuse.testing import PortAssertion, ServerFactory
from addrinuse.testing import procs
from addrinuse.testing.culprit import find
from tests.helpers import wait_for
from tests.plugin_helpers import assert_busy_not_blamed, blamed


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
