"""Why connect() fails with EADDRNOTAVAIL: no local port left toward one destination.

connect() without bind() picks a local port in ip_local_port_range (__inet_hash_connect()): any
port whose 4-tuple toward this destination is unused, skipping ip_local_reserved_ports and ports a
bind() holds. When every port of the range already has a connection toward the same address:port
(often TIME_WAIT entries of short connections this host closed first), connect() returns
EADDRNOTAVAIL (errno 99). tcp_tw_reuse lets connect() take over a TIME_WAIT entry older than
tcp_tw_reuse_delay (1 s by default) when both ends used TCP timestamps (tcp_twsk_unique()); 2, the
default, allows it for loopback only. It is no help to a bind(): a server port is never taken that way."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable

from addrinuse.conntable import TCP_TIMEWAIT_LEN_S, Entry
from addrinuse.diagnose.ends import PortRange, port_range
from addrinuse.estimate import ipv4_sysctl, plain_addr


@dataclass
class Exhaustion:
    host: str
    port: int
    port_range: str | None
    usable: int  # ports of the range connect() may use (reserved ports taken out)
    used: int  # of them, those with a connection toward host:port (from one local address)
    reusable: int  # TIME_WAIT entries among them that tcp_tw_reuse would hand out now
    by_state: dict[str, int] = field(default_factory=dict)
    tw_reuse: int = 2
    timestamps: int = 1

    @property
    def exhausted(self) -> bool:
        return self.usable > 0 and self.used - self.reusable >= self.usable

    def to_dict(self) -> dict:
        return {**asdict(self), "exhausted": self.exhausted}

    def fixes(self) -> str:
        reuse = ("set net.ipv4.tcp_tw_reuse=1 (for outgoing connect() only, with TCP timestamps on both "
                 "ends; it does nothing for a bind())" if self.tw_reuse != 1 else "check that both ends use "
                 "TCP timestamps (tcp_tw_reuse=1 is set, and needs them; it does nothing for a bind())")
        return (f"widen net.ipv4.ip_local_port_range, open fewer short connections (keep-alive, a "
                f"connection pool), or {reuse}")

    def explanation(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.by_state.items(), key=lambda kv: -kv[1]))
        if self.exhausted:
            cause = (f"every usable local port of ip_local_port_range {self.port_range} ({self.usable}) "
                     f"already has a connection to {self.host}:{self.port} ({counts})")
        elif self.used:
            cause = (f"no free local port: {self.used} of {self.usable} usable ports of ip_local_port_range "
                     f"{self.port_range} are taken toward {self.host}:{self.port} ({counts}), the rest by "
                     f"other sockets or connections this table does not show")
        else:
            cause = (f"no free local port in ip_local_port_range {self.port_range} toward "
                     f"{self.host}:{self.port} (the connections holding them are not visible here)")
        return f"{cause}: {self.fixes()}"


def _tw_reuse_applies(reuse: int, host: str) -> bool:
    if reuse == 1:
        return True
    if reuse == 2:  # loopback traffic only
        from addrinuse.sockets import is_loopback

        return is_loopback(host)
    return False


def explain_exhaustion(host: str, port: int, entries: Iterable[Entry] | None = None,
                       backend: str = "auto") -> Exhaustion:
    """Count the local ports taken toward host:port. `entries`: a snapshot that holds the entries
    whose remote port is `port` (read here when not given)."""
    if entries is None:
        from addrinuse.conntable import snapshot

        entries = snapshot(port, backend=backend)
    rng = port_range() or PortRange(0, -1, frozenset())
    dest = plain_addr(host)
    per_source: dict[str, list[Entry]] = {}
    for e in entries:
        if e.rport == port and plain_addr(e.raddr) == dest and rng.holds(e.lport) and e.lport not in rng.reserved:
            per_source.setdefault(plain_addr(e.laddr), []).append(e)
    toward = max(per_source.values(), key=len, default=[])
    reuse, timestamps = int(ipv4_sysctl("tcp_tw_reuse", 2)), int(ipv4_sysctl("tcp_timestamps", 1))
    delay_s = ipv4_sysctl("tcp_tw_reuse_delay", 1000) / 1000.0  # Linux 6.13+; 1 s before (one-second stamps)
    reusable = 0
    if timestamps and _tw_reuse_applies(reuse, dest):
        reusable = sum(1 for e in toward if e.state == "TIME_WAIT" and e.expires_in_s is not None
                       and TCP_TIMEWAIT_LEN_S - e.expires_in_s > delay_s)
    by_state: dict[str, int] = {}
    for e in toward:
        by_state[e.state] = by_state.get(e.state, 0) + 1
    return Exhaustion(host, port, rng.text if rng.high >= rng.low else None, max(0, rng.usable()),
                      len({e.lport for e in toward}), reusable, by_state, reuse, timestamps)
