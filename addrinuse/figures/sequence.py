"""The sequence diagram of one connection: one vertical lane per end, time flowing down, each end's
state changes as marks, the segments between the ends as arrows.

The time axis is ordinal, not linear. The times of one close are wildly uneven: a FIN and its ACK
microseconds apart on loopback, a retransmitted FIN 200 ms later, TIME_WAIT's end 60 s after that.
On a linear (or even a log) scale the microsecond events would sit on one pixel and the 60 s gap
would eat the page. So every distinct observed time gets its own row, in order, and the real time is
printed beside it; the space between two rows grows with the logarithm of the real gap (26 px for
a microsecond, ~62 px for a minute), so a long wait still looks longer, and every gap of 1 ms or
more is labelled ("+205 ms"), a gap of 1 s or more also with break marks across the lanes (the axis
is not to scale there). A time known only between two polls (t_max_s not null) is drawn as a bracket
spanning both rows, with the mark in its middle.

A state has one of three sources, each its own mark: the kernel tracepoint (a filled dot), inferred
from the other end's tracepoint events (a dashed ring: TIME_WAIT begins at the peer's FIN and no
event marks it), a poll of the table (a diamond). A polled state that the tracepoint or the inference
already shows (same end, same state, begun by the time the poll saw it) is drawn as a small diamond
on its bracket without a second label: one state, one label."""

from __future__ import annotations

import math

from addrinuse.figures import shapes
from addrinuse.figures.svg import FONT_PX, Svg, esc, fmt_duration, text_width, wrap

WIDTH = 900
AXIS_X = 96  # right edge of the time labels
LANES_LEFT, LANES_RIGHT = 320, 640
ROW_MIN, ROW_PER_DECADE = 26.0, 4.5  # px for a 1 µs gap, + px per decade of the real gap
SLANT = ROW_MIN / 2  # an arrival time not given: a small fixed slant
LINE_H = 15
KIND_TEXT = {"normal": "segment", "retransmit": "retransmitted segment (dashed)",
             "lost": "lost segment: dropped before the other end (×)", "rst": "RST (thick)"}


def _rows(data: dict) -> list[float]:
    times = set()
    for s in data["states"]:
        times.add(_key(s["t_s"]))
        if s["t_max_s"] is not None:
            times.add(_key(s["t_max_s"]))
    for s in data["segments"]:
        times.add(_key(s["t_s"]))
        if s["t_arrive_s"] is not None:
            times.add(_key(s["t_arrive_s"]))
    return sorted(times)


def _key(t: float) -> float:
    return round(t, 7)  # the producers round to microseconds: equal times share a row


def _gap_px(gap: float) -> float:
    decades = math.log10(gap / 1e-6) if gap > 1e-6 else 0.0
    return ROW_MIN + ROW_PER_DECADE * min(decades, 8.0)


def _mark_y(state: dict, y_of: dict) -> float:
    """A state's mark: on its row, or halfway along its bracket."""
    end = state["t_max_s"] if state["t_max_s"] is not None else state["t_s"]
    return (y_of[_key(state["t_s"])] + y_of[_key(end)]) / 2


def _time_label(t: float) -> str:
    return f"{t:.6f}" if abs(t) < 1000 else f"{t:.3f}"


class _Labels:
    """Placed label boxes, so later labels can avoid them."""

    def __init__(self):
        self.boxes: list[tuple[float, float, float, float]] = []

    def free(self, x0, y0, x1, y1) -> bool:
        return all(x1 <= a or x0 >= c or y1 <= b or y0 >= d for a, b, c, d in self.boxes)

    def take(self, box) -> None:
        self.boxes.append(box)


