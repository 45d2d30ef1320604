"""What a lab experiment saw, in one shape figures can be drawn from.

- Poller: one end's table (sock_diag in its namespace) polled in a thread; every 4-tuple's phases
  (state, first and last poll that saw it, the poll before) and the kernel timer's time left at
  each poll, so a TIME_WAIT timer that restarts shows as a jump back up.
- Sequence: the two-lane record {"title", "ends", "states", "segments"} plus states_seen. States
  come from the tracepoint (source "trace"), from polls ("poll": t_s is the last poll before it
  was seen, t_max_s the first poll that saw it) or from the peer's events ("inferred": the start of
  TIME_WAIT, which no event marks - see addrinuse.tracelane.lane).
- Conn: one connection's two 4-tuples, and its events picked out of the tracer's history."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from addrinuse.tracelane import lane
from addrinuse.tracepoint import TraceEvent

SEGMENT_KINDS = ("normal", "retransmit", "lost", "rst")


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


@dataclass
class Phase:
    state: str
    before_first: float  # the poll before the first sighting (the state began after it)
    first: float
    last: float
    timer: str | None = None
    expires: list = field(default_factory=list)  # [(poll start, poll end, expires_in_s)] at each poll


class Poller(threading.Thread):
    """Polls end.table(port) every `interval` s until stop(). phases[key] -> [Phase];
    gone[key] -> (last poll that had it, first poll without it)."""

    def __init__(self, end, port: int = 0, interval: float = 0.01):
        super().__init__(daemon=True, name=f"poll-{end.name}")
        self.end, self.port, self.interval = end, port, interval
        self.phases: dict[tuple, list[Phase]] = {}
        self.gone: dict[tuple, tuple[float, float]] = {}
        self.polls = 0
        self._halt = threading.Event()
        self.started: float | None = None
        self.last_start: float | None = None  # start of the last completed poll
        self.error: Exception | None = None

    def run(self) -> None:
        self.started = time.monotonic()  # a state seen at the first poll began after this
        try:
            while not self._halt.is_set():
                self.poll()
                self._halt.wait(self.interval)
        except Exception as err:  # reported by stop(); the experiment must not hang on it
            self.error = err

    def poll(self) -> None:
        """One dump. It happened at some instant between `start` and `now`: a state first seen
        began after the previous dump's start, and before `now`."""
        start = time.monotonic()
        rows = self.end.table(self.port)
        now = time.monotonic()
        before = self.last_start if self.last_start is not None else self.started or start
        present = set()
        for row in rows:
            key = (row["laddr"], row["lport"], row["raddr"], row["rport"])
            present.add(key)
            self.gone.pop(key, None)
            phases = self.phases.setdefault(key, [])
            if not phases or phases[-1].state != row["state"]:
                phases.append(Phase(row["state"], before, now, now, row["timer"]))
            phases[-1].last = now
            if row["expires_in_s"] is not None:
                phases[-1].expires.append((start, now, row["expires_in_s"]))
        for key in self.phases.keys() - present - self.gone.keys():
            self.gone[key] = (self.phases[key][-1].last, now)
        self.last_start = start
        self.polls += 1

    def polled_after(self, mono: float) -> bool:
        """True once a whole poll has run after `mono` (its dump saw the table as of after it)."""
        return self.last_start is not None and self.last_start > mono

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        if self.error:
            raise self.error

    def states(self, key: tuple) -> list[str]:
        return [p.state for p in self.phases.get(key, [])]

    def phase(self, key: tuple, state: str) -> Phase | None:
        return next((p for p in self.phases.get(key, []) if p.state == state), None)


