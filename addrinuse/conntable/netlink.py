"""Linux backend: NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY with struct inet_diag_req_v2
(include/uapi/linux/inet_diag.h), the interface ss uses, spoken with the standard library.

- The port is filtered in the kernel: inet_diag_dump_icsk() skips sockets whose sk_num differs from
  a non-zero id.idiag_sport (or whose sk_dport differs from id.idiag_dport), so a snapshot of one port
  costs a walk of the hash tables in C and a handful of messages, not the whole table.
- Timers: idiag_timer is 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero-window probe; idiag_expires
  is the time left in ms (inet_twsk_diag_fill() for TIME_WAIT, whose idiag_state is tw_substate, so an
  orphaned FIN_WAIT2 shows as FIN_WAIT2 with the timewait timer).
- Both families: a listener on [::] without IPV6_V6ONLY keeps its IPv4 peers' entries in the AF_INET6
  table as ::ffff:a.b.c.d, so a snapshot needs AF_INET and AF_INET6. IPv4 and IPv6 share one
  established hash (262144 buckets here), and every dump walks all of it: two SOCK_DIAG_BY_FAMILY
  requests cost two walks (measured 2 x 3.4 ms at 50k TIME_WAIT). The legacy TCPDIAG_GETSOCK request
  on the same socket (struct inet_diag_req) is dumped by inet_diag_dump_compat() with
  sdiag_family = AF_UNSPEC, i.e. both families in one walk; it is used first, and a kernel that
  refuses it gets the two inet_diag_req_v2 dumps.
One netlink socket is kept for the backend's life and reused across polls."""

from __future__ import annotations

import errno as _errno
import os
import socket
import struct
from typing import Iterable

from addrinuse.conntable import KERNEL_STATES, Entry, normalize_states, sort_key
from addrinuse.errors import BackendUnavailable

NETLINK_SOCK_DIAG = 4
TCPDIAG_GETSOCK = 18  # legacy request type: struct inet_diag_req, answered for both families at once
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21  # needs CAP_NET_ADMIN and CONFIG_INET_DIAG_DESTROY; tcp_abort() ends TIME_WAIT too
NLM_F_ACK = 0x4
INET_DIAG_SKV6ONLY = 11
ATTR = struct.Struct("=HH")
COOKIE = struct.Struct("=Q")
ANSWERS = (TCPDIAG_GETSOCK, SOCK_DIAG_BY_FAMILY)
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
DIAG_MSG_LEN = 72  # struct inet_diag_msg
TAIL = struct.Struct("=IIIII")  # idiag_expires, rqueue, wqueue, uid, inode (offset 52)
PORTS = struct.Struct(">HH")  # id.idiag_sport, id.idiag_dport are big-endian
TIMERS = {1: "on", 2: "keepalive", 3: "timewait", 4: "persist"}
TCP_NEW_SYN_RECV = 12
INET_DIAG_NOCOOKIE = b"\xff" * 8
DUMP_RETRIES = 5
RECV_BUF = 1 << 16  # the kernel sizes dump skbs after the reader's buffer (up to 32 KiB and more)


def state_mask(states: frozenset[str] | None) -> int:
    if states is None:
        return 0xFFFFFFFF
    mask = 0
    for number, name in enumerate(KERNEL_STATES):
        if name in states:
            mask |= 1 << number
    if "SYN_RECV" in states:
        mask |= 1 << TCP_NEW_SYN_RECV  # request sockets (tcp_states.h) are what SYN_RECV means to users
    return mask


def request(family: int, mask: int, sport: int, dport: int, seq: int) -> bytes:
    body = (struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, mask) + PORTS.pack(sport, dport)
            + bytes(32) + struct.pack("=I", 0) + INET_DIAG_NOCOOKIE)
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def compat_request(mask: int, sport: int, dport: int, seq: int) -> bytes:
    """struct inet_diag_req (v1): family, src_len, dst_len, ext, id, states, dbs. Family 0 = both."""
    body = (struct.pack("=BBBB", socket.AF_UNSPEC, 0, 0, 0) + PORTS.pack(sport, dport) + bytes(32)
            + struct.pack("=I", 0) + INET_DIAG_NOCOOKIE + struct.pack("=II", mask, 0))
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), TCPDIAG_GETSOCK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


class _Refused(Exception):
    """The kernel answered the request with an error (errno in args[0])."""


class _Interrupted(Exception):
    """NLM_F_DUMP_INTR: the tables changed during the dump; its content may be inconsistent."""


