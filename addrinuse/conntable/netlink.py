"""Linux backend: NETLINK_SOCK_DIAG (include/uapi/linux/inet_diag.h), the interface ss uses, spoken
with the standard library.

- One walk per snapshot. IPv4 and IPv6 share one established hash (262144 buckets here) and every
  dump walks all of it (net/ipv4/tcp_diag.c, tcp_diag_dump), so the cost of a snapshot is the number
  of dumps. The legacy TCPDIAG_GETSOCK request (struct inet_diag_req) is dumped with
  sdiag_family = AF_UNSPEC (inet_diag_dump_compat), i.e. both families in one walk; a kernel that
  refuses it gets one SOCK_DIAG_BY_FAMILY (struct inet_diag_req_v2) dump per family.
- The filter runs in the kernel: `(sport = P or dport = P)` and the host as a bytecode program
  (bytecode.py), so one dump answers both sides of a port; local-port queries also set
  id.idiag_sport, which the listener and established walks compare before running the program.
- States: only the ones asked for. The pseudo-state TCP_BOUND_INACTIVE (13, include/net/
  tcp_states.h, Linux 6.5+) makes the kernel also walk its bind hash for sockets that are bound but
  neither listen nor connect; they come back with idiag_state = TCP_CLOSE (7), measured on 6.18.
  They are asked for only when the caller asks for CLOSED.
- Timers: idiag_timer is 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero-window probe; idiag_expires
  is the time left in ms (tcp_twsk_diag_fill() for TIME_WAIT, whose idiag_state is tw_substate, so
  an orphaned FIN_WAIT2 shows as FIN_WAIT2 with the timewait timer).
- Both families: a listener on [::] without IPV6_V6ONLY keeps its IPv4 peers' entries in the
  AF_INET6 table as ::ffff:a.b.c.d, so a snapshot needs AF_INET and AF_INET6.
A dump is held as the kernel's own bytes and decoded one entry at a time (rawdump.py), so a
whole-table listing streams. One netlink socket is kept for the backend's life and reused."""

from __future__ import annotations

import errno as _errno
import os
import socket
import struct
from typing import Iterable

from addrinuse.conntable import KERNEL_STATES, Entry, normalize_states, sort_key
from addrinuse.conntable.rawdump import RawDump
from addrinuse.errors import BackendUnavailable

NETLINK_SOCK_DIAG = 4
TCPDIAG_GETSOCK = 18  # legacy request type: struct inet_diag_req, answered for both families at once
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21  # needs CAP_NET_ADMIN and CONFIG_INET_DIAG_DESTROY; tcp_abort() ends TIME_WAIT too
NLM_F_ACK = 0x4
ANSWERS = (TCPDIAG_GETSOCK, SOCK_DIAG_BY_FAMILY)
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
MSG_HEAD = struct.Struct("=IHHI")  # len, type, flags, seq: what the receive loop needs
DIAG_MSG_LEN = 72  # struct inet_diag_msg
PORTS = struct.Struct(">HH")  # id.idiag_sport, id.idiag_dport are big-endian
INODE = struct.Struct("=I")
COOKIE = struct.Struct("=Q")
TIMEWAIT_TIMER = 3
TCP_NEW_SYN_RECV = 12
TCP_BOUND_INACTIVE = 13
# Every state of the table, TCP_ESTABLISHED (1) ... TCP_NEW_SYN_RECV (12); not TCP_BOUND_INACTIVE.
TABLE_STATES = ((1 << (TCP_NEW_SYN_RECV + 1)) - 1) & ~1
INET_DIAG_NOCOOKIE = b"\xff" * 8
DUMP_RETRIES = 5
RECV_BUF = 1 << 16  # the kernel sizes dump skbs after the reader's buffer (up to 32 KiB and more)


def state_mask(states: frozenset[str] | None) -> int:
    if states is None:
        return TABLE_STATES
    mask = 0
    for number, name in enumerate(KERNEL_STATES):
        if name in states:
            mask |= 1 << number
    if "SYN_RECV" in states:
        mask |= 1 << TCP_NEW_SYN_RECV  # request sockets (tcp_states.h) are what SYN_RECV means to users
    if "CLOSED" in states:
        mask |= 1 << TCP_BOUND_INACTIVE  # bound-only sockets: the kernel walks its bind hash for them
    return mask


def _sockid(sport: int) -> bytes:
    # struct inet_diag_sockid: sport, dport (0: any), src[4], dst[4], if, cookie
    return PORTS.pack(sport, 0) + bytes(32) + struct.pack("=I", 0) + INET_DIAG_NOCOOKIE


def request(family: int, mask: int, sport: int, program: bytes, seq: int) -> bytes:
    """SOCK_DIAG_BY_FAMILY dump of one family (struct inet_diag_req_v2), with an optional filter."""
    body = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, mask) + _sockid(sport) + program
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def compat_request(mask: int, sport: int, program: bytes, seq: int) -> bytes:
    """struct inet_diag_req (v1): family, src_len, dst_len, ext, id, states, dbs. Family 0 = both."""
    body = (struct.pack("=BBBB", socket.AF_UNSPEC, 0, 0, 0) + _sockid(sport) + struct.pack("=II", mask, 0)
            + program)
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), TCPDIAG_GETSOCK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


class _Refused(Exception):
    """The kernel answered the request with an error (errno in args[0])."""


