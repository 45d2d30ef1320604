"""The "addrinuse diagnosis" report section: the port, what holds it, when it frees, the fix.

Computed while the test's sockets and processes are still alive (at report time, before fixture
teardown), from the same pieces as `addrinuse why`: real bind probes and the connection table."""

from __future__ import annotations

import errno
import os

from addrinuse.render import endpoint as _endpoint
from addrinuse.testing.culprit import Culprit

SECTION = "addrinuse diagnosis"


def frees(estimate) -> str:
    """An estimate.Estimate in words."""
    if estimate.kind == "now":
        return "now (nothing holds it any more)"
    if estimate.kind == "exact":
        return f"in {estimate.min_s:.1f}-{estimate.max_s:.1f} s ({estimate.reason})"
    if estimate.kind == "upper_bound":
        return f"within {estimate.max_s:.0f} s ({estimate.reason})"
    return f"when the holder closes it or exits ({estimate.reason})"


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


def _verdict(text: str) -> str:
    from addrinuse.render import wrap

    return wrap(text, "verdict: ", "  ")


def _in_use(c: Culprit, servers) -> list[str]:
    from addrinuse.diagnose import diagnose, port_estimate
    from addrinuse.render.diagnosis import diagnosis

    d = diagnose(c.port, host=c.host, mode=c.mode)
    lines = diagnosis(d).splitlines()
    verdict = lines.pop()  # "verdict: ...": said last, after when it frees
    if any(h.pid == os.getpid() for h in d.listeners + d.connections):
        lines.append(f"held by this pytest process itself (pid {os.getpid()}): a socket the test or a fixture "
                     "still has open")
    ours = [s for s in servers if s.port == c.port]
    for s in ours:
        lines.append(f"this test's addrinuse_server {s.name!r}: pid {s.pid} on {_endpoint(s.host, s.port)}")
    lines.append(f"frees: {frees(port_estimate(c.port, c.host))}")
    lines.append(_verdict(verdict.removeprefix("verdict: ")))
    return lines


def _not_available(c: Culprit) -> list[str]:
    from addrinuse.testing.ports import probe_errno

    local = probe_errno(c.host, 0)[0] != errno.EADDRNOTAVAIL
    if c.syscall == "bind" or (c.syscall is None and not local):
        return [_verdict(f"{c.host} is not an address of this machine (or of this network namespace): "
                         "bind 127.0.0.1, a wildcard, or an address that 'ip addr' lists")]
    return _ports_exhausted(c)


def _ports_exhausted(c: Culprit) -> list[str]:
    """connect() found no free local port toward host:port (every port of the range is taken for
    that destination: __inet_hash_connect returns -EADDRNOTAVAIL)."""
    from addrinuse.conntable import get_backend
    from addrinuse.conntable.match import same_address
    from addrinuse.diagnose import _port_range
    from addrinuse.estimate import free_in

    source = get_backend()
    try:
        entries = [e for e in source.snapshot(c.port) if e.rport == c.port and same_address(c.host, e.raddr)]
    finally:
        source.close()
    low, high = _port_range() or (0, 0)
    states: dict[str, int] = {}
    for e in entries:
        states[e.state] = states.get(e.state, 0) + 1
    counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items(), key=lambda kv: -kv[1])) or "none seen"
    lines = [f"local ports: ip_local_port_range {low}-{high} ({high - low + 1} ports)",
             f"connections from here to {_endpoint(c.host, c.port)}: {counts}"]
    pids = sorted({e.pid for e in entries if e.pid})
    if pids:
        lines.append(f"held by pid {', '.join(map(str, pids[:8]))}")
    kernel = [e for e in entries if not e.owners and not e.inode]
    if kernel:
        soonest = min(kernel, key=lambda e: float("inf") if e.expires_in_s is None else e.expires_in_s)
        lines.append(f"the first kernel-held one frees: {frees(free_in([soonest]))}")
    lines.append(_verdict("every local port toward this destination is taken: close or reuse connections "
                          "(a pool), connect from more source addresses, or widen ip_local_port_range; "
                          "tcp_tw_reuse=1 lets connect() reuse TIME_WAIT ports (outgoing only, needs timestamps)"))
    return lines