class NetlinkBackend:
    name = "netlink"
    has_timers = True

    def __init__(self) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
            self.sock.bind((0, 0))
        except (OSError, AttributeError) as err:
            raise BackendUnavailable(f"netlink sock_diag is unavailable here ({err}): use --backend psutil") from err
        self.seq = 0
        self.compat = True  # until the kernel refuses TCPDIAG_GETSOCK once
        self.buf = bytearray(RECV_BUF)
        self._addr_cache: dict[bytes, str] = {}

    def close(self) -> None:
        self.sock.close()

    def snapshot(self, port: int | None = None, states: Iterable[str] | None = None, local: bool = False) -> list[Entry]:
        """Entries whose local port (or, unless local=True, remote port) is `port`."""
        mask = state_mask(normalize_states(states))
        filters = [(0, 0)] if port is None else [(port, 0)] if local else [(port, 0), (0, port)]
        found: dict[tuple, Entry] = {}
        for sport, dport in filters:
            for entry in self._dump_both(mask, sport, dport):
                found[entry.key] = entry
        entries = list(found.values())
        if any(e.inode for e in entries):
            from addrinuse.conntable.owners import attach_owners

            entries = attach_owners(entries)
        return sorted(entries, key=sort_key)

    def _dump_both(self, mask: int, sport: int, dport: int) -> list[Entry]:
        if self.compat:
            try:
                return self._dump(lambda seq: compat_request(mask, sport, dport, seq))
            except _Refused:
                self.compat = False
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                out += self._dump(lambda seq: request(family, mask, sport, dport, seq))
            except _Refused as err:
                if family == socket.AF_INET6 and err.args[0] in (_errno.ENOENT, _errno.EAFNOSUPPORT):
                    continue  # no IPv6 in this kernel: nothing to find there
                raise BackendUnavailable(f"sock_diag refused the dump: {os.strerror(err.args[0])}") from err
        return out

    def _dump(self, make_request) -> list[Entry]:
        for _ in range(DUMP_RETRIES):
            try:
                return self._dump_once(make_request)
            except _Interrupted:
                continue
        raise BackendUnavailable(f"sock_diag dump kept being interrupted ({DUMP_RETRIES} tries): the table is churning")

    def _dump_once(self, make_request) -> list[Entry]:
        self.seq += 1
        seq = self.seq
        self.sock.send(make_request(seq))
        out: list[Entry] = []
        interrupted = False
        view = memoryview(self.buf)
        while True:
            size = self.sock.recv_into(self.buf)
            offset = 0
            while offset + NLMSG_HDR.size <= size:
                length, kind, flags, msg_seq, _ = NLMSG_HDR.unpack_from(self.buf, offset)
                if length < NLMSG_HDR.size:
                    raise BackendUnavailable("malformed netlink message from sock_diag")
                body = offset + NLMSG_HDR.size
                if msg_seq != seq:
                    offset += (length + 3) & ~3
                    continue  # left over from an earlier, abandoned dump
                if flags & NLM_F_DUMP_INTR:
                    interrupted = True
                if kind == NLMSG_DONE:
                    if interrupted:
                        raise _Interrupted()
                    return out
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", self.buf, body)
                    if code == 0:
                        offset += (length + 3) & ~3
                        continue
                    raise _Refused(-code)
                if kind in ANSWERS and length >= NLMSG_HDR.size + DIAG_MSG_LEN:
                    out.append(self._entry(view, body, offset + length))
                offset += (length + 3) & ~3

    def _entry(self, view: memoryview, o: int, end: int) -> Entry:
        buf = self.buf
        family, state, timer = buf[o], buf[o + 1], buf[o + 2]
        sport, dport = PORTS.unpack_from(buf, o + 4)
        size = 4 if family == socket.AF_INET else 16
        laddr = self._addr(family, bytes(view[o + 8:o + 8 + size]))
        raddr = self._addr(family, bytes(view[o + 24:o + 24 + size]))
        (cookie,) = COOKIE.unpack_from(buf, o + 44)
        expires, _, _, uid, inode = TAIL.unpack_from(buf, o + 52)
        v6only = None
        a = o + DIAG_MSG_LEN
        while a + ATTR.size <= end:  # rtattrs follow the message; only SKV6ONLY is wanted
            alen, atype = ATTR.unpack_from(buf, a)
            if alen < ATTR.size:
                break
            if atype == INET_DIAG_SKV6ONLY:
                v6only = bool(buf[a + ATTR.size])
            a += (alen + 3) & ~3
        name = KERNEL_STATES[state] if state < len(KERNEL_STATES) else f"STATE{state}"
        if name == "LISTEN":
            raddr, dport = "*", 0
        return Entry(
            family=4 if family == socket.AF_INET else 6, laddr=laddr, lport=sport, raddr=raddr, rport=dport,
            state=name, inode=inode or None, uid=uid, timer=TIMERS.get(timer),
            expires_in_s=expires / 1000.0 if timer else None, v6only=v6only, cookie=cookie,
        )

    def destroy(self, entry: Entry) -> int:
        """SOCK_DESTROY one socket, named by its 4-tuple and cookie (as `ss -K` does). Returns 0, or
        the errno the kernel answered: EOPNOTSUPP without CONFIG_INET_DIAG_DESTROY, EPERM without
        CAP_NET_ADMIN, ENOENT when the socket is already gone."""
        family = socket.AF_INET if entry.family == 4 else socket.AF_INET6
        src = socket.inet_pton(family, entry.laddr).ljust(16, b"\0")
        dst = socket.inet_pton(family, entry.raddr).ljust(16, b"\0")
        body = (struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)
                + PORTS.pack(entry.lport, entry.rport) + src + dst + struct.pack("=I", 0)
                + (COOKIE.pack(entry.cookie) if entry.cookie is not None else INET_DIAG_NOCOOKIE))
        self.seq += 1
        self.sock.send(NLMSG_HDR.pack(NLMSG_HDR.size + len(body), SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK,
                                      self.seq, 0) + body)
        while True:
            size = self.sock.recv_into(self.buf)
            offset = 0
            while offset + NLMSG_HDR.size <= size:
                length, kind, _, seq, _ = NLMSG_HDR.unpack_from(self.buf, offset)
                if seq == self.seq and kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", self.buf, offset + NLMSG_HDR.size)
                    return -code
                offset += max((length + 3) & ~3, NLMSG_HDR.size)

    def _addr(self, family: int, raw: bytes) -> str:
        text = self._addr_cache.get(raw)
        if text is None:
            text = self._addr_cache[raw] = socket.inet_ntop(family, raw)
        return text
