"""The kernel's own record of TCP state changes: tracepoint sock:inet_sock_set_state (tracefs).

Each change arrives with a timestamp, including the ones too short for any poller (LAST_ACK lasts
microseconds on loopback). A private trace instance (instances/addrinuse-PID-N) keeps concurrent runs
apart, a filter on the port keeps the buffer small, and trace_clock=mono makes its timestamps
comparable with time.monotonic(). The start of TIME_WAIT shows as FIN_WAIT2 -> CLOSE of the full
socket (the timewait socket that replaces it emits nothing); its expiry emits no event either.
Needs root (tracefs writes)."""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass

from addrinuse.errors import AddrinuseError

TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
EVENT = "events/sock/inet_sock_set_state"
LINE = re.compile(r"\s(\d+\.\d+): inet_sock_set_state: .*?sport=(\d+) dport=(\d+) .*?"
                  r"oldstate=TCP_(\w+) newstate=TCP_(\w+)")
_count = itertools.count()


@dataclass(frozen=True)
class Transition:
    t: float  # CLOCK_MONOTONIC seconds
    sport: int
    dport: int
    old: str
    new: str


def _name(state: str) -> str:
    return {"CLOSE": "CLOSED", "NEW_SYN_RECV": "SYN_RECV"}.get(state, state)


def tracefs_root() -> str | None:
    for root in TRACEFS:
        if os.path.isdir(os.path.join(root, "instances")) and os.path.isdir(os.path.join(root, EVENT)):
            return root
    return None


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "the tracepoint needs root (tracefs is root-only)"
    if tracefs_root() is None:
        return "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
    return None


class StateTracer:
    """with StateTracer(port) as tracer: ... ; tracer.transitions() -> [Transition]"""

    def __init__(self, port: int):
        reason = unavailable_reason()
        if reason:
            raise AddrinuseError(reason)
        self.port = port
        self.dir = os.path.join(tracefs_root(), "instances", f"addrinuse-{os.getpid()}-{next(_count)}")

    def _write(self, rel: str, text: str) -> None:
        with open(os.path.join(self.dir, rel), "w") as f:
            f.write(text)

    def __enter__(self) -> "StateTracer":
        os.mkdir(self.dir)
        try:
            self._write("trace_clock", "mono")
            self._write(f"{EVENT}/filter", f"sport == {self.port} || dport == {self.port}")
            self._write(f"{EVENT}/enable", "1")
        except BaseException:
            self.__exit__()
            raise
        return self

    def transitions(self) -> list[Transition]:
        with open(os.path.join(self.dir, "trace")) as f:
            text = f.read()
        return [Transition(float(m[1]), int(m[2]), int(m[3]), _name(m[4]), _name(m[5])) for m in LINE.finditer(text)]

    def __exit__(self, *exc) -> None:
        try:
            self._write(f"{EVENT}/enable", "0")
        except OSError:
            pass
        try:
            os.rmdir(self.dir)  # removing the instance frees its buffer
        except OSError:
            pass
