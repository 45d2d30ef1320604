"""One exception hierarchy, and beside it the one table of exit codes.

The library raises these and never calls sys.exit or prints; the CLI maps each class to its exit
code with `exit_code_for` and renders `to_dict()` for `--json`. The README's exit-code table is
checked against EXIT_CODES by a test."""

from __future__ import annotations

import errno as _errno

# code -> (name used in JSON, meaning). The only place exit codes are defined.
EXIT_CODES: dict[int, tuple[str, str]] = {
    0: ("ok", "done: bound, free, stopped, reproduced, every expectation held"),
    1: ("failed", "the command could not do its job, or an experiment's expectation differed"),
    2: ("bad_input", "bad input or usage: the one-line message names the fix"),
    3: ("address_in_use", "the address is in use (start, rebind, why)"),
    4: ("timed_out", "timed out waiting (wait)"),
    5: ("unsafe_state_dir", "the state directory is not safe to use (foreign owner, group/other-writable, symlink)"),
    6: ("cannot_run", "cannot run here: a privilege, kernel feature or package is missing"),
    129: ("hangup", "SIGHUP: whatever the command started was stopped first"),
    130: ("interrupted", "SIGINT (Ctrl-C): whatever the command started was stopped first"),
    143: ("terminated", "SIGTERM: whatever the command started was stopped first"),
}
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_IN_USE, EXIT_TIMEOUT, EXIT_UNSAFE, EXIT_CANNOT_RUN = 0, 1, 2, 3, 4, 5, 6


class AddrinuseError(Exception):
    """Base of every error the library raises on purpose."""

    exit_code = EXIT_FAILED

    def to_dict(self) -> dict:
        """The JSON error object: code, type and message, plus the attributes a subclass carries."""
        out = {"code": self.exit_code, "type": EXIT_CODES[self.exit_code][0], "message": str(self)}
        for key in ("port", "errno", "error", "syscall", "pid", "name", "path"):
            value = getattr(self, key, None)
            if value is not None:
                out[key] = value
        return out


class BadInput(AddrinuseError):
    """Something the user typed cannot work; the message names the fix (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class ServerNotFound(BadInput):
    def __init__(self, name: str, known: list[str]):
        self.name = name
        hint = f"known: {', '.join(known)}" if known else "none is running; start one with 'addrinuse start'"
        super().__init__(f"no server named {name!r} ({hint})")


class NameTaken(BadInput):
    """A record of that name exists and its process runs: names are claimed atomically, once."""

    def __init__(self, name: str, pid: int | None = None, detail: str | None = None):
        self.name = name
        self.pid = pid
        why = detail or (f"pid {pid} is running" if pid else "a record holds it")
        super().__init__(f"name {name} is taken ({why}): pick another --name, or stop it with 'addrinuse kill {name}'")


class UnsafeStateDir(AddrinuseError):
    """The state directory could have been written by someone else: refused (exit 5)."""

    exit_code = EXIT_UNSAFE

    def __init__(self, path: str, problem: str, fix: str):
        self.path = path
        super().__init__(f"state dir {path} {problem}: {fix}")


class CannotRun(AddrinuseError):
    """A privilege, kernel feature or package this needs is missing here (exit 6)."""

    exit_code = EXIT_CANNOT_RUN


class SocketCallError(AddrinuseError):
    """A socket syscall failed. Carries which call and the errno, so a report can say
    'listen() failed with EADDRINUSE' rather than just 'bind failed'."""

    def __init__(self, syscall: str, err: int, host: str, port: int):
        self.syscall = syscall
        self.errno = err
        self.host = host
        self.port = port
        self.error = self.errname = _errno.errorcode.get(err, str(err))
        super().__init__(f"{syscall}() on {host}:{port} failed: {self.errname} ({err}, {_strerror(err)})")


class AddressInUse(SocketCallError):
    """EADDRINUSE from bind() or listen() (exit 3)."""

    exit_code = EXIT_IN_USE


class NoLocalPort(SocketCallError):
    """EADDRNOTAVAIL from connect(): no local port of ip_local_port_range is left toward that
    destination (client port exhaustion). The message carries the cause and the fixes (exit 1)."""

    def __init__(self, host: str, port: int, explanation: str):
        super().__init__("connect", _errno.EADDRNOTAVAIL, host, port)
        Exception.__init__(self, f"connect() to {host}:{port} failed: EADDRNOTAVAIL "
                                 f"({_errno.EADDRNOTAVAIL}): {explanation}")


class WaitTimeout(AddrinuseError):
    """A --timeout ran out (exit 4)."""

    exit_code = EXIT_TIMEOUT


class ServerStartError(AddrinuseError):
    """The server process did not report ready; the message carries its own words."""


class PidReused(AddrinuseError):
    """A record's pid now belongs to another process: it must never be signalled."""

    def __init__(self, name: str, pid: int):
        self.name = name
        self.pid = pid
        super().__init__(f"record {name!r}: pid {pid} now belongs to another process; record removed, nothing signalled")


class BackendUnavailable(CannotRun):
    """The chosen connection-table backend cannot run here."""


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived: raised from the signal handler so that every `finally`
    on the way out cleans up. A KeyboardInterrupt, so code that treats Ctrl-C as "end now" treats
    SIGTERM and SIGHUP the same way."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class ReportPathError(BadInput):
    """A --report/--svg destination that cannot be used (exists as a non-directory, not writable)."""

    def __init__(self, path: str, problem: str, fix: str):
        self.path = path
        super().__init__(f"{path}: {problem}; {fix}")


class FigureInputError(AddrinuseError):
    """A figure's input does not have the documented shape (a producer's bug, exit 1): names the field."""

    def __init__(self, figure: str, field: str, problem: str):
        self.figure, self.field = figure, field
        super().__init__(f"{figure} figure: {field}: {problem}")


class LabUnavailable(CannotRun):
    """No network-namespace lab can be made here (not root, no nft/ip, no namespaces); the message
    is the reason, fit for a test's or an experiment's 'skipped'."""


class TracefsUnavailable(CannotRun):
    """No kernel tracepoint here (not root, tracefs not mounted); the message is the reason."""


class LabError(AddrinuseError):
    """A lab step failed (an agent died, nft or ip refused a command); the message says which."""


def exit_code_for(err: BaseException) -> int:
    if isinstance(err, Interrupted):
        return err.exit_code
    if isinstance(err, KeyboardInterrupt):
        return 130
    return getattr(err, "exit_code", EXIT_FAILED)


def _strerror(err: int) -> str:
    import os

    return os.strerror(err)
