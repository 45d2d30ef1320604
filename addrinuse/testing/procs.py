"""Processes read straight from /proc/PID/stat: state, session and start time.

A zombie has exited and closed its sockets, so it counts as dead: the state field says so, where
kill(pid, 0) would still succeed. The start time (field 22, clock ticks since boot) names one process
across pid reuse."""

from __future__ import annotations

import os
from typing import NamedTuple

DEAD_STATES = ("Z", "X", "x")


class ProcStat(NamedTuple):
    pid: int
    name: str
    state: str
    ppid: int
    session: int
    starttime: int


def stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    # comm may hold spaces and parentheses: it ends at the last ')'.
    head, _, tail = text.rpartition(")")
    fields = tail.split()
    try:
        return ProcStat(pid, head.partition("(")[2], fields[0], int(fields[1]), int(fields[3]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def alive(pid: int, starttime: int | None = None) -> bool:
    """Running (not a zombie), and still the process that started at `starttime` when given."""
    s = stat(pid)
    return s is not None and s.state not in DEAD_STATES and (starttime is None or s.starttime == starttime)


def session_members(sid: int) -> list[ProcStat]:
    """Living processes whose session id is `sid`. While any process is in that session the kernel
    keeps the number allocated (the session's struct pid is referenced, kernel/pid.c), so a session
    id equal to a pid we started names only processes descended from it, even after it died."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = stat(int(name))
            if s is not None and s.session == sid and s.state not in DEAD_STATES:
                out.append(s)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
