"""Start and stop the servers this tool launches, keeping the registry true."""

from __future__ import annotations

import errno
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

from addrinuse.errors import AddressInUse, BadInput, PidReused, ServerNotFound, ServerStartError, SocketCallError
from addrinuse.registry import Problem, Registry, ServerRecord, process_state
from addrinuse.server import ServerConfig, serve

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
READY_TIMEOUT_S = 10.0
POLL_S = 0.01


def check_name(registry: Registry, name: str | None) -> None:
    if name is None:
        return
    if not NAME_RE.match(name):
        raise BadInput(f"server name {name!r} is not valid: use letters, digits, '.', '_' or '-' (at most 64)")
    records, _ = registry.load()
    for record in records:
        if record.name == name:
            raise BadInput(f"a server named {name!r} is already running (pid {record.pid}): pick another --name or 'addrinuse kill {name}'")


def _failure(message: dict, config: ServerConfig) -> Exception:
    if message.get("errno") is not None:
        cls = AddressInUse if message["errno"] == errno.EADDRINUSE else SocketCallError
        return cls(message["syscall"], message["errno"], config.host, config.port)
    return BadInput(message.get("message", "the server refused its configuration"))


def _read_ready(fd: int, deadline: float) -> dict | None:
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    try:
        return json.loads(buf) if buf.strip() else None
    except ValueError:
        return None


def start_server(registry: Registry, config: ServerConfig, name: str | None = None) -> ServerRecord:
    """Launch a detached server process and return once it listens (it reports on a pipe)."""
    import psutil

    check_name(registry, name)
    registry.ensure()
    pending = f".pending-{uuid.uuid4().hex[:8]}"
    log_path = registry.log_path(pending)
    read_fd, write_fd = os.pipe()
    proc = None
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "addrinuse.server", config.to_json(), str(write_fd)],
                pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C in the user's terminal is not meant for it.
                start_new_session=True,
            )
        os.close(write_fd)
        write_fd = -1
        message = _read_ready(read_fd, time.monotonic() + READY_TIMEOUT_S)
        if not message or not message.get("ok"):
            proc.wait(timeout=READY_TIMEOUT_S)
            if message:
                raise _failure(message, config)
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise ServerStartError(f"server exited before listening (status {proc.returncode}): {tail[0]}")
        port = message["port"]
        record = ServerRecord(
            name=name or _free_name(registry, f"srv-{port}"), pid=proc.pid,
            create_time=psutil.Process(proc.pid).create_time(), host=config.host, port=port,
            close=config.close, reuseaddr=config.reuseaddr, reuseport=config.reuseport, linger0=config.linger0,
        )
        record.log = str(registry.log_path(record.name))
        os.replace(log_path, record.log)
        if message.get("child_pid"):
            # The child is ours too: it gets a record of its own, so kill --all ends it.
            child = ServerRecord(name=f"{record.name}-child", pid=message["child_pid"],
                                 create_time=psutil.Process(message["child_pid"]).create_time(),
                                 host=config.host, port=port, close="never", reuseaddr=config.reuseaddr)
            registry.save(child)
            record.child = child.name
        registry.save(record)
        return record
    except BaseException:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        log_path.unlink(missing_ok=True)
        raise
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def _free_name(registry: Registry, base: str) -> str:
    name, n = base, 1
    while registry.path(name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def run_foreground(registry: Registry, config: ServerConfig, name: str | None, on_ready) -> int:
    """Serve in this process until SIGTERM/SIGINT; the record exists exactly while it listens."""
    import psutil

    check_name(registry, name)
    holder: dict = {}

    def ready(host: str, port: int) -> None:
        me = psutil.Process()
        record = ServerRecord(
            name=name or _free_name(registry, f"srv-{port}"), pid=me.pid, create_time=me.create_time(),
            host=config.host, port=port, close=config.close, reuseaddr=config.reuseaddr,
            reuseport=config.reuseport, linger0=config.linger0,
        )
        registry.save(record)
        holder["record"] = record
        on_ready(record)

    try:
        return serve(config, on_ready=ready)
    finally:
        if "record" in holder:
            registry.remove(holder["record"].name)


@dataclass
class StopOutcome:
    record: ServerRecord
    exited: bool
    waited_s: float

    def to_dict(self) -> dict:
        return {"name": self.record.name, "pid": self.record.pid, "host": self.record.host, "port": self.record.port,
                "exited": self.exited, "waited_s": round(self.waited_s, 3)}

    def owns(self, entry) -> bool:
        """An entry the server left: its local address:port is the one the server bound."""
        from addrinuse.conntable.match import bound_here
        from addrinuse.sockets import resolve

        return bound_here(entry, resolve(self.record.host)[1], self.record.port)


@dataclass
class StopReport:
    stopped: list[StopOutcome] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ports(self) -> list[int]:
        return sorted({o.record.port for o in self.stopped})


def select_targets(registry: Registry, name: str | None, port: int | None, everything: bool):
    records, problems = registry.load()
    if name is not None:
        targets = [r for r in records if r.name == name]
        if not targets:
            reused = [p for p in problems if p.name == name and p.reused]
            if reused:
                raise PidReused(name, reused[0].pid)
            raise ServerNotFound(name, [r.name for r in records])
    elif port is not None:
        targets = [r for r in records if r.port == port]
        if not targets and not problems:
            raise BadInput(f"no server started by this tool is on port {port}: see 'addrinuse kill --all' or 'addrinuse table --port {port}'")
    elif everything:
        targets = records
    else:
        raise BadInput("say which server to stop: NAME, --port N or --all")
    return targets, problems


def stop_servers(registry: Registry, name: str | None = None, port: int | None = None,
                 everything: bool = False, sig: int = signal.SIGTERM, timeout: float = 5.0) -> StopReport:
    targets, problems = select_targets(registry, name, port, everything)
    report = StopReport(problems=problems)
    for record in targets:
        # Checked again right before the signal: the pid must still be the process we started.
        if process_state(record) != "running":
            report.problems.append(Problem(str(registry.path(record.name)),
                                           f"record {record.name!r}: pid {record.pid} changed; removed, nothing signalled",
                                           record.name, True, record.pid))
            registry.remove(record.name)
            continue
        started = time.monotonic()
        try:
            os.kill(record.pid, sig)
        except ProcessLookupError:
            pass
        exited = wait_gone(record.pid, started + timeout)
        if exited:
            registry.remove(record.name)
        report.stopped.append(StopOutcome(record, exited, time.monotonic() - started))
    return report


def wait_gone(pid: int, deadline: float) -> bool:
    """True once pid has exited. A zombie has closed its sockets already, so it counts as gone;
    when it is our own child we reap it so nothing is left behind."""
    import psutil

    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
