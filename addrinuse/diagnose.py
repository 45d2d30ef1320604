"""Why a port cannot be bound, and the fix: probes, holders, and a one-sentence verdict.

Probes bind and listen for real, as the user's server would (plain, SO_REUSEADDR, SO_REUSEPORT);
the holders come from the connection table (local port only: a bind conflict is about the local
port) and psutil (who the process is). The verdict names the most important cause first: a live
listener beats a live connection beats kernel-held entries that will expire by themselves."""

from __future__ import annotations

import socket
from dataclasses import asdict, dataclass, field

from addrinuse.conntable import TIMER_WHEEL_SLACK_S, Entry, get_backend, last_expiry
from addrinuse.sockets import ProbeResult, SocketOptions, probe, resolve

MODES = {"plain": SocketOptions(), "reuseaddr": SocketOptions(reuseaddr=True), "reuseport": SocketOptions(reuseport=True)}
MODE_WORDS = {"plain": "a plain server (no SO_REUSEADDR)", "reuseaddr": "a server that sets SO_REUSEADDR",
              "reuseport": "a server that sets SO_REUSEPORT"}


@dataclass
class Holder:
    """A socket on the port that a process holds."""
    pid: int | None
    name: str | None
    cmdline: str | None
    user: str | None
    state: str
    family: int
    laddr: str
    raddr: str
    rport: int
    v6only: bool | None = None
    record: str | None = None  # the addrinuse server record, when this tool started it


@dataclass
class Lingering:
    """Entries no process holds any more (TIME_WAIT, orphaned FIN_WAIT2, ...): the kernel ends them."""
    state: str
    count: int
    expires_in_s: float | None  # when the last one ends, by the kernel's timers; None: unknown


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
    port_range: str | None = None
    verdict: str = ""

    @property
    def free(self) -> bool:
        return self.probes[self.mode].ok

    def to_dict(self) -> dict:
        out = asdict(self)
        out["as"] = out.pop("mode")
        out["probes"] = {k: v.to_dict() for k, v in self.probes.items()}
        out["free"] = self.free
        return out


def _port_range() -> tuple[int, int] | None:
    try:
        low, high = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return None


def _holder(entry: Entry, records: dict) -> Holder:
    import psutil

    name = cmdline = user = None
    if entry.pid:
        try:
            proc = psutil.Process(entry.pid)
            with proc.oneshot():
                name, cmdline, user = proc.name(), " ".join(proc.cmdline()), proc.username()
        except psutil.Error:
            pass
    return Holder(entry.pid, name, cmdline, user, entry.state, entry.family, entry.laddr, entry.raddr, entry.rport,
                  entry.v6only, records.get(entry.pid))


def _overlaps(host_family: int, host_addr: str, listener: Holder) -> str | None:
    """A dual-stack overlap between the bind the user wants and a listener of the other family."""
    if host_family == socket.AF_INET and listener.family == 6 and listener.laddr == "::" and listener.v6only is False:
        return f"[::]:{{port}} without IPV6_V6ONLY also covers IPv4, so an IPv4 bind of the port conflicts"
    if host_family == socket.AF_INET6 and host_addr == "::" and listener.family == 4:
        return (f"{listener.laddr}:{{port}} is IPv4, and a [::] bind without IPV6_V6ONLY covers IPv4 too, "
                f"so the dual-stack bind conflicts")
    return None


def port_estimate(port: int, host: str = "127.0.0.1", backend: str = "auto"):
    """When the port's local side frees (an Estimate: now, exact, upper_bound or unknown)."""
    from addrinuse.estimate import free_in

    source = get_backend(backend)
    try:
        return free_in(source.snapshot(port, local=True))
    finally:
        source.close()


