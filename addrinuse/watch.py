"""The two loops behind `addrinuse watch`: polling the connection table (tracker.Tracker: entries
appear, change state, vanish, with lifetimes and kernel timers) and streaming the kernel tracepoint
(transitions.Transitions: every state change when the kernel makes it). Both end at the deadline or
on Ctrl-C / SIGTERM (entry.py raises them as KeyboardInterrupt) and return the summary dict; both
feed a figures.CountRecorder when given one. The caller renders: `started()` once the watch sees
every change from then on, `show(event_dict)` for each event."""

from __future__ import annotations

import time
from dataclasses import dataclass

SLICE_S = 1.0


@dataclass(frozen=True)
class Watch:
    port: int | None
    address: str | None  # numeric --host, or None
    states: tuple[str, ...]
    interval: float
    duration: float | None = None
    until_empty: bool = False

    def snapshot(self, source) -> list:
        """One snapshot; port, host and states are all chosen by the kernel (netlink) in one walk."""
        return source.snapshot(self.port, self.states or None, host=self.address)


def open_tracer(port: int | None, t0: float):
    """(a started tracepoint.Tracer, None), or (None, why not): not root, no tracefs, a refused
    set-up (the Tracer removes what it made). Close the Tracer on every path; its janitor removes
    the tracefs instance if this process is killed."""
    from addrinuse.errors import AddrinuseError
    from addrinuse.tracepoint import Tracer

    try:
        tracer = Tracer(("state",), ports=(port,) if port else (), t0=t0, keep=False)
    except AddrinuseError as err:  # TracefsUnavailable: its message is the reason
        return None, str(err)
    try:
        # Started with SIGINT/TERM/HUP blocked, its reader thread keeps them blocked: the kernel
        # then always delivers them to the main thread, whose wait for events they interrupt (a
        # signal taken by another thread would leave that wait asleep).
        with _Whole():
            tracer.__enter__()
    except AddrinuseError as err:  # it removed what it had made
        return None, str(err)
    except KeyboardInterrupt:  # arrived while it started: handled as the mask was lifted
        tracer.close()
        raise
    return tracer, None


class _Whole:
    """Signals held while one event is counted and shown: a Ctrl-C or SIGTERM lands between two
    lines, never inside one (half a JSON line before the summary) nor between its count and its
    line (a summary counting a change nobody saw). entry.py's handlers run once it is released."""

    SIGNALS = None

    def __enter__(self):
        import signal

        if _Whole.SIGNALS is None:
            _Whole.SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        self.old = signal.pthread_sigmask(signal.SIG_BLOCK, _Whole.SIGNALS)

    def __exit__(self, *exc):
        import signal

        signal.pthread_sigmask(signal.SIG_SETMASK, self.old)


def _due(began: float, interval: float, k: int, duration: float | None) -> float:
    """The period is held: poll k is due at began + k * interval, whatever a poll cost; one that
    overran is not made up for by a burst (the next is due at the next whole period)."""
    due = began + k * interval
    while due < time.monotonic() - interval:
        due += interval
    return min(due, began + duration) if duration else due


def poll(w: Watch, source, began: float, started, show, recorder=None) -> dict:
    from addrinuse.tracker import Tracker

    tracker = Tracker()
    try:
        entries = w.snapshot(source)
        started()  # after the first snapshot: from then on, every change is seen
        k = 0
        while True:
            now = time.monotonic() - began
            if recorder is not None:
                recorder.add(now, entries)
            with _Whole():
                for ev in tracker.update(entries, now):
                    show(ev.to_dict())
            if (w.until_empty and tracker.live == 0) or (w.duration and now >= w.duration):
                break
            k += 1
            time.sleep(max(0.0, _due(began, w.interval, k, w.duration) - time.monotonic()))
            entries = w.snapshot(source)
    except KeyboardInterrupt:
        pass
    return {**tracker.summary(time.monotonic() - began), "source": "poll"}


def trace(w: Watch, tracer, began: float, started, show, recorder=None, source=None) -> dict:
    """The tracepoint's changes, filtered by --host (either end's address, as `table` does) and
    --state (a change into or out of one). With a recorder, `source` is sampled every interval for
    it: the tracepoint cannot say when TIME_WAIT ends."""
    from collections import Counter

    from addrinuse.conntable.match import same_address
    from addrinuse.transitions import Transitions, wanted

    stream, entered, kinds = Transitions(), Counter(), Counter()
    end = began + w.duration if w.duration else None
    sample = began if recorder is not None else None
    try:
        started()  # the instance is live: every change from now on is in its ring buffer
        while end is None or time.monotonic() < end:
            if sample is not None and time.monotonic() >= sample:
                recorder.add(time.monotonic() - began, w.snapshot(source))
                sample = _due(began, w.interval, int((time.monotonic() - began) / w.interval) + 1, None)
            # A wait of at most SLICE_S: a signal is acted on within it whatever thread took it.
            deadline = min(t for t in (end, sample, time.monotonic() + SLICE_S) if t is not None)
            for event in tracer.events(deadline=deadline):
                if w.address is not None and not (same_address(w.address, event.laddr)
                                                  or same_address(w.address, event.raddr)):
                    continue
                for t in stream.feed(event):
                    if wanted(t, w.states):
                        with _Whole():
                            kinds[t.event if t.event == "handoff" else t.source] += 1
                            if t.event != "handoff":
                                entered[t.state] += 1
                            show(t.to_dict())
                if sample is not None and time.monotonic() >= sample:
                    break
    except KeyboardInterrupt:
        pass
    if recorder is not None:
        recorder.add(time.monotonic() - began, w.snapshot(source))
    return {"t_s": round(time.monotonic() - began, 3), "event": "summary", "source": "trace",
            "transitions": kinds["trace"] + kinds["inferred"], "inferred": kinds["inferred"],
            "handoffs": kinds["handoff"], "lost": tracer.lost(),
            "states": {s: {"entries": n} for s, n in sorted(entered.items())}}
