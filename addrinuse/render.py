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


def outcome(r, ok_text: str = "ok") -> str:
    """A probe's or a socket step's result (ProbeResult or its dict): ok, or the call and errno."""
    r = r if isinstance(r, dict) else r._asdict()
    return ok_text if r.get("ok") else f"{r.get('syscall')}() failed: {r.get('error')} ({r.get('errno')})"


def probe(result: ProbeResult) -> str:
    opts = f"SO_REUSEADDR {'on' if result.reuseaddr else 'off'}" + (", SO_REUSEPORT on" if result.reuseport else "")
    return f"{endpoint(result.host, result.port)} ({opts}): " + outcome(result, "bind() and listen() succeeded; released")


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


# -- experiments -------------------------------------------------------------------------------

def experiment_step(row: dict) -> str:
    """One line per step, from what the step observed."""
    r, do = row["result"], row["do"]
    if do == "server":
        extra = f", child pid {r['child_pid']} holds the listener too" if r.get("child_pid") else ""
        text = f"pid {r['pid']} listens on port {r['port']} (SO_REUSEADDR {'on' if r['reuseaddr'] else 'off'}){extra}"
    elif do == "connect":
        text = f"{r['count']} connections; the server closed {r['server_closed_first']} first (close={r['policy']})"
    elif do == "kill":
        text = f"stopped {r['stopped']}" + ("" if r["exited"] else " (STILL RUNNING)")
    elif do in ("listen", "bind", "listen_bound", "probe"):
        text = f"port {r['port']}: {do}: {outcome(r)}"
    elif do == "close":
        text = f"closed {r['closed']}"
    elif do == "table":
        states = sorted({e["state"] for e in r["entries"]})
        pids = f", held by pid {', '.join(map(str, r['pids']))}" if r["pids"] else ""
        text = f"{r['count']} entries on port {r['port']} {'/'.join(states) or ''}{pids}"
    elif do == "wait_gone":
        text = (f"gone after {r['lifetime_s']} s" if r["gone"] else "still there at the timeout")
        if "gap_s" in r:
            text += f"; rebind {outcome(r)} {r['gap_s'] * 1000:.1f} ms later"
    elif do == "close_sequence":
        text = f"port {r['port']} <-> client port {r['client_port']}:\n" + sequence_diagram(r)
    else:
        text = str(r)
    return f"  {row['id']:<18} {text}"


ARROWS = {  # the segment each observed transition stands for, drawn between the lanes
    ("active", "FIN_WAIT1"): "--- FIN --->", ("active", "FIN_WAIT2"): "<--- ACK ---",
    ("active", "TIME_WAIT"): "<--- FIN ---", ("passive", "CLOSE_WAIT"): "--- FIN --->",
    ("passive", "LAST_ACK"): "<--- FIN ---", ("passive", "gone"): "--- ACK --->",
}


def sequence_diagram(r: dict) -> str:
    """Two lanes, one row per observed state change, in time order; '*' marks a change only the
    kernel tracepoint saw (too short for the poller)."""
    from addrinuse.closeseq import lane_order

    rows = []
    for end in ("active", "passive"):
        polled = {s["state"] for s in r["poll"][end]}
        rows += [(s["first_s"], end, s["state"], "") for s in r["poll"][end]]
        if r.get("trace"):
            order = lane_order(r, end, "trace")
            for step, state in zip(r["trace"][end], order[1:]):
                if state not in polled and state in ("FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "gone"):
                    rows.append((step["t_s"], end, state, "*"))
    lines = [f"  {'t (s)':>8}  {'ACTIVE CLOSER :' + str(r['port']):<24}{'':14}PASSIVE CLOSER :{r['client_port']}"]
    for t, end, state, mark in sorted(rows):
        arrow = ARROWS.get((end, state), "")
        label = state + mark
        left, right = (label, "") if end == "active" else ("", label)
        lines.append(f"  {t:8.4f}  {left:<24}{arrow:^14}{right}")
    if r.get("trace_unavailable"):
        lines.append(f"  (no kernel tracepoint: {r['trace_unavailable']}; LAST_ACK is too short to poll)")
    else:
        lines.append("  * seen only by the kernel tracepoint sock:inet_sock_set_state")
    return "\n".join(lines)


def experiment_report(report: dict) -> str:
    lines = []
    for c in report["checks"]:
        verdict = {True: "ok  ", False: "FAIL", None: "skip"}[c["ok"]]
        lines.append(f"  {verdict}  {c['what']}: expected {c['expected']}, observed {c['observed']}")
    import textwrap

    lines += textwrap.wrap(" ".join(report["explain"].split()), 78, initial_indent="  why: ", subsequent_indent="       ")
    status = "SKIPPED (" + report["skipped"] + ")" if report["skipped"] else "PASSED" if report["passed"] else "FAILED"
    lines.append(f"{status}: {report['name']} in {report['duration_s']:.2f} s, ports {report['ports']}, "
                 f"kernel {report['kernel']}")
    return "\n".join(lines)


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
