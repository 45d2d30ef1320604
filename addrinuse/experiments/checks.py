"""Expectations: what an [[expect]] table may say, and how each is checked against a step's result.

    ok       the step's socket call (or the server's start) succeeded: true / false
    error    the errno name it failed with, e.g. "EADDRINUSE"
    syscall  the call that failed: bind, listen, connect
    count    how many connection-table entries the step found (0 included)
    holder   "@step" (its pid) or "@step.child_pid": that pid holds one of the entries the step found
    between  [low, high]: the step's measured lifetime, in seconds
    order    TCP states in the order one end went through them ("gone" = left the table);
             needs `end` (active or passive) and takes `source` (poll, or trace for the tracepoint)

A check that cannot be observed on this machine (the tracepoint needs root) is `ok = None` with the
reason as its observed value: reported as skipped, never as a pass."""

from __future__ import annotations

from dataclasses import dataclass

from addrinuse.experiments.params import Count, Errno, Flag, Range, Ref, States, Text

CHECKS = {
    "ok": Flag(doc="the call or the server's start succeeded"),
    "error": Errno(doc="errno name, e.g. EADDRINUSE"),
    "syscall": Text(choices=("bind", "listen", "connect", "accept"), doc="the call that failed"),
    "count": Count(low=0, high=1_000_000, doc="entries the step found"),
    "holder": Ref(needs=("pid",), attr=True, doc="\"@step\" or \"@step.child_pid\": a pid holding one of the entries"),
    "between": Range(doc="[low, high] seconds: the step's lifetime_s"),
    "order": States(extra=("gone",), ordered=True, doc="states one end went through, in order"),
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
        else:
            got = result.get(key)
            out.append(Check(f"{expect.what}: {key}", want, got, got == want))
    return out


def _subsequence(want: list, got: list) -> bool:
    it = iter(got)
    return all(any(g == w for g in it) for w in want)
