"""Inputs for the figures from what the project observes today.

closeseq_to_sequence: the close-sequence experiment's result (addrinuse.closeseq) as the sequence
shape. CountRecorder: successive connection-table snapshots (what `watch` polls) as the counts shape."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _trace_time(steps: list[dict], old: str | None, new: str) -> float | None:
    return next((s["t_s"] for s in steps if s["new"] == new and old in (None, s["old"])), None)


def _folded(active: list[dict], passive: list[dict]) -> list[dict]:
    """The active end's steps in closeseq's format: the FIN_WAIT2 -> CLOSED hand-off folded into the
    FIN_WAIT2 step's handoff_s, TIME_WAIT a step of source "inferred" at the peer's FIN. Runs recorded
    before closeseq folded it themselves (docs/figures/close-sequence.json) carry the raw hand-off."""
    out = [dict(step) for step in active]
    for i, step in enumerate(out):
        if (step["old"], step["new"]) != ("FIN_WAIT2", "CLOSED") or not i:
            continue
        fin_out = _trace_time(passive, "CLOSE_WAIT", "LAST_ACK")
        if fin_out is not None and fin_out < step["t_s"]:  # B's FIN came first: the hand-off starts TIME_WAIT
            out[i] = {**step, "new": "TIME_WAIT"}
            break
        out[i - 1]["handoff_s"] = step["t_s"]
        del out[i]
        if fin_out is not None:  # B's FIN after the hand-off starts TIME_WAIT
            out.insert(i, {"old": "FIN_WAIT2", "new": "TIME_WAIT", "t_s": fin_out, "source": "inferred"})
        break
    return out


def closeseq_to_sequence(result: dict, title: str | None = None) -> dict:
    """The sequence shape for one run of closeseq.run_close_sequence().

    With the kernel tracepoint (root): every transition at its tracepoint time, and the segments
    inferred from the transitions they cause (there is no packet capture). Two kernel facts shape it:
    - FIN_WAIT2 -> CLOSED of the active end's full socket is the hand-off to its timewait socket, not
      a state change of the connection: closeseq folds it into the FIN_WAIT2 step's handoff_s (drawn
      in that state's tooltip). TIME_WAIT begins when the peer's FIN arrives, and the timewait socket
      emits no tracepoint (tcp_time_wait(), inet_twsk_hashdance): closeseq gives it as a step of
      source "inferred" at the peer's CLOSE_WAIT -> LAST_ACK, and the figure brackets it by the
      peer's own events: after its FIN left, before the ACK that answers that FIN arrived back
      (LAST_ACK -> CLOSED), since the timewait socket sends that ACK.
    - The active end's FIN is queued behind data the peer has not read (a zero window), so FIN_WAIT1
      begins at close() and the FIN reaches the peer only when it has read everything: the FIN is
      drawn when it arrives (ESTABLISHED -> CLOSE_WAIT), not when close() queued it.
    Without the tracepoint: each state seen by the poller, bracketed by the last poll of the state
    before it and the first poll that saw it, and no segments (polling cannot tell when one was sent).
    """
    host = result.get("host", "127.0.0.1")
    ends = [{"id": "active", "label": f"A {_endpoint(host, result['port'])} (server's side, closes first)"},
            {"id": "passive", "label": f"B {_endpoint(host, result['client_port'])} (client, closes second)"}]
    trace = result.get("trace")
    out = {"title": title or f"close-sequence: one connection to port {result['port']} closed step by step",
           "ends": ends, "states": [], "segments": [], "notes": []}
    if trace is None:
        out["states"] = _poll_states(result)
        out["notes"].append(f"No segments: the kernel tracepoint was unavailable here "
                            f"[{result.get('trace_unavailable') or 'no reason given'}]; states seen by polling "
                            f"every {result.get('interval_s', 0) * 1000:g} ms.")
        return out
    passive = trace.get("passive", [])
    active = _folded(trace.get("active", []), passive)
    fin_out, ack_back = _trace_time(passive, "CLOSE_WAIT", "LAST_ACK"), _trace_time(passive, "LAST_ACK", "CLOSED")
    for end, steps in (("active", active), ("passive", passive)):
        for step in steps:
            state = {"end": end, "state": step["new"], "t_s": step["t_s"], "t_max_s": None,
                     "source": step.get("source", "trace")}
            if step.get("handoff_s") is not None:
                state["handoff_t_s"] = step["handoff_s"]
            if state["source"] == "inferred" and step["new"] == "TIME_WAIT" and ack_back is not None \
                    and ack_back > step["t_s"]:
                state["t_max_s"] = ack_back
            out["states"].append(state)
    handoff = next((s["handoff_s"] for s in active if s.get("handoff_s") is not None), None)
    if handoff is not None and not any(s["new"] == "TIME_WAIT" for s in active):
        # Handed off, but B's FIN was not traced: the poller's TIME_WAIT, bracketed by its polls.
        out["states"] += [s for s in _poll_states(result) if s["end"] == "active" and s["state"] == "TIME_WAIT"]
    fin_in, fin_acked = _trace_time(passive, "ESTABLISHED", "CLOSE_WAIT"), _trace_time(active, "FIN_WAIT1", "FIN_WAIT2")
    if fin_in is not None:
        out["segments"].append({"from": "active", "to": "passive", "label": "FIN (after the queued data)",
                                "t_s": fin_in, "t_arrive_s": fin_in, "kind": "normal"})
        if fin_acked is not None:
            out["segments"].append({"from": "passive", "to": "active", "label": "ACK", "t_s": fin_in,
                                    "t_arrive_s": fin_acked, "kind": "normal"})
    if fin_out is not None:
        out["segments"].append({"from": "passive", "to": "active", "label": "FIN", "t_s": fin_out,
                                "t_arrive_s": None, "kind": "normal"})
        if ack_back is not None:  # drawn at its arrival: it left within the microseconds before
            out["segments"].append({"from": "active", "to": "passive", "label": "ACK", "t_s": ack_back,
                                    "t_arrive_s": ack_back, "kind": "normal"})
    out["notes"].append("Segments are inferred from the state changes they cause (no packet capture). "
                        "A's TIME_WAIT began when B's FIN arrived: between B's FIN leaving and A's ACK "
                        "reaching B (the timewait socket emits no tracepoint: inferred).")
    if handoff is not None:
        out["notes"].append(f"A's socket was handed to a timewait socket at {handoff:.6f} s, when its FIN was "
                            f"ACKed (the tracepoint's FIN_WAIT2 -> CLOSE); it stayed in FIN_WAIT2 until B's FIN.")
    return out


def _poll_states(result: dict) -> list[dict]:
    states = []
    for end in ("active", "passive"):
        before = None  # the last poll of the previous state: this one began after it
        for seen in result["poll"][end]:
            name = "CLOSED" if seen["state"] == "gone" else seen["state"]
            if before is None:  # the first state seen: no earlier poll bounds it here
                states.append({"end": end, "state": name, "t_s": seen["first_s"], "t_max_s": None, "source": "poll"})
            else:
                states.append({"end": end, "state": name, "t_s": before, "t_max_s": seen["first_s"],
                               "source": "poll"})
            before = seen["last_s"]
    return states


def _get(entry, name: str):
    return entry[name] if isinstance(entry, dict) else getattr(entry, name)


class CountRecorder:
    """The counts shape from successive snapshots: feed `add(t_s, entries)` once per poll (entries are
    conntable Entry objects or their dicts), then `to_dict()`.

    Samples are kept only when a count changes (plus the last poll), so an hour of polling costs what
    its changes cost. For each TIME_WAIT entry the kernel's predicted end is an interval: with a timer
    (sock_diag), seen + expires_in_s to that + the timer wheel's slack; a timer that jumps back later
    (a retransmitted FIN restarts the 60 s, tcp_timewait_state_process) moves the prediction. Without
    timers (psutil): 60 s after the entry appeared, bracketed by the poll before. from_s is when it
    entered TIME_WAIT (negative: before the first poll); vanished_s is the first poll that no longer
    saw the entry (null: still present at the last poll)."""

    def __init__(self, port: int | None = None, title: str | None = None):
        self.port, self.title = port, title
        self.samples: list[dict] = []
        self._last: tuple[float, dict] | None = None
        self._ends: list[dict] = []
        self._live: dict[str, dict] = {}  # key -> its predicted_ends row while it is present
        self._prev_t: float | None = None

    def add(self, t_s: float, entries: Iterable) -> None:
        from addrinuse.conntable import TCP_TIMEWAIT_LEN_S, TIMER_WHEEL_SLACK_S

        entries = list(entries)
        counts = dict(sorted(Counter(_get(e, "state") for e in entries).items()))
        if self._last is None or counts != self._last[1]:
            self.samples.append({"t_s": round(t_s, 3), "counts": counts})
        self._last = (t_s, counts)
        present = set()
        for e in entries:
            if _get(e, "state") != "TIME_WAIT":
                continue
            key = f"{_endpoint(_get(e, 'laddr'), _get(e, 'lport'))}->{_endpoint(_get(e, 'raddr'), _get(e, 'rport'))}"
            present.add(key)
            left = _get(e, "expires_in_s")
            if left is not None:  # the kernel's own timer
                began, lo, hi = t_s + left - TCP_TIMEWAIT_LEN_S, t_s + left, t_s + left + TIMER_WHEEL_SLACK_S
            elif self._prev_t is None:  # there before the first poll, no timer: it began up to 60 s ago
                began, lo, hi = t_s, t_s, t_s + TCP_TIMEWAIT_LEN_S + TIMER_WHEEL_SLACK_S
            else:  # it began after the previous poll
                began, lo = self._prev_t, self._prev_t + TCP_TIMEWAIT_LEN_S
                hi = t_s + TCP_TIMEWAIT_LEN_S + TIMER_WHEEL_SLACK_S
            row = self._live.get(key)
            if row is None:
                row = {"key": key, "from_s": round(began, 3), "end_min_s": round(lo, 3),
                       "end_max_s": round(hi, 3), "vanished_s": None}
                self._live[key] = row
                self._ends.append(row)
            elif left is not None and left > 0.5 and lo > row["end_min_s"] + 0.1:
                # The timer restarted (a retransmitted FIN: >= 200 ms later). An expired timer reads 0
                # until the wheel fires, so only a timer with time left can have restarted.
                row["end_min_s"], row["end_max_s"] = round(lo, 3), round(hi, 3)
        for key in list(self._live.keys() - present):
            self._live.pop(key)["vanished_s"] = round(t_s, 3)
        self._prev_t = t_s

    def to_dict(self) -> dict:
        samples = list(self.samples)
        if self._last is not None and samples and self._last[0] > samples[-1]["t_s"]:
            samples.append({"t_s": round(self._last[0], 3), "counts": self._last[1]})
        title = self.title or (f"Entries per state on port {self.port}" if self.port else "Entries per state")
        return {"title": title, "port": self.port, "samples": samples, "predicted_ends": list(self._ends)}


def _outcome(probe: dict | None) -> str | None:
    if not probe:
        return None
    return "ok" if probe.get("ok") else f"{probe.get('syscall')}() {probe.get('error')}"


def demo_report(demo: dict, duration_s: float | None = None, figures: list[dict] | None = None) -> dict:
    """`demo --report DIR`: the demo's result (DemoResult.to_dict()) as an experiment report dict.

    Expected values are Linux's (inet_bind_conflict): SO_REUSEADDR passes TIME_WAIT entries only when
    the old listener and the new socket both set it. `figures` (e.g. a CountRecorder's counts shape
    with "kind": "counts") are drawn in the report."""
    plain, alone = _outcome(demo.get("plain")), _outcome(demo.get("reuseaddr"))
    c_plain, c_both = _outcome(demo.get("control_plain")), _outcome(demo.get("control_reuseaddr"))
    checks = [
        {"what": "server-side close leaves TIME_WAIT entries on the server's port", "expected": "at least 1",
         "observed": demo.get("time_wait"), "ok": bool(demo.get("time_wait"))},
        {"what": "restart without SO_REUSEADDR", "expected": "bind() EADDRINUSE", "observed": plain,
         "ok": None if plain is None else plain == "bind() EADDRINUSE"},
        {"what": "restart with SO_REUSEADDR, old server without it", "expected": "bind() EADDRINUSE",
         "observed": alone, "ok": None if alone is None else alone == "bind() EADDRINUSE"},
        {"what": "old server had SO_REUSEADDR: restart without it", "expected": "bind() EADDRINUSE",
         "observed": c_plain, "ok": None if c_plain is None else c_plain == "bind() EADDRINUSE"},
        {"what": "old server had SO_REUSEADDR: restart with it", "expected": "ok", "observed": c_both,
         "ok": None if c_both is None else c_both == "ok"},
    ]
    free = (demo.get("free_in") or {}).get("min_s")
    return {"name": "demo", "passed": all(c["ok"] is not False for c in checks), "skipped": None,
            "purpose": f"Reproduce EADDRINUSE: {demo.get('clients')} clients of a server on "
                       f"{_endpoint(demo.get('host', '?'), demo.get('port', 0))} that closes first, then a restart.",
            "duration_s": duration_s, "checks": checks, "figures": figures or [],
            "explain": "Whoever sends the first FIN ends in TIME_WAIT for 60 s (TCP_TIMEWAIT_LEN). A server that "
                       "closes its connections first leaves those entries on its own port, and a new listener "
                       "there fails in bind() while they exist, unless the old and the new socket both set "
                       "SO_REUSEADDR." + (f" When the demo ended, its kernel timers said the port frees in {free:.1f} s."
                                          if isinstance(free, (int, float)) else "")}
