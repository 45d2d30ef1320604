"""The count of entries per state over time for one port, with the kernel's predicted end of each
TIME_WAIT entry as a band and the time it really vanished.

Here the time axis is linear: the story is the 60 s wait and its end, and a linear axis shows its
length truthfully; the millisecond events that a linear axis hides belong to the sequence diagram."""

from __future__ import annotations

from addrinuse.figures import shapes
from addrinuse.figures.svg import FONT_PX, Svg, esc, nice_step, text_width, wrap

WIDTH = 900
X0, X1 = 78, 872
PLOT_H = 210
ROW_H = 16
MAX_ROWS = 16  # more TIME_WAIT entries than this are drawn as groups (the SVG stays small at 50k)
DASHES = [None, "7 4", "2 3", "9 3 2 3", "4 4", "12 4"]


def _fmt_t(t: float) -> str:
    return f"{t:g}" if abs(t) >= 1 or t == 0 else f"{t:.2g}"


def counts_svg(data: dict, id_prefix: str = "counts") -> str:
    """SVG text of the count chart for the documented counts shape (see addrinuse.figures)."""
    data = shapes.counts(data)
    samples, ends = data["samples"], data["predicted_ends"]
    states = sorted({s for sample in samples for s, n in sample["counts"].items() if n > 0},
                    key=lambda s: (s != "TIME_WAIT", s))
    peak = {s: max(sample["counts"].get(s, 0) for sample in samples) for s in states}
    t_hi = max([s["t_s"] for s in samples] + [e["end_max_s"] for e in ends] +
               [e["vanished_s"] for e in ends if e["vanished_s"] is not None] + [1e-3])
    t_lo = min([0.0] + [s["t_s"] for s in samples])
    step = nice_step(t_hi - t_lo, 8)
    t_hi = step * -(-t_hi // step)

    def x_of(t: float) -> float:
        return X0 + (max(t, t_lo) - t_lo) / (t_hi - t_lo) * (X1 - X0)

    groups = _groups(ends)
    legend_rows = _legend_rows(states, peak)
    plot_top = 60 + 22 * legend_rows
    plot_bottom = plot_top + PLOT_H
    panel_top = plot_bottom + 62
    panel_head = wrap("TIME_WAIT entries: a band is the kernel's predicted end (its timer, plus up to 2 s of "
                      "timer-wheel slack); the triangle is the first poll that no longer saw the entry.",
                      X1 - 20, FONT_PX)
    rows_top = panel_top + 15 * len(panel_head) + 6
    height = (rows_top + ROW_H * len(groups) + 40) if groups else plot_bottom + 60

    svg = Svg(WIDTH, int(height), data["title"], _desc(data, states, peak), id_prefix)
    svg.raw(svg.text(20, 28, data["title"], size=15, bold=True))
    _legend(svg, states, peak)

    # Axes and grid.
    ymax = max([1] + list(peak.values()))
    ystep = max(1, int(nice_step(ymax, 5)))
    ytop = ystep * -(-ymax // ystep)

    def y_of(n: float) -> float:
        return plot_bottom - n / ytop * PLOT_H

    for n in range(0, ytop + 1, ystep):
        svg.raw(svg.line(X0, y_of(n), X1, y_of(n), role="grid"))
        svg.raw(svg.text(X0 - 8, y_of(n) + 4, str(n), role="muted", anchor="end"))
    svg.raw(svg.text(20, plot_top - 10, "entries", role="muted", italic=True))
    ticks = []
    t = 0.0 if t_lo == 0 else step * (t_lo // step)
    while t <= t_hi + step / 1000:
        ticks.append(t)
        t += step
    axis_bottom = (rows_top + ROW_H * len(groups)) if groups else plot_bottom
    for t in ticks:
        svg.raw(svg.line(x_of(t), plot_top, x_of(t), axis_bottom, role="grid", dash="2 4"))
        svg.raw(svg.text(x_of(t), plot_bottom + 17, _fmt_t(t), role="muted", anchor="middle"))
    svg.raw(svg.line(X0, plot_bottom, X1, plot_bottom, role="muted"))
    svg.raw(svg.text((X0 + X1) / 2, plot_bottom + 36, "seconds since the start (linear)", role="muted",
                     anchor="middle", italic=True))

    if ends:  # where the TIME_WAIT count should fall: the union of the predicted bands
        lo, hi = min(e["end_min_s"] for e in ends), max(e["end_max_s"] for e in ends)
        svg.raw(svg.rect(x_of(lo), plot_top, max(x_of(hi) - x_of(lo), 2), PLOT_H, "band", fill_opacity=0.14))
    if not samples:
        svg.raw(svg.text((X0 + X1) / 2, (plot_top + plot_bottom) / 2, "no samples recorded", role="muted",
                         anchor="middle", size=13))
    for i, state in reversed(list(enumerate(states))):  # TIME_WAIT, the story, drawn last: on top
        svg.raw(svg.el("path", f"<title>{esc(state)}: up to {peak[state]} entries</title>",
                       d=_step_path(samples, state, x_of, y_of), fill="none", stroke_width=2.5,
                       stroke_dasharray=DASHES[i % len(DASHES)], stroke_linejoin="round", data_role="count-line",
                       data_state=state, **svg.paint(f"state:{state}", "stroke")))

    if groups:
        svg.raw(svg.text(20, panel_top, panel_head))
        for j, group in enumerate(groups):
            _row(svg, group, rows_top + ROW_H * j + ROW_H / 2, x_of, len(ends) > MAX_ROWS)
        svg.raw(svg.text(20, rows_top + ROW_H * len(groups) + 22, _summary(ends), role="muted"))
    return svg.render()


def _step_path(samples: list[dict], state: str, x_of, y_of) -> str:
    """A step line that leaves the zero line alone: only where the count is above zero, and the rises
    and falls to and from it, so five states at zero do not pile up on the axis."""
    d, prev = [], 0
    for j, sample in enumerate(samples):
        n = sample["counts"].get(state, 0)
        x = x_of(sample["t_s"])
        if n != prev:
            d.append(f"M{x:.1f} {y_of(prev):.1f}V{y_of(n):.1f}")
        if n > 0:
            x_next = x_of(samples[j + 1]["t_s"]) if j + 1 < len(samples) else x + 3
            d.append(f"M{x:.1f} {y_of(n):.1f}H{x_next:.1f}")
        prev = n
    return "".join(d) or f"M{X0} {y_of(0):.1f}"


def _legend_layout(states: list[str], peak: dict):
    x, row = 20.0, 0
    for i, state in enumerate(states):
        label = f"{state} (max {peak[state]})"
        w = 40 + text_width(label, FONT_PX) + 20
        if x + w > WIDTH - 10:
            x, row = 20.0, row + 1
        yield i, state, label, x, row
        x += w


def _legend_rows(states: list[str], peak: dict) -> int:
    return 1 + max((row for *_, row in _legend_layout(states, peak)), default=0)


def _legend(svg: Svg, states: list[str], peak: dict) -> None:
    for i, state, label, x, row in _legend_layout(states, peak):
        y = 56 + 22 * row
        svg.raw(svg.line(x, y - 4, x + 32, y - 4, role=f"state:{state}", width=2.5, dash=DASHES[i % len(DASHES)]))
        svg.raw(svg.text(x + 38, y, label))


def _groups(ends: list[dict]) -> list[list[dict]]:
    """One row per entry, or at most MAX_ROWS groups of entries with neighbouring predicted ends."""
    ordered = sorted(ends, key=lambda e: (e["end_min_s"], e["key"]))
    if len(ordered) <= MAX_ROWS:
        return [[e] for e in ordered]
    size = -(-len(ordered) // MAX_ROWS)
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def _row(svg: Svg, group: list[dict], y: float, x_of, grouped: bool) -> None:
    first = min(e["from_s"] for e in group)
    lo, hi = min(e["end_min_s"] for e in group), max(e["end_max_s"] for e in group)
    gone = [e["vanished_s"] for e in group if e["vanished_s"] is not None]
    if grouped:
        label = f"{len(group)} entries"
    else:
        label = group[0]["key"].rsplit("->", 1)[-1]
        label = ":" + label.rsplit(":", 1)[-1] if ":" in label else label
    parts = [svg.el("title", esc(_row_text(group, first, lo, hi, gone, grouped)))]
    parts.append(svg.text(X0 - 6, y + 4, label, role="muted", anchor="end", size=11, mono=True))
    parts.append(svg.line(x_of(first), y, x_of(lo), y, role="muted", width=1.5))
    parts.append(svg.rect(x_of(lo), y - 5, max(x_of(hi) - x_of(lo), 2), 10, "band", stroke_role="band",
                          fill_opacity=0.45))
    if gone:
        if grouped and len(gone) > 1:
            parts.append(svg.line(x_of(min(gone)), y, x_of(max(gone)), y, role="fg", width=2))
        for t in sorted({min(gone), max(gone)}):
            x = x_of(t)
            parts.append(svg.el("polygon", points=f"{x:.1f},{y - 1:.1f} {x - 5:.1f},{y + 7:.1f} {x + 5:.1f},{y + 7:.1f}",
                                **svg.paint("fg", "fill")))
    svg.raw(svg.el("g", "".join(parts), data_role="predicted-end"))


def _row_text(group, first, lo, hi, gone, grouped) -> str:
    who = f"{len(group)} TIME_WAIT entries" if grouped else group[0]["key"]
    text = f"{who}: in TIME_WAIT from {first:.3f} s, predicted end {lo:.3f}-{hi:.3f} s"
    if gone:
        text += f", vanished by {min(gone):.3f} s" if len(gone) == 1 else f", vanished {min(gone):.3f}-{max(gone):.3f} s"
    return text + (f" ({len(group) - len(gone)} still present)" if len(gone) < len(group) else "")


def _summary(ends: list[dict]) -> str:
    gone = [e for e in ends if e["vanished_s"] is not None]
    text = f"{len(ends)} TIME_WAIT entr{'y' if len(ends) == 1 else 'ies'}; "
    if not gone:
        return text + "none vanished while watched."
    text += f"{'all ' if len(gone) == len(ends) else ''}{len(gone)}{'' if len(gone) == len(ends) else f' of {len(ends)}'}"
    lives = sorted(e["vanished_s"] - e["from_s"] for e in gone)
    span = f"{lives[0]:.1f} s" if lives[-1] - lives[0] < 0.05 else f"{lives[0]:.1f}-{lives[-1]:.1f} s"
    early = sum(1 for e in gone if e["vanished_s"] < e["end_min_s"] - 0.05)
    late = [e["vanished_s"] - e["end_max_s"] for e in gone if e["vanished_s"] > e["end_max_s"]]
    text += f" vanished while watched, {span} after entering TIME_WAIT; "
    text += f"{early} before the predicted end" if early else "none before the predicted end"
    if late:
        text += f"; {len(late)} seen gone up to {max(late):.2f} s after the band (the next poll came later)"
    return text + "."


def _desc(data: dict, states: list[str], peak: dict) -> str:
    samples = data["samples"]
    span = f"{samples[0]['t_s']:.3f} to {samples[-1]['t_s']:.3f} s" if samples else "no samples"
    out = [f"Step chart of entries per state over time ({span}, {len(samples)} changes)."]
    if states:
        out.append("Maximum per state: " + ", ".join(f"{s} {peak[s]}" for s in states) + ".")
    if data["predicted_ends"]:
        out.append(_summary(data["predicted_ends"]))
        ends = data["predicted_ends"]
        out.append(f"Predicted ends between {min(e['end_min_s'] for e in ends):.3f} and "
                   f"{max(e['end_max_s'] for e in ends):.3f} s.")
    return " ".join(out)
