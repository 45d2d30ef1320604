"""The TCP connection table behind one small interface.

A backend has `name`, `has_timers`, `snapshot(port=None, states=None, local=False, host=None) ->
list[Entry]`, `table(...)` (the same entries as a sized iterable, decoded one at a time: what a
whole-table listing streams) and `close()`. `port` matches the local or the remote port, like ss's
`( sport = :P or dport = :P )`, so one query shows both the server's side and its clients' side of
a port; `local=True` matches the local port only (what blocks a bind); `host` (a numeric address)
matches the local or the remote address. Backends: netlink (Linux sock_diag, with the kernel's
timers) and psutil (portable, no timers); `auto` takes netlink where it works, psutil elsewhere,
the way psutil picks its platform module once.

States: `states=None` means every state of the connection table (LISTEN ... TIME_WAIT, as `ss -a`
lists them). Sockets that are bound but neither listen nor connect (the kernel's pseudo-state
TCP_BOUND_INACTIVE, which sock_diag reports as CLOSE; ss -a shows them as UNCONN) are listed only
when asked for by name: `CLOSED` (also spelled `bound`, `unconn`, `close`). Asking for them costs
the kernel an extra walk of its bind hash, and they hold a port only against a plain bind()."""

from __future__ import annotations

import sys
from typing import Iterable, NamedTuple, Protocol

# Linux include/net/tcp_states.h order (TCP_ESTABLISHED = 1 ... TCP_NEW_SYN_RECV = 12); the
# names are the ones ss and psutil print. NEW_SYN_RECV is a request socket and shows as SYN_RECV.
KERNEL_STATES = (
    None, "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
    "CLOSED", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "SYN_RECV",
)
STATES = (
    "LISTEN", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2",
    "CLOSE_WAIT", "CLOSING", "LAST_ACK", "TIME_WAIT", "CLOSED",
)
# ss spells a bound-only socket UNCONN; BOUND says what it is.
ALIASES = {"CLOSE": "CLOSED", "BOUND": "CLOSED", "UNCONN": "CLOSED", "SYN_RECEIVED": "SYN_RECV",
           "FIN_WAIT_1": "FIN_WAIT1", "FIN_WAIT_2": "FIN_WAIT2", "ESTAB": "ESTABLISHED"}
BACKENDS = ("auto", "netlink", "psutil")
IS_LINUX = sys.platform.startswith("linux")
# include/net/tcp.h: #define TCP_TIMEWAIT_LEN (60*HZ); fixed at build time, no sysctl changes it.
TCP_TIMEWAIT_LEN_S = 60.0
# The TIME_WAIT timer sits in the kernel's timer wheel (kernel/time/timer.c), which rounds a 60 s
# expiry up to its level's granularity: 8**3 jiffies = 2.048 s at HZ=250 (0.512 s at HZ=1000).
# So an entry frees between the timer's deadline and about 2 s after it; measured 61.6-62.0 s here.
TIMER_WHEEL_SLACK_S = 2.048
FREEING_TIMERS = ("timewait",)


def last_expiry(entries: Iterable[Entry]) -> float | None:
    """Seconds until the last kernel timer of these entries runs out; None when there are no entries
    or any has no timer (every psutil entry), so callers need not ask the backend first."""
    left = [e.expires_in_s for e in entries]
    if not left or any(x is None for x in left):
        return None
    return max(left)


class Owner(NamedTuple):
    """A process holding a socket: every holder is listed (a forked worker or a child that inherited
    the fd holds the same socket, as `ss -p` and `lsof` show)."""
    pid: int
    name: str | None


