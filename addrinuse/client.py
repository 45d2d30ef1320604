"""Real client connections for `addrinuse connect`.

Each client sends one line; the server answers with its close policy (server.greeting). When the
server closes first, the client waits for that FIN before closing, so the TIME_WAIT entries land on
the server's port for certain rather than by a race."""

from __future__ import annotations

import errno
import socket
import time
from dataclasses import asdict, dataclass, field

from addrinuse.errors import AddrinuseError, BadInput, NoLocalPort
from addrinuse.sockets import resolve

# 4-tuples (laddr, lport, raddr, rport) of the connections this process opened: `why` calls an
# entry with such a 4-tuple the client end for certain, whatever the port numbers look like.
_CONNECTED: set[tuple[str, int, str, int]] = set()


def connected_here() -> frozenset:
    return frozenset(_CONNECTED)


@dataclass
class ConnectResult:
    host: str
    port: int
    count: int
    local_ports: list[int] = field(default_factory=list)
    policy: str | None = None
    server_closed_first: int = 0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["clients"] = out.pop("count")  # docs/json.md: a number of client connections is `clients`
        return {k: out[k] for k in ("host", "port", "clients", "local_ports", "policy", "server_closed_first")}


def open_connections(host: str, port: int, count: int, timeout: float = 5.0) -> list[socket.socket]:
    if count < 1:
        raise BadInput(f"count {count} is not positive: use -n 1 or more")
    family, address = resolve(host)
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.settimeout(timeout)
            try:
                sock.connect((address, port))
            except ConnectionRefusedError as err:
                raise AddrinuseError(
                    f"nothing listens on {host}:{port} (ECONNREFUSED): start a server with 'addrinuse start'"
                ) from err
            except OSError as err:
                if err.errno == errno.EADDRNOTAVAIL:
                    raise _no_local_port(address, port) from err
                raise AddrinuseError(f"connect to {host}:{port} failed: {err.strerror}") from err
            _CONNECTED.add((*sock.getsockname()[:2], *sock.getpeername()[:2]))
    except BaseException:
        close_all(socks)
        raise
    return socks


def _no_local_port(address: str, port: int) -> NoLocalPort:
    """connect() found no free local port (__inet_hash_connect() -> EADDRNOTAVAIL): name the cause
    from the connection table."""
    from addrinuse.diagnose.exhaustion import explain_exhaustion

    return NoLocalPort(address, port, explain_exhaustion(address, port).explanation())


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    buf = b""
    while b"\n" not in buf:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def _wait_eof(sock: socket.socket, deadline: float) -> bool:
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(4096):
                return True
        except (TimeoutError, ConnectionResetError):
            return False


FOREIGN_EOF_S = 0.5  # how long a server that is not ours gets to close after its answer


def converse(host: str, port: int, count: int, timeout: float = 5.0) -> ConnectResult:
    """Open COUNT connections, greet, and close each after the server's FIN when it closes first."""
    socks = open_connections(host, port, count, timeout)
    result = ConnectResult(host=host, port=port, count=count)
    deadline = time.monotonic() + timeout
    try:
        for sock in socks:
            result.local_ports.append(sock.getsockname()[1])
            sock.sendall(b"hello\n")
        for sock in socks:
            try:
                line = _read_line(sock, deadline).decode(errors="replace").strip()
            except (TimeoutError, ConnectionResetError):
                line = ""
            if line.startswith("addrinuse close="):
                result.policy = line.split("=", 1)[1]
            if result.policy == "server-first" and _wait_eof(sock, deadline):
                result.server_closed_first += 1
            elif result.policy is None and line and _wait_eof(sock, min(deadline, time.monotonic() + FOREIGN_EOF_S)):
                # Another program's server (an HTTP server answering 400 to the greeting, say) that
                # closes after answering: its FIN came first, so TIME_WAIT lands on its port.
                result.server_closed_first += 1
    finally:
        close_all(socks)
    return result
