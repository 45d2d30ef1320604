"""The connection table and watch's events and summary, as text that fits 80 columns."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator

from addrinuse.render import endpoint, fit

if TYPE_CHECKING:  # type hints only
    from addrinuse.conntable import Entry
    from addrinuse.sockets import ProbeResult

EP = 21  # endpoint column: 255.255.255.255:65535 fits; a longer IPv6 endpoint pushes the row to wrap


def _timer(entry: Entry) -> str:
    return "-" if entry.expires_in_s is None else f"{entry.expires_in_s:.1f}s"


def owners_text(owners) -> str:
    """`pid/name` of the first holder, `+N` for the others (all are in --json)."""
    if not owners:
        return "-"
    first = owners[0]
    name = first["name"] if isinstance(first, dict) else first.name
    pid = first["pid"] if isinstance(first, dict) else first.pid
    return f"{pid}/{name or '?'}" + (f" +{len(owners) - 1}" if len(owners) > 1 else "")


def table_header(timers: bool) -> str:
    return f"{'PROTO':<5} {'LOCAL':<{EP}} {'REMOTE':<{EP}} {'STATE':<11}" + (f" {'LEFT':>6}" if timers else "") + " PID/PROCESS"


def table_row(e: Entry, timers: bool) -> str:
    left = f" {_timer(e):>6}" if timers else ""
    head = (f"{'tcp' if e.family == 4 else 'tcp6':<5} {endpoint(e.laddr, e.lport):<{EP}} "
            f"{endpoint(e.raddr, e.rport):<{EP}} {e.state:<11}{left}")
    return fit(head, owners_text(e.owners), indent=6)


def table(entries: list[Entry], timers: bool = False) -> str:
    return "\n".join([table_header(timers)] + [table_row(e, timers) for e in entries])


def endpoint_host(addr: str) -> str:
    """endpoint()'s address part."""
    if addr.startswith("::ffff:") and "." in addr:
        addr = addr[7:]
    return f"[{addr}]" if ":" in addr else addr


def table_lines(entries: Iterable[Entry], timers: bool = False) -> Iterator[str]:
    """table_row() for each entry, for a table streamed by `table` (a netlink dump writes its lines
    straight from the kernel's bytes: conntable.rawdump.RawDump.text_lines, the same text)."""
    return (table_row(e, timers) for e in entries)


def probe(result: ProbeResult) -> str:
    from addrinuse.render import outcome

    opts = f"SO_REUSEADDR {'on' if result.reuseaddr else 'off'}" + (", SO_REUSEPORT on" if result.reuseport else "")
    return f"{endpoint(result.host, result.port)} ({opts}): " + outcome(result, "bind() and listen() succeeded; released")


EVENT_HEADER = f"{'T(s)':>8} {'EVENT':<8} {'LOCAL':<{EP}} {'REMOTE':<{EP}} STATE"


def event(ev: dict) -> str:
    """One watch event; the state column carries what the event adds (time left, lifetime)."""
    what = ev["event"]
    if what == "changed":
        state = f"{ev['previous']}>{ev['state']}"
    elif what == "vanished":
        prefix = ">=" if ev.get("present_at_start") else ""
        bound = "" if ev.get("present_at_start") else f" (<={ev['lifetime_max_s']:.2f})"
        state = f"{ev['state']} gone after {prefix}{ev['lifetime_s']:.2f}s{bound}"
    else:
        state = ev["state"]
    if ev.get("expires_in_s") is not None and what != "vanished":
        state += f" {ev['expires_in_s']:.1f}s left"
        if ev.get("lifetime_expected_min_s") is not None:
            state += f", ends {ev['lifetime_expected_min_s']:.1f}-{ev['lifetime_expected_max_s']:.1f}s"
    head = (f"{ev['t_s']:8.3f} {what:<8} {endpoint(ev['laddr'], ev['lport']):<{EP}} "
            f"{endpoint(ev['raddr'], ev['rport']):<{EP}}")
    return fit(head, state)


def summary(data: dict) -> str:
    lines = [f"summary after {data['t_s']:.1f} s, {data['polls']} polls; {data['still_present']} entries still present"]
    for state, row in data["states"].items():
        line = f"  {state:<11} {row['entries']:>5} seen"
        if "median_s" in row:
            line += (f"; lifetime of {row['ended']}: min {row['min_s']:.2f} / median {row['median_s']:.2f}"
                     f" / max {row['max_s']:.2f} s")
        lines.append(line)
    return "\n".join(lines)


def estimate_text(estimate) -> str:
    """'in 58.2-60.3 s (exact: TIME_WAIT timers)' and the like, for any Estimate (or its dict)."""
    e = estimate if isinstance(estimate, dict) else estimate.to_dict()
    if e["kind"] == "now":
        return "now"
    if e["kind"] == "unknown":
        return f"when it is released (unknown: {e['reason']})"
    low = "" if e["min_s"] is None else f"{e['min_s']:.1f}-"
    kind = "exact" if e["kind"] == "exact" else "upper bound"
    return f"in {low}{e['max_s']:.1f} s ({kind}: {e['reason']})"