class Entry(NamedTuple):
    """One row of the connection table. A NamedTuple, not a dataclass: a whole-table dump builds
    tens of thousands of them, and a tuple is built ~10x faster than a frozen dataclass
    (measured by make bench)."""
    family: int  # 4 or 6
    laddr: str
    lport: int
    raddr: str
    rport: int
    state: str
    owners: tuple[Owner, ...] = ()
    inode: int | None = None
    uid: int | None = None
    timer: str | None = None  # the kernel's timer kind, e.g. "timewait", "keepalive"
    expires_in_s: float | None = None  # time left on that timer
    v6only: bool | None = None  # IPV6_V6ONLY of an AF_INET6 socket (netlink only; TIME_WAIT has none)
    cookie: int | None = None  # the kernel's socket cookie (netlink): names exactly this socket

    @property
    def pid(self) -> int | None:
        """The first holder's pid (lowest); see owners for all of them."""
        return self.owners[0].pid if self.owners else None

    @property
    def process(self) -> str | None:
        return self.owners[0].name if self.owners else None

    @property
    def key(self) -> tuple:
        return (self.family, self.laddr, self.lport, self.raddr, self.rport)

    def to_dict(self) -> dict:
        """The entry of docs/json.md, as plain types (in field order)."""
        return {"family": self.family, "laddr": self.laddr, "lport": self.lport, "raddr": self.raddr,
                "rport": self.rport, "state": self.state,
                "owners": [{"pid": o.pid, "name": o.name} for o in self.owners],
                "inode": self.inode, "uid": self.uid, "timer": self.timer, "expires_in_s": self.expires_in_s,
                "v6only": self.v6only, "cookie": self.cookie}

    def to_json(self) -> str:
        """Exactly json.dumps(self.to_dict()), without building the dict (a table streams thousands)."""
        from addrinuse.jsonstream import entry_json

        return entry_json(self)


class Backend(Protocol):
    name: str
    has_timers: bool

    def snapshot(self, port: int | None = None, states: Iterable[str] | None = None,
                 local: bool = False, host: str | None = None) -> list[Entry]: ...

    def table(self, port: int | None = None, states: Iterable[str] | None = None,
              local: bool = False, host: str | None = None) -> Iterable[Entry]:
        """The same entries as snapshot(), unsorted: netlink's are decoded while iterated (a RawDump,
        in the kernel's order, with json_items() and text_lines() too); psutil's are a list."""

    def close(self) -> None: ...


def normalize_states(states: Iterable[str] | None) -> frozenset[str] | None:
    """Accept ss and psutil spellings (time-wait, TIME_WAIT, syn-recv); raise ValueError otherwise."""
    if not states:
        return None
    out = set()
    for state in states:
        name = state.strip().upper().replace("-", "_")
        name = ALIASES.get(name, name)
        if name not in STATES:
            raise ValueError(state)
        out.add(name)
    return frozenset(out)


def matches(entry: Entry, port: int | None, states: frozenset[str] | None, local: bool = False) -> bool:
    if port is not None and port != entry.lport and (local or port != entry.rport):
        return False
    return states is None or entry.state in states


def get_backend(name: str = "auto", *, cache_owners: bool = False) -> Backend:
    """The backend called `name`. cache_owners: a backend polled again and again (watch) keeps each
    socket's holders from one snapshot to the next while a cheap check says they still hold it,
    instead of reading every process's fd table at every poll; a process that starts sharing an
    already-seen socket (a fork) is then not listed."""
    from addrinuse.errors import BackendUnavailable, BadInput

    if name not in BACKENDS:
        raise BadInput(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
    if name in ("auto", "netlink"):
        if IS_LINUX:
            from addrinuse.conntable.netlink import NetlinkBackend

            try:
                return NetlinkBackend(cache_owners=cache_owners)
            except BackendUnavailable:
                if name == "netlink":
                    raise
        elif name == "netlink":
            raise BackendUnavailable("the netlink backend needs Linux: use --backend psutil")
    from addrinuse.conntable.psutil import PsutilBackend

    return PsutilBackend()


def sort_key(entry: Entry) -> tuple[int, int]:
    """Local port, then remote port; a stable sort keeps the table's own order among entries with the
    same ports. snapshot() lists are sorted so; a streamed table() is in the kernel's order."""
    return (entry.lport, entry.rport)


def snapshot(port: int | None = None, states: Iterable[str] | None = None, backend: str = "auto",
             local: bool = False, host: str | None = None) -> list[Entry]:
    source = get_backend(backend)
    try:
        return source.snapshot(port, states, local, host=host)
    finally:
        source.close()

