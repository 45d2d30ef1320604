"""The kernel's own record of TCP state changes, streamed from a private tracefs instance.

Events (formats read from /sys/kernel/tracing/events/*/*/format on 6.18):
  state          sock:inet_sock_set_state   every state change of a full socket (and request sockets)
  retransmit     tcp:tcp_retransmit_skb     a retransmitted segment, with the socket's state
  receive_reset  tcp:tcp_receive_reset      an RST that hit a socket
  send_reset     tcp:tcp_send_reset         an RST sent, with the kernel's reason (NO_SOCKET, ...)
  retransmit_synack  tcp:tcp_retransmit_synack  a request socket (SYN_RECV) resent its SYN-ACK
Each arrives with a CLOCK_MONOTONIC timestamp (trace_clock=mono), comparable with time.monotonic()
in any process. A reader thread blocks in poll() on the instance's trace_pipe (buffer_percent=0
wakes it at the first byte) and parses lines as they come; consumers iterate `events()` or wait for
one event with `wait_for()`.

Two things the tracepoint does not say, which readers must know (include/trace/events/sock.h,
net/ipv4/tcp_minisocks.c):
- FIN_WAIT2 -> CLOSE of a full socket is the hand-off to a timewait socket, not the start of
  TIME_WAIT. An orphaned socket (the application closed it) is handed off when its FIN is ACKed and
  stays in substate FIN_WAIT2 until the peer's FIN; that FIN starts TIME_WAIT and emits nothing, nor
  does TIME_WAIT's expiry. addrinuse.tracelane builds the true sequence from both ends' events.
- It sees every network namespace and carries no namespace id: filter on addresses you own.

Each Tracer reads its own tracefs instance (addrinuse.tracefs: named after its process, stale
ones removed at start, a janitor for SIGKILL with guard=True). Needs root."""

from __future__ import annotations

import collections
import itertools
import os
import re
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from addrinuse.errors import AddrinuseError, TracefsUnavailable  # noqa: F401 (re-exported)
from addrinuse.tracefs import janitor, remove_stale, start_time, tracefs_root, unavailable_reason

__all__ = ["EVENTS", "TraceEvent", "Tracer", "StateTracer", "Transition", "TracefsUnavailable", "parse",
           "tracefs_root", "unavailable_reason"]

EVENTS = {
    "state": "sock/inet_sock_set_state",
    "retransmit": "tcp/tcp_retransmit_skb",
    "receive_reset": "tcp/tcp_receive_reset",
    "send_reset": "tcp/tcp_send_reset",
    "retransmit_synack": "tcp/tcp_retransmit_synack",
}
EVENT = EVENTS["state"]
TRACE_NAMES = {v.split("/")[1]: k for k, v in EVENTS.items()}
LINE = re.compile(r"\s(\d+\.\d+): (\w+): (.*)$")
FIELD = re.compile(r"(\w+)=(\S+)")
_count = itertools.count()


def _name(state: str | None) -> str | None:
    if state is None:
        return None
    state = state.removeprefix("TCP_")
    return {"CLOSE": "CLOSED", "NEW_SYN_RECV": "SYN_RECV"}.get(state, state)


@dataclass(frozen=True)
class TraceEvent:
    kind: str  # a key of EVENTS
    mono: float  # CLOCK_MONOTONIC seconds (the kernel's timestamp)
    t_s: float  # seconds since the tracer's t0
    family: int  # 4 or 6
    laddr: str
    lport: int
    raddr: str
    rport: int
    old_state: str | None = None  # kind state
    new_state: str | None = None  # kind state; the socket's state for retransmit and send_reset
    reason: str | None = None  # send_reset: the kernel's sk_rst_reason, e.g. NO_SOCKET

    @property
    def key(self) -> tuple:
        return (self.laddr, self.lport, self.raddr, self.rport)

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "t_s": round(self.t_s, 6), "family": self.family, "laddr": self.laddr,
               "lport": self.lport, "raddr": self.raddr, "rport": self.rport}
        if self.kind == "state":
            out.update(old_state=self.old_state, new_state=self.new_state)
        elif self.new_state is not None:
            out["state"] = self.new_state
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def parse(line: str, t0: float = 0.0) -> TraceEvent | None:
    """One trace_pipe line -> TraceEvent, or None for a line of another event or a comment."""
    m = LINE.search(line)
    if not m or m[2] not in TRACE_NAMES:
        return None
    kind, f = TRACE_NAMES[m[2]], dict(FIELD.findall(m[3]))
    mono = float(m[1])
    if kind == "send_reset":  # src/dest are sockaddrs: the RST's own source is the local end
        (laddr, lport), (raddr, rport) = _endpoint(f["src"]), _endpoint(f["dest"])
        family = 6 if ":" in laddr else 4
        state = None if f.get("state") == "UNKNOWN" else _name(f.get("state"))
        return TraceEvent(kind, mono, mono - t0, family, laddr, lport, raddr, rport, None, state, f.get("reason"))
    family = 6 if f.get("family") == "AF_INET6" else 4
    laddr, raddr = (f["saddrv6"], f["daddrv6"]) if family == 6 else (f["saddr"], f["daddr"])
    old = new = None
    if kind == "state":
        old, new = _name(f["oldstate"]), _name(f["newstate"])
    elif kind == "retransmit":
        new = _name(f["state"])
    return TraceEvent(kind, mono, mono - t0, family, laddr, int(f["sport"]), raddr, int(f["dport"]), old, new)


