"""Turn successive snapshots of the connection table into events and lifetimes.

An entry is keyed by its 4-tuple and family. Polling cannot see the instant a state begins or
ends: an entry first seen at poll k appeared after poll k-1, and one last seen at poll m vanished
before poll m+1. So a lifetime is reported as the observed span (last seen - first seen) and the
bound (vanished poll - poll before first sighting); the truth lies between them."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from addrinuse.conntable import TCP_TIMEWAIT_LEN_S, TIMER_WHEEL_SLACK_S, Entry


@dataclass
class Event:
    t: float
    event: str  # appeared | changed | vanished
    entry: Entry
    previous: str | None = None
    lifetime_s: float | None = None
    lifetime_max_s: float | None = None
    present_at_start: bool = False
    age_s: float | None = None  # with a kernel timer: how long the entry has been in its state
    age_from: str | None = None  # "watch" (bounded by the polls) or "kernel" (TCP_TIMEWAIT_LEN - time left)

    def to_dict(self) -> dict:
        e = self.entry
        out = {"t_s": round(self.t, 3), "event": self.event, "family": e.family, "laddr": e.laddr, "lport": e.lport,
               "raddr": e.raddr, "rport": e.rport, "state": e.state,
               "owners": [{"pid": o.pid, "name": o.name} for o in e.owners]}
        if self.previous is not None:
            out["previous"] = self.previous
        if e.expires_in_s is not None:
            out["expires_in_s"] = round(e.expires_in_s, 3)
            if self.age_s is not None:
                # A lifetime known as soon as the entry is seen: age so far + the kernel's time left,
                # as an interval: the timer wheel fires up to TIMER_WHEEL_SLACK_S late.
                expected = self.age_s + e.expires_in_s
                out.update(age_s=round(self.age_s, 3), age_from=self.age_from,
                           lifetime_expected_min_s=round(expected, 3),
                           lifetime_expected_max_s=round(expected + TIMER_WHEEL_SLACK_S, 3))
        if self.event == "appeared":
            out["present_at_start"] = self.present_at_start
        if self.event == "vanished":
            out["lifetime_s"] = round(self.lifetime_s, 3)
            out["lifetime_max_s"] = round(self.lifetime_max_s, 3)
            out["present_at_start"] = self.present_at_start
        return out


@dataclass
class _Seen:
    entry: Entry
    first: float  # first poll that saw it in its current state
    last: float
    before_first: float  # the poll before that (the state began after it)
    at_start: bool


@dataclass
class Tracker:
    seen: dict = field(default_factory=dict)
    lifetimes: dict = field(default_factory=dict)  # state -> [observed lifetime]
    states_seen: dict = field(default_factory=dict)  # state -> count of entries that had it
    polls: int = 0
    last_poll: float | None = None

    def update(self, entries: list[Entry], t: float) -> list[Event]:
        """Feed one snapshot taken at time t (seconds since the watch began)."""
        events: list[Event] = []
        first_poll = self.last_poll is None
        before = t if first_poll else self.last_poll
        current = {e.key: e for e in entries}
        for key, entry in current.items():
            old = self.seen.get(key)
            if old is None:
                self.seen[key] = _Seen(entry, t, t, before, first_poll)
                self._count(entry.state)
                events.append(self._aged(Event(t, "appeared", entry, present_at_start=first_poll), before))
            elif old.entry.state != entry.state:
                events.append(self._aged(Event(t, "changed", entry, previous=old.entry.state), old.last))
                self._record(old, t)
                self.seen[key] = _Seen(entry, t, t, old.last, False)
                self._count(entry.state)
            else:
                old.entry, old.last = entry, t
        for key in [k for k in self.seen if k not in current]:
            old = self.seen.pop(key)
            life, bound = self._record(old, t)
            events.append(Event(t, "vanished", old.entry, lifetime_s=life, lifetime_max_s=bound,
                                present_at_start=old.at_start))
        self.polls += 1
        self.last_poll = t
        return events

    @staticmethod
    def _aged(event: Event, began_after: float) -> Event:
        entry = event.entry
        if entry.expires_in_s is None:
            return event
        if not event.present_at_start:
            # The state began after the previous poll: its age is at most one poll period.
            event.age_s, event.age_from = event.t - began_after, "watch"
        elif entry.timer == "timewait" and entry.state == "TIME_WAIT":
            event.age_s, event.age_from = max(0.0, TCP_TIMEWAIT_LEN_S - entry.expires_in_s), "kernel"
        return event

    def _count(self, state: str) -> None:
        self.states_seen[state] = self.states_seen.get(state, 0) + 1

    def _record(self, old: _Seen, ended_by: float) -> tuple[float, float]:
        life, bound = old.last - old.first, ended_by - old.before_first
        if not old.at_start:  # a span that began before the watch is only a lower bound: keep it out
            self.lifetimes.setdefault(old.entry.state, []).append(life)
        return life, bound

    @property
    def live(self) -> int:
        return len(self.seen)

    def summary(self, t: float) -> dict:
        per_state = {}
        for state, count in sorted(self.states_seen.items()):
            row = {"entries": count}
            spans = self.lifetimes.get(state)
            if spans:
                row.update(min_s=round(min(spans), 3), median_s=round(statistics.median(spans), 3),
                           max_s=round(max(spans), 3), ended=len(spans))
            per_state[state] = row
        return {"t_s": round(t, 3), "event": "summary", "polls": self.polls, "still_present": self.live,
                "states": per_state}
