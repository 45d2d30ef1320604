"""Steps that read the connection table: table (what is there now), wait_gone (how long it stays),
close_sequence (one connection closed step by step, both ends watched)."""

from __future__ import annotations

import time

from addrinuse.experiments.actions import action
from addrinuse.experiments.params import REQUIRED, Count, Flag, Optional, Port, Ref, Seconds, States, Text

SIDES = ("local", "remote", "any")
HOST = Optional(Text(), doc="the address the port is bound to (default: the referred step's host, else 127.0.0.1)")


def _where(ctx, p: dict) -> tuple[str, int]:
    port = ctx.port(p["port"])
    if p["host"]:
        return p["host"], port
    ref = p["port"] if isinstance(p["port"], str) and p["port"].startswith("@") else None
    return (ctx.result(ref).get("host") if ref else None) or "127.0.0.1", port


def _describe_table(r: dict) -> str:
    states = "/".join(sorted({e["state"] for e in r["entries"]}))
    pids = f", held by pid {', '.join(map(str, r['pids']))}" if r["pids"] else ""
    entries = "1 entry" if r["count"] == 1 else f"{r['count']} entries"
    return f"{entries} on port {r['port']} {states}{pids}".replace("  ", " ").rstrip()


@action("table", {
    "port": Port(default=REQUIRED), "host": HOST,
    "states": States(doc="only these states (default: every state)"),
    "side": Text(default="local", choices=SIDES, doc="local: bound to host:port; remote: its peers' side; any"),
    "wait_for": Count(default=0, low=0, high=100000,
                      doc="poll until this many entries show (states reached asynchronously), then count"),
    "timeout": Seconds(default=5.0, high=600.0, doc="how long wait_for may poll"),
}, provides=("port", "host", "count", "pids"), describe=_describe_table,
    doc="read the connection table: the entries of ours on a port")
def table(ctx, p: dict) -> dict:
    host, port = _where(ctx, p)
    deadline = time.monotonic() + p["timeout"]
    entries = ctx.entries(port, p["states"], p["side"], host)
    while len(entries) < p["wait_for"] and time.monotonic() < deadline:
        ctx.progress(f"{len(entries)} of {p['wait_for']} entries on port {port}; "
                     f"{deadline - time.monotonic():.0f} s left")
        time.sleep(0.01)
        entries = ctx.entries(port, p["states"], p["side"], host)
    return {"port": port, "host": host, "count": len(entries),
            "pids": sorted({o.pid for e in entries for o in e.owners}), "entries": [e.to_dict() for e in entries]}


def _describe_gone(r: dict) -> str:
    text = f"gone after {r['lifetime_s']} s" if r["gone"] else "still there at the timeout"
    if "gap_s" in r:
        from addrinuse.render import outcome

        text += f"; rebind {outcome(r)} {r['gap_s'] * 1000:.1f} ms later"
    return text


@action("wait_gone", {
    "port": Port(default=REQUIRED), "host": HOST,
    "states": States(default=["TIME_WAIT"], doc="the entries to wait out"),
    "since": Optional(Ref(), doc="\"@step\": measure the lifetime from that step's end (default: now)"),
    "timeout": Seconds(default=75.0, high=3600.0, doc="give up after this long"),
    "interval": Seconds(default=0.1, high=10.0, doc="poll interval: the lifetime is known to within it"),
    "then_probe": Flag(doc="bind and listen the moment they are gone"),
}, provides=("port", "host", "lifetime_s", "ok"), describe=_describe_gone,
    doc="poll until a port's entries are gone; their lifetime")
def wait_gone(ctx, p: dict) -> dict:
    from addrinuse.conntable import last_expiry
    from addrinuse.figures import CountRecorder

    host, port = _where(ctx, p)
    start = ctx.ended[p["since"][1:]] if p["since"] else time.monotonic()
    deadline = time.monotonic() + p["timeout"]
    # The entries per state over the wait, with each TIME_WAIT entry's predicted end: the report's
    # count chart (t = 0 is the start of the measured lifetime).
    since = f"the end of step {p['since'][1:]}" if p["since"] else "the start of the wait"
    counts = CountRecorder(port, f"{'/'.join(p['states'])} entries on {host}:{port} (t = 0: {since})")
    while entries := ctx.entries(port, p["states"], "local", host):
        now = time.monotonic()
        counts.add(now - start, entries)
        if now > deadline:
            return {"port": port, "host": host, "gone": False, "lifetime_s": None, "counts": counts.to_dict()}
        left = last_expiry(entries)
        timer = f"the last timer ends in {left:.1f} s" if left is not None else f"up to {deadline - now:.0f} s left"
        ctx.progress(f"{len(entries)} {'/'.join(p['states'])} on port {port}: {timer} (waited {now - start:.0f} s)")
        time.sleep(p["interval"])
    vanished = time.monotonic()
    counts.add(vanished - start, [])
    out = {"port": port, "host": host, "gone": True, "lifetime_s": round(vanished - start, 3),
           "counts": counts.to_dict()}
    if p["then_probe"]:
        from addrinuse.sockets import SocketOptions, probe

        result = probe(host, port, SocketOptions())
        out.update(ok=result.ok, error=result.error, errno=result.errno, syscall=result.syscall,
                   gap_s=round(time.monotonic() - vanished, 4))
    return out


def _describe_sequence(r: dict) -> str:
    from addrinuse.render.experiments import sequence_diagram

    return f"port {r['port']} <-> client port {r['client_port']}:\n" + sequence_diagram(r)


@action("close_sequence", {
    "hold": Seconds(default=0.3, high=30.0, doc="how long each stage is held for the poller"),
    "interval": Seconds(default=0.005, high=1.0, doc="poll interval"),
}, provides=("port",), describe=_describe_sequence,
    doc="one connection closed step by step; every state of both ends (polled, and traced as root)")
def close_sequence(ctx, p: dict) -> dict:
    from addrinuse.closeseq import lane_order, run_close_sequence

    result = run_close_sequence(hold=p["hold"], interval=p["interval"], backend=ctx.backend)
    for end in ("active", "passive"):
        for source in ("poll", "trace") if result["trace"] else ("poll",):
            ctx.report.states_seen.update(s for s in lane_order(result, end, source) if s not in ("gone", "CLOSED"))
    return result
