"""The server process that `addrinuse start` launches (python -m addrinuse.server CONFIG_JSON).

It listens, accepts, answers each client's first line with its close policy, then:
  server-first  closes at once, so the server sends the first FIN and TIME_WAIT lands on its port;
  client-first  waits for the client's FIN, then closes (TIME_WAIT lands on the client's port);
  never         never closes: after the client's FIN the socket sits in CLOSE_WAIT until the process ends.
Readiness is reported on an inherited pipe fd, once listen() has returned, so the launcher
never sleeps. SIGTERM/SIGINT close every socket and exit 0.
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
# The inheriting child: holds the listening fd (it never accepts) until SIGTERM/SIGINT.
HOLDER = "import signal, sys; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); signal.pause()"


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

    @property
    def options(self) -> SocketOptions:
        return SocketOptions(self.reuseaddr, self.reuseport, self.linger0, self.v6only)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServerConfig":
        return cls(**json.loads(text))


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


def _report(fd: int, message: dict) -> None:
    if fd < 0:
        return
    try:
        os.write(fd, (json.dumps(message) + "\n").encode())
        os.close(fd)
    except OSError:
        pass  # the launcher went away; the record protocol will notice


def serve(config: ServerConfig, ready_fd: int = -1, on_ready=None) -> int:
    """Bind, report, serve until SIGTERM/SIGINT. Returns the process exit status.

    Detached (ready_fd >= 0) a bind failure is reported on the pipe; in the foreground it is raised."""
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            listener = bind_listen(config.host, config.port, config.options)
        except AddrinuseError as err:
            if ready_fd < 0:
                raise
            call = isinstance(err, SocketCallError)
            _report(ready_fd, {"ok": False, "syscall": getattr(err, "syscall", None),
                               "errno": getattr(err, "errno", None), "message": str(err)})
            return 3 if call else 2
        listener.setblocking(False)
        host, port = listener.getsockname()[:2]
        server = Server(listener, config)
        child = _spawn_holder(listener) if config.spawn_child else None
        try:
            _report(ready_fd, {"ok": True, "pid": os.getpid(), "host": host, "port": port,
                               "child_pid": child.pid if child else None})
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


def _spawn_holder(listener: socket.socket):
    import subprocess

    return subprocess.Popen([sys.executable, "-c", HOLDER], pass_fds=(listener.fileno(),),
                            stdin=subprocess.DEVNULL, start_new_session=True)


def main(argv: list[str]) -> int:
    config = ServerConfig.from_json(argv[0])
    ready_fd = int(argv[1]) if len(argv) > 1 else -1
    return serve(config, ready_fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
