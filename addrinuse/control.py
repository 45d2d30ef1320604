"""Start and stop the servers this tool launches, keeping the registry true."""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass, field

from addrinuse.errors import AddressInUse, BadInput, NameTaken, PidReused, ServerNotFound, ServerStartError, SocketCallError
from addrinuse.registry import Problem, ServerRecord, check_name, log_tail, process_state
from addrinuse.server import ServerConfig, serve
from addrinuse.tether import Launched

READY_TIMEOUT_S = 10.0
POLL_S = 0.01


def _failure(message: dict, config: ServerConfig) -> Exception:
    if message.get("errno") is not None:
        cls = AddressInUse if message["errno"] == errno.EADDRINUSE else SocketCallError
        return cls(message["syscall"], message["errno"], config.host, config.port)
    return BadInput(message.get("message", "the server refused its configuration"))


def _create_time(pid: int) -> float:
    import psutil

    return psutil.Process(pid).create_time()


def _name_free(registry, name: str) -> None:
    """Refuse a name a running server holds before starting anything (advisory: the claim, atomic,
    is what decides between concurrent starts)."""
    check_name(name)
    for record in registry.load()[0]:
        if record.name == name:
            raise NameTaken(name, record.pid)


def _claim(registry, record: ServerRecord, name: str | None) -> ServerRecord:
    """Save the record under `name`, or under the first free srv-PORT[-N] when no name was given."""
    if name is not None:
        record.name = name
        registry.save(record)
        return record
    base = f"srv-{record.port}"
    for n in range(1, 100):
        record.name = base if n == 1 else f"{base}-{n}"
        try:
            registry.save(record)
            return record
        except NameTaken:
            continue
    raise BadInput(f"no free record name {base}-N: pass --name")


def start_server(registry, config: ServerConfig, name: str | None = None) -> ServerRecord:
    """Launch a server process and return once it listens and is recorded.

    Into a disk Registry (`start`) the server is adopted once its record is claimed, and outlives
    this process; into a MemoryRegistry it stays tied to this process (PR_SET_PDEATHSIG) and dies
    with it. There is no moment where it runs unrecorded: until the record exists it is tied."""
    if name is not None:
        _name_free(registry, name)
    if config.command:
        return _start_command(registry, config, name)
    registry.ensure()
    log_fd = registry.new_log()
    children: list[Launched] = []
    claimed: list[str] = []
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        server = Launched([config.to_json()], log_fd)
        children.append(server)
        message = server.ready(deadline)
        if not message or not message.get("ok"):
            server.kill()
            if message:
                raise _failure(message, config)
            raise ServerStartError(f"server exited before listening (status {server.proc.returncode}): "
                                   f"{log_tail(log_fd)}")
        port = message["port"]
        child_record = None
        if config.spawn_child:
            (listener,) = server.fds[:1]
            holder = Launched(["--hold", str(listener)], log_fd, pass_fds=(listener,))
            children.append(holder)
            if not (holder.ready(deadline) or {}).get("ok"):
                raise ServerStartError(f"the inheriting child did not start: {log_tail(log_fd)}")
            child_record = ServerRecord(name="", pid=holder.proc.pid, create_time=_create_time(holder.proc.pid),
                                        host=message["host"], port=port, close="never", reuseaddr=config.reuseaddr)
        record = ServerRecord(
            # The address the server bound (numeric, as getsockname gave it), not the name it was given.
            name="", pid=server.proc.pid, create_time=_create_time(server.proc.pid), host=message["host"], port=port,
            close=config.close, reuseaddr=config.reuseaddr, reuseport=config.reuseport, linger0=config.linger0,
            stop_signal=config.stop_signal,
        )
        if child_record is not None:
            # The child first: a record naming a child always has that child recorded.
            _claim(registry, child_record, f"{name or f'srv-{port}'}-child")
            claimed.append(child_record.name)
            record.child = child_record.name
        _claim(registry, record, name)
        claimed.append(record.name)
        for child in children:
            if not child.verdict(adopt=not registry.foreground, deadline=deadline):
                raise ServerStartError(f"server pid {child.proc.pid} exited before it was adopted: {log_tail(log_fd)}")
        record.log = registry.keep_log(log_fd, record.name)
        return record
    except BaseException:
        for child in children:
            child.kill()
        for claimed_name in claimed:
            registry.remove(claimed_name)
        raise
    finally:
        for child in children:
            child.close()
        os.close(log_fd)


def free_port(host: str) -> int:
    """A port the kernel picks as free on host (bind to 0), released for the user's server to take."""
    import socket

    from addrinuse.sockets import resolve

    family, address = resolve(host)
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _start_command(registry, config: ServerConfig, name: str | None) -> ServerRecord:
    """The user's own server: the record is claimed before exec (the port is chosen up front), the
    command then runs adopted (or tied, in a MemoryRegistry) and is ready once the table shows it
    listening on host:port."""
    from addrinuse.sockets import resolve

    command = list(config.command)
    if not any("{port}" in arg for arg in command) and not config.port:
        raise BadInput("the command has no {port} placeholder: add one where the port goes, or pass --port N")
    address = resolve(config.host)[1]
    port = config.port or free_port(config.host)
    argv = [arg.replace("{port}", str(port)) for arg in command]
    registry.ensure()
    log_fd = registry.new_log()
    child = None
    claimed = None
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        child = Launched(["--exec", "--", *argv], log_fd)
        if not (child.ready(deadline) or {}).get("ok"):
            child.kill()
            raise ServerStartError(f"could not launch {argv[0]!r}: {log_tail(log_fd)}")
        record = ServerRecord(name="", pid=child.proc.pid, create_time=_create_time(child.proc.pid),
                              host=address, port=port, close=None, command=argv, stop_signal=config.stop_signal)
        claimed = _claim(registry, record, name).name
        if not child.verdict(adopt=not registry.foreground, deadline=deadline):
            raise ServerStartError(f"{argv[0]!r} exited before it was adopted: {log_tail(log_fd)}")
        failed = child.ready(deadline)  # EOF: the exec happened
        if failed and not failed.get("ok"):
            raise BadInput(f"{failed.get('message')}: check the command after --")
        _wait_listening(child, address, port, deadline, log_fd, argv)
        record.log = registry.keep_log(log_fd, record.name)
        return record
    except BaseException:
        if child is not None:
            child.kill()
        if claimed is not None:
            registry.remove(claimed)
        raise
    finally:
        if child is not None:
            child.close()
        os.close(log_fd)