def sequence_svg(data: dict, id_prefix: str = "seq") -> str:
    """SVG text of the sequence diagram for the documented sequence shape (see addrinuse.figures)."""
    data = shapes.sequence(data)
    ends = data["ends"]
    lane_x = _lane_xs(len(ends))
    x_of = {e["id"]: x for e, x in zip(ends, lane_x)}
    side = {e["id"]: (-1 if i == 0 and len(ends) > 1 else 1) for i, e in enumerate(ends)}

    # Header: the title, then each lane's label (wrapped to two lines at most).
    room = 310 if len(ends) < 3 else (LANES_RIGHT - LANES_LEFT) / (len(ends) - 1) - 16
    lane_lines = {e["id"]: wrap(e["label"], room, 13, max_lines=2) for e in ends}
    header_bottom = 56 + LINE_H * max(len(v) for v in lane_lines.values())
    times = _rows(data)
    y_of: dict[float, float] = {}
    y = header_bottom + 34
    for i, t in enumerate(times):
        if i:
            y += _gap_px(t - times[i - 1])
        y_of[t] = y
    rows_bottom = y + 30
    kinds = sorted({s["kind"] for s in data["segments"]}, key=shapes.SEGMENT_KINDS.index)
    sources = {s["source"] for s in data["states"]}
    sources |= {"bracket" for s in data["states"] if s["t_max_s"] is not None}
    notes = [*data["notes"], "Rows are observed times in order, not to scale: the gap between two rows grows with "
             "the logarithm of the real gap; gaps of 1 ms or more are labelled."]
    note_lines = [line for n in notes for line in wrap(n, WIDTH - 40, FONT_PX)]
    legend_y = rows_bottom + 16
    legend_rows = _legend_rows(_legend_items(kinds, sources))
    height = int(legend_y + 24 * legend_rows + LINE_H * len(note_lines) + 10)

    svg = Svg(WIDTH, height, data["title"], _desc(data), id_prefix)
    svg.raw(svg.text(20, 28, data["title"], size=15, bold=True))

    # The axis: real times beside their rows, faint guides across, gap labels and breaks between rows.
    svg.raw(svg.text(AXIS_X, header_bottom + 8, "t (s)", role="muted", anchor="end", italic=True))
    for i, t in enumerate(times):
        yy = y_of[t]
        svg.raw(svg.line(AXIS_X + 6, yy, WIDTH - 20, yy, role="grid", dash="2 4"))
        svg.raw(svg.text(AXIS_X, yy + 4, _time_label(t), role="muted", anchor="end", mono=True, size=11))
        if i:
            gap, top = t - times[i - 1], y_of[times[i - 1]]
            if gap >= 1e-3 and yy - top >= 36:
                svg.raw(svg.text(AXIS_X, (top + yy) / 2 + 4, f"+{fmt_duration(gap)}", role="muted",
                                     anchor="end", italic=True, size=11, bold=gap >= 1))
    lane_top, lane_bottom = header_bottom + 12, rows_bottom - 8
    for e in ends:
        x = x_of[e["id"]]
        svg.raw(svg.text(x, 58, lane_lines[e["id"]], size=13, bold=True, anchor="middle", line_h=LINE_H,
                         data_role="lane-label", data_end=e["id"]))
        svg.raw(svg.line(x, lane_top, x, lane_bottom, role="lane", width=2))
    marks = {(x_of[s["end"]], _mark_y(s, y_of)) for s in data["states"]}
    for i in range(1, len(times)):
        if times[i] - times[i - 1] >= 1:
            yb = (y_of[times[i - 1]] + y_of[times[i]]) / 2
            _break(svg, [x for x in lane_x if all(mx != x or abs(my - yb) > 14 for mx, my in marks)], yb)

    labels = _Labels()
    for e in ends:  # lane headers and the lanes themselves are taken
        labels.take((x_of[e["id"]] - 2, lane_top, x_of[e["id"]] + 2, lane_bottom))
    for s in data["states"]:
        _state(svg, s, x_of[s["end"]], side[s["end"]], y_of, labels, ends, _shown_by(s, data["states"]))
    for s in data["segments"]:
        _segment(svg, s, x_of, y_of, labels)
    _legend(svg, legend_y, kinds, sources)
    y = legend_y + 24 * legend_rows + 4
    for note in notes:  # one <text> per note, a <tspan> per line
        lines = wrap(note, WIDTH - 40, FONT_PX)
        svg.raw(svg.text(20, y, lines, role="muted", line_h=LINE_H))
        y += LINE_H * len(lines)
    return svg.render()


