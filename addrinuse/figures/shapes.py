"""Validation of the figures' input shapes (dicts produced by experiments, the lab and watch).

A wrong shape is a producer's bug: it raises FigureInputError naming the field, never a KeyError."""

from __future__ import annotations

import math

from addrinuse.errors import FigureInputError

SEGMENT_KINDS = ("normal", "retransmit", "lost", "rst")
# Where a state's time comes from: the kernel tracepoint; inferred from the other end's tracepoint
# events (TIME_WAIT's start emits no event: addrinuse.tracelane.lane); a poll of the table.
STATE_SOURCES = ("trace", "inferred", "poll")


def number(figure: str, where: str, value, nullable: bool = False) -> float | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FigureInputError(figure, where, f"expected a finite number{' or null' if nullable else ''}, got {value!r}")
    return float(value)


def text(figure: str, where: str, value) -> str:
    if not isinstance(value, str):
        raise FigureInputError(figure, where, f"expected a string, got {value!r}")
    return value


def items(figure: str, data: dict, key: str) -> list[dict]:
    if not isinstance(data, dict):
        raise FigureInputError(figure, "input", f"expected an object, got {type(data).__name__}")
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise FigureInputError(figure, key, "expected a list of objects")
    return value


def sequence(data: dict) -> dict:
    """The sequence shape, checked; returns {title, ends, states, segments} with floats and defaults."""
    fig = "sequence"
    ends = items(fig, data, "ends")
    if not ends:
        raise FigureInputError(fig, "ends", "needs at least one end")
    ids = [text(fig, f"ends[{i}].id", e.get("id")) for i, e in enumerate(ends)]
    if len(set(ids)) != len(ids):
        raise FigureInputError(fig, "ends", f"end ids must be unique, got {ids}")

    def end(where: str, value) -> str:
        if value not in ids:
            raise FigureInputError(fig, where, f"{value!r} is not one of the ends {ids}")
        return value

    states = []
    for i, s in enumerate(items(fig, data, "states")):
        at = f"states[{i}]"
        t = number(fig, f"{at}.t_s", s.get("t_s"))
        t_max = number(fig, f"{at}.t_max_s", s.get("t_max_s"), nullable=True)
        if t_max is not None and t_max < t:
            raise FigureInputError(fig, f"{at}.t_max_s", f"{t_max} is before t_s {t}")
        source = s.get("source") or "poll"
        if source not in STATE_SOURCES:
            raise FigureInputError(fig, f"{at}.source", f"{source!r} is not one of {', '.join(STATE_SOURCES)}")
        states.append({"end": end(f"{at}.end", s.get("end")), "state": text(fig, f"{at}.state", s.get("state")),
                       "t_s": t, "t_max_s": t_max, "source": source,
                       # A FIN_WAIT2 whose full socket was handed to a timewait socket (still FIN_WAIT2).
                       "handoff_t_s": number(fig, f"{at}.handoff_t_s", s.get("handoff_t_s"), nullable=True)})
    segments = []
    for i, s in enumerate(items(fig, data, "segments")):
        at = f"segments[{i}]"
        kind = s.get("kind") or "normal"
        if kind not in SEGMENT_KINDS:
            raise FigureInputError(fig, f"{at}.kind", f"{kind!r} is not one of {', '.join(SEGMENT_KINDS)}")
        segments.append({"from": end(f"{at}.from", s.get("from")), "to": end(f"{at}.to", s.get("to")),
                         "label": text(fig, f"{at}.label", s.get("label")), "kind": kind,
                         "t_s": number(fig, f"{at}.t_s", s.get("t_s")),
                         "t_arrive_s": number(fig, f"{at}.t_arrive_s", s.get("t_arrive_s"), nullable=True)})
    return {"title": str(data.get("title") or "Sequence"), "states": states, "segments": segments,
            "ends": [{"id": i, "label": str(e.get("label") or i)} for i, e in zip(ids, ends)],
            "notes": [str(n) for n in data.get("notes") or []]}


def counts(data: dict) -> dict:
    """The counts shape, checked: {title, port, samples: [{t_s, counts}], predicted_ends: [...]}."""
    fig = "counts"
    samples = []
    for i, s in enumerate(items(fig, data, "samples")):
        c = s.get("counts")
        if not isinstance(c, dict):
            raise FigureInputError(fig, f"samples[{i}].counts", "expected an object {state: count}")
        samples.append({"t_s": number(fig, f"samples[{i}].t_s", s.get("t_s")),
                        "counts": {str(k): int(number(fig, f"samples[{i}].counts.{k}", v)) for k, v in c.items()}})
    samples.sort(key=lambda s: s["t_s"])
    ends = []
    for i, p in enumerate(items(fig, data, "predicted_ends")):
        at = f"predicted_ends[{i}]"
        lo, hi = number(fig, f"{at}.end_min_s", p.get("end_min_s")), number(fig, f"{at}.end_max_s", p.get("end_max_s"))
        if hi < lo:
            raise FigureInputError(fig, f"{at}.end_max_s", f"{hi} is before end_min_s {lo}")
        ends.append({"key": str(p.get("key", i)), "from_s": number(fig, f"{at}.from_s", p.get("from_s")),
                     "end_min_s": lo, "end_max_s": hi,
                     "vanished_s": number(fig, f"{at}.vanished_s", p.get("vanished_s"), nullable=True)})
    port = data.get("port")
    return {"title": str(data.get("title") or "Entries per state"), "samples": samples, "predicted_ends": ends,
            "port": port if isinstance(port, int) and not isinstance(port, bool) else None}
