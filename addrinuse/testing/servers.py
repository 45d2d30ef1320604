"""Real server processes owned by a test: started with chosen socket options, always stopped.

Modelled on pytest-xprocess (a process owned by a fixture, terminated at teardown, a zombie counted
as dead) with two differences: the port is the kernel's pick (the server binds port 0 and reports
what it got, so no pick-then-bind race as with portpicker), and anything the test started that
survives the stop is reported as a failure, not silently killed."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

from addrinuse.testing import procs

POLL_S = 0.01
GRACE_S = 1.0


def stop_signal_name(sig) -> str:
    """'TERM' for signal.SIGTERM, 15, 'SIGTERM' or 'TERM' (the records keep the name without SIG)."""
    from addrinuse.errors import BadInput
    from addrinuse.records import STOP_SIGNALS

    try:
        name = signal.Signals(sig).name[3:] if isinstance(sig, int) else str(sig).upper().removeprefix("SIG")
    except ValueError:
        name = str(sig)
    if name not in STOP_SIGNALS:
        raise BadInput(f"stop_signal={sig!r} is not one of {', '.join(STOP_SIGNALS)}")
    return name


def in_main_thread() -> None:
    """Refuse to start a server from any thread but the main one. The server is tied to the thread
    that forks it (PR_SET_PDEATHSIG fires when the parent *thread* exits, prctl(2)), so a server
    started from a helper thread would be SIGKILLed when that thread ends, mid-test."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        from addrinuse.errors import BadInput

        raise BadInput(f"addrinuse_server was called from thread {threading.current_thread().name!r}: call it "
                       "from the test's main thread (a server dies when the thread that started it ends)")


@dataclass
class Started:
    """A process the factory started, named by pid and start time (pid reuse cannot fool it)."""
    pid: int
    starttime: int
    what: str


@dataclass
class ServerHandle:
    """One running server: where it listens and how to stop it (the factory stops it anyway)."""
    name: str
    pid: int
    host: str
    port: int
    config: object
    child_pid: int | None = None
    factory: "ServerFactory" = field(default=None, repr=False)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def connect(self, count: int = 1, timeout: float = 5.0):
        """COUNT real client connections that greet and close (client.converse): with the built-in
        server's close policy, server-first leaves COUNT TIME_WAIT entries on this port."""
        from addrinuse.client import converse

        return converse(self.host, self.port, count, timeout)

    def stop(self, sig=None, timeout: float = 5.0):
        """Signal the server now (default: its stop_signal, SIGTERM unless chosen at start); returns
        control.StopReport. Its spawn_child child is left running (that is the case it exists for:
        the server is gone, the port is not); the factory ends it."""
        from addrinuse.control import stop_servers

        how = None if sig is None else getattr(signal, f"SIG{stop_signal_name(sig)}")
        return stop_servers(self.factory.registry, name=self.name, sig=how, timeout=timeout)


class ServerFactory:
    """Call it to start a server; `finish()` at teardown stops them all and returns what survived."""

    def __init__(self, registry=None, stop_timeout: float = 5.0):
        from addrinuse.registry import MemoryRegistry

        # In memory: the servers stay tied to this process (they die with it, whatever kills it)
        # and nothing is written to disk.
        self.registry = registry if registry is not None else MemoryRegistry()
        self.stop_timeout = stop_timeout
        self.started: list[Started] = []
        self.handles: list[ServerHandle] = []

    def __call__(self, *, host: str = "127.0.0.1", port: int = 0, close: str = "server-first",
                 reuseaddr: bool = False, reuseport: bool = False, linger0: bool = False,
                 v6only: bool | None = None, spawn_child: bool = False, command=None, stop_signal=None,
                 name: str | None = None) -> ServerHandle:
        """Start a server and return once it listens. `command`: the user's own server, an argv
        with a {port} placeholder, ready once the connection table shows it listening on host:port
        (the socket options then are the command's own). `stop_signal`: what stop() and teardown send."""
        from addrinuse.control import start_server
        from addrinuse.server import ServerConfig

        in_main_thread()
        config = ServerConfig(host=host, port=port, close=close, reuseaddr=reuseaddr, reuseport=reuseport,
                              linger0=linger0, v6only=v6only, spawn_child=spawn_child,
                              command=tuple(command) if command is not None else None,
                              stop_signal=stop_signal_name(stop_signal if stop_signal is not None else "TERM"))
        record = start_server(self.registry, config, name=name)
        self._own(record.pid, f"server {record.name}")
        child_pid = None
        if record.child:
            child = next((r for r in self.registry.load()[0] if r.name == record.child), None)
            if child is not None:
                child_pid = child.pid
                self._own(child.pid, f"server {record.name}'s child (inherited the listener)")
        handle = ServerHandle(record.name, record.pid, record.host, record.port, config, child_pid, self)
        self.handles.append(handle)
        return handle

    def _own(self, pid: int, what: str) -> None:
        s = procs.stat(pid)
        if s is not None:
            self.started.append(Started(pid, s.starttime, what))

    def finish(self) -> list[str]:
        """Stop every server still running, wait for each process it started (its session too)
        to end, SIGKILL what did not, and return one line per survivor (empty: all ended)."""
        from addrinuse.control import stop_servers

        # Each with its own stop signal (SIGTERM unless the test chose one).
        stop_servers(self.registry, everything=True, timeout=self.stop_timeout)
        # stop_servers waited for each server; what it forked may take a moment more to go.
        deadline = time.monotonic() + GRACE_S
        while True:
            left = self._living()
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)
        survivors = []
        for pid, starttime, what in left:
            survivors.append(f"pid {pid} ({what}): {procs.cmdline(pid) or '?'}")
            self._kill(pid, starttime)
        self.registry.load()  # drops the records of what was just killed
        for s in self.started:  # a server the test killed itself is a zombie child of ours: reap it
            try:
                os.waitpid(s.pid, os.WNOHANG)
            except ChildProcessError:
                pass
        return survivors

    def _living(self) -> list[tuple[int, int, str]]:
        left = {s.pid: (s.pid, s.starttime, s.what) for s in self.started if procs.alive(s.pid, s.starttime)}
        # A server was started in a session of its own (sid = its pid): whatever it forked and did
        # not move to another session is still in it, even after the server died.
        for s in self.started:
            for member in procs.session_members(s.pid):
                left.setdefault(member.pid, (member.pid, member.starttime, f"started by pid {s.pid}"))
        return list(left.values())

    @staticmethod
    def _kill(pid: int, starttime: int) -> None:
        if procs.alive(pid, starttime):  # checked right before the signal: still the one we started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        from addrinuse.control import wait_gone

        wait_gone(pid, time.monotonic() + 5.0)
