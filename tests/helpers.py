"""Helpers shared by tests: polling with deadlines (never bare sleeps) and table queries."""

from __future__ import annotations

import shutil
import subprocess
import time

from addrinuse.conntable import snapshot


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.01, what: str = "condition"):
    """Poll until predicate() is truthy; return its value or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def local(port: int, state: str) -> list:
    """Entries in `state` whose local port is `port`."""
    return [e for e in snapshot(port, [state]) if e.lport == port]


def wait_local(port: int, state: str, count: int, timeout: float = 5.0) -> list:
    return wait_for(lambda: (lambda es: es if len(es) == count else None)(local(port, state)),
                    timeout, what=f"{count} {state} entries on local port {port}")


def has_ss() -> bool:
    return shutil.which("ss") is not None


def ss_rows(port: int) -> set[tuple]:
    """(local port, remote port, state) rows that `ss -tanH` shows for a port, in psutil's spelling."""
    out = subprocess.run(["ss", "-tanH", f"( sport = :{port} or dport = :{port} )"], capture_output=True,
                         text=True, check=True).stdout
    names = {"ESTAB": "ESTABLISHED", "TIME-WAIT": "TIME_WAIT", "FIN-WAIT-1": "FIN_WAIT1", "FIN-WAIT-2": "FIN_WAIT2",
             "CLOSE-WAIT": "CLOSE_WAIT", "LAST-ACK": "LAST_ACK", "SYN-SENT": "SYN_SENT", "SYN-RECV": "SYN_RECV",
             "LISTEN": "LISTEN", "CLOSING": "CLOSING", "UNCONN": "CLOSED"}
    rows = set()
    for line in out.splitlines():
        state, _, _, local_ep, peer_ep = line.split()[:5]
        rport = peer_ep.rsplit(":", 1)[1]
        rows.add((int(local_ep.rsplit(":", 1)[1]), 0 if rport == "*" else int(rport), names[state]))
    return rows


def client_side(server_port: int, client_ports, state: str) -> list:
    """Our clients' entries: local port among ours AND remote port the server's. A client port alone
    is not enough: connect() gives the same ephemeral port to connections to other destinations."""
    ports = set(client_ports)
    return [e for e in snapshot(server_port, [state]) if e.rport == server_port and e.lport in ports]


def wait_client_side(server_port: int, client_ports, state: str, timeout: float = 5.0) -> list:
    want = len(set(client_ports))
    return wait_for(lambda: (lambda es: es if len(es) == want else None)(client_side(server_port, client_ports, state)),
                    timeout, what=f"{want} client-side {state} entries toward port {server_port}")
