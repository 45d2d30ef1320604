"""One sock_diag dump held as the kernel's bytes, decoded one entry at a time.

A whole-table dump at 50k TIME_WAIT entries is ~4.4 MB of kernel messages (88 bytes each) but
~13 MB as Entry tuples; held as the datagrams the kernel sent, a listing is written while it is
decoded and the process stays small (goal: <= 30 MiB at 50k, make bench). Entries come in the
kernel's walk order (listeners, bound-only sockets, then the established hash), as ss lists them;
snapshot() sorts its list, a streamed table does not.

json_items() turns each message straight into the JSON text of its entry, the same bytes as
json.dumps(entry.to_dict()) (tests/test_table_stream.py), without building the Entry: at 50k
entries the tuple and the dict are most of the time `table --json` takes."""

from __future__ import annotations

import socket
import struct
import sys
from typing import Iterator

from addrinuse.conntable import KERNEL_STATES, Entry, Owner

# nlmsghdr (len, type, flags, seq, pid) + struct inet_diag_msg: family, state, timer, (retrans),
# sport, dport (big-endian: swapped below), src, dst, (if), cookie, expires, rqueue, wqueue, uid, inode.
MESSAGE = struct.Struct("=IHHI4xBBBxHH16s16s4xQIIIII")
HEAD = struct.Struct("=IHHI")
ATTR = struct.Struct("=HH")
DIAG_MSG_END = 16 + 72
INET_DIAG_SKV6ONLY = 11
TCP_LISTEN = 10
TIMERS = (None, "on", "keepalive", "timewait", "persist")
# TCP_BOUND_INACTIVE (13) is reported by the kernel as TCP_CLOSE; named here in case one reports 13.
STATE_NAMES = KERNEL_STATES + ("CLOSED",)
_new_entry = tuple.__new__  # Entry(...) without NamedTuple.__new__'s keyword handling: the hot path


def _swap(port: int) -> int:
    return (port & 0xFF) << 8 | port >> 8


if sys.byteorder == "big":  # the ports were read in network order already
    def _swap(port: int) -> int:  # noqa: F811
        return port


