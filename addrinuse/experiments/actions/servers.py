"""Server steps: start a server (the built-in one, or the user's own command), stop it with a
chosen signal, and talk to it with real client connections."""

from __future__ import annotations

import socket
import time

from addrinuse.errors import AddrinuseError, SocketCallError
from addrinuse.experiments.actions import action
from addrinuse.experiments.params import (SIGNALS, Argv, Count, Flag, Invalid, Optional, Port, Ref, Seconds,
                                          Text)

BUILTIN_ONLY = ("close", "reuseaddr", "reuseport", "linger0", "spawn_child")
START_TRIES = 3  # a port picked for a command can be taken before the command binds it


class BuiltinServer:
    """A server `python -m addrinuse.server` started through control.start_server, by its record."""

    def __init__(self, registry, record, stop_signal: str = "TERM"):
        self.registry, self.record, self.stop_signal = registry, record, stop_signal

    def stop(self, sig: str | None = None, timeout: float = 5.0) -> dict:
        from addrinuse.control import stop_servers

        sig = sig or self.stop_signal
        if not any(r.name == self.record.name for r in self.registry.load()[0]):
            return {"signal": sig, "exited": True, "waited_s": 0.0}  # stopped already
        report = stop_servers(self.registry, name=self.record.name, sig=_signum(sig), timeout=timeout)
        return {"signal": sig, "exited": all(o.exited for o in report.stopped),
                "waited_s": round(sum(o.waited_s for o in report.stopped), 3)}

    def kill(self) -> None:
        from addrinuse.control import stop_servers

        for name in (self.record.name, self.record.child):
            if name and any(r.name == name for r in self.registry.load()[0]):
                stop_servers(self.registry, name=name, sig=_signum("KILL"))


def _signum(name: str) -> int:
    import signal

    return getattr(signal, f"SIG{name}")


def _check_server(p: dict) -> None:
    if p["command"] is not None:
        given = [k for k in BUILTIN_ONLY if p[k] not in (False, "server-first")]
        if given:
            raise Invalid(f"{', '.join(given)} set with a command",
                          "these shape the built-in server only; your command sets its own socket options")


def _describe_server(r: dict) -> str:
    if not r.get("ok", True):
        return f"port {r['port']}: did not start: " + (r.get("message") or f"{r.get('syscall')}() failed: {r.get('error')}")
    if r.get("command"):
        return f"pid {r['pid']} ({r['name']}) listens on {r['host']}:{r['port']}"
    extra = f", child pid {r['child_pid']} holds the listener too" if r.get("child_pid") else ""
    return f"pid {r['pid']} listens on port {r['port']} (SO_REUSEADDR {'on' if r['reuseaddr'] else 'off'}){extra}"


@action("server", {
    "host": Text(default="127.0.0.1", doc="address to listen on"),
    "port": Port(),
    "command": Optional(Argv(), doc="the user's own server: argv with \"{port}\" (and \"{host}\")"),
    "stop_signal": Text(default="TERM", choices=SIGNALS, doc="the signal that stops it"),
    "ready_timeout": Seconds(default=10.0, high=300.0, doc="how long it may take to listen"),
    "close": Text(default="server-first", choices=("server-first", "client-first", "never"),
                  doc="built-in server: who closes each connection"),
    "reuseaddr": Flag(doc="built-in server: SO_REUSEADDR"), "reuseport": Flag(doc="built-in server: SO_REUSEPORT"),
    "linger0": Flag(doc="built-in server: SO_LINGER {on, 0} (close sends RST)"),
    "spawn_child": Flag(doc="built-in server: a child inherits the listening socket"),
}, provides=("port", "host", "pid", "child_pid", "name", "ok"), validate=_check_server, describe=_describe_server,
    doc="start a server: the built-in one, or your own command; ready once it listens")
def server(ctx, p: dict) -> dict:
    if p["command"] is not None:
        return _start_command(ctx, p)
    from addrinuse.control import start_server
    from addrinuse.server import ServerConfig

    config = ServerConfig(host=p["host"], port=ctx.port(p["port"]), close=p["close"], reuseaddr=p["reuseaddr"],
                          reuseport=p["reuseport"], linger0=p["linger0"], spawn_child=p["spawn_child"])
    try:
        record = start_server(ctx.registry, config)
    except SocketCallError as err:
        return {"ok": False, "error": err.errname, "errno": err.errno, "syscall": err.syscall, "host": p["host"],
                "port": config.port, "pid": None, "child_pid": None, "reuseaddr": p["reuseaddr"]}
    ctx.servers[ctx.step] = BuiltinServer(ctx.registry, record, p["stop_signal"])
    child_pid = next((r.pid for r in ctx.registry.load()[0] if r.name == record.child), None) if record.child else None
    return {"ok": True, "error": None, "syscall": None, "name": record.name, "pid": record.pid, "host": record.host,
            "port": record.port, "child_pid": child_pid, "reuseaddr": record.reuseaddr}


