"""Assertions about a port: wait until a server could bind it, or assert that it cannot.

Both probe as a real server would (bind + listen, then release at once: sockets.probe), so they
answer for the options given in `as_` (plain, reuseaddr, reuseport), and a failure says why in
the words of `addrinuse why`: the diagnosis verdict (who holds the port, when it frees, the fix).
A failure message says what was asserted and what happened, then the verdict; the exception's
`.diagnosis` is the Diagnosis itself, for tests that check its facts rather than its words.
A probe holds the port for a moment: do not probe a port another thread is about to bind."""

from __future__ import annotations

import errno as _errno

# TIME_WAIT (60 s) plus the timer wheel's lateness (conntable.TIMER_WHEEL_SLACK_S) and a margin.
DEFAULT_WAIT_S = 63.0


class PortAssertion(AssertionError):
    """The port is not in the state the test asserted; the message is the diagnosis verdict."""

    def __init__(self, message: str, diagnosis=None):
        super().__init__(message)
        self.diagnosis = diagnosis


def _check_mode(as_: str) -> None:
    from addrinuse.diagnose import MODES
    from addrinuse.errors import BadInput

    if as_ not in MODES:
        raise BadInput(f"as_={as_!r} is not one of {', '.join(MODES)}")


def probe_errno(host: str, port: int, as_: str = "plain") -> tuple[int | None, str | None]:
    """(errno, syscall) of a bind + listen as `as_` would do it; (None, None) when both succeed.
    EADDRNOTAVAIL and EACCES come back as numbers here too (sockets.probe turns them into BadInput)."""
    from addrinuse.diagnose import MODES
    from addrinuse.errors import AddrinuseError
    from addrinuse.sockets import bind_listen

    try:
        bind_listen(host, port, MODES[as_], backlog=1).close()
    except AddrinuseError as err:
        code = getattr(err, "errno", None) or getattr(err.__cause__, "errno", None)
        if code is None:
            raise
        return code, getattr(err, "syscall", None) or "bind"
    return None, None


def verdict(port: int, host: str = "127.0.0.1", as_: str = "plain"):
    """(verdict sentence, Diagnosis) for the port as `addrinuse why` computes it."""
    from addrinuse.diagnose import diagnose

    d = diagnose(port, host=host, mode=as_)
    return d.verdict, d


def wait_port_free(port: int, as_: str = "plain", timeout: float = DEFAULT_WAIT_S, host: str = "127.0.0.1",
                   interval: float = 0.05) -> float:
    """Poll until a server of kind `as_` can bind host:port; return the seconds waited. At the deadline
    raise PortAssertion whose message is the verdict. TIME_WAIT ends up to 62 s after the close."""
    from addrinuse.sockets import wait_until_bindable
    from addrinuse.diagnose import MODES

    _check_mode(as_)
    result, waited = wait_until_bindable(host, port, MODES[as_], timeout, interval)
    if result.ok:
        return waited
    from addrinuse.render import endpoint

    text, d = verdict(port, host, as_)
    raise PortAssertion(f"{endpoint(host, port)} still not free for {as_} after {waited:.1f} s. {text}", d)


def assert_bind_fails(port: int, errno: int = _errno.EADDRINUSE, as_: str = "plain", host: str = "127.0.0.1"):
    """Assert that a server of kind `as_` cannot bind host:port, failing with `errno`. Returns the
    syscall that failed ("bind" or "listen"). The failure message is the verdict."""
    _check_mode(as_)
    got, syscall = probe_errno(host, port, as_)
    if got == errno:
        return syscall
    want = _errno.errorcode.get(errno, str(errno))
    seen = "succeeded" if got is None else f"failed with {_errno.errorcode.get(got, str(got))} instead"
    if got == _errno.EADDRNOTAVAIL:
        raise PortAssertion(f"{host} is not an address of this machine ({seen} of {want})")
    from addrinuse.render import endpoint

    text, d = verdict(port, host, as_)
    raise PortAssertion(f"expected bind+listen of {endpoint(host, port)} as {as_} to fail with {want}; it {seen}. "
                        f"{text}", d)
