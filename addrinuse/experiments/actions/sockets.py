"""Socket steps done by the runner itself: listen, bind, listen_bound, close, probe.

Their sockets live in the runner's process (result "pid") until a close step or the end of the run."""

from __future__ import annotations

import os

from addrinuse.errors import SocketCallError
from addrinuse.experiments.actions import action
from addrinuse.experiments.params import REQUIRED, Flag, Optional, Port, Ref, Text

SOCKET_OPTS = {"host": Text(default="127.0.0.1", doc="address to bind"),
               "reuseaddr": Flag(doc="SO_REUSEADDR"), "reuseport": Flag(doc="SO_REUSEPORT"),
               "v6only": Optional(Flag(), doc="IPV6_V6ONLY (unset: the kernel default)")}


def _options(p: dict):
    from addrinuse.sockets import SocketOptions

    return SocketOptions(p["reuseaddr"], p["reuseport"], False, p["v6only"])


def _open(ctx, p: dict, listen: bool) -> dict:
    from addrinuse.sockets import bind_listen, new_socket, resolve

    port = ctx.port(p["port"])
    base = {"host": p["host"], "pid": os.getpid()}
    try:
        if listen:
            sock = bind_listen(p["host"], port, _options(p))
        else:
            family, address = resolve(p["host"])
            sock = new_socket(family, _options(p))
            try:
                sock.bind((address, port))
            except OSError as err:
                sock.close()
                raise SocketCallError("bind", err.errno or 0, p["host"], port) from err
    except SocketCallError as err:
        return {"ok": False, "error": err.errname, "errno": err.errno, "syscall": err.syscall, "port": port, **base}
    key = f"sock{len(ctx.sockets)}"
    ctx.sockets[key] = sock
    return {"ok": True, "error": None, "syscall": None, "port": sock.getsockname()[1], "socket": key, **base}


@action("listen", {"port": Port(), **SOCKET_OPTS}, provides=("port", "host", "pid", "socket", "ok"),
        doc="bind() and listen() a socket in the runner")
def listen(ctx, p: dict) -> dict:
    return _open(ctx, p, listen=True)


@action("bind", {"port": Port(), **SOCKET_OPTS}, provides=("port", "host", "pid", "socket", "ok"),
        doc="bind() only: the socket is bound and not listening")
def bind(ctx, p: dict) -> dict:
    return _open(ctx, p, listen=False)


@action("listen_bound", {"socket": Ref(needs=("socket",), doc="\"@step\" of a bind step")},
        provides=("port", "host", "pid", "ok"), doc="listen() on a socket a bind step bound")
def listen_bound(ctx, p: dict) -> dict:
    from addrinuse.sockets import errno_name

    bound = ctx.result(p["socket"])
    base = {"port": bound["port"], "host": bound["host"], "pid": os.getpid()}
    sock = ctx.sockets.get(bound.get("socket"))
    if sock is None:
        return {"ok": False, "error": None, "syscall": None, "message": f"{p['socket']} holds no open socket", **base}
    try:
        sock.listen(16)
    except OSError as err:
        return {"ok": False, "error": errno_name(err.errno), "errno": err.errno, "syscall": "listen", **base}
    return {"ok": True, "error": None, "syscall": None, **base}


@action("close", {"socket": Ref(needs=("socket",), doc="\"@step\" of a listen or bind step")},
        doc="close() a socket a listen or bind step opened")
def close(ctx, p: dict) -> dict:
    sock = ctx.sockets.pop(ctx.result(p["socket"]).get("socket"), None)
    if sock is not None:
        sock.close()
    return {"closed": p["socket"]}


@action("probe", {"port": Port(default=REQUIRED), **SOCKET_OPTS}, provides=("port", "host", "ok"),
        doc="bind() and listen() as a new server would, released at once")
def probe(ctx, p: dict) -> dict:
    from addrinuse.sockets import probe as probe_port

    return probe_port(p["host"], ctx.port(p["port"]), _options(p)).to_dict()

