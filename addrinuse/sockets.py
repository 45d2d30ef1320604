"""Socket options and bind/listen probes that report which syscall failed and with which errno.

Kernel rule the probes expose (net/ipv4/inet_connection_sock.c, inet_bind_conflict()): a new socket
may share a port with an existing one only if *both* have SO_REUSEADDR and the existing one is not
listening, or both have SO_REUSEPORT (and the same uid, or the old one is in TIME_WAIT). A TIME_WAIT
entry inherits sk_reuse/sk_reuseport from the socket it replaced (inet_twsk_alloc()), which inherited
them from its listener at accept(). So SO_REUSEADDR on the new server alone does not get past the
TIME_WAIT entries of an old server that did not set it.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import NamedTuple

from addrinuse.errors import AddressInUse, BadInput, SocketCallError

LOOPBACK_HINT = "use 127.0.0.1 or ::1, or pass --allow-public to use {host} on purpose"


# NamedTuples, not dataclasses: `rebind` loads this module at every start, and a frozen dataclass
# costs about a millisecond to create (measured with python -X importtime).
class SocketOptions(NamedTuple):
    reuseaddr: bool = False
    reuseport: bool = False
    # SO_LINGER {on, 0} on accepted sockets: close() sends RST and skips TIME_WAIT (tcp_disconnect path).
    linger0: bool = False
    # None leaves the kernel default (net.ipv6.bindv6only) alone.
    v6only: bool | None = None


class ProbeResult(NamedTuple):
    ok: bool
    host: str
    port: int
    reuseaddr: bool
    reuseport: bool
    errno: int | None = None
    error: str | None = None
    syscall: str | None = None

    def to_dict(self) -> dict:
        return self._asdict()


def resolve(host: str) -> tuple[int, str]:
    """Return (family, numeric address) for a host name or literal, first answer wins like most servers."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)  # a literal needs no resolver (nor its IDNA codec)
            return family, host
        except (OSError, ValueError):
            pass
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as err:
        raise BadInput(f"host {host!r} does not resolve: use an IP address such as 127.0.0.1") from err
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr[0]


def is_loopback(address: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def require_loopback(host: str, allow_public: bool, hint: str | None = None) -> tuple[int, str]:
    family, address = resolve(host)
    if not allow_public and not is_loopback(address):
        raise BadInput(f"{host} ({address}) is not a loopback address: " + (hint or LOOPBACK_HINT.format(host=host)))
    return family, address


def has_ipv6_loopback() -> bool:
    """Whether ::1 can be bound here (an IPv6-less kernel or a disabled lo answers no)."""
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
        return True
    except OSError:
        return False


def new_socket(family: int, opts: SocketOptions) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if opts.reuseaddr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if opts.reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and opts.v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(opts.v6only))
    except BaseException:
        sock.close()
        raise
    return sock


def set_linger0(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _raise_for(syscall: str, err: OSError, host: str, port: int):
    code = err.errno or 0
    if code == errno.EACCES:
        start = _unprivileged_port_start()
        raise BadInput(
            f"port {port} is privileged (below net.ipv4.ip_unprivileged_port_start={start}): "
            f"use a port >= {start} or run as root"
        ) from err
    if code == errno.EADDRNOTAVAIL:
        raise BadInput(f"{host} is not an address of this machine: use 127.0.0.1 or one that 'ip addr' lists") from err
    cls = AddressInUse if code == errno.EADDRINUSE else SocketCallError
    raise cls(syscall, code, host, port) from err


def _unprivileged_port_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read())
    except OSError:
        return 1024


def bind_listen(host: str, port: int, opts: SocketOptions, backlog: int = 128) -> socket.socket:
    """bind() then listen() as a server does; raises SocketCallError naming the call that failed."""
    family, address = resolve(host)
    sock = new_socket(family, opts)
    try:
        for syscall in ("bind", "listen"):
            try:
                if syscall == "bind":
                    sock.bind((address, port))
                else:
                    sock.listen(backlog)
            except OSError as err:
                _raise_for(syscall, err, host, port)
    except BaseException:
        sock.close()
        raise
    return sock


def probe(host: str, port: int, opts: SocketOptions) -> ProbeResult:
    """Bind and listen as a new server would, then release at once. Bind conflicts are
    only decided at listen() for two SO_REUSEADDR binders (inet_csk_listen_start() re-runs
    get_port), so stopping after bind() would report a false 'ok'."""
    base = dict(host=host, port=port, reuseaddr=opts.reuseaddr, reuseport=opts.reuseport)
    try:
        bind_listen(host, port, opts, backlog=1).close()
    except SocketCallError as err:
        return ProbeResult(ok=False, errno=err.errno, error=err.errname, syscall=err.syscall, **base)
    return ProbeResult(ok=True, **base)


def errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code)) if code else "OK"



def wait_until_bindable(host: str, port: int, opts: SocketOptions, timeout: float, interval: float = 0.1,
                        on_attempt=None) -> tuple[ProbeResult, float]:
    """Probe until ok or `timeout` passes (one probe when timeout is 0). Returns (last result, waited s)."""
    import time

    began = time.monotonic()
    while True:
        result = probe(host, port, opts)
        waited = time.monotonic() - began
        if on_attempt:
            on_attempt(result, waited)
        if result.ok or waited >= timeout:
            return result, waited
        time.sleep(min(interval, max(0.0, timeout - waited)))
