"""Which sockets on a port are in the way of a bind: the kernel's rules, and probes that settle it.

Two questions, as the kernel asks them (net/ipv4/inet_connection_sock.c):
1. Do the addresses overlap? inet_rcv_saddr_equal() / ipv6_rcv_saddr_equal() with wildcards, and
   since 6.1 the bhash2 lookups (inet_bhash2_conflict(), inet_bhash2_addr_any_conflict()):
   - IPv4 a vs IPv4 b: a == b, or either is 0.0.0.0;
   - IPv4 vs an IPv6 socket: never when it is IPV6_V6ONLY; [::] covers IPv4; ::ffff:b is IPv4 b;
     a specific IPv6 address (::1) never (measured on 6.18: 0.0.0.0 binds beside [::1] v6only off;
     before bhash2 the IPv4 wildcard matched its sk_rcv_saddr LOOPBACK4_IPV6 and conflicted);
   - [::] vs IPv4 or ::ffff: sockets: only when the new socket is not IPV6_V6ONLY; [::] vs any
     IPv6 address: always (two [::] v6only sockets still conflict);
   - a specific IPv6 address: only [::] (v6only or not) and the same address; never IPv4.
2. Do the options let them share (inet_bind_conflict())? Both SO_REUSEADDR and the old socket not
   listening; or both SO_REUSEPORT and (the old one in TIME_WAIT or the same effective uid,
   compared on sk_uid: the fsuid that created the socket). A TIME_WAIT entry keeps the options of
   the socket it replaced. The options of another process's socket are not visible, so question 2
   is answered by probes: a real bind as the user's server would do it, and for SO_REUSEPORT a
   bind as the listener's own uid."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from typing import NamedTuple

from addrinuse.conntable import Entry

ANY4, ANY6 = "0.0.0.0", "::"


class Bind(NamedTuple):
    """The bind the user asks about."""
    family: int  # 4 or 6
    address: str
    v6only: bool  # for family 6: IPV6_V6ONLY of the new socket (the kernel default if not given)
    port: int


def default_v6only() -> bool:
    """net.ipv6.bindv6only: IPV6_V6ONLY of a new AF_INET6 socket that does not set it."""
    try:
        with open("/proc/sys/net/ipv6/bindv6only") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def make_bind(family: int, address: str, port: int, v6only: bool | None = None) -> Bind:
    fam = 4 if family == socket.AF_INET else 6
    return Bind(fam, address, default_v6only() if v6only is None and fam == 6 else bool(v6only), port)


def _mapped(addr: str) -> str | None:
    try:
        ip = ipaddress.ip_address(addr.split("%")[0])
    except ValueError:
        return None
    return str(ip.ipv4_mapped) if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else None


def _same6(a: str, b: str) -> bool:
    return ipaddress.ip_address(a.split("%")[0]) == ipaddress.ip_address(b.split("%")[0])


def not_in_the_way(bind: Bind, e: Entry) -> str | None:
    """None when the entry's local address overlaps the bind's (it can conflict); otherwise the
    kernel's reason why it cannot, in words."""
    fam, addr = bind.family, bind.address
    if fam == 6 and _mapped(addr):  # a v4-mapped bind is an IPv4 bind (inet_use_bhash2_on_bind())
        fam, addr = 4, _mapped(addr)
    e_v4 = e.laddr if e.family == 4 else _mapped(e.laddr)
    if fam == 4:
        if e.family == 4:
            return None if ANY4 in (addr, e.laddr) or addr == e.laddr else f"{e.laddr} is another address"
        if e.laddr == ANY6:
            return "IPv6-only (IPV6_V6ONLY), it takes no IPv4" if e.v6only else None
        if e_v4 is not None:
            return None if ANY4 in (addr, e_v4) or addr == e_v4 else f"{e_v4} is another address"
        return f"IPv6 {e.laddr} does not cover IPv4 {addr}"
    if addr == ANY6:
        if e.family == 4 or e_v4 is not None:
            return "IPv4, and the [::] bind is IPv6-only (IPV6_V6ONLY)" if bind.v6only else None
        return None
    if e.family == 4 or e_v4 is not None:
        return f"IPv4 {e_v4} does not cover IPv6 {addr}"
    return None if e.laddr == ANY6 or _same6(e.laddr, addr) else f"{e.laddr} is another address"


class BindProbe(NamedTuple):
    ok: bool
    errno: int | None
    error: str | None


def bind_probe(bind: Bind, reuseport: bool, uid: int | None = None) -> BindProbe:
    """bind() only (no listen()), optionally with a socket created as another uid.

    For a SO_REUSEPORT socket without SO_REUSEADDR, bind() decides exactly as listen() would
    (inet_csk_get_port() runs the same inet_bind_conflict() check both times; only the
    SO_REUSEADDR-vs-not-listening case differs), and stopping before listen() matters: a listen()
    would join the live reuseport group and could be handed connections meant for the server.
    `uid`: the socket's sk_uid is the fsuid at socket() (sock_alloc() sets the inode's i_uid,
    sock_init_data() copies it), so setfsuid() around socket() gives a socket of that uid while
    this process keeps its own credentials. Needs CAP_SETUID (root); the fsuid is restored at once."""
    family = socket.AF_INET if bind.family == 4 else socket.AF_INET6
    sock = _socket_as(family, uid) if uid is not None and uid != os.geteuid() else socket.socket(family)
    try:
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(bind.v6only))
        sock.bind((bind.address, bind.port))
    except OSError as err:
        code = err.errno or 0
        return BindProbe(False, code, errno.errorcode.get(code, str(code)))
    finally:
        sock.close()
    if reuseport:
        _scrub(bind.port)
    return BindProbe(True, None, None)


# Plain binds on addresses few sockets use; the first that binds resets the port's fast path.
SCRUB_ADDRESSES = (("127.255.255.254", socket.AF_INET), ("127.254.0.1", socket.AF_INET), ("::1", socket.AF_INET6))


def _scrub(port: int) -> None:
    """Undo what a successful SO_REUSEPORT probe leaves in the kernel's bind bucket.

    A SO_REUSEPORT socket that binds beside others marks the bucket FASTREUSEPORT_STRICT with its
    own address, v6only and uid (inet_csk_update_fastreuse()), and the mark outlives it. Later
    SO_REUSEPORT binds that sk_reuseport_match() calls equal skip the conflict check; for two [::]
    it uses ipv6_rcv_saddr_equal(), true for any two wildcards whatever their IPV6_V6ONLY. Measured
    on 6.18: after a v6only [::] probe had bound and closed, a dual-stack [::] SO_REUSEPORT socket
    bound *and listened* beside a plain 127.0.0.1 listener, which it conflicts with. A probe must
    not change the answer the user's server gets: a plain socket that binds resets the mark to 0
    (the slow path: the full conflict check), then goes. A plain bind that fails changes nothing."""
    for address, family in SCRUB_ADDRESSES:
        sock = socket.socket(family)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address, port))
            return
        except OSError:
            continue
        finally:
            sock.close()


def can_probe_as(uid: int | None) -> bool:
    return uid is not None and (uid == os.geteuid() or os.geteuid() == 0)


def _socket_as(family: int, uid: int) -> socket.socket:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    previous = libc.setfsuid(uid)
    try:
        return socket.socket(family)
    finally:
        libc.setfsuid(previous)
        if libc.setfsuid(-1) != previous:  # setfsuid(-1) changes nothing and returns the current fsuid
            raise RuntimeError("could not restore the file-system uid")


def user_name(uid: int | None) -> str | None:
    if uid is None:
        return None
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
