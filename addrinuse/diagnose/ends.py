"""Which end of a connection an entry on the port is, and the ephemeral-range facts about the port.

An entry is the client end when its remote endpoint is a listener on this host, or when this tool
opened the connection itself; the server end when its local address:port is a listener's now, or
was one of the servers this tool started (its records). Otherwise nothing on this host says which:
a TIME_WAIT or FIN_WAIT2 entry only says that this host closed first, and the port number proves
nothing (an accepted connection can sit on a port inside ip_local_port_range, and connect() hands
out ports that a server may want later)."""

from __future__ import annotations

from typing import Iterable, NamedTuple

from addrinuse.conntable import Entry
from addrinuse.conntable.match import same_address


def _covers(listener_addr: str, port: int, addr: str, rport: int) -> bool:
    return port == rport and same_address(listener_addr, addr)


def end_of(e: Entry, listeners: Iterable[Entry], servers: Iterable[tuple[str, int]],
           connected: frozenset = frozenset()) -> str | None:
    """'client', 'server' or None for one non-listening entry. `listeners`: LISTEN entries of this
    host (any port); `servers`: (address, port) of servers this tool started; `connected`: 4-tuples
    (laddr, lport, raddr, rport) of connections this tool opened."""
    listeners = list(listeners)
    remote_listens = any(_covers(l.laddr, l.lport, e.raddr, e.rport) for l in listeners)
    local_listens = any(_covers(l.laddr, l.lport, e.laddr, e.lport) for l in listeners) or any(
        _covers(host, port, e.laddr, e.lport) for host, port in servers)
    if (e.laddr, e.lport, e.raddr, e.rport) in connected or (remote_listens and not local_listens):
        return "client"
    if local_listens and not remote_listens:
        return "server"
    return None


class PortRange(NamedTuple):
    low: int
    high: int
    reserved: frozenset[int]  # net.ipv4.ip_local_reserved_ports

    def holds(self, port: int) -> bool:
        return self.low <= port <= self.high

    def usable(self) -> int:
        return self.high - self.low + 1 - sum(self.holds(p) for p in self.reserved)

    @property
    def text(self) -> str:
        return f"{self.low}-{self.high}"


def parse_ports(text: str) -> frozenset[int]:
    """'8080,9000-9002' -> {8080, 9000, 9001, 9002} (the format of ip_local_reserved_ports)."""
    out: set[int] = set()
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        out.update(range(int(low), int(high or low) + 1))
    return frozenset(out)


def port_range() -> PortRange | None:
    """ip_local_port_range and ip_local_reserved_ports of the current network namespace (the IPv4
    sysctls govern IPv6 connect() too: inet_sk_get_local_port_range())."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return None
    try:
        with open("/proc/sys/net/ipv4/ip_local_reserved_ports") as f:
            reserved = parse_ports(f.read())
    except (OSError, ValueError):
        reserved = frozenset()
    return PortRange(low, high, reserved)


def range_advice(port: int, range_text: str) -> str:
    """What to do about a server port that outgoing connections can take."""
    return (f"port {port} lies inside ip_local_port_range ({range_text}), so outgoing connections can "
            f"take it: reserve it (sysctl net.ipv4.ip_local_reserved_ports={port}) or use a port "
            f"outside the range; tcp_tw_reuse does not help a bind")
