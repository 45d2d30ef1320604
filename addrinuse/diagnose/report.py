"""diagnose(): probes and the connection table of one port, as a typed Diagnosis.

Probes bind and listen for real, as the user's server would (plain, SO_REUSEADDR); SO_REUSEPORT is
probed with bind() alone (see conflict.bind_probe). The holders come from one snapshot of the port
(local or remote port: the other ends of its connections are in it too), classified by the
kernel's bind-conflict rules for the address, family and v6only asked for."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from addrinuse.conntable import Entry, get_backend, last_expiry
from addrinuse.diagnose import MODES
from addrinuse.diagnose.conflict import Bind, bind_probe, can_probe_as, make_bind, not_in_the_way
from addrinuse.diagnose.ends import end_of, port_range
from addrinuse.diagnose.exhaustion import Exhaustion, explain_exhaustion
from addrinuse.diagnose.holders import Holder, Lingering, holder
from addrinuse.estimate import LIVE_STATES, Estimate, free_in
from addrinuse.sockets import ProbeResult, probe, resolve


@dataclass
class Diagnosis:
    port: int
    host: str
    mode: str
    backend: str
    probes: dict[str, ProbeResult]
    listeners: list[Holder] = field(default_factory=list)
    connections: list[Holder] = field(default_factory=list)
    lingering: list[Lingering] = field(default_factory=list)
    dual_stack: str | None = None
    ephemeral: bool = False
    reserved: bool = False
    port_range: str | None = None
    free_in: Estimate = Estimate("now", 0.0, 0.0, "nothing holds the port")
    exhaustion: Exhaustion | None = None
    v6only: bool | None = None
    verdict: str = ""

    @property
    def free(self) -> bool:
        return self.probes[self.mode].ok

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {"port": self.port, "host": self.host, "as": self.mode, "free": self.free, "backend": self.backend,
                "probes": {k: v.to_dict() for k, v in self.probes.items()},
                "listeners": [h.to_dict() for h in self.listeners],
                "connections": [h.to_dict() for h in self.connections],
                "lingering": [asdict(g) for g in self.lingering], "dual_stack": self.dual_stack,
                "ephemeral": self.ephemeral, "reserved": self.reserved, "port_range": self.port_range,
                "free_in": self.free_in.to_dict(),
                "exhaustion": self.exhaustion.to_dict() if self.exhaustion else None, "verdict": self.verdict}


def _reuseport_probe(host: str, port: int, bind: Bind) -> ProbeResult:
    r = bind_probe(bind, reuseport=True)
    return ProbeResult(r.ok, host, port, False, True, r.errno, r.error, None if r.ok else "bind")


def _overlap_note(bind: Bind, h: Holder) -> str | None:
    """The dual-stack overlaps people trip on, in words."""
    where = f"[{h.laddr}]:{{port}}" if h.family == 6 else f"{h.laddr}:{{port}}"
    if bind.family == 4 and h.family == 6 and h.laddr == "::":
        return f"{where} without IPV6_V6ONLY also covers IPv4, so an IPv4 bind of the port conflicts"
    if bind.family == 6 and bind.address == "::" and h.family == 4:
        return (f"{where} is IPv4, and a [::] bind without IPV6_V6ONLY covers IPv4 too, so the dual-stack "
                f"bind conflicts")
    return None


def _snapshot(port: int, backend: str) -> tuple[str, list[Entry], list[Entry]]:
    """(backend name, entries with port as local or remote port, every listener of the host)."""
    source = get_backend(backend)
    try:
        entries = source.snapshot(port)
        needs_listeners = any(e.lport == port and e.state != "LISTEN" for e in entries)
        listeners = source.snapshot(states=["LISTEN"]) if needs_listeners else [
            e for e in entries if e.state == "LISTEN"]
        return source.name, entries, listeners
    finally:
        source.close()


def diagnose(port: int, host: str = "127.0.0.1", mode: str = "plain", backend: str = "auto",
             records: list | None = None, v6only: bool | None = None) -> Diagnosis:
    """Why `port` on `host` cannot be bound the way `mode` binds, who holds what, when it frees."""
    family, address = resolve(host)
    bind = make_bind(family, address, port, v6only)
    opts = {m: o._replace(v6only=bind.v6only if bind.family == 6 else None) for m, o in MODES.items()}
    probes = {m: probe(host, port, opts[m]) for m in ("plain", "reuseaddr")}
    probes["reuseport"] = _reuseport_probe(host, port, bind)
    name, entries, all_listeners = _snapshot(port, backend)
    by_pid = {r.pid: r.name for r in records or []}
    servers = [(r.host, r.port) for r in records or [] if getattr(r, "host", None)]
    d = Diagnosis(port, host, mode, name, probes, v6only=bind.v6only if bind.family == 6 else None)
    mine = [e for e in entries if e.lport == port]
    blocking: list[Entry] = []
    roles: dict[tuple, str] = {}
    groups: dict[tuple, list[Entry]] = {}
    # the client module records the 4-tuples this process opened; not imported means none opened
    # (and `why` is spared importing it: make bench's start-up ratio)
    client = sys.modules.get("addrinuse.client")
    connected = client.connected_here() if client is not None else frozenset()
    for e in mine:
        reason = not_in_the_way(bind, e)
        if reason is None:
            blocking.append(e)
        if e.state == "LISTEN":
            h = holder(e, by_pid, conflicts=reason is None, reason=reason)
            if reason is None and can_probe_as(e.uid) and (mode == "reuseport" or not probes[mode].ok):
                h.joinable_by_uid = bind_probe(bind, reuseport=True, uid=e.uid).ok
            d.listeners.append(h)
            continue
        end = end_of(e, all_listeners, servers, connected)
        if end:
            roles[e.key] = "server" if end == "client" else "client"
        if e.owners or e.inode or e.state in LIVE_STATES:
            d.connections.append(holder(e, by_pid, conflicts=reason is None, reason=reason, end=end))
        else:
            groups.setdefault((e.state, end, reason), []).append(e)
    for (state, end, reason), group in sorted(groups.items(), key=lambda kv: (kv[0][2] is not None, -len(kv[1]))):
        peers = sorted({f"{e.raddr}:{e.rport}" for e in group})[:3]
        d.lingering.append(Lingering(state, len(group), last_expiry(group), end, reason is None, reason, peers))
    d.dual_stack = next((n.format(port=port) for h in d.listeners if h.conflicts
                         for n in [_overlap_note(bind, h)] if n), None)
    rng = port_range()
    if rng:
        d.port_range, d.ephemeral, d.reserved = rng.text, rng.holds(port), port in rng.reserved
    if probes[mode].ok:
        d.free_in = Estimate("now", 0.0, 0.0, f"a bind as {mode} succeeds now")
    elif blocking:
        d.free_in = free_in(blocking, entries, roles)
    else:
        d.free_in = Estimate("unknown", None, None, "no socket visible here is in the way of this bind")
    exhaustion = explain_exhaustion(address, port, entries)
    d.exhaustion = exhaustion if exhaustion.used else None
    from addrinuse.diagnose.verdict import verdict

    d.verdict = verdict(d)
    return d


def port_estimate(port: int, host: str = "127.0.0.1", backend: str = "auto", mode: str = "plain") -> Estimate:
    """When the port frees for `mode`, from the entries whose address is in the way of that bind."""
    return diagnose(port, host, mode, backend).free_in