def _start_command(ctx, p: dict) -> dict:
    from addrinuse.experiments.command import CommandServer, pick_port

    fixed = ctx.port(p["port"])
    for attempt in range(START_TRIES):
        handle = CommandServer(p["command"], p["host"], fixed or pick_port(p["host"]), p["stop_signal"])
        ctx.servers[ctx.step] = handle  # before start: the run's cleanup stops it whatever happens
        result = handle.start(ctx, p["ready_timeout"])
        if result["ok"] or fixed or result["error"] != "EADDRINUSE" or attempt == START_TRIES - 1:
            result["child_pid"] = None
            return result
        handle.kill()  # someone took the picked port in the meantime: pick another


@action("kill", {
    "server": Ref(actions=("server",), doc="\"@step\" of a server step"),
    "signal": Optional(Text(choices=SIGNALS), doc="the signal (default: the server's stop_signal)"),
    "timeout": Seconds(default=5.0, high=120.0, doc="how long to wait for it to exit"),
}, provides=("ok",), doc="stop a server with a signal and wait until it has exited",
    describe=lambda r: f"stopped {r['stopped']} with SIG{r['signal']}" if r.get("ok") else r["message"])
def kill(ctx, p: dict) -> dict:
    sid = p["server"][1:]
    handle = ctx.servers.get(sid)
    if handle is None:
        return {"ok": False, "stopped": sid, "message": f"server {sid} is not running (it did not start)"}
    out = handle.stop(p["signal"], p["timeout"])
    name = ctx.results[sid].get("name") or sid
    if not out["exited"]:
        out["message"] = f"{name} did not exit within {p['timeout']:g} s of SIG{out['signal']}"
    return {"ok": out["exited"], "stopped": name, **out}


@action("connect", {
    "to": Ref(needs=("host", "port"), doc="\"@step\" of a server or listen step"),
    "count": Count(default=1, high=1000, doc="how many connections"),
    "send": Optional(Text(), doc="bytes to send on each (e.g. an HTTP request); then read until the server closes"),
    "timeout": Seconds(default=5.0, high=120.0, doc="for connecting and for the server's replies"),
}, provides=("count", "ok"), doc="open real client connections and close them after the server's reply",
    describe=lambda r: (f"{r['count']} connection{'s' * (r['count'] != 1)}; the server closed "
                        f"{r['server_closed_first']} first" + (f" (close={r['policy']})" if r.get("policy") else ""))
    if r.get("ok") else r["message"])
def connect(ctx, p: dict) -> dict:
    target = ctx.result(p["to"])
    host, port = target["host"], target["port"]
    if p["send"] is None:
        from addrinuse.client import converse

        try:
            talk = converse(host, port, p["count"], p["timeout"])
        except AddrinuseError as err:
            return {"ok": False, "message": str(err), "count": 0}
        ctx.connected(port, talk.local_ports)
        return {"ok": True, "count": talk.count, "server_closed_first": talk.server_closed_first,
                "local_ports": talk.local_ports, "policy": talk.policy}
    result = _send_and_read(host, port, p["count"], p["send"].encode(), p["timeout"])
    ctx.connected(port, result.get("local_ports", ()))
    return result


def _send_and_read(host: str, port: int, count: int, payload: bytes, timeout: float) -> dict:
    """Each connection sends `payload`, then reads until the server closes (its FIN first: the
    server's side ends in TIME_WAIT); a connection the server leaves open is closed by the client."""
    from addrinuse.client import close_all, open_connections

    try:
        socks = open_connections(host, port, count, timeout)
    except AddrinuseError as err:
        return {"ok": False, "message": str(err), "count": 0}
    result = {"ok": True, "count": count, "local_ports": [s.getsockname()[1] for s in socks],
              "server_closed_first": 0, "bytes_received": 0}
    deadline = time.monotonic() + timeout
    try:
        for sock in socks:
            sock.sendall(payload)
        for sock in socks:
            while True:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    chunk = sock.recv(1 << 16)
                except (socket.timeout, ConnectionResetError):
                    break
                if not chunk:
                    result["server_closed_first"] += 1
                    break
                result["bytes_received"] += len(chunk)
    finally:
        close_all(socks)
    return result
