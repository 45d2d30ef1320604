"""The launch protocol between the tool and each process it starts, so that no process of the tool
ever runs unrecorded, whatever kills the tool and when.

The child ties itself to its parent first: prctl(PR_SET_PDEATHSIG, SIGKILL), then getppid() against
the pid the parent passed, which closes the race of a parent that died before the prctl (the child
was re-parented already; prctl(2) on PR_SET_PDEATHSIG). It reports on a socketpair once it is ready
and waits for the parent's verdict: `adopt` (the parent has claimed its record on disk, so it may
outlive the parent: PDEATHSIG is dropped) or `keep` (a foreground job: it dies with the parent).
It acknowledges, so the parent returns only after the child has acted on the verdict. If the parent
dies before adopting it, the child dies too; if the parent gives up (the channel closes), it exits.

PDEATHSIG fires when the parent *thread* that forked the child ends: start servers from a thread that
lives as long as the job (the main thread in the CLI)."""

from __future__ import annotations

import json
import os
import signal
import socket

PR_SET_PDEATHSIG = 1
ADOPT, KEEP, ACK = b"adopt\n", b"keep\n", b"ok\n"


def _prctl_pdeathsig(sig: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def tie_to_parent(parent: int) -> None:
    """Die with the parent; exit now if it is already gone (we were re-parented before the prctl)."""
    _prctl_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def untie() -> None:
    _prctl_pdeathsig(0)


def report(chan: socket.socket, message: dict, fds: tuple[int, ...] = ()) -> None:
    data = (json.dumps(message) + "\n").encode()
    if fds:
        socket.send_fds(chan, [data], list(fds))
    else:
        chan.sendall(data)


def await_verdict(chan: socket.socket) -> bool:
    """Block until the parent says adopt or keep; act on it and acknowledge. False when the parent
    gave up (closed the channel): the caller exits."""
    line = _read_line(chan)
    if line == ADOPT:
        untie()
    elif line != KEEP:
        return False
    try:
        chan.sendall(ACK)
    except OSError:
        return False
    return True


def _read_line(chan: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        try:
            chunk = chan.recv(64)
        except OSError:
            return b""
        if not chunk:
            return b""
        buf += chunk
    return buf
