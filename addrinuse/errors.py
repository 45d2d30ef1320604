"""One exception hierarchy. The CLI maps each class to an exit code (see cli.EXIT_CODES);
the library raises these and never calls sys.exit or prints."""

from __future__ import annotations

import errno as _errno


class AddrinuseError(Exception):
    """Base of every error the library raises on purpose."""


class BadInput(AddrinuseError):
    """Something the user typed cannot work; the message names the fix (exit 2)."""


class ServerNotFound(BadInput):
    def __init__(self, name: str, known: list[str]):
        self.name = name
        hint = f"known: {', '.join(known)}" if known else "none is running; start one with 'addrinuse start'"
        super().__init__(f"no server named {name!r} ({hint})")


class SocketCallError(AddrinuseError):
    """A socket syscall failed. Carries which call and the errno, so a report can say
    'listen() failed with EADDRINUSE' rather than just 'bind failed'."""

    def __init__(self, syscall: str, err: int, host: str, port: int):
        self.syscall = syscall
        self.errno = err
        self.host = host
        self.port = port
        self.errname = _errno.errorcode.get(err, str(err))
        super().__init__(f"{syscall}() on {host}:{port} failed: {self.errname} ({err}, {_strerror(err)})")


class AddressInUse(SocketCallError):
    """EADDRINUSE from bind() or listen() (exit 3)."""


class WaitTimeout(AddrinuseError):
    """A --wait/--timeout ran out (exit 4)."""


class ServerStartError(AddrinuseError):
    """The server process did not report ready; the message carries its own words."""


class PidReused(AddrinuseError):
    """A record's pid now belongs to another process: it must never be signalled."""

    def __init__(self, name: str, pid: int):
        self.name = name
        self.pid = pid
        super().__init__(f"record {name!r}: pid {pid} now belongs to another process; record removed, nothing signalled")


class BackendUnavailable(AddrinuseError):
    """The chosen connection-table backend cannot run here."""


def _strerror(err: int) -> str:
    import os

    return os.strerror(err)


class LabUnavailable(AddrinuseError):
    """No network-namespace lab can be made here (not root, no nft/ip, no namespaces); the message
    is the reason, fit for a test's or an experiment's 'skipped'."""


class LabError(AddrinuseError):
    """A lab step failed (an agent died, nft or ip refused a command); the message says which."""
