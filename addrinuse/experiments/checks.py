"""Expectations: what an [[expect]] table may say, and how each is checked against a step's result.

    ok       the step's socket call (or the server's start) succeeded: true / false
    error    the errno name it failed with, e.g. "EADDRINUSE"
    syscall  the call that failed: bind, listen, connect
    count    how many connection-table entries the step found (0 included)
    holder   "@step" (its pid) or "@step.child_pid": that pid holds one of the entries the step found
    between  [low, high]: the step's measured lifetime, in seconds
    order    TCP states in the order one end went through them ("gone" = left the table);
             needs `end` (active or passive) and takes `source` (poll, or trace for the tracepoint)
    equals   {key: value}: named values of the step's result, each equal to its value
    within   {key: [low, high]}: named numbers of the step's result, each within its range
    includes {key: [items]}: named lists of the step's result, each holding every item
    excludes {key: [items]}: named lists of the step's result, none holding any of the items
The last four name any value of a result by its key ("." into nested tables, list items by
index: `within.rounds.0.late_s = [0, 0.5]`), one check per key: what a step measures is checked
without a check kind of its own. A key the result lacks fails; a key under a table that says
"skipped": reason (the kernel lacks what that part needs) is a skip with that reason.

A check that cannot be observed on this machine (the tracepoint needs root) is `ok = None` with the
reason as its observed value: reported as skipped, never as a pass."""

from __future__ import annotations

from dataclasses import dataclass

from addrinuse.experiments.params import (Count, Errno, Flag, Paths, Range, Ref, States, Text, any_value,
                                          number_range, value_list)

CHECKS = {
    "ok": Flag(doc="the call or the server's start succeeded"),
    "error": Errno(doc="errno name, e.g. EADDRINUSE"),
    "syscall": Text(choices=("bind", "listen", "connect", "accept"), doc="the call that failed"),
    "count": Count(low=0, high=1_000_000, doc="entries the step found"),
    "holder": Ref(needs=("pid",), attr=True, doc="\"@step\" or \"@step.child_pid\": a pid holding one of the entries"),
    "between": Range(doc="[low, high] seconds: the step's lifetime_s"),
    "order": States(extra=("gone",), ordered=True, doc="states one end went through, in order"),
    "equals": Paths(any_value, doc="{key: value}: values of the step's result, each equal to its value"),
    "within": Paths(number_range, doc="{key: [low, high]}: numbers of the step's result, each in its range"),
    "includes": Paths(value_list, doc="{key: [items]}: lists of the step's result, each holding every item"),
    "excludes": Paths(value_list, doc="{key: [items]}: lists of the step's result, none holding any item"),
}
EXPECT_KEYS = {
    "step": Text(doc="the id of the step whose result is checked"),
    "what": Text(nonempty=True, doc="what the check shows, in words"),
    **CHECKS,
    "end": Text(choices=("active", "passive"), doc="which end `order` is about"),
    "source": Text(choices=("poll", "trace"), doc="where `order` comes from"),
}


@dataclass
class Check:
    what: str
    expected: object
    observed: object
    ok: bool | None  # None: could not be observed here (the observed field says why)

    def to_dict(self) -> dict:
        return {"what": self.what, "expected": self.expected, "observed": self.observed, "ok": self.ok}


def check(expect, result: dict, value) -> list[Check]:
    """Every check of one [[expect]] against its step's result; `value(ref)` resolves "@step.key"."""
    from addrinuse.closeseq import lane_order

    out = []
    for key, want in expect.checks.items():
        if key == "holder":
            pid = value(want if "." in want else want + ".pid")
            pids = result.get("pids", [])
            out.append(Check(f"{expect.what}: pid holding it", pid, pids, pid is not None and pid in pids))
        elif key == "between":
            got = result.get("lifetime_s")
            out.append(Check(f"{expect.what}: lifetime (s)", want, got, got is not None and want[0] <= got <= want[1]))
        elif key == "order":
            if expect.source == "trace" and result.get("trace") is None:
                out.append(Check(f"{expect.what} (tracepoint)", want,
                                 f"skipped: {result.get('trace_unavailable')}", None))
                continue
            got = lane_order(result, expect.end, expect.source)
            out.append(Check(f"{expect.what} ({expect.source})", want, got, _subsequence(want, got)))
        elif key in KEYED:
            qualifier = "" if key == "equals" else f" {key}"  # "delay_ms within: expected [a, b]"
            out += [_keyed(key, f"{expect.what}: {path}{qualifier}", expected, result, path)
                    for path, expected in want.items()]
        else:
            got = result.get(key)
            out.append(Check(f"{expect.what}: {key}", want, got, got == want))
    return out


KEYED = ("equals", "within", "includes", "excludes")
_MISSING = object()


@dataclass(frozen=True)
class _Skipped:
    reason: str


def lookup(result, path: str):
    """The value at a dotted path ("rounds.0.late_s") of a result; _MISSING, or _Skipped(reason)
    when the path leads under a table that says why it was not measured."""
    value = result
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and isinstance(value.get("skipped"), str):
            return _Skipped(value["skipped"])
        else:
            return _MISSING
    return value


def _keyed(kind: str, what: str, want, result: dict, path: str) -> Check:
    got = lookup(result, path)
    if got is _MISSING:
        return Check(what, want, None, False)  # a value the step did not give never passes
    if isinstance(got, _Skipped):
        return Check(what, want, f"skipped: {got.reason}", None)
    if kind == "equals":
        ok = got == want and isinstance(got, bool) == isinstance(want, bool)  # true is not 1
    elif kind == "within":
        ok = isinstance(got, (int, float)) and not isinstance(got, bool) and want[0] <= got <= want[1]
    elif kind == "includes":
        ok = isinstance(got, list) and all(w in got for w in want)
    else:
        ok = isinstance(got, list) and not any(w in got for w in want)
    return Check(what, want, got, ok)


def _subsequence(want: list, got: list) -> bool:
    it = iter(got)
    return all(any(g == w for g in it) for w in want)
