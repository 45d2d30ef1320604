"""The server process that `addrinuse start` launches (python -m addrinuse.server CONFIG_JSON).

It listens, accepts, answers each client's first line with its close policy, then:
  server-first  closes at once, so the server sends the first FIN and TIME_WAIT lands on its port;
  client-first  waits for the client's FIN, then closes (TIME_WAIT lands on the client's port);
  never         never closes: after the client's FIN the socket sits in CLOSE_WAIT until the process ends.
Readiness is reported on an inherited socket (tether.py), once listen() has returned, so the
launcher never sleeps; the server then waits for the launcher's verdict (adopted, or kept tied to the
launcher's life). SIGTERM, SIGINT and SIGHUP close every socket and exit 0, even when the launcher
inherited them ignored (a background job of a shell script): the handlers are installed explicitly.

Two more roles, launched the same way: `--hold` keeps a listening socket inherited from a server
(spawn_child), `--exec` runs the user's own server command (`addrinuse start -- CMD`).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
from dataclasses import asdict, dataclass

from addrinuse.errors import AddrinuseError, SocketCallError
from addrinuse.sockets import SocketOptions, bind_listen, set_linger0

CLOSE_POLICIES = ("server-first", "client-first", "never")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    close: str = "server-first"
    reuseaddr: bool = False
    reuseport: bool = False
    linger0: bool = False
    v6only: bool | None = None
    # Start a child process that inherits the listening socket and outlives this server: the classic
    # "killed the server, port still busy" case (a worker, or a program launched without FD_CLOEXEC).
    spawn_child: bool = False
    # The user's own server instead of the built-in one: argv with a {port} placeholder. It is ready
    # when the connection table shows it listening on host:port; `kill` sends it stop_signal.
    command: tuple[str, ...] | None = None
    stop_signal: str = "TERM"

    @property
    def options(self) -> SocketOptions:
        return SocketOptions(self.reuseaddr, self.reuseport, self.linger0, self.v6only)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServerConfig":
        data = json.loads(text)
        if data.get("command") is not None:
            data["command"] = tuple(data["command"])
        return cls(**data)


class _Stop(Exception):
    pass


def _stop(signum, frame):
    raise _Stop(signum)


def greeting(policy: str) -> bytes:
    return f"addrinuse close={policy}\n".encode()


class Server:
    """A single-threaded selector loop: one process, no threads, so a signal always lands here."""

    def __init__(self, listener: socket.socket, config: ServerConfig):
        self.listener = listener
        self.config = config
        self.sel = selectors.DefaultSelector()
        self.sel.register(listener, selectors.EVENT_READ, None)
        self.open: set[socket.socket] = set()

    def run(self) -> None:
        while True:
            for key, _ in self.sel.select():
                if key.data is None:
                    self._accept()
                else:
                    self._readable(key.fileobj, key.data)

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        if self.config.linger0:
            set_linger0(conn)
        conn.setblocking(False)
        self.open.add(conn)
        self.sel.register(conn, selectors.EVENT_READ, {"greeted": False})

    def _readable(self, conn: socket.socket, state: dict) -> None:
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        policy = self.config.close
        if data and not state["greeted"] and b"\n" in data:
            state["greeted"] = True
            try:
                conn.sendall(greeting(policy))
            except OSError:
                pass
            if policy == "server-first":
                self._close(conn)
        elif not data:
            # The peer sent FIN (or RST). 'never' keeps the socket: that is the CLOSE_WAIT leak.
            self.sel.unregister(conn)
            if policy != "never":
                self._close(conn, registered=False)

    def _close(self, conn: socket.socket, registered: bool = True) -> None:
        if registered:
            self.sel.unregister(conn)
        self.open.discard(conn)
        conn.close()

    def shutdown(self) -> None:
        self.listener.close()
        for conn in list(self.open):
            conn.close()
        self.sel.close()


def serve(config: ServerConfig, chan: socket.socket | None = None, on_ready=None) -> int:
    """Bind, report, serve until SIGTERM/SIGINT/SIGHUP. Returns the process exit status.

    Launched (chan given) a bind failure is reported on the channel; in the foreground it is raised."""
    from addrinuse.tether import await_verdict, report

    previous = {sig: signal.signal(sig, _stop) for sig in STOP_SIGNALS}
    try:
        try:
            listener = bind_listen(config.host, config.port, config.options)
        except AddrinuseError as err:
            if chan is None:
                raise
            call = isinstance(err, SocketCallError)
            report(chan, {"ok": False, "syscall": getattr(err, "syscall", None),
                          "errno": getattr(err, "errno", None), "message": str(err)})
            return 3 if call else 2
        listener.setblocking(False)
        host, port = listener.getsockname()[:2]
        server = Server(listener, config)
        try:
            if chan is not None:
                # The listener goes to the launcher, which starts the inheriting child itself, tied
                # to its own life like every process it starts.
                report(chan, {"ok": True, "pid": os.getpid(), "host": host, "port": port},
                       (listener.fileno(),) if config.spawn_child else ())
                if not await_verdict(chan):
                    return 1  # the launcher gave up on us
                chan.close()
            if on_ready:
                on_ready(host, port)
            server.run()
        except _Stop:
            pass
        finally:
            # A second signal during shutdown must not skip closing the sockets.
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)
            server.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def hold(chan: socket.socket, fd: int) -> int:
    """Hold an inherited listening socket (never accepting) until SIGTERM/SIGINT/SIGHUP."""
    from addrinuse.tether import await_verdict, report

    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)
    try:
        report(chan, {"ok": True, "pid": os.getpid()})
        if not await_verdict(chan):
            return 1
        chan.close()
        while True:
            signal.pause()
    except _Stop:
        os.close(fd)
    return 0


def run_command(chan: socket.socket, argv: list[str]) -> int:
    """Become the user's server: report, take the verdict, then exec. Signals are reset to their
    defaults first, so a server started from a background job (SIGINT inherited ignored) still
    stops on SIGINT. If exec fails, say why on the channel (it closes on a successful exec)."""
    from addrinuse.tether import await_verdict, report

    report(chan, {"ok": True, "pid": os.getpid()})
    if not await_verdict(chan):
        return 1
    for sig in (*STOP_SIGNALS, signal.SIGQUIT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    os.set_inheritable(chan.fileno(), False)
    try:
        os.execvp(argv[0], argv)
    except OSError as err:
        report(chan, {"ok": False, "message": f"cannot run {argv[0]!r}: {err.strerror}"})
        return 127


def main(argv: list[str]) -> int:
    """server CONFIG_JSON CHAN_FD PARENT_PID | --hold CHAN_FD PARENT_PID FD | --exec CHAN_FD PARENT_PID -- ARGV..."""
    from addrinuse.tether import tie_to_parent

    mode = argv.pop(0) if argv[0] in ("--hold", "--exec") else "--serve"
    config = ServerConfig.from_json(argv.pop(0)) if mode == "--serve" else None
    chan = socket.socket(fileno=int(argv[0]))
    tie_to_parent(int(argv[1]))
    if mode == "--hold":
        return hold(chan, int(argv[2]))
    if mode == "--exec":
        return run_command(chan, argv[argv.index("--") + 1:])
    return serve(config, chan)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
