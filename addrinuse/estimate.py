"""When a port frees, and what kind of answer that is.

Every time estimate says its kind, because the kernel gives different certainty per state:
  now          nothing holds the port's local side
  exact        only TIME_WAIT entries: each has a kernel timer (TCP_TIMEWAIT_LEN = 60 s), which the
               timer wheel fires up to TIMER_WHEEL_SLACK_S late, so the end is an interval
  upper_bound  kernel-held entries that can still turn into a fresh TIME_WAIT (an orphaned FIN_WAIT2
               whose peer has not closed: tcp_fin_timeout bounds the wait for the peer's FIN, and that
               FIN starts a new 60 s TIME_WAIT), or entries without timers (psutil backend)
  unknown      a live process holds an entry (LISTEN, ESTABLISHED, CLOSE_WAIT...): it ends when that
               process closes the socket or exits"""

from __future__ import annotations

from typing import Iterable, NamedTuple

from addrinuse.conntable import TCP_TIMEWAIT_LEN_S, TIMER_WHEEL_SLACK_S, Entry

KINDS = ("now", "exact", "upper_bound", "unknown")


class Estimate(NamedTuple):
    kind: str
    min_s: float | None  # earliest moment it can be free, seconds from now (None: unknown)
    max_s: float | None  # latest moment (None: unknown or unbounded)
    reason: str

    def to_dict(self) -> dict:
        r = lambda v: None if v is None else round(v, 3)  # noqa: E731
        return {"kind": self.kind, "min_s": r(self.min_s), "max_s": r(self.max_s), "reason": self.reason}


def fin_timeout_s() -> float:
    """net.ipv4.tcp_fin_timeout of the current network namespace (per-netns since Linux 4.x)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_fin_timeout") as f:
            return float(f.read())
    except (OSError, ValueError):
        return 60.0


def free_in(entries: Iterable[Entry]) -> Estimate:
    """The estimate for the entries that hold a port's local side (callers filter them)."""
    entries = list(entries)
    if not entries:
        return Estimate("now", 0.0, 0.0, "nothing holds the port")
    held = [e for e in entries if e.owners or e.inode]
    if held:
        e = held[0]
        who = f"pid {e.pid}" if e.pid else "a process"
        return Estimate("unknown", None, None, f"{who} holds a {e.state} socket on it")
    if any(e.expires_in_s is None for e in entries):
        return Estimate("upper_bound", 0.0, TCP_TIMEWAIT_LEN_S + fin_timeout_s() + TIMER_WHEEL_SLACK_S,
                        "no kernel timers with this backend")
    if all(e.state == "TIME_WAIT" for e in entries):
        left = max(e.expires_in_s for e in entries)
        return Estimate("exact", left, left + TIMER_WHEEL_SLACK_S, "TIME_WAIT timers")
    # An orphaned FIN_WAIT2 (timewait socket in substate FIN_WAIT2) waits at most its timer for the
    # peer's FIN; that FIN starts a fresh 60 s TIME_WAIT (tcp_timewait_state_process).
    low = max(e.expires_in_s for e in entries)
    high = max(e.expires_in_s + (TCP_TIMEWAIT_LEN_S if e.state == "FIN_WAIT2" else 0.0) for e in entries)
    return Estimate("upper_bound", low, high + TIMER_WHEEL_SLACK_S,
                    "orphaned FIN_WAIT2: a fresh 60 s TIME_WAIT begins when the peer closes")
