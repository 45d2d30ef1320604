"""What is ours in a shared table: entries are attributed by address and 4-tuple, never by port
number alone. Other programs' connections reuse the same port numbers (as local or remote port)
between other addresses, and connect() hands the same ephemeral port to connections toward other
destinations; only the full address pair names one connection."""

from __future__ import annotations

import ipaddress

from addrinuse.conntable import Entry


def _ip(text: str):
    ip = ipaddress.ip_address(text.split("%")[0])
    # A [::] listener without IPV6_V6ONLY keeps its IPv4 peers as ::ffff:a.b.c.d.
    return ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip


def same_address(bound: str, entry_addr: str) -> bool:
    """Whether a socket bound to `bound` (a wildcard or an address) has local address `entry_addr`."""
    if entry_addr == "*":
        return False
    a, b = _ip(bound), _ip(entry_addr)
    if a.is_unspecified:
        # 0.0.0.0 covers IPv4 only; :: covers IPv6 and (without v6only) IPv4-mapped peers.
        return a.version == b.version or (a.version == 6 and b.version == 4)
    return a == b


def bound_here(entry: Entry, address: str, port: int) -> bool:
    """The entry's local address:port is a socket bound to address:port (a server's side)."""
    return entry.lport == port and same_address(address, entry.laddr)


def same_connection(entry: Entry, local: tuple[str, int], remote: tuple[str, int]) -> bool:
    """The entry is the connection with this exact 4-tuple (as seen from its local end)."""
    return (entry.lport == local[1] and entry.rport == remote[1] and entry.raddr != "*"
            and _ip(entry.laddr) == _ip(local[0]) and _ip(entry.raddr) == _ip(remote[0]))
