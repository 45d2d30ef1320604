"""The console entry point. It owns the process's signals from its first line, before click or any
of the library is imported, so that Ctrl-C, SIGTERM or SIGHUP at any moment (imports included)
ends in one line and exit 128+N, never a traceback.

Handlers are installed explicitly even where SIGINT or SIGTERM was inherited as ignored: a shell
starts a background job with SIGINT ignored, and the tool documents Ctrl-C/SIGINT as the way to end
its foreground commands (servers included), so an inherited SIG_IGN must not make it unstoppable.
An ignored SIGHUP is kept ignored: that is `nohup` asking for the command to survive a hang-up.

What no program can cover is the interpreter's own start-up before this module's first line
(site-packages and .pth processing, tens of ms on a loaded machine): a SIGINT there meets Python's
default handler (a bare KeyboardInterrupt traceback from <frozen site> or runpy), a SIGTERM the
default action. Nothing of the tool has started by then, so nothing is left behind."""

# _signal, the C module, not signal: `import signal` builds its enums first (milliseconds on a
# loaded machine), and every instruction before the handlers exist is a window for a traceback.
import _signal as signal
import sys

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}


def _interrupted(signum: int) -> KeyboardInterrupt:
    # errors.Interrupted once that module is fully imported; during its own import (a signal this
    # early) a plain KeyboardInterrupt carrying signum, which main() treats the same way.
    errors = sys.modules.get("addrinuse.errors")
    cls = getattr(errors, "Interrupted", None)
    if cls is not None:
        return cls(signum)
    err = KeyboardInterrupt(signum)
    err.signum = signum
    return err


_state = {"armed": False, "pending": None}


def _raise(signum, frame):
    # One interrupt is enough: the cleanup it starts (every `finally` on the way out) must not be
    # cut short by a second Ctrl-C, which would leave half of it undone and print a traceback.
    for sig in SIGNALS:
        if signal.getsignal(sig) is _raise:
            signal.signal(sig, _later)
    if not _state["armed"]:
        # Still importing this module (the caller's `from addrinuse.entry import main` has not
        # returned): nothing would catch an exception; main() ends at once instead.
        _state["pending"] = signum
        return
    raise _interrupted(signum)


def _later(signum, frame):
    pass  # the first signal's cleanup is running; its status is the one the command exits with


def _unraisable(hook):
    """A signal can land while Python runs a callback that cannot raise (a weakref callback of the
    import system, a __del__): the interrupt is then reported as "Exception ignored" and lost, and
    the command would run on. Instead: say nothing and deliver it again a millisecond later
    (SIGALRM, which nothing else here uses), outside that callback."""

    def unraisable(info):
        signum = getattr(info.exc_value, "signum", None)
        if isinstance(info.exc_value, KeyboardInterrupt) and signum in SIGNALS:
            _state["pending"] = signum
            signal.signal(signal.SIGALRM, _redeliver)
            signal.setitimer(signal.ITIMER_REAL, 0.001)
            return
        hook(info)

    return unraisable


def _redeliver(signum, frame):
    raise _interrupted(_state["pending"])


def install() -> None:
    for sig in SIGNALS:
        if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
            continue  # nohup
        signal.signal(sig, _raise)
    sys.unraisablehook = _unraisable(sys.unraisablehook)


# At import, not in main(): this module is imported only by the console script and `python -m
# addrinuse`, as their first line, and every instruction before the handlers is a window in which
# a Ctrl-C would print a traceback.
install()

import os  # noqa: E402  (after the handlers, on purpose)


def _exit_now(signum, frame):
    # The command is over and its cleanup done: a late signal only changes the exit status.
    os.write(2, f"addrinuse: {WORDS[signum]}\n".encode())
    os._exit(128 + signum)


def main() -> None:
    code, text = 1, ""
    _state["armed"] = True
    try:
        if _state["pending"] is not None:
            raise _interrupted(_state["pending"])
        from addrinuse.cli import run

        code = run()
    except KeyboardInterrupt as err:  # during imports: nothing was started yet
        signum = getattr(err, "signum", signal.SIGINT)
        code, text = 128 + signum, f"addrinuse: error: {WORDS[signum]}\n"
    finally:
        # Also when a first signal lands right here, after run() returned: _finish never returns.
        _finish(text, code)


def _finish(text: str, code: int) -> None:
    try:
        for sig in SIGNALS:
            if signal.getsignal(sig) != signal.SIG_IGN:
                signal.signal(sig, _exit_now)
    except KeyboardInterrupt as err:  # the first signal, in the instant before _exit_now took over
        _exit_now(getattr(err, "signum", signal.SIGINT), None)
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
