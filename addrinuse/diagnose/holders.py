"""Who holds the sockets on a port: typed records, with every process that holds each socket.

A listening socket can have many holders (a pre-fork server's parent and workers, a child that
inherited the fd): conntable's owners lists them all by inode, as `ss -p` and `lsof` do, and each
is described here with name, command line and user. Entries no process holds (TIME_WAIT, orphaned
FIN_WAIT2) are grouped by state and end."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from addrinuse.conntable import Entry


@dataclass
class ProcessInfo:
    pid: int
    name: str | None
    cmdline: str | None
    user: str | None
    ppid: int | None = None

    def to_dict(self) -> dict:
        return {"pid": self.pid, "name": self.name, "cmdline": self.cmdline, "user": self.user}


@dataclass
class Holder:
    """A socket on the port that at least one process holds (a listener, or a live connection)."""
    state: str
    family: int
    laddr: str
    raddr: str
    rport: int
    owners: list[ProcessInfo] = field(default_factory=list)
    v6only: bool | None = None
    uid: int | None = None  # the socket's uid (who created it), as sock_diag reports it
    conflicts: bool = True  # its address overlaps the bind asked for
    reason: str | None = None  # when it does not conflict: the kernel's reason
    record: str | None = None  # the addrinuse server record, when this tool started it
    end: str | None = None  # connections: "client", "server", or None (not known)
    joinable_by_uid: bool | None = None  # listeners: a SO_REUSEPORT server of `uid` can join (None: not probed)

    @property
    def pid(self) -> int | None:
        return self.owners[0].pid if self.owners else None

    @property
    def name(self) -> str | None:
        return self.owners[0].name if self.owners else None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["owners"] = [o.to_dict() for o in self.owners]
        return out


@dataclass
class Lingering:
    """Entries no process holds any more (TIME_WAIT, orphaned FIN_WAIT2, ...): the kernel ends them."""
    state: str
    count: int
    expires_in_s: float | None  # when the last one's kernel timer runs out; None: no timers (psutil)
    end: str | None = None  # "client", "server", or None: closed first by this host, which end unknown
    conflicts: bool = True
    reason: str | None = None
    peers: list[str] = field(default_factory=list)  # endpoints these entries were connected to (up to 3)


def printable(text: str | None) -> str | None:
    """A process name or command line as one safe line: another user's process chooses its own
    argv, and a newline or a terminal escape in it must not reach the screen as such."""
    if text is None:
        return None
    return "".join(ch if ch.isprintable() else " " if ch in "\n\t" else "?" for ch in text)


def process_info(pids: list[int]) -> list[ProcessInfo]:
    import psutil

    out = []
    for pid in pids:
        name = cmdline = user = ppid = None
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                name, ppid = printable(proc.name()), proc.ppid()
                cmdline, user = printable(" ".join(proc.cmdline())), proc.username()
        except (psutil.Error, KeyError):  # gone, or not ours to read; KeyError: a uid with no name
            pass
        out.append(ProcessInfo(pid, name, cmdline, user, ppid))
    return out


def holder(e: Entry, records: dict, **extra) -> Holder:
    owners = process_info([o.pid for o in e.owners])
    record = next((records[o.pid] for o in owners if o.pid in records), None)
    return Holder(e.state, e.family, e.laddr, e.raddr, e.rport, owners, e.v6only, e.uid, record=record, **extra)


def parent_of(owners: list[ProcessInfo]) -> ProcessInfo | None:
    """The holder whose parent holds none of the socket (a pre-fork server's master), when there
    is exactly one such; stopping it usually stops the workers it forked."""
    pids = {o.pid for o in owners}
    roots = [o for o in owners if o.ppid not in pids]
    return roots[0] if len(roots) == 1 and len(owners) > 1 else None


def who(h: Holder) -> str:
    """'python3 (pid 10, user root)', or for several holders 'gunicorn (pids 10, 11, 12; user www)'."""
    if not h.owners:
        return "a process not visible here (another user's, or a socket passed between processes)"
    names = sorted({o.name or "?" for o in h.owners})
    users = sorted({o.user for o in h.owners if o.user})
    pids = ", ".join(str(o.pid) for o in h.owners)
    label = "pids" if len(h.owners) > 1 else "pid"
    user = f"{'; ' if len(h.owners) > 1 else ', '}user {'/'.join(users)}" if users else ""
    text = f"{'/'.join(names)} ({label} {pids}{user})"
    return text + (f", the addrinuse server {h.record!r}," if h.record else "")
