"""Which address a failed test could not get: found from its exception, its frames, its fixtures.

In order, first answer wins (`Culprit.how` says which one answered, and the report prints it):
1. a SocketCallError in the exception chain carries syscall, host and port: exact.
2. a bare OSError (EADDRINUSE / EADDRNOTAVAIL): in each frame of its traceback, innermost first,
   a. the call that raised, read from the source at the exact instruction (co_positions): for
      `X.bind(A)`, `X.connect(A)`, `create_server(A)`, `create_connection(A)` the address A, and
      for `X.listen()` the address X is bound to. A and X are evaluated only when they are
      literals, names, tuples, instance attributes or a real socket's `getsockname()` (no code of
      the test runs: no other calls, no properties). The socket X also gives the options
      (SO_REUSEADDR/SO_REUSEPORT) to diagnose as.
   b. the frame's locals: an address tuple (host, port), then a bound socket (the holder: its
      options are not the failing socket's, which stay those of X when the call named it).
3. the test's fixtures: a bound socket, a server of addrinuse_server; only when they hold exactly
   one port between them (a guess otherwise).
Limits: a bind done in C (an extension) or in another process leaves no frame here; an error
re-raised without its cause and without the address in the raising frame's locals (asyncio keeps
`sa`; others may not) falls to the fixtures, or is not found (the report says so); with several
address tuples in one frame the first one in the frame's locals wins."""

from __future__ import annotations

import ast
import errno
import linecache
import socket
import _socket
from typing import NamedTuple

WATCHED = (errno.EADDRINUSE, errno.EADDRNOTAVAIL)
ADDRESS_CALLS = {"bind": "bind", "connect": "connect", "connect_ex": "connect",
                 "create_server": "bind", "create_connection": "connect"}
SKIP_FILES = ("/_pytest/", "/pluggy/")


class Culprit(NamedTuple):
    errno: int
    host: str
    port: int
    syscall: str | None  # bind, listen or connect when known
    how: str  # which heuristic found it, for the report
    mode: str = "plain"  # the failing socket's options, when the socket was found


class _Unknown(Exception):
    pass


def chain(exc: BaseException):
    """The exception, its __cause__ and __context__ chains, and the members of exception groups."""
    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack.append(e.__context__)
        stack.append(e.__cause__)
        if isinstance(e, BaseExceptionGroup):
            stack.extend(reversed(e.exceptions))


def watched(exc: BaseException) -> BaseException | None:
    """The first exception of the chain whose errno is EADDRINUSE or EADDRNOTAVAIL."""
    return next((e for e in chain(exc) if getattr(e, "errno", None) in WATCHED), None)


def find(exc: BaseException, funcargs: dict | None = None) -> Culprit | None:
    from addrinuse.errors import SocketCallError

    err = watched(exc)
    if err is None:
        return None
    for e in chain(exc):
        if isinstance(e, SocketCallError) and e.errno in WATCHED and e.port:
            return Culprit(e.errno, e.host, e.port, e.syscall, f"the exception ({type(e).__name__}.port)")
    # Every EADDRINUSE/EADDRNOTAVAIL of the chain in turn: a wrapper re-raised `from None` keeps
    # the original as __context__, and that one's frames hold the call.
    for e in chain(exc):
        if getattr(e, "errno", None) in WATCHED:
            found = _from_frames(e)
            if found:
                return found
    return _from_fixtures(err.errno, funcargs or {})


def _from_frames(err: BaseException) -> Culprit | None:
    tb, frames = err.__traceback__, []
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    for tb in reversed(frames):  # innermost first
        code = tb.tb_frame.f_code
        if any(part in code.co_filename for part in SKIP_FILES):
            continue
        where = f"{code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}"
        found, mode = _from_call(err.errno, tb, where)
        found = found or _from_locals(err.errno, tb.tb_frame.f_locals, where, mode)
        if found:
            return found
    return None


def _from_fixtures(code: int, funcargs: dict) -> Culprit | None:
    """The one port among the test's fixtures (sockets, servers of addrinuse_server); a guess, so
    only when there is exactly one candidate port."""
    found = []
    for name, value in funcargs.items():
        values = [(f"the fixture {name!r}", value)]
        values += [(f"the fixture {name!r}'s server {h.name!r}", h) for h in getattr(value, "handles", None) or ()]
        found += [c for c in (_from_value(code, v, how) for how, v in values) if c]
    return found[0] if len({c.port for c in found}) == 1 else None