def _wait_listening(child: Launched, address: str, port: int, deadline: float, log_fd: int, argv) -> None:
    import psutil

    from addrinuse.conntable import get_backend
    from addrinuse.conntable.match import bound_here, same_address

    def serves(e) -> bool:
        # bound to the address asked for, or to a wildcard that covers it (http.server without --bind)
        return bound_here(e, address, port) or (e.lport == port and same_address(e.laddr, address))

    source = get_backend("auto")
    try:
        while True:
            try:
                tree = {child.proc.pid} | {p.pid for p in psutil.Process(child.proc.pid).children(recursive=True)}
            except psutil.NoSuchProcess:
                tree = {child.proc.pid}
            entries = source.snapshot(port, ["LISTEN"], local=True)
            if any(serves(e) and any(o.pid in tree for o in e.owners) for e in entries):
                return
            if child.proc.poll() is not None:
                raise ServerStartError(f"{argv[0]!r} exited with status {child.proc.returncode} before listening on "
                                       f"{address}:{port}: {log_tail(log_fd)}")
            if time.monotonic() >= deadline:
                raise ServerStartError(f"{argv[0]!r} did not listen on {address}:{port} within "
                                       f"{READY_TIMEOUT_S:g} s; stopped it: {log_tail(log_fd)}")
            time.sleep(POLL_S)
    finally:
        source.close()


def run_foreground(registry, config: ServerConfig, name: str | None, on_ready) -> int:
    """Serve in this process until SIGTERM/SIGINT/SIGHUP; the record exists exactly while it listens."""
    import psutil

    if name is not None:
        _name_free(registry, name)
    holder: dict = {}

    def ready(host: str, port: int) -> None:
        me = psutil.Process()
        record = ServerRecord(
            name="", pid=me.pid, create_time=me.create_time(),
            host=host, port=port, close=config.close, reuseaddr=config.reuseaddr,
            reuseport=config.reuseport, linger0=config.linger0,
        )
        holder["record"] = _claim(registry, record, name)
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
    signal: str = "TERM"  # the signal sent, without SIG

    def to_dict(self) -> dict:
        return {"name": self.record.name, "pid": self.record.pid, "host": self.record.host, "port": self.record.port,
                "exited": self.exited, "waited_s": round(self.waited_s, 3), "signal": self.signal}

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


def select_targets(registry, name: str | None, port: int | None, everything: bool):
    records, problems = registry.load()
    if name is not None:
        check_name(name)
        targets = [r for r in records if r.name == name]
        if not targets:
            reused = [p for p in problems if p.name == name and p.reused]
            if reused:
                raise PidReused(name, reused[0].pid)
            corrupt = [p for p in problems if p.name == name and p.kind == "corrupt"]
            if corrupt:
                raise BadInput(corrupt[0].reason)
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


def signal_record(record: ServerRecord, sig: int) -> str:
    """Signal the process a record names, only if pid AND create time still match a live, non-zombie
    process. A pidfd is opened first and the identity checked after: the check then holds for the
    very process the pidfd names, so a pid reused between check and signal cannot be hit
    (pidfd_open(2), Linux 5.3). Returns 'signalled' or the process state that forbade it."""
    try:
        pidfd = os.pidfd_open(record.pid)
    except ProcessLookupError:
        return "not running"
    except (AttributeError, OSError):
        pidfd = None  # no pidfd here: the check-then-kill window remains, as small as it can be
    try:
        state = process_state(record)
        if state != "running":
            return state
        try:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, sig)
            else:
                os.kill(record.pid, sig)
        except ProcessLookupError:
            return "not running"
        return "signalled"
    finally:
        if pidfd is not None:
            os.close(pidfd)


def stop_servers(registry, name: str | None = None, port: int | None = None,
                 everything: bool = False, sig: int | None = None, timeout: float = 5.0) -> StopReport:
    """Stop recorded servers with `sig` (default: each record's own stop signal, SIGTERM unless the
    user's command said otherwise) and wait up to `timeout` for each to exit."""
    targets, problems = select_targets(registry, name, port, everything)
    report = StopReport(problems=problems)
    for record in targets:
        started = time.monotonic()
        how = sig if sig is not None else getattr(signal, f"SIG{record.stop_signal}")
        state = signal_record(record, how)
        if state not in ("signalled", "not running"):
            report.problems.append(Problem(str(registry.path(record.name)),
                                           f"record {record.name!r}: pid {record.pid} {state}; removed, nothing signalled",
                                           record.name, True, record.pid, "reused"))
            registry.remove(record.name)
            continue
        exited = wait_gone(record.pid, started + timeout)
        if exited:
            registry.remove(record.name)
        report.stopped.append(StopOutcome(record, exited, time.monotonic() - started, signal.Signals(how).name[3:]))
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
