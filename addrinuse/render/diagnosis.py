"""`why` as text within 80 columns: probes, holders (every process), kernel-held entries, when the
port frees and what kind of estimate that is, and the verdict."""

from __future__ import annotations

from addrinuse.render import WIDTH, endpoint, outcome, wrap
from addrinuse.render.tables import estimate_text

END_WORDS = {"client": "client end", "server": "server end", None: "closed first here"}


def _clip(text: str, room: int) -> str:
    return text if len(text) <= room else text[:room - 3] + "..."


def _owners(h, indent: str = "    ") -> list[str]:
    if not h.owners:
        return [f"{indent}no process visible here holds it"]
    lines = []
    for o in h.owners:
        head = f"{indent}pid {o.pid} {o.name or '?'} (user {o.user or '?'}): "
        lines.append(head + _clip(o.cmdline or "", WIDTH - len(head)))
    return lines


def _listener(h, port: int) -> list[str]:
    v6 = "" if h.v6only is None else f" v6only={'on' if h.v6only else 'off'}"
    extra = f" uid {h.uid}" if h.uid is not None else ""
    if h.joinable_by_uid is not None:
        extra += ", SO_REUSEPORT group" + ("" if h.joinable_by_uid else ": none")
    lines = [f"  {endpoint(h.laddr, port)}{v6}{extra}"]
    if not h.conflicts:
        lines.append(wrap(f"does not conflict: {h.reason}", "    "))
    return lines + _owners(h)


def diagnosis(d) -> str:
    from addrinuse.diagnose import MODE_WORDS

    lines = [f"port {d.port} on {d.host}, for {MODE_WORDS[d.mode]} ({d.backend}):", "probes:"]
    for mode, r in d.probes.items():
        how = "bind" if mode == "reuseport" else "bind + listen"
        lines.append(f"  {mode:<10} {outcome(r):<40} ({how})")
    blocking = [h for h in d.listeners if h.conflicts]
    others = [h for h in d.listeners if not h.conflicts]
    lines.append("listeners:" + ("" if blocking else " none in the way"))
    for h in blocking:
        lines += _listener(h, d.port)
    if others:
        lines.append("also on this port, does not conflict:")
        for h in others:
            lines += _listener(h, d.port)
    if d.connections:
        lines.append("connections held by processes:")
        for h in d.connections:
            mark = "" if h.conflicts else " (not in the way)"
            lines.append(f"  {h.state:<11} to {endpoint(h.raddr, h.rport):<22} {END_WORDS[h.end]}{mark}")
            lines += _owners(h)
    lines.append("kernel-held entries:" + ("" if d.lingering else " none"))
    for g in d.lingering:
        left = "no timers" if g.expires_in_s is None else f"last ends in {g.expires_in_s:.1f} s"
        mark = "" if g.conflicts else "; not in the way"
        lines.append(f"  {g.state:<11} {g.count:>5}  {END_WORDS[g.end]}; {left}{mark}")
    lines.append(wrap(f"frees: {estimate_text(d.free_in)}", "", "  "))
    lines.append(wrap(f"dual-stack: {d.dual_stack or 'no overlap'}", "", "  "))
    if d.port_range:
        where = ("reserved (ip_local_reserved_ports): connect() never takes it" if d.reserved else
                 "yes: connect() can take it" if d.ephemeral else "no")
        lines.append(wrap(f"ephemeral: {where} (ip_local_port_range {d.port_range})", "", "  "))
        if d.ephemeral and not d.reserved:
            lines.append("  fix: net.ipv4.ip_local_reserved_ports, or a port outside the range")
    if d.exhaustion and (d.exhaustion.exhausted or 2 * d.exhaustion.used >= d.exhaustion.usable):
        x = d.exhaustion
        lines.append(f"connect() to it: {x.used} of {x.usable} local ports taken"
                     + (" (exhausted: EADDRNOTAVAIL)" if x.exhausted else ""))
    lines.append("verdict:")
    lines.append(wrap(d.verdict, "  "))
    return "\n".join(lines)
