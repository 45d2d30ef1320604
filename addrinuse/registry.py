"""Records of the servers this tool started: `Registry` (one file each in a checked private state
dir, for `start`) and `MemoryRegistry` (in memory, for foreground jobs: nothing touches the disk).

A record holds the pid *and* the process create time: a pid alone may have been reused by an
unrelated process since, and that process must never be signalled (the check psutil.Process.
is_running() makes). Trust nothing on disk: only files named NAME.addrinuse.json holding the format
marker are read as records, every field is validated, and anything else is left alone whatever its
name. A name is claimed with link(2), which never replaces an existing file, so of concurrent
starts with one name exactly one wins."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import re
import secrets
import stat
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from addrinuse.errors import BadInput, NameTaken
from addrinuse.statedir import ENV_VAR, default_state_dir, open_dir  # noqa: F401  (ENV_VAR re-exported)

SUFFIX = ".addrinuse.json"
LOG_SUFFIX = ".addrinuse.log"
FORMAT = "addrinuse-server-record/1"
LOG_MARKER = b"# addrinuse server log\n"  # first line of every log the tool writes; checked before unlink
MAX_RECORD_BYTES = 64 * 1024
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


def _validate(data: dict, name: str) -> ServerRecord:
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


def _stale_problem(path: str, record: ServerRecord, state: str) -> Problem:
    return Problem(path, f"stale record {record.name!r}: pid {record.pid} {state}; removed, nothing signalled",
                   record.name, state.startswith("reused"), record.pid, "reused" if state.startswith("reused") else "stale")


class Registry:
    """Records on disk, in a state dir checked before every use (statedir.open_dir)."""

    foreground = False  # servers started into it outlive the command (they are adopted once recorded)

    def __init__(self, state_dir: Path | str | None = None):
        self.dir = Path(state_dir) if state_dir else default_state_dir()

    # -- the directory ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _opened(self, create: bool, lock: bool = False):
        fd = open_dir(self.dir, create)
        try:
            if fd is not None and lock:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)  # between our own concurrent commands; released at close
            yield fd
        finally:
            if fd is not None:
                os.close(fd)

    def ensure(self) -> Path:
        with self._opened(create=True):
            return self.dir

    def path(self, name: str) -> Path:
        return self.dir / f"{check_name(name)}{SUFFIX}"

    def log_path(self, name: str) -> Path:
        return self.dir / f"{check_name(name)}{LOG_SUFFIX}"

    # -- reading ------------------------------------------------------------------------------
    def _read(self, fd: int, name: str) -> ServerRecord | Problem | None:
        entry, path = f"{name}{SUFFIX}", str(self.dir / f"{name}{SUFFIX}")
        try:
            rfd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        except FileNotFoundError:
            return None  # removed meanwhile by a concurrent kill
        except OSError as err:
            return Problem(path, f"{path} is not a record of this tool ({err.strerror}); left alone", name, kind="foreign")
        try:
            st = os.fstat(rfd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                return Problem(path, f"{path} is not a record of this tool (not a regular file of yours); left alone",
                               name, kind="foreign")
            raw = os.read(rfd, MAX_RECORD_BYTES + 1)
        finally:
            os.close(rfd)
        try:
            data = json.loads(raw) if len(raw) <= MAX_RECORD_BYTES else None
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return Problem(path, f"{path} is not a record of this tool (no format marker); left alone", name,
                           kind="foreign")
        try:
            return _validate(data, name)
        except CorruptRecord as err:
            return Problem(path, f"record {name} is corrupt: {err}; remove it with `addrinuse servers --prune`",
                           name, kind="corrupt")

    def _names(self, fd: int) -> list[str]:
        return sorted(n[:-len(SUFFIX)] for n in os.listdir(fd)
                      if n.endswith(SUFFIX) and NAME_RE.fullmatch(n[:-len(SUFFIX)]))

    def load(self) -> tuple[list[ServerRecord], list[Problem]]:
        """Every valid record whose process still runs. Stale records (their process ended, or the pid
        was reused) are removed and reported; corrupt ones and foreign files are reported and kept."""
        records, problems = [], []
        with self._opened(create=False) as fd:
            if fd is None:
                return records, problems
            for name in self._names(fd):
                found = self._read(fd, name)
                if found is None:
                    continue
                if isinstance(found, Problem):
                    problems.append(found)
                    continue
                state = process_state(found)
                if state == "running":
                    records.append(found)
                    continue
                self._remove_stale(found)
                problems.append(_stale_problem(str(self.path(name)), found, state))
        return records, problems

    # -- writing ------------------------------------------------------------------------------
    def save(self, record: ServerRecord) -> None:
        """Claim record.name: written to a new temp file (O_EXCL|O_NOFOLLOW), then linked into place,
        which fails if the name exists. A stale record of that name is cleared first; a live one
        raises NameTaken."""
        check_name(record.name)
        data = {"format": FORMAT, **record.to_dict()}
        _validate(data, record.name)  # never write what would be refused on read
        body = json.dumps(data, indent=1).encode()
        with self._opened(create=True, lock=True) as fd:
            tmp, tfd = self._new_temp(fd, record.name)
            try:
                with os.fdopen(tfd, "wb") as f:
                    f.write(body)
                for _ in range(2):
                    try:
                        os.link(tmp, f"{record.name}{SUFFIX}", src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
                        return
                    except FileExistsError:
                        self._clear_for(fd, record.name)
                raise NameTaken(record.name)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=fd)

    @staticmethod
    def _new_temp(fd: int, name: str) -> tuple[str, int]:
        """A new temp file: O_EXCL|O_NOFOLLOW never opens what is already there (a planted symlink
        included); a name that exists is skipped for another random one."""
        for _ in range(8):
            tmp = f".{name}.{secrets.token_hex(6)}.tmp"
            try:
                return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                                    dir_fd=fd)
            except FileExistsError:
                continue
        raise BadInput(f"cannot create a temp file for record {name}: the state dir is full of them")

    def _clear_for(self, fd: int, name: str) -> None:
        """The name exists: remove it only if it is our own record of a process that ended."""
        found = self._read(fd, name)
        if found is None:
            return
        if isinstance(found, Problem):
            detail = ("a corrupt record holds it: `addrinuse servers --prune` removes it" if found.kind == "corrupt"
                      else "a file this tool did not write holds it")
            raise NameTaken(name, detail=detail)
        if process_state(found) == "running":
            raise NameTaken(name, found.pid)
        self._unlink_ours(fd, name)

    def _unlink_ours(self, fd: int, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{name}{SUFFIX}", dir_fd=fd)
        self._unlink_log(fd, f"{name}{LOG_SUFFIX}")

    def _remove_stale(self, record: ServerRecord) -> None:
        """Remove a record found stale, unless it was replaced meanwhile (a concurrent start)."""
        with self._opened(create=False, lock=True) as fd:
            if fd is None:
                return
            again = self._read(fd, record.name)
            if isinstance(again, ServerRecord) and (again.pid, again.create_time) == (record.pid, record.create_time):
                self._unlink_ours(fd, record.name)

    def remove(self, name: str) -> None:
        """Remove our record NAME (and its log); a file of that name we did not write stays."""
        check_name(name)
        with self._opened(create=False, lock=True) as fd:
            if fd is not None and isinstance(self._read(fd, name), ServerRecord):
                self._unlink_ours(fd, name)

    def prune(self) -> list[Problem]:
        """Remove corrupt and stale records (never a foreign file); return what was removed."""
        removed = []
        with self._opened(create=False, lock=True) as fd:
            if fd is None:
                return removed
            for name in self._names(fd):
                found = self._read(fd, name)
                if isinstance(found, Problem) and found.kind == "corrupt":
                    self._unlink_ours(fd, name)
                    removed.append(found)
                elif isinstance(found, ServerRecord) and (state := process_state(found)) != "running":
                    self._unlink_ours(fd, name)
                    removed.append(_stale_problem(str(self.dir / f"{name}{SUFFIX}"), found, state))
        return removed

    # -- logs ---------------------------------------------------------------------------------
    def new_log(self) -> int:
        """An anonymous log file in the state dir (O_TMPFILE): if the command dies before the server
        is recorded, the kernel frees it, so nothing is left behind. Named by keep_log."""
        with self._opened(create=True) as fd:
            try:
                lfd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=fd)
            except (AttributeError, OSError):
                lfd = os.memfd_create("addrinuse-log", os.MFD_CLOEXEC)  # no O_TMPFILE here: kept in memory
        os.write(lfd, LOG_MARKER)
        return lfd

    def keep_log(self, log_fd: int, name: str) -> str:
        """Give the server's log its name beside the record; return its path ("" if it cannot)."""
        with self._opened(create=True, lock=True) as fd:
            target = f"{check_name(name)}{LOG_SUFFIX}"
            self._unlink_log(fd, target)  # only an old log of ours; anything else stays
            try:
                os.link(f"/proc/self/fd/{log_fd}", target, dst_dir_fd=fd, follow_symlinks=True)
            except OSError:
                return ""
        return str(self.dir / target)

    @staticmethod
    def _unlink_log(fd: int, target: str) -> None:
        """Remove a log file if it is ours: a regular file that starts with the tool's marker line."""
        try:
            lfd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            return
        try:
            ours = stat.S_ISREG(os.fstat(lfd).st_mode) and os.read(lfd, len(LOG_MARKER)) == LOG_MARKER
        finally:
            os.close(lfd)
        if ours:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target, dir_fd=fd)


