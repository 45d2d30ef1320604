"""End a port's TIME_WAIT (and orphaned FIN_WAIT2) entries early with SOCK_DESTROY, as `ss -K` does.

Only entries whose local port is the port, and only states no process holds any more: tcp_abort()
on a TIME_WAIT socket deschedules its timer, which frees the port (net/ipv4/tcp.c). Needs
CAP_NET_ADMIN and CONFIG_INET_DIAG_DESTROY; a refusal is raised, never swallowed."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from addrinuse.conntable import Entry
from addrinuse.errors import AddrinuseError

CLEARABLE = ("TIME_WAIT", "FIN_WAIT2")


@dataclass
class ClearReport:
    port: int
    destroyed: dict[str, int] = field(default_factory=dict)
    already_gone: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # strerror -> count

    @property
    def total(self) -> int:
        return sum(self.destroyed.values())


def clearable(entries: list[Entry], port: int) -> list[Entry]:
    """TIME_WAIT entries, and FIN_WAIT2 ones no process holds (orphans on the timewait timer)."""
    return [e for e in entries if e.lport == port and e.state in CLEARABLE and not e.pid and not e.inode]


def clear(backend, entries: list[Entry], port: int) -> ClearReport:
    report = ClearReport(port)
    for entry in entries:
        code = backend.destroy(entry)
        if code == 0:
            report.destroyed[entry.state] = report.destroyed.get(entry.state, 0) + 1
        elif code == errno.ENOENT:
            report.already_gone += 1  # it expired between the dump and the destroy
        else:
            report.refused[os.strerror(code)] = report.refused.get(os.strerror(code), 0) + 1
    if report.refused:
        why = "; ".join(f"{n} x {text}" for text, n in report.refused.items())
        raise AddrinuseError(f"the kernel refused SOCK_DESTROY on port {port} ({why}): it needs root "
                             f"(CAP_NET_ADMIN) and a kernel with CONFIG_INET_DIAG_DESTROY; destroyed "
                             f"{report.total} before that")
    return report
