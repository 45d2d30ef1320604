"""Records of the servers this tool started, one JSON file each in a state dir.

A record holds the pid *and* the process create time: a pid alone may have been reused by an
unrelated process since, and that process must never be signalled (the same check as
psutil.Process.is_running())."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from addrinuse.errors import BadInput

ENV_VAR = "ADDRINUSE_STATE_DIR"
# Process create times come from /proc/PID/stat starttime in clock ticks (1/100 s), so two
# readings of the same process can differ by rounding only.
CREATE_TIME_TOLERANCE_S = 0.02


def default_state_dir() -> Path:
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "addrinuse"
    return Path(tempfile.gettempdir()) / f"addrinuse-{os.getuid()}"


@dataclass
class ServerRecord:
    name: str
    pid: int
    create_time: float
    host: str
    port: int
    close: str
    reuseaddr: bool = False
    reuseport: bool = False
    linger0: bool = False
    started_at: float = field(default_factory=time.time)
    log: str = ""
    child: str | None = None  # the record of a child that inherited the listener (spawn_child)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Problem:
    """A record that could not be used: reported to the user and removed."""

    path: str
    reason: str
    name: str | None = None
    reused: bool = False
    pid: int | None = None


class Registry:
    def __init__(self, state_dir: Path | str | None = None):
        self.dir = Path(state_dir) if state_dir else default_state_dir()

    def ensure(self) -> Path:
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not os.access(self.dir, os.W_OK | os.X_OK):
                raise PermissionError(13, "not writable", str(self.dir))
        except OSError as err:
            raise BadInput(f"state dir {self.dir} is unusable ({err.strerror}): "
                           f"pass --state-dir or set {ENV_VAR} to a writable directory") from err
        return self.dir

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def log_path(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def save(self, record: ServerRecord) -> None:
        self.ensure()
        tmp = self.dir / f".{record.name}.json.tmp"
        tmp.write_text(json.dumps(record.to_dict(), indent=1))
        os.replace(tmp, self.path(record.name))  # atomic: a reader never sees half a record

    def remove(self, name: str) -> None:
        for path in (self.path(name), self.log_path(name)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def load(self) -> tuple[list[ServerRecord], list[Problem]]:
        """Every usable record whose process still runs; corrupt and stale records are removed
        and returned as problems."""
        records, problems = [], []
        if not self.dir.is_dir():
            return records, problems
        for path in sorted(self.dir.glob("*.json")):
            try:
                record = ServerRecord(**json.loads(path.read_text()))
                if not isinstance(record.pid, int) or record.pid <= 0:
                    raise ValueError("pid is not a positive integer")
            except FileNotFoundError:
                continue  # removed by a concurrent kill
            except (ValueError, TypeError) as err:
                problems.append(Problem(str(path), f"corrupt record ({err}); removed"))
                path.unlink(missing_ok=True)
                continue
            state = process_state(record)
            if state != "running":
                reason = f"stale record {record.name!r}: pid {record.pid} {state}; removed, nothing signalled"
                problems.append(Problem(str(path), reason, record.name, state.startswith("reused"), record.pid))
                self.remove(record.name)
                continue
            records.append(record)
        return records, problems


def process_state(record: ServerRecord) -> str:
    """'running', 'not running', or 'reused' (the pid belongs to another process now)."""
    import psutil

    try:
        proc = psutil.Process(record.pid)
        if abs(proc.create_time() - record.create_time) > CREATE_TIME_TOLERANCE_S:
            return "reused by another process"
        if proc.status() == psutil.STATUS_ZOMBIE:
            return "not running"
    except psutil.NoSuchProcess:
        return "not running"
    except psutil.AccessDenied:
        return "reused by another process"  # ours would be ours to inspect
    return "running"