class MemoryRegistry:
    """The same interface in memory, for foreground jobs (demo, experiments, the pytest plugin):
    servers started into it keep PR_SET_PDEATHSIG, so they die with the process that started them
    whatever kills it, and nothing touches the disk. As a context manager it also kills whatever
    is still recorded on exit (for callers that live on, like a test process)."""

    foreground = True

    def __init__(self):
        self.dir = None
        self._records: dict[str, ServerRecord] = {}

    def __enter__(self) -> "MemoryRegistry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        from addrinuse.control import stop_servers

        if self._records:
            stop_servers(self, everything=True, sig=9, timeout=5.0)

    def ensure(self) -> None:
        return None

    def path(self, name: str) -> str:
        return f"<memory>/{check_name(name)}"

    def load(self) -> tuple[list[ServerRecord], list[Problem]]:
        records, problems = [], []
        for name, record in sorted(self._records.items()):
            state = process_state(record)
            if state == "running":
                records.append(record)
            else:
                del self._records[name]
                problems.append(_stale_problem(self.path(name), record, state))
        return records, problems

    def save(self, record: ServerRecord) -> None:
        check_name(record.name)
        _validate({"format": FORMAT, **record.to_dict()}, record.name)
        old = self._records.get(record.name)
        if old is not None and process_state(old) == "running":
            raise NameTaken(record.name, old.pid)
        self._records[record.name] = record

    def remove(self, name: str) -> None:
        self._records.pop(name, None)

    def prune(self) -> list[Problem]:
        return self.load()[1]

    def new_log(self) -> int:
        lfd = os.memfd_create("addrinuse-log", os.MFD_CLOEXEC)
        os.write(lfd, LOG_MARKER)
        return lfd

    def keep_log(self, log_fd: int, name: str) -> str:
        return ""


def log_tail(log_fd: int) -> str:
    """The last line a server wrote to its log (for a one-line error), or 'no output'."""
    size = os.fstat(log_fd).st_size
    data = os.pread(log_fd, 4096, max(0, size - 4096)).decode(errors="replace")
    lines = [line for line in data.splitlines() if line.strip() and line.encode() + b"\n" != LOG_MARKER]
    return lines[-1].strip() if lines else "no output"
