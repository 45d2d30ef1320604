"""Portable backend: psutil.net_connections().

No timers (psutil does not expose /proc's tm->when), and TIME_WAIT rows carry no pid: a TIME_WAIT
entry belongs to no file descriptor, so no process owns it (its inode is 0 in /proc/net/tcp)."""

from __future__ import annotations

import socket
from typing import Iterable

import psutil

from addrinuse.conntable import Entry, Owner, matches, normalize_states, sort_key

# psutil spells the kernel's TCP_CLOSE "CLOSE" and request sockets "SYN_RECV".
_STATE = {psutil.CONN_CLOSE: "CLOSED", psutil.CONN_NONE: "CLOSED"}


class PsutilBackend:
    name = "psutil"
    has_timers = False

    def __init__(self) -> None:
        self._names: dict[int, str | None] = {}

    def snapshot(self, port: int | None = None, states: Iterable[str] | None = None,
                 local: bool = False, host: str | None = None) -> list[Entry]:
        wanted = normalize_states(states)
        if host is not None:
            from addrinuse.conntable.match import same_address
        out = []
        for conn in psutil.net_connections(kind="tcp"):
            if not conn.laddr:
                continue
            raddr, rport = (conn.raddr.ip, conn.raddr.port) if conn.raddr else ("*", 0)
            entry = Entry(
                family=4 if conn.family == socket.AF_INET else 6,
                laddr=conn.laddr.ip, lport=conn.laddr.port, raddr=raddr, rport=rport,
                state=_STATE.get(conn.status, conn.status),
                owners=(Owner(conn.pid, self._name(conn.pid)),) if conn.pid else (),
            )
            if matches(entry, port, wanted, local) and (host is None or same_address(host, entry.laddr) or (
                    entry.raddr != "*" and same_address(host, entry.raddr))):
                out.append(entry)
        return sorted(out, key=sort_key)

    table = snapshot  # psutil reads the whole table into memory anyway

    def _name(self, pid: int | None) -> str | None:
        if pid is None:
            return None
        if pid not in self._names:
            try:
                self._names[pid] = psutil.Process(pid).name()
            except psutil.Error:
                self._names[pid] = None
        return self._names[pid]

    def close(self) -> None:
        self._names.clear()