def _filter(kind: str, ports: tuple, addrs: tuple) -> str | None:
    """The kernel-side filter. u8[4] address fields compare as one native-endian u32 (6.18 accepts
    'saddr == 0x0100c70a' for 10.199.0.1); IPv6 addresses and send_reset's sockaddrs cannot be
    filtered in the kernel and are filtered here."""
    if kind == "send_reset":
        return None
    terms = []
    v4 = [a for a in addrs if ":" not in a]
    if addrs and len(v4) == len(addrs):
        nums = [hex(int.from_bytes(socket.inet_aton(a), sys.byteorder)) for a in v4]
        terms.append("(" + " || ".join(f"saddr == {n} || daddr == {n}" for n in nums) + ")")
    if ports:
        terms.append("(" + " || ".join(f"sport == {p} || dport == {p}" for p in ports) + ")")
    return " && ".join(terms) or None


class Tracer:
    """with Tracer(kinds, ports=..., addrs=...) as tracer: for event in tracer.events(timeout): ...

    kinds: names from EVENTS. ports/addrs: an event is kept when one of its ends has one of the
    ports AND (if addrs are given) one of the addresses. keep=True keeps every event in
    `history` for wait_for()/snapshot(); events() consumes a separate queue either way."""

    def __init__(self, kinds=("state",), ports=(), addrs=(), t0: float | None = None, guard: bool = True,
                 keep: bool = True, buffer_kb: int | None = None):
        reason = unavailable_reason()
        if reason:
            raise TracefsUnavailable(reason)
        unknown = set(kinds) - EVENTS.keys()
        if unknown:
            raise AddrinuseError(f"unknown trace event kind {sorted(unknown)}: use {', '.join(EVENTS)}")
        self.kinds, self.ports, self.addrs = tuple(kinds), tuple(ports), tuple(addrs)
        self.t0 = time.monotonic() if t0 is None else t0
        self.guard, self.keep, self.buffer_kb = guard, keep, buffer_kb
        self.root = tracefs_root()
        self.name = f"addrinuse-{os.getpid()}-{start_time(os.getpid())}-{next(_count)}"
        self.dir = os.path.join(self.root, "instances", self.name)
        self.history: list[TraceEvent] = []
        self.parsed = 0  # lines of our events read, before the address/port filter
        self.reader_cpu_s: float | None = None  # set when the reader thread ends
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._empty_at = 0.0  # the last time.monotonic() at which trace_pipe was found empty
        self._stop = False
        self._thread = self._fd = self._wake = self._janitor = None
        self._created = False

    # -- set-up and tear-down -------------------------------------------------------------------
    def _write(self, rel: str, text: str) -> None:
        with open(os.path.join(self.dir, rel), "w") as f:
            f.write(text)

    def __enter__(self) -> "Tracer":
        remove_stale(self.root)
        try:
            if self.guard:
                self._janitor = janitor([self.dir])
            os.mkdir(self.dir, 0o700)
            self._created = True
            self._write("trace_clock", "mono")
            self._write("buffer_percent", "0")  # poll() wakes at the first event, not at 50 % full
            if self.buffer_kb is not None:  # default: 1410 KiB per CPU; a write costs ~10 ms
                self._write("buffer_size_kb", str(self.buffer_kb))
            for kind in self.kinds:
                expr = _filter(kind, self.ports, self.addrs)
                if expr:
                    self._write(f"events/{EVENTS[kind]}/filter", expr)
                self._write(f"events/{EVENTS[kind]}/enable", "1")
            self._fd = os.open(os.path.join(self.dir, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
            self._wake = os.pipe()
            self._thread = threading.Thread(target=self._run, name=f"trace-{self.name}", daemon=True)
            self._thread.start()
        except BaseException as err:
            self.close()
            if isinstance(err, OSError):
                raise AddrinuseError(f"cannot set up trace instance {self.dir}: {err}") from err
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the events, then the reader; remove the instance and end the janitor. Safe to
        call twice."""
        if self._created:
            for kind in self.kinds:
                try:
                    self._write(f"events/{EVENTS[kind]}/enable", "0")
                except OSError:
                    pass
        if self._thread is not None:
            self._stop = True
            os.write(self._wake[1], b"x")
            self._thread.join(timeout=5)
            with self._cond:
                self._thread = None
                self._cond.notify_all()
        for fd in (self._fd, *(self._wake or ())):
            if fd is not None:
                os.close(fd)
        self._fd = self._wake = None
        if self._created:
            try:
                os.rmdir(self.dir)  # frees the instance's buffers
            except FileNotFoundError:
                pass
            self._created = False
        if self._janitor is not None:
            pid, w = self._janitor
            os.close(w)  # the janitor wakes, finds nothing to remove, exits
            os.waitpid(pid, 0)
            self._janitor = None

    def lost(self) -> int:
        """Events the ring buffer overwrote before they were read (per-CPU 'overrun' counters)."""
        total = 0
        base = os.path.join(self.dir, "per_cpu")
        for cpu in os.listdir(base):
            with open(os.path.join(base, cpu, "stats")) as f:
                for line in f:
                    if line.startswith("overrun:"):
                        total += int(line.split()[1])
        return total

    # -- the reader -----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._read()
        finally:
            self.reader_cpu_s = time.thread_time()  # CPU this reader thread used, for make bench

    def _read(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake[0], select.POLLIN)
        carry = b""
        while not self._stop:  # checked on the data path too: a flood of events never reads empty
            checked = time.monotonic()
            try:
                chunk = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                chunk = None
            except OSError:
                return
            if chunk:
                lines = (carry + chunk).split(b"\n")
                carry = lines.pop()
                self._take(lines)
                continue
            with self._cond:
                self._empty_at = checked
                self._cond.notify_all()
            if self._stop:
                return
            for fd, _ in poller.poll():
                if fd == self._wake[0]:
                    os.read(fd, 64)

    def _take(self, lines: list[bytes]) -> None:
        new = []
        for raw in lines:
            event = parse(raw.decode("ascii", "replace"), self.t0)
            if event is None:
                continue
            self.parsed += 1
            if self._wanted(event):
                new.append(event)
        if new:
            with self._cond:
                if self.keep:
                    self.history.extend(new)
                self._queue.extend(new)
                self._cond.notify_all()

    def _wanted(self, e: TraceEvent) -> bool:
        if self.ports and e.lport not in self.ports and e.rport not in self.ports:
            return False
        return not self.addrs or e.laddr in self.addrs or e.raddr in self.addrs

    # -- consumers ------------------------------------------------------------------------------
    def sync(self, timeout: float = 2.0) -> None:
        """Return once every event that happened before this call has been read: the tracepoint
        writes the ring buffer synchronously, so it is enough that the reader finds trace_pipe
        empty after now."""
        now = time.monotonic()
        if self._thread is None:
            return
        os.write(self._wake[1], b"s")
        with self._cond:
            self._cond.wait_for(lambda: self._empty_at >= now, timeout)

    def events(self, timeout: float | None = None, deadline: float | None = None) -> Iterator[TraceEvent]:
        """Events as they arrive. Ends after `timeout` s without one, or at time.monotonic()
        `deadline` (e.g. a watch's --duration); None: never. For `watch --source trace`:
            with Tracer(("state",), ports=(port,), keep=False) as tracer:
                for event in tracer.events(deadline=end): print(event.to_dict())"""
        while True:
            ends = [t for t in (None if timeout is None else time.monotonic() + timeout, deadline) if t is not None]
            end = min(ends) if ends else None
            with self._cond:
                while not self._queue and self._thread is not None:
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        return
                    self._cond.wait(left)
                if not self._queue:
                    return  # the tracer was closed
                event = self._queue.popleft()
            yield event

    def wait_for(self, predicate, timeout: float = 5.0) -> TraceEvent | None:
        """The first event in history matching predicate, waiting up to timeout for it."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for event in self.history[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.history)
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return None
                self._cond.wait(left)

    def snapshot(self) -> list[TraceEvent]:
        self.sync()
        with self._cond:
            return list(self.history)


@dataclass(frozen=True)
class Transition:
    t: float  # CLOCK_MONOTONIC seconds
    sport: int
    dport: int
    old: str
    new: str


class StateTracer(Tracer):
    """with StateTracer(port) as tracer: ... ; tracer.transitions() -> [Transition]"""

    def __init__(self, port: int, **kw):
        super().__init__(("state",), ports=(port,), **kw)
        self.port = port

    def transitions(self) -> list[Transition]:
        return [Transition(e.mono, e.lport, e.rport, e.old_state, e.new_state) for e in self.snapshot()]