@dataclass
class Conn:
    """One connection between lab end a (client) and end b (server)."""

    a_addr: str
    a_port: int
    b_addr: str
    b_port: int

    @property
    def a_key(self) -> tuple:
        return (self.a_addr, self.a_port, self.b_addr, self.b_port)

    @property
    def b_key(self) -> tuple:
        return (self.b_addr, self.b_port, self.a_addr, self.a_port)

    def events(self, history: list[TraceEvent], side: str, kind: str | None = None,
               until: float | None = None) -> list[TraceEvent]:
        """This connection's events on one side (up to mono time `until`: a later connection may
        reuse the 4-tuple). A connecting socket has no port yet when it enters SYN_SENT
        (tcp_set_state runs before inet_hash_connect): that event is matched without it, the last
        such one before the connection's first other event."""
        key = self.a_key if side == "a" else self.b_key
        history = [e for e in history if until is None or e.mono <= until]
        out = [e for e in history if e.key == key and (kind is None or e.kind == kind)]
        if side == "a" and kind in (None, "state"):
            first = min((e.mono for e in out), default=float("inf"))
            syn = [e for e in history if e.kind == "state" and e.new_state == "SYN_SENT" and e.lport == 0
                   and (e.laddr, e.raddr, e.rport) == (key[0], key[2], key[3]) and e.mono <= first]
            out = syn[-1:] + out
        return sorted(out, key=lambda e: e.mono)

    def first(self, history, side: str, kind: str, new_state: str | None = None) -> TraceEvent | None:
        return next((e for e in self.events(history, side, kind)
                     if new_state is None or e.new_state == new_state), None)


class Sequence:
    def __init__(self, title: str, t0: float):
        self.title, self.t0 = title, t0
        self.ends: list[dict] = []
        self.states: list[dict] = []
        self.segments: list[dict] = []

    def t(self, mono: float | None) -> float | None:
        return None if mono is None else _r(mono - self.t0)

    def end(self, end_id: str, label: str) -> None:
        self.ends.append({"id": end_id, "label": label})

    def state(self, end: str, state: str, mono: float | None, source: str, max_mono: float | None = None,
              **extra) -> None:
        self.states.append({"end": end, "state": state, "t_s": self.t(mono), "t_max_s": self.t(max_mono),
                            "source": source, **extra})

    def segment(self, frm: str, to: str, label: str, mono: float | None, arrive: float | None = None,
                kind: str = "normal") -> None:
        assert kind in SEGMENT_KINDS, kind
        self.segments.append({"from": frm, "to": to, "label": label, "t_s": self.t(mono),
                              "t_arrive_s": self.t(arrive), "kind": kind})

    def trace_lane(self, end: str, own: list[TraceEvent], peer: list[TraceEvent], listen: TraceEvent | None = None,
                   timewait: bool = True, timewait_gone: float | None = None) -> dict[str, dict]:
        """Add one end's states from the tracepoint; returns {state: lane entry} (first of each)."""
        steps = lane(own, peer, timewait, timewait_gone)
        by_state: dict[str, dict] = {}
        for step in steps:
            mono = step["mono"]
            if mono is None:  # the state before the first event
                if step["state"] != "LISTEN" or listen is None:
                    continue
                mono = listen.mono
            extra = {"handoff_t_s": self.t(step["handoff_mono"])} if "handoff_mono" in step else {}
            self.state(end, step["state"], mono, step["source"], **extra)
            by_state.setdefault(step["state"], {**step, "mono": mono})
        return by_state

    def poll_phase(self, end: str, phase: Phase | None) -> None:
        if phase is not None:
            self.state(end, phase.state, phase.before_first, "poll", phase.first)

    def result(self) -> dict:
        order = {"trace": 0, "inferred": 1, "poll": 2}
        states = sorted(self.states, key=lambda s: (s["t_s"] if s["t_s"] is not None else -1, order[s["source"]]))
        segments = sorted(self.segments, key=lambda s: s["t_s"] if s["t_s"] is not None else -1)
        seen = {s["state"] for s in states if s["source"] in ("trace", "poll")}
        return {"sequence": {"title": self.title, "ends": self.ends, "states": states, "segments": segments},
                "states_seen": [s for s in ALL_STATES if s in seen]}


ALL_STATES = ("LISTEN", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT",
              "CLOSING", "LAST_ACK", "TIME_WAIT", "CLOSED")