class _Interrupted(Exception):
    """NLM_F_DUMP_INTR: the tables changed during the dump; its content may be inconsistent."""


class NetlinkBackend:
    name = "netlink"
    has_timers = True

    def __init__(self, cache_owners: bool = False) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
            self.sock.bind((0, 0))
        except (OSError, AttributeError) as err:
            raise BackendUnavailable(f"netlink sock_diag is unavailable here ({err}): use --backend psutil") from err
        self.seq = 0
        self.compat = True  # until the kernel refuses TCPDIAG_GETSOCK once
        self.buf = bytearray(RECV_BUF)
        # address text by the kernel's 16 bytes, per family (0.0.0.0 and :: are the same bytes)
        self._addr_cache: dict[int, dict[bytes, str]] = {socket.AF_INET: {}, socket.AF_INET6: {}}
        self._owner_cache: dict | None = {} if cache_owners else None

    def close(self) -> None:
        self.sock.close()

    def snapshot(self, port: int | None = None, states: Iterable[str] | None = None, local: bool = False,
                 host: str | None = None) -> list[Entry]:
        """Entries whose local port (or, unless local=True, remote port) is `port`, sorted. A socket
        met twice in one dump (its hash chain changed between two of the kernel's batches) is
        listed once, as it was last met."""
        latest = {e.key: e for e in self.table(port, states, local, host)}
        return sorted(latest.values(), key=sort_key)

    def table(self, port: int | None = None, states: Iterable[str] | None = None, local: bool = False,
              host: str | None = None) -> RawDump:
        """The same entries, in the kernel's order, held as its bytes and decoded while iterated."""
        from addrinuse.conntable.bytecode import port_and_host_filter
        from addrinuse.conntable.owners import resolve_owners

        wanted = normalize_states(states)
        mask = state_mask(wanted)
        program = port_and_host_filter(port, local, host)
        sport = port if (port is not None and local) else 0
        chunks, seqs, inodes = self._dump_both(mask, sport, program)
        owners = resolve_owners(inodes, self._owner_cache) if inodes else {}
        return RawDump(chunks, seqs, ANSWERS, owners, self._addr_cache, wanted, port, local, host)

    def _dump_both(self, mask: int, sport: int, program: bytes):
        if self.compat:
            try:
                return self._dump([lambda seq: compat_request(mask, sport, program, seq)])
            except _Refused:
                self.compat = False
        try:
            return self._dump([lambda seq, f=family: request(f, mask, sport, program, seq)
                               for family in (socket.AF_INET, socket.AF_INET6)], last_optional=True)
        except _Refused as err:
            raise BackendUnavailable(f"sock_diag refused the dump: {os.strerror(err.args[0])}") from err

    def _dump(self, makers, last_optional: bool = False):
        """Run the dumps in order into one list of datagrams, again if the kernel flags one as
        interrupted. last_optional: the last request (AF_INET6) may be refused as unsupported."""
        for _ in range(DUMP_RETRIES):
            chunks: list[bytes] = []
            seqs: set[int] = set()
            inodes: set[int] = set()
            try:
                for make_request in makers:
                    try:
                        seqs.add(self._dump_once(make_request, chunks, inodes))
                    except _Refused as err:
                        if not (last_optional and make_request is makers[-1]
                                and err.args[0] in (_errno.ENOENT, _errno.EAFNOSUPPORT)):
                            raise
                        # no IPv6 in this kernel: nothing to find there
                return chunks, seqs, inodes
            except _Interrupted:
                continue
        raise BackendUnavailable(f"sock_diag dump kept being interrupted ({DUMP_RETRIES} tries): the table is churning")

    def _dump_once(self, make_request, chunks: list[bytes], inodes: set[int]) -> int:
        """Receive one dump, each datagram kept whole; note the inodes of full sockets (their owners
        are looked up before anything is decoded). Returns the request's sequence number."""
        self.seq += 1
        seq = self.seq
        self.sock.send(make_request(seq))
        interrupted = False
        head, inode_at = MSG_HEAD.unpack_from, INODE.unpack_from
        while True:
            chunk = self.sock.recv(RECV_BUF)
            size = len(chunk)
            chunks.append(chunk)
            offset = 0
            while offset + NLMSG_HDR.size <= size:
                length, kind, flags, msg_seq = head(chunk, offset)
                if length < NLMSG_HDR.size:
                    raise BackendUnavailable("malformed netlink message from sock_diag")
                if msg_seq == seq:
                    if kind in ANSWERS:
                        body = offset + NLMSG_HDR.size
                        # timewait and request sockets have no inode: only full sockets are read
                        if length >= NLMSG_HDR.size + DIAG_MSG_LEN and chunk[body + 2] != TIMEWAIT_TIMER:
                            (inode,) = inode_at(chunk, body + 68)
                            if inode:
                                inodes.add(inode)
                    elif kind == NLMSG_DONE:
                        if interrupted or flags & NLM_F_DUMP_INTR:
                            raise _Interrupted()
                        return seq
                    elif kind == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", chunk, offset + NLMSG_HDR.size)
                        if code != 0:
                            raise _Refused(-code)
                    if flags & NLM_F_DUMP_INTR:
                        interrupted = True
                # else: left over from an earlier, abandoned dump
                offset += (length + 3) & ~3

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
