"""`why` as text: probes, holders, kernel-held entries, and the verdict."""

from __future__ import annotations

from addrinuse.render import endpoint, outcome

def diagnosis(d) -> str:
    from addrinuse.diagnose import MODE_WORDS

    lines = [f"port {d.port} on {d.host}, for {MODE_WORDS[d.mode]} ({d.backend}):", "probes (bind + listen):"]
    for mode, r in d.probes.items():
        lines.append(f"  {mode:<10} {outcome(r)}")
    lines.append("listeners:" + ("" if d.listeners else " none"))
    for h in d.listeners:
        where = f"[{h.laddr}]" if h.family == 6 else h.laddr
        v6 = "" if h.v6only is None else f" v6only={'on' if h.v6only else 'off'}"
        cmd = h.cmdline or ""
        cmd = cmd if len(cmd) <= 60 else cmd[:57] + "..."
        lines.append(f"  {where}:{d.port}{v6}  pid {h.pid} {h.name or '?'} (user {h.user or '?'})")
        lines.append(f"    {cmd}")
    if d.connections:
        lines.append("connections held by processes:")
        for h in d.connections:
            lines.append(f"  {h.state:<11} to {endpoint(h.raddr, h.rport):<22} pid {h.pid} {h.name or '?'}")
    lines.append("kernel-held entries:" + ("" if d.lingering else " none"))
    for g in d.lingering:
        left = "unknown" if g.expires_in_s is None else f"{g.expires_in_s:.1f} s"
        lines.append(f"  {g.state:<11} {g.count:>5}  the last expires in {left}")
    lines.append(f"dual-stack: {d.dual_stack or 'no overlap'}")
    if d.port_range:
        lines.append(f"ephemeral:  {'yes' if d.ephemeral else 'no'} (ip_local_port_range {d.port_range}"
                     + (": an outgoing connection can hold it)" if d.ephemeral else ")"))
    lines.append(f"verdict: {d.verdict}")
    return "\n".join(lines)
