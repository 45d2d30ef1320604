"""Turn successive snapshots of the connection table into events and lifetimes.

An entry is keyed by its 4-tuple and family. Polling cannot see the instant a state begins or
ends: an entry first seen at poll k appeared after poll k-1, and one last seen at poll m vanished
before poll m+1. So a lifetime is reported as the observed span (last seen - first seen) and the
bound (vanished poll - poll before first sighting); the truth lies between them.

At first sight, an entry whose kernel timer ends its state announces its lifetime as an interval:
TIME_WAIT lives its age + the time left on its timer, where the age is only known to lie between 0
and one poll period (or is 60 s - time left for an entry already there when the watch began), and
the timer wheel fires up to one granule late (estimate.wheel_slack_s: 2.048 s at HZ=250). Measured
against the truth (each entry's start bracketed by the client's close(), its end by a 0.01 s
sock_diag poller), 300 real entries per run: the old announcement (age taken as a whole poll
period) held 262/300 at 0.1 s polls and 215/300 at 1 s; this interval 300/300 and 300/300 (real
lifetimes 60.01-62.07 s), and on a machine at load 6 on 2 cores 600/600 at 0.1 s (595/600 while
its late margin was 0.1 s instead of estimate.LATENCY_S = 0.25 s). An orphaned FIN_WAIT2
announces only its latest end: the peer's FIN may end it sooner.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from addrinuse.conntable import TCP_TIMEWAIT_LEN_S, Entry


@dataclass
class Event:
    t: float
    event: str  # appeared | changed | vanished
    entry: Entry
    previous: str | None = None
    lifetime_s: float | None = None
    lifetime_max_s: float | None = None
    present_at_start: bool = False
    age_s: float | None = None  # with a kernel timer: how long the entry has been in its state (at most)
    age_from: str | None = None  # "watch" (bounded by the polls) or "kernel" (TCP_TIMEWAIT_LEN - time left)
    expected: tuple[float | None, float] | None = None  # lifetime in this state: (min or None, max)

    def to_dict(self) -> dict:
        e = self.entry
        out = {"t_s": round(self.t, 3), "event": self.event, "family": e.family, "laddr": e.laddr, "lport": e.lport,
               "raddr": e.raddr, "rport": e.rport, "state": e.state,
               "owners": [{"pid": o.pid, "name": o.name} for o in e.owners]}
        if self.previous is not None:
            out["previous"] = self.previous
        if e.expires_in_s is not None and self.event != "vanished":
            out["expires_in_s"] = round(e.expires_in_s, 3)
        if self.age_s is not None and self.event != "vanished":
            out.update(age_s=round(self.age_s, 3), age_from=self.age_from)
        if self.expected is not None:
            low, high = self.expected
            if low is not None:  # absent for an orphaned FIN_WAIT2: the peer's FIN may end it any time
                out["lifetime_expected_min_s"] = round(low, 3)
            out["lifetime_expected_max_s"] = round(high, 3)
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
    expected: tuple[float | None, float] | None = None  # announced at first sight


@dataclass
class Tracker:
    seen: dict = field(default_factory=dict)
    lifetimes: dict = field(default_factory=dict)  # state -> [observed lifetime]
    states_seen: dict = field(default_factory=dict)  # state -> count of entries that had it
    polls: int = 0
    last_poll: float | None = None
    last_start: float | None = None  # when the previous snapshot began (its dump walked after this)

    def update(self, entries: list[Entry], t: float, started: float | None = None) -> list[Event]:
        """Feed one snapshot finished at time t (seconds since the watch began); `started`: when it
        began. A state first seen now began after the previous dump walked past it, which is only
        known to be after that dump *began*: on a busy machine a dump can take a good part of a
        second, and ages bounded by the previous end would be too short."""
        events: list[Event] = []
        first_poll = self.last_poll is None
        before = t if first_poll else (self.last_start if self.last_start is not None else self.last_poll)
        current = {e.key: e for e in entries}
        for key, entry in current.items():
            old = self.seen.get(key)
            if old is None:
                event = self._aged(Event(t, "appeared", entry, present_at_start=first_poll), before)
                self.seen[key] = _Seen(entry, t, t, before, first_poll, event.expected)
                self._count(entry.state)
                events.append(event)
            elif old.entry.state != entry.state:
                event = self._aged(Event(t, "changed", entry, previous=old.entry.state), old.last)
                events.append(event)
                self._record(old, t)
                self.seen[key] = _Seen(entry, t, t, old.last, False, event.expected)
                self._count(entry.state)
            else:
                old.entry, old.last = entry, t
        for key in [k for k in self.seen if k not in current]:
            old = self.seen.pop(key)
            life, bound = self._record(old, t)
            events.append(Event(t, "vanished", old.entry, lifetime_s=life, lifetime_max_s=bound,
                                present_at_start=old.at_start, expected=old.expected))
        self.polls += 1
        self.last_poll = t
        self.last_start = started
        return events

    @staticmethod
    def _aged(event: Event, began_after: float) -> Event:
        """Age and announced lifetime of an entry whose kernel timer ends its state."""
        from addrinuse.estimate import fin_timeout_s, fin_wait2_left_s, wheel_slack_s

        entry = event.entry
        orphan = not entry.owners and not entry.inode
        if entry.expires_in_s is None or not orphan or entry.state not in ("TIME_WAIT", "FIN_WAIT2"):
            return event
        if not event.present_at_start:
            # The state began after the previous poll: its age lies between 0 and one poll period.
            age_min, age_max, event.age_from = 0.0, event.t - began_after, "watch"
        elif entry.state == "TIME_WAIT" and entry.timer == "timewait":
            # 60 s - time left, unless a retransmitted FIN restarted the timer (then it is older).
            age_min = age_max = max(0.0, TCP_TIMEWAIT_LEN_S - entry.expires_in_s)
            event.age_from = "kernel"
        else:
            return event
        event.age_s = age_max
        if entry.state == "TIME_WAIT":
            left = entry.expires_in_s
            event.expected = (age_min + left, age_max + left + wheel_slack_s(TCP_TIMEWAIT_LEN_S))
        else:  # orphaned FIN_WAIT2: its timers bound it; the peer's FIN may end it sooner
            left = fin_wait2_left_s(entry, fin_timeout_s())
            event.expected = (None, age_max + left + wheel_slack_s(max(left, 1.0)))
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
