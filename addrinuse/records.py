"""A server record, what makes one valid, and whether its process still runs.

A record is input like any other: every field is checked before anything acts on it, and a pid is
trusted only together with its process create time (a pid alone may belong to another process by
now). The files that hold records are registry.py's business."""

from __future__ import annotations

import ipaddress
import math
import re
import time
from dataclasses import asdict, dataclass, field, fields

from addrinuse.errors import BadInput

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CLOSE_POLICIES = ("server-first", "client-first", "never")
STOP_SIGNALS = ("TERM", "INT", "HUP", "QUIT", "KILL")
PID_MAX = 1 << 22  # PID_MAX_LIMIT on 64-bit Linux (include/linux/threads.h)
# Process create times come from /proc/PID/stat starttime in clock ticks (1/100 s), so two
# readings of the same process can differ by rounding only.
CREATE_TIME_TOLERANCE_S = 0.02


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise BadInput(f"server name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', "
                       f"starting with a letter or digit")
    return name


@dataclass
class ServerRecord:
    name: str
    pid: int
    create_time: float
    host: str
    port: int
    close: str | None  # the built-in server's close policy; None for the user's own command
    reuseaddr: bool = False
    reuseport: bool = False
    linger0: bool = False
    started_at: float = field(default_factory=time.time)
    log: str = ""
    child: str | None = None  # the record of a child that inherited the listener (spawn_child)
    command: list[str] | None = None  # the user's own server (`start -- CMD`), {port} filled in
    stop_signal: str = "TERM"  # what `kill` sends unless told otherwise

    def to_dict(self) -> dict:
        return asdict(self)


class CorruptRecord(ValueError):
    pass


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate(data: dict, name: str) -> ServerRecord:
    """Every field checked: a record is input, and a bad one must never reach os.kill."""
    known = {f.name for f in fields(ServerRecord)}
    unknown = sorted(set(data) - known - {"format"})
    if unknown:
        raise CorruptRecord(f"unknown field {unknown[0]!r}")
    missing = sorted({"name", "pid", "create_time", "host", "port"} - set(data))
    if missing:
        raise CorruptRecord(f"no {missing[0]!r}")
    checks = {
        "name": lambda v: v == name, "pid": lambda v: type(v) is int and 1 < v <= PID_MAX,
        "create_time": lambda v: _number(v) and v > 0, "host": _is_ip, "port": lambda v: type(v) is int and 0 < v < 65536,
        "close": lambda v: v is None or v in CLOSE_POLICIES, "reuseaddr": lambda v: type(v) is bool,
        "reuseport": lambda v: type(v) is bool, "linger0": lambda v: type(v) is bool, "started_at": _number,
        "log": lambda v: isinstance(v, str), "child": lambda v: v is None or (isinstance(v, str) and NAME_RE.fullmatch(v)),
        "command": lambda v: v is None or (isinstance(v, list) and v and all(isinstance(a, str) for a in v)),
        "stop_signal": lambda v: v in STOP_SIGNALS,
    }
    for key, ok in checks.items():
        if key in data and not ok(data[key]):
            raise CorruptRecord(f"{key} is {data[key]!r}" if len(repr(data[key])) < 60 else f"{key} is invalid")
    if "close" not in data:
        raise CorruptRecord("no 'close'")
    return ServerRecord(**{k: v for k, v in data.items() if k != "format"})


def _is_ip(value) -> bool:
    try:
        ipaddress.ip_address(value.split("%")[0])
        return True
    except (AttributeError, ValueError):
        return False


@dataclass
class Problem:
    """A record that could not be used, reported to the user. kind: 'stale' (its process ended:
    removed), 'reused' (the pid belongs to another process now: removed, nothing signalled),
    'corrupt' (the tool's marker but a bad field: kept until `servers --prune`), 'foreign' (not
    written by this tool: left alone)."""

    path: str
    reason: str
    name: str | None = None
    reused: bool = False
    pid: int | None = None
    kind: str = "stale"


def process_state(record: ServerRecord) -> str:
    """'running', 'not running' (gone, or a zombie: /proc/PID/stat state Z has closed its sockets),
    or 'reused by another process' (same pid, another create time)."""
    import psutil

    try:
        proc = psutil.Process(record.pid)
        if abs(proc.create_time() - record.create_time) > CREATE_TIME_TOLERANCE_S:
            return "reused by another process"
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):  # the state field of /proc/PID/stat
            return "not running"
    except psutil.NoSuchProcess:
        return "not running"
    except psutil.AccessDenied:
        return "reused by another process"  # ours would be ours to inspect
    return "running"


def stale_problem(path: str, record: ServerRecord, state: str) -> Problem:
    return Problem(path, f"stale record {record.name!r}: pid {record.pid} {state}; removed, nothing signalled",
                   record.name, state.startswith("reused"), record.pid, "reused" if state.startswith("reused") else "stale")


