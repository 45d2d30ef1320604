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
import os
import stat
from pathlib import Path

from addrinuse.errors import BadInput, NameTaken
from addrinuse.records import (  # noqa: F401  (re-exported: the registry's interface)
    CLOSE_POLICIES, NAME_RE, STOP_SIGNALS, CorruptRecord, Problem, ServerRecord, check_name, process_state,
    stale_problem, validate,
)
from addrinuse.statedir import ENV_VAR, default_state_dir, open_dir  # noqa: F401  (ENV_VAR re-exported)

SUFFIX = ".addrinuse.json"
LOG_SUFFIX = ".addrinuse.log"
FORMAT = "addrinuse-server-record/1"
LOG_MARKER = b"# addrinuse server log\n"  # first line of every log the tool writes; checked before unlink
MAX_RECORD_BYTES = 64 * 1024


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
            import json  # here: `why` and `wait` read the registry, and most state dirs hold no record

            data = json.loads(raw) if len(raw) <= MAX_RECORD_BYTES else None
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return Problem(path, f"{path} is not a record of this tool (no format marker); left alone", name,
                           kind="foreign")
        try:
            return validate(data, name)
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
                problems.append(stale_problem(str(self.path(name)), found, state))
        return records, problems

    # -- writing ------------------------------------------------------------------------------
    def save(self, record: ServerRecord) -> None:
        """Claim record.name: written to a new temp file (O_EXCL|O_NOFOLLOW), then linked into place,
        which fails if the name exists. A stale record of that name is cleared first; a live one
        raises NameTaken."""
        check_name(record.name)
        data = {"format": FORMAT, **record.to_dict()}
        validate(data, record.name)  # never write what would be refused on read
        import json

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
            tmp = f".{name}.{os.urandom(6).hex()}.tmp"  # os.urandom: the secrets module costs ~5 ms at start-up
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
                    removed.append(stale_problem(str(self.dir / f"{name}{SUFFIX}"), found, state))
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
                problems.append(stale_problem(self.path(name), record, state))
        return records, problems

    def save(self, record: ServerRecord) -> None:
        check_name(record.name)
        validate({"format": FORMAT, **record.to_dict()}, record.name)
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
