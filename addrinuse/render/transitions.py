"""`watch --source trace` as text within 80 columns: one line per state change as the kernel made it
(addrinuse.transitions), then the changes per state entered."""

from __future__ import annotations

from addrinuse.render import endpoint, fit, wrap

EP = 21  # as the table's endpoint column
HEADER = f"{'T(s)':>10} {'LOCAL':<{EP}} {'REMOTE':<{EP}} CHANGE"
INFERRED = "~"
LEGEND = (f"{INFERRED} inferred from the peer's FIN (no tracepoint marks the start of TIME_WAIT); "
          "'handed off': FIN_WAIT2 kept by a timewait socket until the peer's FIN.")


def transition(t: dict) -> str:
    """One change, its time to the microsecond (the tracepoint's resolution matters here)."""
    if t["event"] == "handoff":
        change = f"{t['state']} handed off"
    else:
        change = f"{t['previous']}>{t['state']}" + (INFERRED if t["source"] == "inferred" else "")
    head = f"{t['t_s']:10.6f} {endpoint(t['laddr'], t['lport']):<{EP}} {endpoint(t['raddr'], t['rport']):<{EP}}"
    return fit(head, change, indent=11)


def summary(data: dict) -> str:
    """The trace summary: changes per state entered, and what the ring buffer lost."""
    lost = f"; {data['lost']} lost (the ring buffer overflowed)" if data.get("lost") else ""
    lines = [wrap(f"summary after {data['t_s']:.1f} s: {data['transitions']} state changes from the kernel "
                  f"tracepoint{lost}", "", "  ")]
    for state, row in data["states"].items():
        lines.append(f"  {state:<11} {row['entries']:>5} entered")
    if data.get("handoffs"):
        lines.append(f"  {data['handoffs']} FIN_WAIT2 handed off to a timewait socket")
    if data.get("inferred") or data.get("handoffs"):
        lines.append(wrap(LEGEND, "  ", "  "))
    return "\n".join(lines)