def diagnose(port: int, host: str = "127.0.0.1", mode: str = "plain", backend: str = "auto",
             records: list | None = None) -> Diagnosis:
    family, address = resolve(host)
    probes = {m: probe(host, port, opts) for m, opts in MODES.items()}
    source = get_backend(backend)
    try:
        entries = source.snapshot(port, local=True)
    finally:
        source.close()
    records = {r.pid: r.name for r in records or []}
    d = Diagnosis(port, host, mode, source.name, probes)
    for e in entries:
        if e.state == "LISTEN":
            d.listeners.append(_holder(e, records))
        elif e.pid:
            d.connections.append(_holder(e, records))
    by_state: dict[str, list[Entry]] = {}
    for e in entries:
        if e.state != "LISTEN" and not e.pid:
            by_state.setdefault(e.state, []).append(e)
    for state, group in sorted(by_state.items(), key=lambda kv: -len(kv[1])):
        d.lingering.append(Lingering(state, len(group), last_expiry(group)))
    for listener in d.listeners:
        overlap = _overlaps(family, address, listener)
        if overlap:
            d.dual_stack = overlap.format(port=port)
    rng = _port_range()
    if rng:
        d.port_range = f"{rng[0]}-{rng[1]}"
        d.ephemeral = rng[0] <= port <= rng[1]
    d.verdict = verdict(d)
    return d


def _who(h: Holder) -> str:
    who = f"{h.name or 'a process'} (pid {h.pid})" if h.pid else "a socket of another network namespace or user"
    return who + (f", the addrinuse server {h.record!r}," if h.record else "")


def verdict(d: Diagnosis) -> str:
    """One sentence: the cause and the fix, most important first."""
    wanted = MODE_WORDS[d.mode]
    if d.listeners:
        h = d.listeners[0]
        where = f"[{h.laddr}]" if h.family == 6 else h.laddr
        fix = f"addrinuse kill {h.record}" if h.record else "stop it"
        text = f"{_who(h)} is listening on it ({where}:{d.port}): {fix}"
        if d.dual_stack:
            text += f"; {d.dual_stack} (or have it set IPV6_V6ONLY)"
        if len(d.listeners) > 1:
            text += f" (and {len(d.listeners) - 1} more listener(s))"
        return text
    if d.connections:
        h = d.connections[0]
        kind = "an outgoing connection" if d.ephemeral else "a connection"
        return (f"{_who(h)} holds {kind} from local port {d.port} ({h.state} to {h.raddr}:{h.rport}): it keeps "
                f"the port until it closes that socket or exits")
    tw = next((g for g in d.lingering if g.state == "TIME_WAIT"), None)
    others = [g for g in d.lingering if g.state != "TIME_WAIT"]
    if not d.free and d.lingering:
        group = tw or others[0]
        left = max((g.expires_in_s for g in d.lingering if g.expires_in_s is not None), default=None)
        when = (f"free in {left:.0f} s (up to {TIMER_WHEEL_SLACK_S:.0f} s more: timer-wheel rounding)"
                if left is not None else "free within 60 s (no kernel timers with this backend)")
        origin = " from a server-side close" if group.state == "TIME_WAIT" else " no process holds any more"
        text = f"{group.count} {group.state} entries{origin}, {when}"
        if d.mode == "plain":
            if d.probes["reuseaddr"].ok:
                text += ("; a server that sets SO_REUSEADDR can bind now (the old one set it too: "
                         "both must, on Linux)")
            else:
                text += ("; SO_REUSEADDR will not help: the old server did not set it, and on Linux both "
                         "must (probed: EADDRINUSE)")
        else:
            text += f"; {wanted} cannot bind before then: the old server did not set the same option"
        return text
    if not d.free:
        r = d.probes[d.mode]
        return (f"{r.syscall}() fails with {r.error} but no socket on port {d.port} is visible here: look in "
                f"other network namespaces or containers (ss -N), or at a firewall-bound service")
    if d.lingering:
        counts = ", ".join(f"{g.count} {g.state}" for g in d.lingering)
        blocked = [m for m, r in d.probes.items() if not r.ok]
        extra = f"; {' and '.join(MODE_WORDS[m] for m in blocked)} would still be refused" if blocked else ""
        return f"free for {wanted} ({counts} entries on the port allow it){extra}"
    return "free"
