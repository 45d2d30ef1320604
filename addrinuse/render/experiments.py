"""Experiments as text, 80 columns: a header, one line per step, the checks as expected vs
observed, the explanation, a verdict line; the close sequence as two lanes; the catalogue list."""

from __future__ import annotations

import textwrap

from addrinuse.render import WIDTH, outcome, wrap

ID_WIDTH = 18


def value(v) -> str:
    """A value as the TOML that states it: true/false, [a, b], plain strings; None as 'none'."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    return str(v)


def header(name: str, purpose: str) -> str:
    return wrap(purpose, f"== {name}: ", "   ")


def experiment_step(row: dict) -> str:
    """The lines of one step's result, each within 80 columns."""
    from addrinuse.experiments.actions import actions

    r, do = row["result"], row["do"]
    action = actions().get(do)
    if action and action.describe:
        text = action.describe(r)
    elif do in ("listen", "bind", "listen_bound", "probe"):
        text = f"port {r['port']}: {do}: {outcome(r)}"
    elif do == "close":
        text = f"closed {r['closed']}"
    else:
        text = ", ".join(f"{k}={value(v)}" for k, v in r.items() if not isinstance(v, (dict, list)))
    first, _, rest = text.partition("\n")
    lead = f"  {row['id']:<{ID_WIDTH}} "
    if len(lead) > 2 + ID_WIDTH + 1:
        lead = f"  {row['id']}\n" + " " * (3 + ID_WIDTH)
    head = textwrap.fill(first, WIDTH, initial_indent=lead, subsequent_indent=" " * (3 + ID_WIDTH),
                         break_on_hyphens=False)
    return head + ("\n" + rest if rest else "")


def step_lines(steps: list[dict]) -> list[str]:
    return [experiment_step(row) for row in steps]


VERDICT = {True: "ok", False: "FAIL", None: "skip"}


def checks_table(checks: list[dict]) -> str:
    """One line per check, 'ok/FAIL/skip  what: expected X, observed Y'; where that passes 80
    columns, expected and observed go on the lines below it, each wrapped on its own."""
    lines = []
    for c in checks:
        lead = f"  {VERDICT[c['ok']]:<4}  "
        expected, observed = f"expected {value(c['expected'])}", f"observed {value(c['observed'])}"
        line = f"{lead}{c['what']}: {expected}, {observed}"
        if len(line) <= WIDTH:
            lines.append(line)
            continue
        lines.append(textwrap.fill(f"{c['what']}:", WIDTH, initial_indent=lead, subsequent_indent=" " * 10))
        both = f"{expected}, {observed}"
        parts = [both] if len(both) <= WIDTH - 10 else [expected + ",", observed]
        lines += [textwrap.fill(part, WIDTH, initial_indent=" " * 10, subsequent_indent=" " * 12,
                                break_on_hyphens=False) for part in parts]
    return "\n".join(lines)


def experiment_report(report: dict) -> str:
    """Everything after the steps: checks, the reason a run ended early, why, the verdict line."""
    lines = [checks_table(report["checks"])] if report["checks"] else []
    if report.get("message"):
        lines.append(wrap(report["message"], "  stopped: ", " " * 11))
    if report["status"] != "skipped":
        lines.append(wrap(report["explain"], "  why: ", " " * 7))
    status = {"passed": "PASSED", "failed": "FAILED", "skipped": "SKIPPED", "cannot_run": "COULD NOT RUN"}[report["status"]]
    tail = f"({report['skipped']})" if report["skipped"] else \
        f"in {report['duration_s']:.2f} s, ports {value(report['ports'])}, kernel {report['kernel']}"
    lines.append(wrap(tail, f"{status}: {report['name']} ", "  "))
    return "\n".join(lines)


def catalogue_list(scenarios: list) -> str:
    """`experiment list`: a header, then each experiment's name and states, its purpose below."""
    lines = [f"{'NAME':<28} STATES OBSERVED"]
    for s in scenarios:
        name = s.name + (" (slow)" if s.slow else "")
        states = " ".join(s.states) or "-"
        lines.append(wrap(states, f"{name:<28} ", " " * 29) if len(name) < 28 else f"{name}\n" + wrap(states, " " * 29))
        lines.append(wrap(s.purpose, "    ", "    "))
    return "\n".join(lines)


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
        lines.append(f"  {t:8.4f}  {left:<24}{arrow:^14}{right}".rstrip())
    if r.get("trace_unavailable"):
        lines.append(wrap(f"(no kernel tracepoint: {r['trace_unavailable']}; LAST_ACK is too short to poll)",
                          "  ", "   "))
    else:
        lines.append("  * seen only by the kernel tracepoint sock:inet_sock_set_state")
    return "\n".join(lines)
