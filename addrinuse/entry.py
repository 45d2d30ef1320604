"""The console entry point. It owns the process's signals from its first line, before click or any
of the library is imported, so that Ctrl-C, SIGTERM or SIGHUP at any moment (imports included)
ends in one line and exit 128+N, never a traceback.

Handlers are installed explicitly even where SIGINT or SIGTERM was inherited as ignored: a shell
starts a background job with SIGINT ignored, and the tool documents Ctrl-C/SIGINT as the way to end
its foreground commands (servers included), so an inherited SIG_IGN must not make it unstoppable.
An ignored SIGHUP is kept ignored: that is `nohup` asking for the command to survive a hang-up.

What no program can cover is the interpreter's own start-up before this module's first line
(site-packages and .pth processing, tens of ms on a loaded machine): a SIGINT there meets Python's
default handler (a bare KeyboardInterrupt traceback), a SIGTERM the default action. Nothing of the
tool has started by then, so nothing is left behind."""

import os
import signal
import sys

# Imported before any handler exists: a handler that imported it could run in the middle of this
# very module's import (a signal during start-up) and find it half-initialized.
from addrinuse.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}


def _raise(signum, frame):
    # One interrupt is enough: the cleanup it starts (every `finally` on the way out) must not be
    # cut short by a second Ctrl-C, which would leave half of it undone and print a traceback.
    for sig in SIGNALS:
        if signal.getsignal(sig) is _raise:
            signal.signal(sig, _later)
    raise Interrupted(signum)


def _later(signum, frame):
    pass  # the first signal's cleanup is running; its status is the one the command exits with


def _exit_now(signum, frame):
    # The command is over and its cleanup done: a late signal only changes the exit status.
    os.write(2, f"addrinuse: {WORDS[signum]}\n".encode())
    os._exit(128 + signum)


def main() -> None:
    for sig in SIGNALS:
        if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
            continue  # nohup
        signal.signal(sig, _raise)
    code = 1
    try:
        from addrinuse.cli import run

        code = run()
    except KeyboardInterrupt as err:  # during imports: nothing was started yet
        signum = getattr(err, "signum", signal.SIGINT)
        _finish(f"addrinuse: error: {WORDS[signum]}\n", 128 + signum)
    _finish("", code)


def _finish(text: str, code: int) -> None:
    for sig in SIGNALS:
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, _exit_now)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, OSError):
            pass  # a reader that went away (`| head`) is not an error worth a traceback
    if text:
        os.write(2, text.encode())
    # os._exit: interpreter shutdown can still run Python code (atexit, __del__) that a signal
    # would interrupt with a traceback; everything the command owns is closed by now.
    os._exit(code)


if __name__ == "__main__":
    main()
