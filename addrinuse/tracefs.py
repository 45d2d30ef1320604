"""Private tracefs instances: found, named after their process, removed on every exit path.

An instance is a directory under <tracefs>/instances with its own ring buffer, events and
filters, so concurrent readers never disturb each other or the global trace. Ours are named
addrinuse-<pid>-<starttime>-<n> (starttime: /proc/<pid>/stat field 22, clock ticks after boot):
with the pid it names one process, so an instance whose process is gone - or whose pid now
belongs to a newer process - is recognisably stale, and remove_stale() takes it away. A janitor
process removes an instance even when its owner is SIGKILLed. Needs root."""

from __future__ import annotations

import errno
import os
import re
import time

TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
PROBE_EVENT = "sock/inet_sock_set_state"  # the event every user of tracefs here needs
INSTANCE = re.compile(r"^addrinuse-(\d+)-(\d+)-(\d+)$")
JANITOR_GRACE_S = 2.0  # the owner's fds close during its exit; a busy instance is retried this long


def tracefs_root() -> str | None:
    for root in TRACEFS:
        if os.path.isdir(os.path.join(root, "instances")) and os.path.isdir(os.path.join(root, "events", PROBE_EVENT)):
            return root
    return None


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "the tracepoint needs root (tracefs is root-only)"
    if tracefs_root() is None:
        return "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing, or make tracefs)"
    return None


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks after boot): with the pid, names one process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[19])


def remove_stale(root: str | None = None) -> list[str]:
    """Remove instances named after a process that no longer exists (pid gone, or the same pid with
    another start time). Only names that match our pattern are touched. Returns the names removed."""
    root = root or tracefs_root()
    if root is None:
        return []
    removed = []
    for name in os.listdir(os.path.join(root, "instances")):
        m = INSTANCE.match(name)
        if not m or start_time(int(m[1])) == int(m[2]):
            continue
        try:
            os.rmdir(os.path.join(root, "instances", name))
            removed.append(name)
        except OSError:
            pass  # busy (someone reads it) or already gone: not ours to force
    return removed


def janitor(paths: list[str]) -> tuple[int, int]:
    """Fork a process that waits for its pipe to close (the owner exits, however it exits) and then
    removes the given instance directories. It ignores SIGINT/SIGTERM/SIGHUP so a signal to the
    whole process group cannot stop it before the owner's fds are closed. Returns (pid, write fd)."""
    import gc
    import signal

    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(r)
        return pid, w
    try:  # the child: syscalls only, never back into the caller's stack
        gc.disable()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, r)
        os.closerange(r + 1, 1 << 20)
        while os.read(r, 64):
            pass
        deadline = time.monotonic() + JANITOR_GRACE_S
        for path in paths:
            while True:
                try:
                    os.rmdir(path)
                except OSError as err:
                    if err.errno == errno.EBUSY and time.monotonic() < deadline:
                        time.sleep(0.01)
                        continue
                break
    finally:
        os._exit(0)
