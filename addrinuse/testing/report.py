"""The "addrinuse diagnosis" report section: the port, what holds it, when it frees, the fix.

Computed while the test's sockets and processes are still alive (at report time, before fixture
teardown), from the same pieces as `addrinuse why`: real bind probes and the connection table."""

from __future__ import annotations

import errno
import os
from typing import NamedTuple

from addrinuse.render import endpoint as _endpoint
from addrinuse.testing.culprit import Culprit

SECTION = "addrinuse diagnosis"


def section(culprit: Culprit, servers=()) -> str:
    """The section text; never raises (a test report must not break on the diagnosis)."""
    call = f"{culprit.syscall}()" if culprit.syscall else "a socket call"
    name = errno.errorcode.get(culprit.errno, str(culprit.errno))
    head = [f"{name} ({culprit.errno}) from {call} on {_endpoint(culprit.host, culprit.port)}",
            f"found from: {culprit.how}"]
    try:
        if culprit.errno == errno.EADDRNOTAVAIL:
            body = _not_available(culprit)
        else:
            body = _in_use(culprit, servers)
    except Exception as err:  # noqa: BLE001 - the report must still be written
        body = [f"addrinuse could not diagnose it: {type(err).__name__}: {err}"]
    return "\n".join(head + body)


def _verdict(text: str) -> list[str]:
    """The verdict as `why` prints it: its own header line, the text wrapped under it."""
    from addrinuse.render import wrap

    return ["verdict:", wrap(text, "  ")]


class _Served(NamedTuple):
    """A server this test started, as diagnose's `records` reads it: where it listened tells which
    end the entries it left are (the server end), even after it stopped. No pid: a holder is
    never named after it, since `addrinuse kill NAME` cannot reach a test's in-memory server;
    the lines below name it instead."""
    pid: None
    name: str
    host: str
    port: int


def _in_use(c: Culprit, servers) -> list[str]:
    """`addrinuse why` for the port (probes, holders, when it frees), then what only the test knows
    (its own process, its addrinuse_server servers) among the holders in the way, then the verdict."""
    from addrinuse.diagnose import diagnose
    from addrinuse.render.diagnosis import diagnosis

    d = diagnose(c.port, host=c.host, mode=c.mode, records=[_Served(None, s.name, s.host, s.port) for s in servers])
    lines = diagnosis(d).splitlines()
    at = lines.index("verdict:") if "verdict:" in lines else len(lines)
    # Only the sockets in the way of this bind: a holder on another address of the same port
    # number (another program's 127.0.0.2:PORT) is not what failed the test.
    in_the_way = {o.pid for h in d.listeners + d.connections if h.conflicts for o in h.owners}
    ours = []
    if os.getpid() in in_the_way:
        ours.append(f"held by this pytest process itself (pid {os.getpid()}): a socket the test or a fixture "
                    "still has open")
    for s in servers:
        pids = {s.pid, s.child_pid} & in_the_way
        if pids:
            ours.append(f"this test's addrinuse_server {s.name!r} (pid {', '.join(map(str, sorted(pids)))}) "
                        f"on {_endpoint(s.host, s.port)}")
    return lines[:at] + ours + lines[at:]


def _not_available(c: Culprit) -> list[str]:
    from addrinuse.testing.ports import probe_errno

    local = probe_errno(c.host, 0)[0] != errno.EADDRNOTAVAIL
    if c.syscall == "bind" or (c.syscall is None and not local):
        return _verdict(f"{c.host} is not an address of this machine (or of this network namespace): "
                        "bind 127.0.0.1, a wildcard, or an address that 'ip addr' lists")
    return _ports_exhausted(c)


def _ports_exhausted(c: Culprit) -> list[str]:
    """connect() found no free local port toward host:port (every port of the range is taken for
    that destination: __inet_hash_connect returns -EADDRNOTAVAIL), counted as `why` counts it."""
    from addrinuse.conntable import get_backend
    from addrinuse.conntable.match import same_address
    from addrinuse.diagnose import explain_exhaustion
    from addrinuse.estimate import free_in
    from addrinuse.render import wrap
    from addrinuse.render.tables import estimate_text

    source = get_backend()
    try:
        entries = source.snapshot(c.port)
    finally:
        source.close()
    x = explain_exhaustion(c.host, c.port, entries)
    toward = [e for e in entries if e.rport == c.port and same_address(c.host, e.raddr)]
    counts = ", ".join(f"{n} {state}" for state, n in sorted(x.by_state.items(), key=lambda kv: -kv[1]))
    lines = [wrap(f"local ports: ip_local_port_range {x.port_range or '?'}, {x.usable} usable; {x.used} of them "
                  f"connected to {_endpoint(c.host, c.port)} ({counts or 'none seen'})", "", "  ")]
    pids = sorted({o.pid for e in toward for o in e.owners})
    if pids:
        named = [f"{p} (this pytest process itself)" if p == os.getpid() else str(p) for p in pids[:8]]
        lines.append(f"held by pid {', '.join(named)}" + (" ..." if len(pids) > 8 else ""))
    kernel = [e for e in toward if not e.owners and not e.inode]
    if kernel:
        soonest = min(kernel, key=lambda e: float("inf") if e.expires_in_s is None else e.expires_in_s)
        lines.append(f"the first kernel-held one frees: {estimate_text(free_in([soonest]))}")
    return lines + _verdict(f"connect() to {_endpoint(c.host, c.port)} fails with EADDRNOTAVAIL: "
                            f"{x.explanation()}.")