def call_source(tb) -> str | None:
    """The source of the expression whose instruction raised, by the code's position table."""
    try:
        positions = list(tb.tb_frame.f_code.co_positions())[tb.tb_lasti // 2]
    except (AttributeError, IndexError, ValueError):
        return None
    line, end_line, col, end_col = positions
    if None in positions:
        return None
    filename = tb.tb_frame.f_code.co_filename
    lines = [linecache.getline(filename, n).encode() for n in range(line, end_line + 1)]
    if not lines or not lines[0]:
        return None
    # Columns are UTF-8 byte offsets.
    lines[-1] = lines[-1][:end_col]
    lines[0] = lines[0][col:]
    return b"".join(lines).decode(errors="replace")


def _from_call(code: int, tb, where: str) -> tuple[Culprit | None, str]:
    """The culprit from the call that raised, and the failing socket's options ("plain" when the
    socket is not known) for the fallbacks to use when the call's address could not be read."""
    text = call_source(tb)
    try:
        node = ast.parse(text.strip(), mode="eval").body if text else None
    except SyntaxError:
        return None, "plain"
    if not isinstance(node, ast.Call):
        return None, "plain"
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    frame = tb.tb_frame
    how = f"the call `{' '.join(text.split())[:60]}` at {where}"
    sock = None
    if isinstance(func, ast.Attribute):
        try:
            sock = _value(func.value, frame)
        except _Unknown:
            pass
    mode = _mode(sock) if isinstance(sock, socket.socket) else "plain"
    if name in ADDRESS_CALLS and node.args:
        try:
            address = _value(node.args[0], frame)
        except _Unknown:
            return None, mode
        # EADDRNOTAVAIL from bind() is about the host: port 0 (any port) is an answer too.
        host, port = _address(address, zero=code == errno.EADDRNOTAVAIL) or (None, None)
        if port is not None:
            if not host and isinstance(sock, socket.socket):
                host = "::" if sock.family == socket.AF_INET6 else "0.0.0.0"
            return Culprit(code, host or "0.0.0.0", port, ADDRESS_CALLS[name], how, mode), mode
    if name == "listen" and isinstance(sock, socket.socket):
        host, port = _bound(sock) or (None, None)
        if port:
            return Culprit(code, host, port, "listen", how, mode), mode
    return None, mode


def _from_locals(code: int, names: dict, where: str, mode: str = "plain") -> Culprit | None:
    """An address tuple, then a bound socket among a frame's locals. A bound socket found here is
    not the one that failed (that one is not bound): its options are the holder's, so the mode is
    the failing socket's when the call named it, else plain."""
    items = list(names.items())
    for name, value in items:
        host, port = _address(value) or (None, None)
        if port:
            return Culprit(code, host or "0.0.0.0", port, None, f"the local variable {name!r} at {where}", mode)
    for name, value in items:
        found = _from_value(code, value, f"the socket {name!r} at {where}", mode)
        if found:
            return found
    return None


def _from_value(code: int, value, how: str, mode: str = "plain") -> Culprit | None:
    if isinstance(value, socket.socket):
        host, port = _bound(value) or (None, None)
        return Culprit(code, host, port, None, how, mode) if port else None
    port, host = getattr(value, "port", None), getattr(value, "host", None)
    if isinstance(port, int) and 0 < port < 65536 and isinstance(host, str) and type(value).__module__.startswith("addrinuse"):
        return Culprit(code, host, port, None, how, mode)
    return None


def _address(value, zero: bool = False) -> tuple[str, int] | None:
    """(host, port) of an AF_INET/AF_INET6 address tuple (port 0 only when `zero`)."""
    if (isinstance(value, tuple) and len(value) in (2, 4) and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool) and (0 if zero else 1) <= value[1] < 65536):
        return value[0], value[1]
    return None


def _bound(sock: socket.socket) -> tuple[str, int] | None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.fileno() < 0:
        return None
    try:
        name = sock.getsockname()
    except OSError:
        return None
    return (name[0], name[1]) if name[1] else None


def _mode(sock: socket.socket) -> str:
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
            return "reuseport"
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR):
            return "reuseaddr"
    except OSError:
        pass  # closed
    return "plain"


def _value(node, frame):
    """Evaluate a literal, a name, a tuple of those, an instance attribute, or `S.getsockname()` of
    a real socket (the kernel's answer, read by _socket's own method): no code of the test runs."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        for scope in (frame.f_locals, frame.f_globals):
            if node.id in scope:
                return scope[node.id]
        raise _Unknown(node.id)
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_value(e, frame) for e in node.elts)
    if isinstance(node, ast.Attribute):
        try:  # the instance's (or module's) own dict, read without running its class's code
            attrs = object.__getattribute__(_value(node.value, frame), "__dict__")
        except AttributeError:
            attrs = None
        if isinstance(attrs, dict) and node.attr in attrs:
            return attrs[node.attr]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "getsockname"
            and not node.args and not node.keywords):
        sock = _value(node.func.value, frame)
        if isinstance(sock, socket.socket) and type(sock).getsockname is _socket.socket.getsockname:
            bound = _bound(sock)
            if bound:
                return bound
    raise _Unknown(ast.dump(node))