def _lane_xs(n: int) -> list[float]:
    if n == 1:
        return [(LANES_LEFT + LANES_RIGHT) / 2]
    return [LANES_LEFT + i * (LANES_RIGHT - LANES_LEFT) / (n - 1) for i in range(n)]


def _end_label(ends: list[dict], end_id: str) -> str:
    return next(e["label"] for e in ends if e["id"] == end_id)


HOW = {"trace": "kernel tracepoint", "inferred": "inferred from the other end's tracepoint events",
       "poll": "seen by polling the table"}


def _shown_by(s: dict, states: list[dict]) -> dict | None:
    """The traced or inferred state that a polled one repeats: same end and state, begun by the time
    the poll saw it (the rule of render.sequence's text diagram too)."""
    if s["source"] != "poll":
        return None
    seen = s["t_max_s"] if s["t_max_s"] is not None else s["t_s"]
    return next((e for e in states if e["source"] != "poll" and e["end"] == s["end"] and e["state"] == s["state"]
                 and e["t_s"] <= seen), None)


def _diamond(svg: Svg, x: float, y: float, d: float) -> str:
    return svg.el("path", d=f"M{x:.1f} {y - d:.1f}L{x + d:.1f} {y:.1f}L{x:.1f} {y + d:.1f}L{x - d:.1f} {y:.1f}Z",
                  stroke_width=2 if d > 4 else 1.5, **svg.paints(fill="bg", stroke="fg"))


def _ring(svg: Svg, x: float, y: float) -> str:
    """The mark of an inferred state: a dashed ring, unlike the tracepoint's dot and the poll's diamond."""
    return svg.el("circle", cx=float(x), cy=float(y), r=5, stroke_width=2, stroke_dasharray="2.6 1.6",
                  **svg.paints(fill="bg", stroke="fg"))


def _state(svg: Svg, s: dict, x: float, side: int, y_of: dict, labels: _Labels, ends: list[dict],
           shown_by: dict | None = None) -> None:
    y0 = y_of[_key(s["t_s"])]
    bracket = s["t_max_s"] is not None
    y1 = y_of[_key(s["t_max_s"])] if bracket else y0
    ym = _mark_y(s, y_of)
    when = (f"between {s['t_s']:.6f} and {s['t_max_s']:.6f} s" if bracket else f"at {s['t_s']:.6f} s")
    tip = f"{_end_label(ends, s['end'])}: {s['state']} {when} ({HOW[s['source']]})"
    if s["handoff_t_s"] is not None:
        tip += f"; its full socket was handed to a timewait socket at {s['handoff_t_s']:.6f} s, still {s['state']}"
    if shown_by is not None:
        tip += f"; the same {s['state']} as the {shown_by['source']} mark at {shown_by['t_s']:.6f} s"
    parts = [svg.el("title", esc(tip))]
    bx = x + side * 9
    if bracket:  # a bracket beside the lane, on the label's side, from one poll to the next
        parts += [svg.line(bx, y0, bx, y1, role="fg", width=1.5),
                  svg.line(bx, y0, bx - side * 5, y0, role="fg", width=1.5),
                  svg.line(bx, y1, bx - side * 5, y1, role="fg", width=1.5)]
    if shown_by is not None:  # no second label: a small diamond on the bracket says the poll saw it too
        parts.append(_diamond(svg, bx, ym, 3.5))
        svg.raw(svg.el("g", "".join(parts), data_role="state-mark", data_end=s["end"], data_state=s["state"],
                       data_source=s["source"], data_repeats=shown_by["source"]))
        return
    if s["source"] == "trace":
        parts.append(svg.el("circle", cx=float(x), cy=float(ym), r=5, **svg.paint("fg", "fill")))
    elif s["source"] == "inferred":
        parts.append(_ring(svg, x, ym))
    else:
        parts.append(_diamond(svg, x, ym, 6))
    # The label: beside the mark, pushed down past any label already there (marks close in time).
    w = text_width(s["state"], 13) + 4
    lx = x + side * (20 if bracket else 14)
    ly = ym + 5
    while True:
        box = (lx - w, ly - 12, lx, ly + 3) if side < 0 else (lx, ly - 12, lx + w, ly + 3)
        if labels.free(*box):
            break
        ly += 4
    labels.take(box)
    if abs(ly - (ym + 5)) > 6:  # displaced: a leader line ties the label to its mark
        parts.append(svg.line(x + side * 6, ym, lx - side * 2, ly - 4, role="muted", width=0.8))
    parts.append(svg.text(lx, ly, s["state"], size=13, anchor="end" if side < 0 else "start", bold=True))
    svg.raw(svg.el("g", "".join(parts), data_role="state-mark", data_end=s["end"], data_state=s["state"],
                   data_source=s["source"]))


