"""Text for people: tables that fit 80 columns with a header line. No click here either."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type hints only: `rebind` renders a probe without loading the table modules
    from addrinuse.conntable import Entry
    from addrinuse.sockets import ProbeResult


def endpoint(addr: str, port: int) -> str:
    if port == 0 and addr == "*":
        return "*:*"
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _timer(entry: Entry) -> str:
    return "-" if entry.expires_s is None else f"{entry.expires_s:.1f}s"


def table(entries: list[Entry], timers: bool = False) -> str:
    head = f"{'PROTO':<5} {'LOCAL':<22} {'REMOTE':<22} {'STATE':<11}" + (f" {'LEFT':>6}" if timers else "") + "  PID/PROCESS"
    rows = [head]
    for e in entries:
        owner = f"{e.pid}/{e.process or '?'}" if e.pid else "-"
        left = f" {_timer(e):>6}" if timers else ""
        rows.append(f"{'tcp' if e.family == 4 else 'tcp6':<5} {endpoint(e.laddr, e.lport):<22} "
                    f"{endpoint(e.raddr, e.rport):<22} {e.state:<11}{left}  {owner}")
    return "\n".join(rows)


def probe(result: ProbeResult) -> str:
    opts = f"SO_REUSEADDR {'on' if result.reuseaddr else 'off'}" + (", SO_REUSEPORT on" if result.reuseport else "")
    where = endpoint(result.host, result.port)
    if result.ok:
        return f"{where} ({opts}): bind() and listen() succeeded; released"
    return f"{where} ({opts}): {result.syscall}() failed: {result.error} ({result.errno})"


def event(ev: dict) -> str:
    where = f"{endpoint(ev['laddr'], ev['lport'])} -> {endpoint(ev['raddr'], ev['rport'])}"
    what = ev["event"]
    if what == "changed":
        state = f"{ev['previous']} -> {ev['state']}"
    elif what == "vanished":
        bound = "" if ev.get("present_at_start") else f" (at most {ev['lifetime_max_s']:.2f} s)"
        prefix = ">= " if ev.get("present_at_start") else ""
        state = f"{ev['state']} after {prefix}{ev['lifetime_s']:.2f} s{bound}"
    else:
        state = ev["state"]
    if ev.get("expires_s") is not None and what != "vanished":
        state += f", {ev['expires_s']:.1f} s left"
        if ev.get("expected_lifetime_s") is not None:
            state += f" (lifetime ~{ev['expected_lifetime_s']:.1f} s)"
    return f"{ev['t']:8.3f}s  {what:<9} {where:<45} {state}"


def summary(data: dict) -> str:
    lines = [f"summary after {data['t']:.1f} s, {data['polls']} polls; {data['still_present']} entries still present"]
    for state, row in data["states"].items():
        line = f"  {state:<11} {row['entries']:>5} seen"
        if "median_s" in row:
            line += f"; lifetime over {row['ended']} ended: min {row['min_s']:.2f} / median {row['median_s']:.2f} / max {row['max_s']:.2f} s"
        lines.append(line)
    return "\n".join(lines)