class RawDump:
    """The entries of one dump: iterate to decode them (owners attached); `count` is how many the
    last complete iteration yielded."""

    def __init__(self, chunks: list[bytes], seqs: set[int], answers: tuple[int, ...],
                 owners: dict[int, tuple[Owner, ...]], addr_cache: dict[int, dict[bytes, str]],
                 states: frozenset[str] | None = None, port: int | None = None, local: bool = False,
                 host: str | None = None) -> None:
        self.chunks, self.seqs, self.answers = chunks, seqs, answers
        self.owners, self.addr_cache = owners, addr_cache
        self.states, self.port, self.local, self.host = states, port, local, host
        self.count: int | None = None
        # The kernel chose by state, port and host already; each message is checked again all the
        # same (a wrong answer is worse than a slow one), by state number and ports before decoding.
        self._wanted = tuple(states is None or name in states for name in STATE_NAMES)

    def _messages(self) -> Iterator[tuple]:
        """MESSAGE fields of each answer (ports in host order), chosen by state and port."""
        seqs, answers, wanted, port, local = self.seqs, self.answers, self._wanted, self.port, self.local
        unpack, head = MESSAGE.unpack_from, HEAD.unpack_from
        for chunk in self.chunks:
            offset, size = 0, len(chunk)
            while offset + HEAD.size <= size:
                length, kind, _, seq = head(chunk, offset)
                if seq in seqs and kind in answers and length >= DIAG_MSG_END:
                    fields = unpack(chunk, offset)
                    state = fields[5]
                    lport, rport = _swap(fields[7]), _swap(fields[8])
                    if (state < len(wanted) and wanted[state]) and (
                            port is None or lport == port or (not local and rport == port)):
                        yield fields, lport, rport, chunk, offset
                offset += (length + 3) & ~3

    def __iter__(self) -> Iterator[Entry]:
        count = 0
        caches, owners, host = self.addr_cache, self.owners, self.host
        for (_, _, _, _, family, state, timer, _, _, src, dst, cookie, expires, _, _, uid, inode), lport, rport, chunk, \
                offset in self._messages():
            cache = caches[family]  # per family: 0.0.0.0 and :: are the same 16 bytes
            laddr = cache.get(src) or self._addr(family, src)
            if state == TCP_LISTEN:
                raddr, rport = "*", 0
            else:
                raddr = cache.get(dst) or self._addr(family, dst)
            entry = _new_entry(Entry, (
                4 if family == socket.AF_INET else 6, laddr, lport, raddr, rport, STATE_NAMES[state],
                owners.get(inode, ()) if inode else (), inode or None, uid,
                TIMERS[timer] if timer < len(TIMERS) else None, expires / 1000.0 if timer else None,
                _v6only(chunk, offset) if family == socket.AF_INET6 else None, cookie))
            if host is not None and not _has_address(entry, host):
                continue
            count += 1
            yield entry
        self.count = count

    def json_items(self) -> Iterator[str]:
        """Each entry as JSON text: exactly jsonstream.entry_json(entry), straight from the bytes."""
        from addrinuse.jsonstream import ENTRY_TEMPLATE, encode_str, entry_json, owners_json

        if self.host is not None:  # the host check needs the decoded entry: the plain way
            yield from map(entry_json, self)
            return
        count = 0
        caches, owners = self.addr_cache, self.owners
        jcaches: dict[int, dict[bytes, str]] = {family: {} for family in caches}
        states = tuple("null" if name is None else encode_str(name) for name in STATE_NAMES)
        timers = tuple("null" if t is None else encode_str(t) for t in TIMERS)
        lit = {None: "null", True: "true", False: "false"}
        jowners: dict[int, str] = {}
        jexpires: dict[int, str] = {}
        for (_, _, _, _, family, state, timer, _, _, src, dst, cookie, expires, _, _, uid, inode), lport, rport, chunk, \
                offset in self._messages():
            jaddr, cache = jcaches[family], caches[family]  # per family: 0.0.0.0 and :: are the same bytes
            jl = jaddr.get(src)
            if jl is None:
                jl = jaddr[src] = encode_str(cache.get(src) or self._addr(family, src))
            if state == TCP_LISTEN:
                jr, rport = '"*"', 0
            else:
                jr = jaddr.get(dst)
                if jr is None:
                    jr = jaddr[dst] = encode_str(cache.get(dst) or self._addr(family, dst))
            if inode:
                jo = jowners.get(inode)
                if jo is None:
                    jo = jowners[inode] = owners_json(owners.get(inode, ()))
            else:
                jo = "[]"
            if timer:
                je = jexpires.get(expires)
                if je is None:
                    je = jexpires[expires] = float.__repr__(expires / 1000.0)
            else:
                je = "null"
            count += 1
            yield ENTRY_TEMPLATE % (
                4 if family == socket.AF_INET else 6, jl, lport, jr, rport, states[state], jo, inode or "null", uid,
                timers[timer] if timer < len(timers) else "null", je,
                lit[_v6only(chunk, offset)] if family == socket.AF_INET6 else "null", cookie)
        self.count = count

    def _addr(self, family: int, raw: bytes) -> str:
        text = self.addr_cache[family][raw] = socket.inet_ntop(family, raw[:4] if family == socket.AF_INET else raw)
        return text


def _v6only(chunk: bytes, offset: int) -> bool | None:
    """INET_DIAG_SKV6ONLY among the rtattrs after an AF_INET6 full socket's message (none for
    TIME_WAIT and request sockets)."""
    end = offset + HEAD.unpack_from(chunk, offset)[0]
    a = offset + DIAG_MSG_END
    while a + ATTR.size <= end:
        alen, atype = ATTR.unpack_from(chunk, a)
        if alen < ATTR.size:
            break
        if atype == INET_DIAG_SKV6ONLY:
            return bool(chunk[a + ATTR.size])
        a += (alen + 3) & ~3
    return None


def _has_address(entry: Entry, host: str) -> bool:
    from addrinuse.conntable.match import same_address

    return same_address(host, entry.laddr) or (entry.raddr != "*" and same_address(host, entry.raddr))
