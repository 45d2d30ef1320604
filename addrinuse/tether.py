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
import subprocess
import sys
import time

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


class Launched:
    """The parent's side: one process the tool launched (python -m addrinuse.server ...), tied to
    this process until adopted."""

    def __init__(self, args: list[str], log_fd: int, pass_fds: tuple[int, ...] = ()):
        self.chan, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "addrinuse.server", *_with_chan(args, theirs.fileno())],
                pass_fds=(theirs.fileno(), *pass_fds), stdin=subprocess.DEVNULL, stdout=log_fd,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C in the user's terminal is not meant for it; the tool stops it.
                start_new_session=True,
            )
        finally:
            theirs.close()
        self.message: dict | None = None
        self.fds: list[int] = []

    def ready(self, deadline: float) -> dict | None:
        """The child's ready line (with any fds it passed), or None if it exited or timed out."""
        buf = b""
        while not buf.endswith(b"\n"):
            self.chan.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                data, fds, _, _ = socket.recv_fds(self.chan, 4096, 4)
            except (TimeoutError, OSError):
                return None
            self.fds += fds
            if not data:
                return None
            buf += data
        try:
            self.message = json.loads(buf)
        except ValueError:
            return None
        return self.message

    def verdict(self, adopt: bool, deadline: float) -> bool:
        """Tell the child it is recorded (adopt) or tied to us (keep); True once it acknowledged."""
        try:
            self.chan.settimeout(max(0.001, deadline - time.monotonic()))
            self.chan.sendall(ADOPT if adopt else KEEP)
            got = b""
            while len(got) < len(ACK):
                chunk = self.chan.recv(len(ACK) - len(got))
                if not chunk:
                    break
                got += chunk
            return got == ACK
        except (TimeoutError, OSError):
            return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        self.chan.close()
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _with_chan(args: list[str], chan_fd: int) -> list[str]:
    """Insert CHAN_FD PARENT_PID after the mode word (or the config) of server.main's argv."""
    return [args[0], str(chan_fd), str(os.getpid()), *args[1:]]
