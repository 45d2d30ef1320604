"""The two-lane sequence diagram as text, within 80 columns: the figures' sequence shape (see
addrinuse.figures: {"ends", "states", "segments"}) drawn one row per instant, each end's state in
its lane and the segments sent at that instant between them.

     t (s)  A 10.199.7.1:40000                               B 10.199.7.2:8080
    0.1259  TIME_WAIT~            <--------- FIN ---------   LAST_ACK
    0.1259                        ----- ACK (lost) -----X
    0.3324                        <---- FIN (resent) -----

A state from the tracepoint is bare; "~" marks one inferred from the peer's events (the start of
TIME_WAIT, which no event marks), "?" one only a poll of the table saw (drawn at the first poll that
saw it). A polled state is left out where the tracepoint already shows it by then."""

from __future__ import annotations

from addrinuse.render import wrap

LANE, MIDDLE, TIME = 20, 24, 8
MARKS = {"inferred": "~", "poll": "?"}
LEGEND = {"~": "~ inferred from the peer's events (the start of TIME_WAIT emits no tracepoint)",
          "?": "? seen only by a poll of the connection table (drawn at the first poll that saw it)"}


def _arrow(seg: dict, left_to_right: bool) -> str:
    label = {"retransmit": f"{seg['label']} (resent)", "lost": f"{seg['label']} (lost)"}.get(seg["kind"], seg["label"])
    fill = max(MIDDLE - len(label) - 2, 4)
    left, right = "-" * (fill // 2), "-" * (fill - fill // 2)
    if left_to_right:
        head = "X" if seg["kind"] == "lost" else ">"
        return f"{left} {label} {right[:-1]}{head}"
    head = "X" if seg["kind"] == "lost" else "<"
    return f"{head}{left[1:]} {label} {right}"


def _shown(states: list[dict]) -> list[tuple[float, str, str]]:
    """(t, end, label) of the states to draw."""
    exact = [s for s in states if s["source"] != "poll" and s["t_s"] is not None]
    out = [(s["t_s"], s["end"], s["state"] + MARKS.get(s["source"], "")) for s in exact]
    for s in states:
        if s["source"] != "poll":
            continue
        seen = s["t_max_s"] if s["t_max_s"] is not None else s["t_s"]
        if seen is None or any(e["end"] == s["end"] and e["state"] == s["state"] and e["t_s"] <= seen for e in exact):
            continue
        out.append((seen, s["end"], s["state"] + "?"))
    return out


def two_lanes(seq: dict, indent: int = 2) -> str:
    """The diagram's lines (header first), each within 80 columns for lane labels of up to 20.
    Events are placed in time order, each in the current row while its cell is free and its time
    (to 0.1 ms) is the row's; a state joins a row's segment only as its sender's state (placed
    before it) or its receiver's (the segment arrived): the row reads as cause and effect."""
    (a, a_label), (b, b_label) = [(e["id"], e["label"]) for e in seq["ends"][:2]]
    events = [(t, 0, end, label, None) for t, end, label in _shown(seq["states"]) if end in (a, b)]
    for seg in seq["segments"]:
        t = seg["t_s"] if seg["t_s"] is not None else seg["t_arrive_s"]
        if t is not None and {seg["from"], seg["to"]} == {a, b}:
            events.append((t, 1, "mid", _arrow(seg, seg["from"] == a), seg["to"]))
    rows: list[dict] = []
    for t, _, cell, text, to in sorted(events, key=lambda e: e[:2]):
        row = rows[-1] if rows else {}
        if row.get("t") != round(t, 4) or cell in row or (cell != "mid" and row.get("to", cell) != cell):
            row = {"t": round(t, 4)}
            rows.append(row)
        row[cell] = text
        if to is not None:
            row["to"] = to
    pad = " " * indent
    lines = [f"{pad}{'t (s)':>{TIME}}  {a_label[:LANE]:<{LANE}} {'':<{MIDDLE}} {b_label[:LANE]}".rstrip()]
    last = None
    for r in rows:
        when = f"{r['t']:{TIME}.4f}" if r["t"] != last else ""
        last = r["t"]
        lines.append(f"{pad}{when:>{TIME}}  {r.get(a, ''):<{LANE}} {r.get('mid', ''):<{MIDDLE}} {r.get(b, '')}".rstrip())
    used = {mark for line in lines[1:] for mark in LEGEND if mark in line}
    lines += [wrap(LEGEND[m], pad, pad + "  ") for m in sorted(used)]
    return "\n".join(lines)

