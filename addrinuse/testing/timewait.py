"""Leave a port with N TIME_WAIT entries, from the server's side or the client's.

TIME_WAIT lands on the side that closes first (RFC 9293 3.6). Both ends are real sockets in this
process; the function returns once the connection table shows every entry, by exact 4-tuple.
  server  a listener on a kernel-picked port; the accepted sockets close first, so the N entries
          are on the listener's port. They inherit its SO_REUSEADDR (the accepted socket copies
          sk_reuse, inet_twsk_alloc copies it again), which decides who can bind the port next.
  client  the client closes first. N entries on one local port need N connections from it, so N
          sockets bind the same port (all with SO_REUSEADDR, none listening: inet_bind_conflict
          allows it) and connect to N listeners; n=1 without reuseaddr connects from an ephemeral
          port as an ordinary client does."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

SIDES = ("server", "client")


@dataclass
class TimeWaitPort:
    host: str
    port: int
    side: str
    reuseaddr: bool
    entries: list = field(default_factory=list)  # conntable.Entry, one per connection

    @property
    def expires_in_s(self) -> float | None:
        """Time left on the last entry's kernel timer when seen (None: the backend has no timers)."""
        from addrinuse.conntable import last_expiry

        return last_expiry(self.entries)


def leave_time_wait(n: int = 1, side: str = "server", host: str = "127.0.0.1", reuseaddr: bool = False,
                    timeout: float = 5.0) -> TimeWaitPort:
    from addrinuse.errors import BadInput
    from addrinuse.sockets import SocketOptions, new_socket, require_loopback

    if side not in SIDES:
        raise BadInput(f"side {side!r} is not one of {', '.join(SIDES)}")
    if n < 1:
        raise BadInput(f"n={n} is not positive: ask for 1 or more TIME_WAIT entries")
    if side == "client" and n > 1 and not reuseaddr:
        raise BadInput(f"n={n} from the client side needs reuseaddr=True: several sockets share one local "
                       "port only when all of them set SO_REUSEADDR")
    family, address = require_loopback(host, allow_public=False)
    opened: list[socket.socket] = []

    def sock(reuse: bool) -> socket.socket:
        s = new_socket(family, SocketOptions(reuseaddr=reuse))
        opened.append(s)
        s.settimeout(timeout)
        return s

    def listener(reuse: bool) -> socket.socket:
        s = sock(reuse)
        s.bind((address, 0))
        s.listen(n)
        return s

    try:
        pairs = []  # (closes first, closes second)
        if side == "server":
            lsock = listener(reuseaddr)
            clients = [sock(False) for _ in range(n)]
            for c in clients:
                c.connect(lsock.getsockname()[:2])
            accepted = {}
            for _ in range(n):
                conn, peer = lsock.accept()
                opened.append(conn)
                accepted[peer[1]] = conn
            pairs = [(accepted[c.getsockname()[1]], c) for c in clients]
        else:
            listeners = [listener(False) for _ in range(n)]
            local_port = 0
            for lsock in listeners:
                c = sock(reuseaddr)
                if reuseaddr:
                    c.bind((address, local_port))
                    local_port = c.getsockname()[1]
                c.connect(lsock.getsockname()[:2])
                conn, _ = lsock.accept()
                opened.append(conn)
                pairs.append((c, conn))
        conns = [(first.getsockname()[:2], first.getpeername()[:2]) for first, _ in pairs]
        for first, second in pairs:
            first.close()
            _wait_eof(second, time.monotonic() + timeout)  # its FIN arrived: the first is in FIN_WAIT2
            second.close()  # its FIN moves the first into TIME_WAIT
        port = conns[0][0][1]
        entries = _wait_entries(port, conns, timeout)
        return TimeWaitPort(host, port, side, reuseaddr, entries)
    finally:
        for s in opened:
            s.close()


def _wait_eof(s: socket.socket, deadline: float) -> None:
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not s.recv(4096):
                return
        except (TimeoutError, ConnectionResetError):
            return


def _wait_entries(port: int, conns: list, timeout: float) -> list:
    from addrinuse.conntable import get_backend
    from addrinuse.conntable.match import same_connection
    from addrinuse.errors import AddrinuseError

    source = get_backend()
    deadline = time.monotonic() + timeout
    try:
        while True:
            table = source.snapshot(port, ["TIME_WAIT"], local=True)
            mine = [e for e in table if any(same_connection(e, local, remote) for local, remote in conns)]
            if len(mine) == len(conns):
                return mine
            if time.monotonic() >= deadline:
                raise AddrinuseError(f"only {len(mine)} of {len(conns)} TIME_WAIT entries appeared on port "
                                     f"{port} within {timeout} s")
            time.sleep(0.01)
    finally:
        source.close()
