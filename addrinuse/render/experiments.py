"""Experiments as text: one line per step, the checks, and the close sequence as two lanes."""

from __future__ import annotations

from addrinuse.render import endpoint, outcome, wrap


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