def _arrowhead(svg: Svg, x1, y1, x2, y2, role: str) -> str:
    length = math.hypot(x2 - x1, y2 - y1) or 1.0
    ux, uy = (x2 - x1) / length, (y2 - y1) / length
    size, half = 10, 4.5
    bx, by = x2 - ux * size, y2 - uy * size
    pts = f"{x2:.1f},{y2:.1f} {bx - uy * half:.1f},{by + ux * half:.1f} {bx + uy * half:.1f},{by - ux * half:.1f}"
    return svg.el("polygon", points=pts, **svg.paint(role, "fill"))


def _segment(svg: Svg, s: dict, x_of: dict, y_of: dict, labels: _Labels) -> None:
    role = kind = s["kind"]  # each kind has its palette role of the same name
    x1, x2 = x_of[s["from"]], x_of[s["to"]]
    y1 = y_of[_key(s["t_s"])]
    y2 = y_of[_key(s["t_arrive_s"])] if s["t_arrive_s"] is not None else y1 + SLANT
    direction = 1 if x2 >= x1 else -1
    x1 += direction * 6  # start and end just off the lanes, clear of the marks
    x2 -= direction * 7
    width, dash = (3.0 if kind == "rst" else 2.0), ("7 5" if kind == "retransmit" else None)
    parts = []
    if kind == "lost":  # it never arrives: the line stops short and ends in a cross
        f = 0.6
        xe, ye = x1 + (x2 - x1) * f, y1 + (y2 - y1) * f
        parts += [svg.line(x1, y1, xe, ye, role=role, width=width),
                  svg.line(xe - 6, ye - 6, xe + 6, ye + 6, role=role, width=2.5),
                  svg.line(xe - 6, ye + 6, xe + 6, ye - 6, role=role, width=2.5)]
        x2, y2 = xe, ye
    else:
        parts += [svg.line(x1, y1, x2, y2, role=role, width=width, dash=dash), _arrowhead(svg, x1, y1, x2, y2, role)]
    arrive = "not delivered" if kind == "lost" else (
        f"arrived {s['t_arrive_s']:.6f} s" if s["t_arrive_s"] is not None else "arrival time not observed")
    parts.insert(0, svg.el("title", esc(f"{s['label']} ({kind}) {s['from']} -> {s['to']}, sent {s['t_s']:.6f} s, "
                                         f"{arrive}")))
    # The label sits on the line, at the first spot along it that no other label occupies.
    label = s["label"]
    room = max(abs(x2 - x1) - 10, 40)
    if text_width(label, FONT_PX) > room:  # the whole label stays in the <title>
        label = label[:max(1, int(room / (FONT_PX * 0.62)) - 1)] + "…"
    w = text_width(label, FONT_PX) + 6
    rise = abs((y2 - y1) / (x2 - x1 or 1)) * w / 2 + 5  # above the line, clear of it along the label's width
    spots = [(f, dy) for dy in (0, -15, 15) for f in (0.5, 0.35, 0.65, 0.25, 0.75)] + [(0.5, 0)]
    for f, dy in spots:  # along the line first, then just above or below it; else the middle
        lx, ly = x1 + (x2 - x1) * f, y1 + (y2 - y1) * f - rise + dy
        box = (lx - w / 2, ly - 11, lx + w / 2, ly + 3)
        if labels.free(*box):
            break
    labels.take(box)
    parts.append(svg.text(lx, ly, label, role=role, anchor="middle", bold=True, halo=True))
    svg.raw(svg.el("g", "".join(parts), data_role="segment", data_kind=kind))


