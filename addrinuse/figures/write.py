"""Writing figures and reports to disk without being turned into a weapon (the tool runs as root).

Every file is written under a temporary name created with O_CREAT|O_EXCL|O_NOFOLLOW inside the
directory (opened once, then used by fd), then renamed over its final name: rename(2) replaces
whatever has that name, a planted symlink included, and never writes through it. A directory the tool
creates is 0755 and opened with O_NOFOLLOW, so one swapped for a symlink in between is refused; a
directory that already exists is the user's choice and is used as named."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from addrinuse.errors import ReportPathError

FILE_MODE = 0o644
DIR_MODE = 0o755


@dataclass
class ReportFiles:
    directory: Path
    report: Path
    figures: list[Path] = field(default_factory=list)
    total_bytes: int = 0  # report.html plus every figure


def _refuse(path, err: OSError, fix: str) -> ReportPathError:
    return ReportPathError(str(path), err.strerror or str(err), fix)


def _open_dir(path: Path) -> int:
    """An fd on the directory, created (0755, parents too) when missing."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ReportPathError(str(path), "is a symlink to nothing", "remove it or give another directory") from None
        st = None
    except OSError as err:
        raise _refuse(path, err, "give a directory you can write to") from err
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise ReportPathError(str(path), "exists and is not a directory",
                              "give a directory (created if missing), or remove that file first")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        if st is None:
            path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.mkdir(path, DIR_MODE)
            fd = os.open(path, flags | os.O_NOFOLLOW)
            os.fchmod(fd, DIR_MODE)  # exactly 0755, whatever the umask
            return fd
        return os.open(path, flags)
    except FileExistsError as err:  # created by someone else since the stat: not ours to trust blindly
        raise _refuse(path, err, "it appeared while being created; run again") from err
    except OSError as err:
        raise _refuse(path, err, "give a directory you can write to") from err


def _write_at(dir_fd: int, dir_path: Path, name: str, data: bytes) -> int:
    tmp = f".{name}.{os.urandom(6).hex()}.tmp"  # unguessable; O_EXCL anyway (secrets costs 20 ms to import)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE,
                     dir_fd=dir_fd)
    except OSError as err:
        raise _refuse(dir_path, err, "give a directory you can write to") from err
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as err:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise _refuse(dir_path / name, err, "remove it or choose another path") from err
    return len(data)


def write_files(directory: str | os.PathLike, files: dict[str, str]) -> int:
    """Write {name: text} into a directory (created 0755 if missing); returns the bytes written."""
    directory = Path(directory)
    for name in files:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"not a plain file name: {name!r}")
    fd = _open_dir(directory)
    try:
        return sum(_write_at(fd, directory, name, text.encode()) for name, text in files.items())
    finally:
        os.close(fd)


def check_svg_path(path: str | os.PathLike) -> Path:
    """Refuse, before anything runs, a path write_svg() could not write (ReportPathError, exit 2):
    not a file name, a missing directory, a directory, a directory this user cannot write."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise ReportPathError(str(path), "is not a file name", "give a file path such as counts.svg")
    parent = path.parent
    if not parent.is_dir():
        raise ReportPathError(str(parent), "no such directory", "create it first, or give a path in an existing one")
    if path.is_dir():
        raise ReportPathError(str(path), "is a directory", "give a file path such as counts.svg")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ReportPathError(str(parent), "is not writable by this user", "give a path in a directory you can write to")
    return path


def write_svg(path: str | os.PathLike, svg: str) -> Path:
    """One figure to a file (`watch --svg FILE`): its directory must exist; the file is replaced atomically."""
    path = check_svg_path(path)
    parent = path.parent
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _write_at(fd, parent, path.name, svg.encode())
    finally:
        os.close(fd)
    return path


def write_report(directory: str | os.PathLike, reports: list[dict], title: str | None = None) -> ReportFiles:
    """report.html and one .svg per figure (each experiment's checks table included) into a directory."""
    from addrinuse.figures.report import build

    html, figures = build(reports, title)
    directory = Path(directory)
    written = write_files(directory, {**figures, "report.html": html})
    return ReportFiles(directory, directory / "report.html", [directory / n for n in figures], written)
