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
V6ONLY_JSON = {None: "null", True: "true", False: "false"}
_new_entry = tuple.__new__  # Entry(...) without NamedTuple.__new__'s keyword handling: the hot path


LITTLE = sys.byteorder == "little"  # the ports were read in host order: swap them to network order


def _swap(port: int) -> int:
    return (port & 0xFF) << 8 | port >> 8 if LITTLE else port


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

    def _answers(self) -> Iterator[list[tuple]]:
        """Per datagram, the (MESSAGE fields, offset) of each answer to this dump's requests that
        the state and port checks keep; the ports in the fields are as read in host order (swap them). A list
        per datagram (a few hundred answers), not a generator per answer: the consumers' loops are
        the hot path of a whole-table listing."""
        seqs, answers, wanted, port, local = self.seqs, self.answers, self._wanted, self.port, self.local
        unpack, head, full, last_state = MESSAGE.unpack_from, HEAD.unpack_from, MESSAGE.size, len(wanted)
        nports = None if port is None else _swap(port)
        for chunk in self.chunks:
            offset, size, kept = 0, len(chunk), []
            while offset + HEAD.size <= size:
                if offset + full > size:  # a short message (NLMSG_DONE, an error) ends the datagram
                    offset += (head(chunk, offset)[0] + 3) & ~3
                    continue
                fields = unpack(chunk, offset)
                if (fields[3] in seqs and fields[1] in answers and fields[0] >= DIAG_MSG_END and fields[5] < last_state
                        and wanted[fields[5]] and (nports is None or fields[7] == nports
                                                   or (not local and fields[8] == nports))):
                    kept.append((fields, offset))
                offset += (fields[0] + 3) & ~3
            yield chunk, kept

    def __iter__(self) -> Iterator[Entry]:
        count = 0
        caches, owners, host = self.addr_cache, self.owners, self.host
        inet, timers, names = socket.AF_INET, TIMERS, STATE_NAMES
        for chunk, kept in self._answers():
            for (_, _, _, _, family, state, timer, lport, rport, src, dst, cookie, expires, _, _, uid, inode), offset \
                    in kept:
                cache = caches[family]  # per family: 0.0.0.0 and :: are the same 16 bytes
                laddr = cache.get(src) or self._addr(family, src)
                if state == TCP_LISTEN:
                    raddr, rport = "*", 0
                else:
                    raddr = cache.get(dst) or self._addr(family, dst)
                    rport = (rport & 0xFF) << 8 | rport >> 8 if LITTLE else rport
                entry = _new_entry(Entry, (
                    4 if family == inet else 6, laddr, (lport & 0xFF) << 8 | lport >> 8 if LITTLE else lport, raddr,
                    rport, names[state], owners.get(inode, ()) if inode else (), inode or None, uid,
                    timers[timer] if timer < 5 else None, expires / 1000.0 if timer else None,
                    None if family == inet else _v6only(chunk, offset), cookie))
                if host is not None and not _has_address(entry, host):
                    continue
                count += 1
                yield entry
        self.count = count

    def text_lines(self, timers: bool = True) -> Iterator[str]:
        """Each entry as its line of the text table: exactly render.tables.table_row(entry), straight
        from the bytes (the column rules are render.tables'; this only remembers the pieces: the
        first two columns per local address and port, the state and time left per value)."""
        from addrinuse.render import WIDTH, fit
        from addrinuse.render.tables import EP, endpoint_host, owners_text, table_row

        if self.host is not None:  # the host check needs the decoded entry: the plain way
            yield from (table_row(e, timers) for e in self)
            return
        count = 0
        caches, owners, inet, names = self.addr_cache, self.owners, socket.AF_INET, STATE_NAMES
        starts: dict[tuple, str] = {}
        remote_hosts: dict[tuple, str] = {}
        middles: dict[tuple, str] = {}
        for _, kept in self._answers():
            for (_, _, _, _, family, state, timer, lport, rport, src, dst, _, expires, _, _, _, inode), _ in kept:
                start = starts.get((family, src, lport))
                if start is None:
                    laddr = caches[family].get(src) or self._addr(family, src)
                    start = (f"{'tcp' if family == inet else 'tcp6':<5} "
                             f"{f'{endpoint_host(laddr)}:{_swap(lport)}':<{EP}} ")
                    if len(starts) < 4096:  # servers' ports repeat, clients' do not: a small memo
                        starts[(family, src, lport)] = start
                if state == TCP_LISTEN:
                    remote = "*:*"
                else:
                    host = remote_hosts.get((family, dst))
                    if host is None:
                        host = remote_hosts[(family, dst)] = endpoint_host(
                            caches[family].get(dst) or self._addr(family, dst)) + ":"
                    remote = host + str((rport & 0xFF) << 8 | rport >> 8 if LITTLE else rport)
                left = expires if timer else None
                middle = middles.get((state, left))
                if middle is None:
                    middle = middles[(state, left)] = f" {names[state]:<11}" + (
                        f" {'-' if left is None else f'{left / 1000.0:.1f}s':>6}" if timers else "")
                head = start + remote.ljust(EP) + middle
                held = owners.get(inode) if inode else None
                tail = owners_text(held) if held else "-"
                count += 1
                yield (head + " " + tail).rstrip() if len(head) + 1 + len(tail) <= WIDTH else fit(head, tail, indent=6)
        self.count = count

    def json_items(self) -> Iterator[str]:
        """Each entry as JSON text: exactly jsonstream.entry_json(entry), straight from the bytes.
        The text is put together from pieces remembered per address, per (state, owners, uid,
        timer) and per time left: most of a big table is TIME_WAIT entries that differ only in
        ports, remote address, time left and cookie."""
        from addrinuse.jsonstream import encode_str, entry_json, owners_json

        if self.host is not None:  # the host check needs the decoded entry: the plain way
            yield from map(entry_json, self)
            return
        count = 0
        caches, owners, inet = self.addr_cache, self.owners, socket.AF_INET
        local_part: dict[tuple, str] = {}  # '{"family": 4, "laddr": "...", "lport": '
        remote_part: dict[tuple, str] = {}  # ', "raddr": "...", "rport": '
        middle_part: dict[tuple, str] = {}  # ', "state": ... "expires_in_s": '
        left: dict[int, str] = {}
        for chunk, kept in self._answers():
            for (_, _, _, _, family, state, timer, lport, rport, src, dst, cookie, expires, _, _, uid, inode), offset \
                    in kept:
                head = local_part.get((family, src))
                if head is None:
                    laddr = caches[family].get(src) or self._addr(family, src)
                    head = local_part[(family, src)] = (
                        f'{{"family": {4 if family == inet else 6}, "laddr": {encode_str(laddr)}, "lport": ')
                if state == TCP_LISTEN:
                    remote, rport = ', "raddr": "*", "rport": ', 0
                else:
                    remote = remote_part.get((family, dst))
                    if remote is None:
                        raddr = caches[family].get(dst) or self._addr(family, dst)
                        remote = remote_part[(family, dst)] = f', "raddr": {encode_str(raddr)}, "rport": '
                    rport = (rport & 0xFF) << 8 | rport >> 8 if LITTLE else rport
                middle = middle_part.get((state, inode, uid, timer))
                if middle is None:
                    holders = owners_json(owners.get(inode, ())) if inode else "[]"
                    name = STATE_NAMES[state]
                    kind = TIMERS[timer] if timer < len(TIMERS) else None
                    middle = (f', "state": {"null" if name is None else encode_str(name)}, "owners": {holders}, '
                              f'"inode": {inode or "null"}, "uid": {uid}, '
                              f'"timer": {"null" if kind is None else encode_str(kind)}, "expires_in_s": ')
                    if not inode:  # one per state and timer; a socket's own (owners) is not kept
                        middle_part[(state, inode, uid, timer)] = middle
                if timer:
                    seconds = left.get(expires)
                    if seconds is None:
                        seconds = left[expires] = float.__repr__(expires / 1000.0)
                else:
                    seconds = "null"
                v6only = "null" if family == inet else V6ONLY_JSON[_v6only(chunk, offset)]
                count += 1
                yield (f'{head}{(lport & 0xFF) << 8 | lport >> 8 if LITTLE else lport}{remote}{rport}{middle}{seconds}'
                       f', "v6only": {v6only}, "cookie": {cookie}}}')
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
