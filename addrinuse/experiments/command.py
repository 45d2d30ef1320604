"""The user's own server in an experiment: a command with a {port} placeholder, started, found
listening in the connection table, stopped with a chosen signal.

This is the experiment's own minimal start/stop, behind the shape agreed for
control.start_server(registry, ServerConfig(command=..., stop_signal=...)): argv with "{port}",
ready when the connection table shows it listening on host:port. It holds the Popen of what it
started, so it only ever signals its own child, and the child gets PR_SET_PDEATHSIG: it dies with the
runner whatever kills the runner (SIGKILL included)."""

from __future__ import annotations

import errno
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time

from addrinuse.errors import CannotRun

READY_POLL_S = 0.02
PR_SET_PDEATHSIG = 1
# Errors a server that could not start prints, as strerror() words: the way a person reading its
# output would tell EADDRINUSE from anything else (a program's exit status does not say).
KNOWN_ERRORS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)


def _die_with_parent(prctl, parent: int) -> None:
    """preexec_fn: in the child, before exec (prctl was looked up in the parent: nothing is imported
    between fork and exec). PDEATHSIG survives exec (it is cleared only for set-uid programs); the
    getppid check closes the race with a parent that died before prctl."""
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _prctl():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


def pick_port(host: str) -> int:
    """A port the kernel picks for host, released at once for the command to bind (as portpicker
    does: a small window remains in which another program may take it; start() retries)."""
    import socket

    from addrinuse.sockets import resolve

    family, address = resolve(host)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


class CommandServer:
    def __init__(self, argv: list[str], host: str, port: int, stop_signal: str = "TERM"):
        self.argv = [a.replace("{port}", str(port)).replace("{host}", host) for a in argv]
        self.host, self.port, self.stop_signal = host, port, stop_signal
        self.proc: subprocess.Popen | None = None
        self.output = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, ctx, timeout: float) -> dict:
        """Start and wait until the table shows the command (or a process it started) listening on
        host:port; or until it exits, or the timeout. Returns the step's result."""
        base = {"host": self.host, "port": self.port, "command": self.argv, "name": os.path.basename(self.argv[0])}
        self.output = tempfile.TemporaryFile()  # unlinked already: nothing to leave behind
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self.output,
                                         stderr=subprocess.STDOUT,
                                         preexec_fn=functools.partial(_die_with_parent, _prctl(), os.getpid()),
                                         start_new_session=True)  # a Ctrl-C in the terminal is not for it
        except OSError as err:
            self.output.close()
            raise CannotRun(f"cannot run {self.argv[0]!r}: {err.strerror}: install it or fix the command") from err
        deadline = time.monotonic() + timeout
        while True:
            if self._listening(ctx):
                return {"ok": True, "error": None, "syscall": None, "pid": self.proc.pid, **base}
            status = self.proc.poll()
            if status is not None:
                tail = self.tail()
                return {"ok": False, "error": _error_in(tail), "syscall": None, "pid": self.proc.pid,
                        "exit_status": status, "message": f"exited with status {status} before listening: "
                        + (tail.splitlines()[-1] if tail else "no output"), **base}
            if time.monotonic() > deadline:
                self.kill()
                return {"ok": False, "error": None, "syscall": None, "pid": self.proc.pid,
                        "message": f"did not listen on {self.host}:{self.port} within {timeout:g} s (set the step's "
                                   "host to the address the command binds, or raise ready_timeout)", **base}
            ctx.progress(f"waiting for {base['name']} to listen on port {self.port}: "
                         f"{deadline - time.monotonic():.0f} s left")
            time.sleep(READY_POLL_S)

    def _listening(self, ctx) -> bool:
        import psutil

        entries = ctx.entries(self.port, ["LISTEN"], "local", self.host)
        if not entries:
            return False
        try:
            ours = {self.proc.pid} | {c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            return False
        return any(o.pid in ours for e in entries for o in e.owners)

    def tail(self, limit: int = 2000) -> str:
        if self.output is None or self.output.closed:
            return ""
        self.output.seek(0, os.SEEK_END)
        self.output.seek(max(0, self.output.tell() - limit))
        return self.output.read().decode(errors="replace").strip()

    def stop(self, sig: str | None = None, timeout: float = 5.0) -> dict:
        """Send the signal (default: the server's stop_signal) and wait until it has exited."""
        sig = sig or self.stop_signal
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(getattr(signal, f"SIG{sig}"))
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            status = None
        return {"signal": sig, "exited": status is not None, "exit_status": status,
                "waited_s": round(time.monotonic() - started, 3)}

    def kill(self) -> None:
        """End it for certain (the run is over): its stop signal, then SIGKILL after a second."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                if not self.stop(timeout=1.0)["exited"]:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            if self.output is not None:
                self.output.close()


def _error_in(output: str) -> str | None:
    for code in KNOWN_ERRORS:
        if os.strerror(code) in output or errno.errorcode[code] in output:
            return errno.errorcode[code]
    return None
