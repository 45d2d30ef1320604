"""The state directory check, modelled on OpenSSH's StrictModes and tmux's socket directory check.

Run as root, the tool signals the pids its records name, so a record someone else could have written
is a weapon: `/tmp/addrinuse-0` created first by a local user, holding a record with a victim's pid
and create time, would make root's `kill --all` signal the victim. So before any use the directory
is lstat'ed and refused when it is a symlink, not owned by the effective uid, or writable by group
or other; then it is opened with O_NOFOLLOW|O_DIRECTORY and the open directory is checked again
(fstat, same device and inode), so every later file operation goes through that descriptor
(openat-style `dir_fd=`) and cannot be redirected by renaming or replacing the path meanwhile."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from addrinuse.errors import BadInput, UnsafeStateDir

ENV_VAR = "ADDRINUSE_STATE_DIR"


def default_state_dir() -> Path:
    """$ADDRINUSE_STATE_DIR, else $XDG_RUNTIME_DIR/addrinuse, else TMPDIR/addrinuse-EUID. The last
    one is predictable, so anyone could create it first: `check` is what makes that harmless."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "addrinuse"
    return Path(_temp_root()) / f"addrinuse-{os.geteuid()}"


def _temp_root() -> str:
    """tempfile.gettempdir()'s choice (TMPDIR, TEMP, TMP, then /tmp, /var/tmp, /usr/tmp), made
    without importing tempfile: it pulls in shutil, random, bz2 and lzma, ~4 ms of every `why` and
    `wait` start-up (make bench). tempfile decides by creating a file there; a writable, searchable
    directory is the same answer without writing anything."""
    for name in ("TMPDIR", "TEMP", "TMP"):
        value = os.environ.get(name)
        if value and os.path.isdir(value) and os.access(value, os.W_OK | os.X_OK):
            return os.path.abspath(value)
    for candidate in ("/tmp", "/var/tmp", "/usr/tmp"):
        if os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    import tempfile  # nothing usable above: let the standard library decide (it raises if nothing is)

    return tempfile.gettempdir()


def _ours_by_name(path: Path) -> bool:
    """A directory named like the tool's own defaults: only then is removing or chmod-ing it a fix
    to suggest (never for /tmp, a home, or whatever else --state-dir was pointed at)."""
    return path.name == "addrinuse" or path.name.startswith("addrinuse-")


def _refuse(path: Path, problem: str, fix: str | None = None):
    private = f"pass --state-dir (or {ENV_VAR}) naming a directory of your own with mode 0700"
    if fix is None:
        fix = f"remove it (someone else made it), or {private}" if _ours_by_name(path) else private
    raise UnsafeStateDir(str(path), problem, fix)


def check(path: Path, st: os.stat_result) -> None:
    """Refuse a state dir that someone other than this user could have written."""
    if stat.S_ISLNK(st.st_mode):
        _refuse(path, "is a symlink", f"pass --state-dir (or {ENV_VAR}) naming the real directory")
    if not stat.S_ISDIR(st.st_mode):
        raise BadInput(f"state dir {path} is not a directory: pass --state-dir or set {ENV_VAR} to a directory")
    if st.st_uid != os.geteuid():
        _refuse(path, f"is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})")
    if st.st_mode & 0o022:
        _refuse(path, f"is writable by group or other (mode {stat.S_IMODE(st.st_mode):04o})",
                f"chmod 700 {path}, or pass --state-dir naming a private directory" if _ours_by_name(path) else None)


def open_dir(path: Path, create: bool) -> int | None:
    """A checked descriptor of the state dir; None when it does not exist and `create` is False
    (a command that only reads has nothing to read then)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            return None
        _create(path)
        st = os.lstat(path)
    except OSError as err:
        raise _unusable(path, err) from err
    check(path, st)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise _unusable(path, err) from err
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        _refuse(path, "was replaced while being checked")
    try:
        check(path, opened)
    except BaseException:
        os.close(fd)
        raise
    if not os.access(path, os.W_OK | os.X_OK):
        os.close(fd)
        raise BadInput(f"state dir {path} is not writable: pass --state-dir or set {ENV_VAR} to a writable directory")
    return fd


def _create(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # 0700 from the start (the umask can only remove bits): never a moment where it is open.
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass  # created meanwhile (by us, or by someone: the check that follows decides)
    except OSError as err:
        raise _unusable(path, err) from err


def _unusable(path: Path, err: OSError) -> BadInput:
    return BadInput(f"state dir {path} is unusable ({err.strerror}): pass --state-dir or set {ENV_VAR} "
                    f"to a writable directory")