def _break(svg: Svg, lane_x: list[float], y: float) -> None:
    """Two slashes across each lane: the axis is not to scale across this gap."""
    for x in lane_x:
        svg.raw(svg.rect(x - 8, y - 5, 16, 10, "bg"))
        for dy in (-3, 3):
            svg.raw(svg.line(x - 8, y + dy + 4, x + 8, y + dy - 4, role="lane", width=1.5))


def _legend_items(kinds: list[str], sources: set) -> list[tuple[str, str]]:
    items = [(what, label) for what, label in (("trace", "state change at its kernel tracepoint time"),
                                               ("inferred", "state change inferred from the other end's "
                                                            "events (no tracepoint marks it)"),
                                               ("poll", "state seen by polling"),
                                               ("bracket", "a bracket: the change happened between these two times"))
             if what in sources]
    items += [(k, KIND_TEXT[k]) for k in kinds]
    return items


def _legend_layout(items: list[tuple[str, str]]):
    """(x, row) of each legend item, wrapping at the figure's width."""
    x, row = 20.0, 0
    for what, label in items:
        w = 30 + text_width(label, FONT_PX) + 24
        if x + w > WIDTH - 10:
            x, row = 20.0, row + 1
        yield what, label, x, row
        x += w


def _legend_rows(items) -> int:
    return 1 + max((row for *_, row in _legend_layout(items)), default=0)


def _legend(svg: Svg, y: float, kinds: list[str], sources: set) -> None:
    for what, label, x, row in _legend_layout(_legend_items(kinds, sources)):
        yy = y + 24 * row
        if what == "trace":
            svg.raw(svg.el("circle", cx=x + 10, cy=yy - 4, r=5, **svg.paint("fg", "fill")))
        elif what == "inferred":
            svg.raw(_ring(svg, x + 10, yy - 4))
        elif what == "bracket":
            svg.raw(svg.line(x + 10, yy - 12, x + 10, yy + 4, width=1.5))
            svg.raw(svg.line(x + 10, yy - 12, x + 15, yy - 12, width=1.5))
            svg.raw(svg.line(x + 10, yy + 4, x + 15, yy + 4, width=1.5))
        elif what == "poll":
            svg.raw(svg.el("path", d=f"M{x + 10} {yy - 10}L{x + 16} {yy - 4}L{x + 10} {yy + 2}L{x + 4} {yy - 4}Z",
                           fill="none", stroke_width=2, **svg.paint("fg", "stroke")))
        else:
            role = what
            end = x + 18 if what == "lost" else x + 24
            svg.raw(svg.line(x, yy - 4, end, yy - 4, role=role, width=3 if what == "rst" else 2,
                                 dash="5 3" if what == "retransmit" else None))
            if what == "lost":
                svg.raw(svg.line(end - 4, yy - 8, end + 4, yy, role=role, width=2))
                svg.raw(svg.line(end - 4, yy, end + 4, yy - 8, role=role, width=2))
            else:
                svg.raw(_arrowhead(svg, x, yy - 4, x + 26, yy - 4, role))
        svg.raw(svg.text(x + 32, yy, label))


def _desc(data: dict) -> str:
    """The figure as sentences, for screen readers and for anyone who cannot see it."""
    names = {e["id"]: e["label"] for e in data["ends"]}
    out = [f"Sequence diagram with {len(data['ends'])} lanes: " + "; ".join(names.values()) + "."]
    for e in data["ends"]:
        steps = []
        for s in sorted((s for s in data["states"] if s["end"] == e["id"]), key=lambda s: s["t_s"]):
            when = (f"between {s['t_s']:.6f} and {s['t_max_s']:.6f} s" if s["t_max_s"] is not None
                    else f"at {s['t_s']:.6f} s")
            step = f"{s['state']} {when} ({s['source']})"
            if s["handoff_t_s"] is not None:
                step += f" (handed to a timewait socket at {s['handoff_t_s']:.6f} s)"
            steps.append(step)
        if steps:
            out.append(f"{e['label']}: " + ", ".join(steps) + ".")
    for s in sorted(data["segments"], key=lambda s: s["t_s"]):
        out.append(f"{s['label']} ({s['kind']}) from {names[s['from']]} to {names[s['to']]} at {s['t_s']:.6f} s.")
    return " ".join(out)
