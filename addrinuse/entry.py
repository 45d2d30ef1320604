"""The console entry point. It owns the process's signals from its first line, before click or any
of the library is imported, so that Ctrl-C, SIGTERM or SIGHUP at any moment (imports included)
ends in one line and exit 128+N, never a traceback.

Handlers are installed explicitly even where the signal was inherited as ignored: a shell starts a
background job with SIGINT ignored, and the tool documents Ctrl-C/SIGINT as the way to end its
foreground commands (servers included), so an inherited SIG_IGN must not make it unstoppable."""

import os
import signal
import sys

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}


def _raise(signum, frame):
    from addrinuse.errors import Interrupted

    raise Interrupted(signum)


def _exit_now(signum, frame):
    # The command is over and its cleanup done: a late signal only changes the exit status.
    os.write(2, f"addrinuse: {WORDS[signum]}\n".encode())
    os._exit(128 + signum)


def main() -> None:
    for sig in SIGNALS:
        signal.signal(sig, _raise)
    code = 1
    try:
        from addrinuse.cli import run

        code = run()
    except KeyboardInterrupt as err:  # during imports: nothing was started yet
        signum = getattr(err, "signum", signal.SIGINT)
        _finish(f"addrinuse: error: {WORDS[signum]}\n", 128 + signum)
    for sig in SIGNALS:
        signal.signal(sig, _exit_now)
    _finish("", code)


def _finish(text: str, code: int) -> None:
    for sig in SIGNALS:
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
