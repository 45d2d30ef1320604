"""Helpers shared by tests: polling with deadlines (never bare sleeps) and table queries."""

from __future__ import annotations

import shutil
import subprocess

from addrinuse.conntable import snapshot
from addrinuse.conntable.match import bound_here, same_connection


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.01, what: str = "condition"):
    """Poll until predicate() is truthy; return its value or fail at the deadline."""
    from addrinuse.polling import until

    value = until(predicate, timeout, interval)
    if value is None:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")
    return value


def dead(pid: int) -> bool:
    """A zombie is dead: /proc/PID/stat's state field, not kill(pid, 0)."""
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def local(port: int, state: str, host: str = "127.0.0.1") -> list:
    """Entries in `state` whose local address:port is host:port (a server's side). The port alone is
    not enough: other programs' connections between other addresses reuse the same port numbers
    (the busy-machine fixture in conftest makes sure of it)."""
    return [e for e in snapshot(port, [state], local=True) if bound_here(e, host, port)]


def wait_local(port: int, state: str, count: int, timeout: float = 5.0, host: str = "127.0.0.1") -> list:
    return wait_for(lambda: (lambda es: es if len(es) == count else None)(local(port, state, host)),
                    timeout, what=f"{count} {state} entries on {host}:{port}")


def reap() -> None:
    """Collect every exited child (this process is a subreaper: orphans of the tool land here)."""
    import os

    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def living_children() -> list:
    """Every living (non-zombie) descendant of this process."""
    import psutil

    reap()
    alive = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def has_ss() -> bool:
    return shutil.which("ss") is not None


def ss_rows(port: int, host: str | None = None) -> set[tuple]:
    """(laddr, lport, raddr, rport, state) rows that `ss -tanH` shows for a port, in psutil's
    spelling; with `host`, only rows with that local or remote address."""
    out = subprocess.run(["ss", "-tanH", f"( sport = :{port} or dport = :{port} )"], capture_output=True,
                         text=True, check=True).stdout
    names = {"ESTAB": "ESTABLISHED", "TIME-WAIT": "TIME_WAIT", "FIN-WAIT-1": "FIN_WAIT1", "FIN-WAIT-2": "FIN_WAIT2",
             "CLOSE-WAIT": "CLOSE_WAIT", "LAST-ACK": "LAST_ACK", "SYN-SENT": "SYN_SENT", "SYN-RECV": "SYN_RECV",
             "LISTEN": "LISTEN", "CLOSING": "CLOSING", "UNCONN": "CLOSED"}
    rows = set()
    for line in out.splitlines():
        state, _, _, local_ep, peer_ep = line.split()[:5]
        laddr, lport = local_ep.rsplit(":", 1)
        raddr, rport = peer_ep.rsplit(":", 1)
        laddr, raddr = laddr.strip("[]"), raddr.strip("[]")
        if host is not None and host not in (laddr, raddr):
            continue
        rows.add((laddr, int(lport), "*" if rport == "*" else raddr, 0 if rport == "*" else int(rport), names[state]))
    return rows


def client_side(server_port: int, client_ports, state: str, host: str = "127.0.0.1") -> list:
    """Our clients' entries, by 4-tuple: local host:port among ours AND remote host:server_port. A
    client port alone is not enough: connect() gives the same ephemeral port to connections to other
    destinations, and other programs use the same numbers between other addresses."""
    return [e for e in snapshot(server_port, [state]) if any(
        same_connection(e, (host, p), (host, server_port)) for p in set(client_ports))]


def wait_client_side(server_port: int, client_ports, state: str, timeout: float = 5.0, host: str = "127.0.0.1") -> list:
    want = len(set(client_ports))
    return wait_for(lambda: (lambda es: es if len(es) == want else None)(client_side(server_port, client_ports, state, host)),
                    timeout, what=f"{want} client-side {state} entries toward {host}:{server_port}")


def write_record(state_dir, stem: str, **fields) -> dict:
    """A record file as the tool writes it (format marker and all), with fields overridden: for
    tests that plant stale, reused, corrupt or hostile records."""
    import json
    import os

    from addrinuse.registry import FORMAT, SUFFIX

    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = {"format": FORMAT, "name": stem, "pid": os.getpid(), "create_time": 1.0, "host": "127.0.0.1", "port": 1,
            "close": "never", **fields}
    (state_dir / f"{stem}{SUFFIX}").write_text(json.dumps(data))
    return data


def as_nobody(function):
    """Run function() in a forked child that dropped to uid/gid 65534 (everything it needs is imported
    already, so it reads no file of the project) and return what it returned, through JSON. Root only."""
    import json
    import os

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            try:
                out = {"value": function()}
            except BaseException as err:  # noqa: BLE001 - reported to the parent, which asserts on it
                out = {"error": f"{type(err).__name__}: {err}"}
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    raw = b""
    while chunk := os.read(r, 65536):
        raw += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(raw)
