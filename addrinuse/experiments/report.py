"""What a run found: one Report per experiment, and the verdict of a whole run.

Each experiment ends in one status:
  passed      it ran and every expectation held
  failed      it ran and an expectation differed (or a step failed that no expectation checks)
  skipped     it did not run: a requirement it declares (`requires`) is missing here (ipv6, root, ...)
  cannot_run  it could not run to the end: a privilege or feature missing at run time (CannotRun)

A run's exit code (`verdict`): 1 when any experiment failed; else 6 (cannot run) when any could not
run, or when nothing ran at all because every selected experiment was skipped, so a CI job never
passes while checking nothing; else 0. Skipped experiments beside passing ones do not fail the run
(as pytest's skips), but every report lists them, and JUnit XML marks them <skipped/>."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

from addrinuse.errors import EXIT_CANNOT_RUN, EXIT_FAILED, EXIT_OK
from addrinuse.experiments.checks import Check

SYSCTLS = {
    "tcp_fin_timeout": "/proc/sys/net/ipv4/tcp_fin_timeout",
    "tcp_tw_reuse": "/proc/sys/net/ipv4/tcp_tw_reuse",
    "ip_local_port_range": "/proc/sys/net/ipv4/ip_local_port_range",
    "bindv6only": "/proc/sys/net/ipv6/bindv6only",
}


def sysctls() -> dict[str, str | None]:
    """The host's values that shape the outcomes (read only; null: not readable here)."""
    out = {}
    for key, path in SYSCTLS.items():
        try:
            out[key] = " ".join(Path(path).read_text().split())
        except OSError:
            out[key] = None
    return out


@dataclass
class Report:
    name: str
    purpose: str
    explain: str
    path: str
    states: list[str] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    states_seen: set[str] = field(default_factory=set)
    duration_s: float = 0.0
    skipped: str | None = None  # the missing requirement
    message: str | None = None  # why it stopped early: could not run, or a step failed unchecked
    cannot_run: bool = False
    results: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.skipped is not None:
            return "skipped"
        if self.cannot_run:
            return "cannot_run"
        if self.message is not None or any(c.ok is False for c in self.checks):
            return "failed"
        return "passed"

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return {"name": self.name, "purpose": self.purpose, "status": self.status, "passed": self.passed,
                "skipped": self.skipped,
                "message": self.message, "checks": [c.to_dict() for c in self.checks], "steps": self.steps,
                "ports": sorted(set(self.ports)), "states": self.states, "states_seen": sorted(self.states_seen),
                "duration_s": round(self.duration_s, 3), "kernel": platform.release(), "sysctls": sysctls(),
                "path": self.path, "explain": " ".join(self.explain.split())}


def check_report_dir(path) -> None:
    """Refuse, before anything runs, a --report directory that cannot be written (ReportPathError,
    exit 2): an existing non-directory, or a folder (or the nearest existing parent of one to be
    created) this user cannot write. The report itself is written by addrinuse.figures.write_report."""
    import os

    from addrinuse.errors import ReportPathError

    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ReportPathError(str(path), "exists and is not a directory",
                              "give a directory (created if missing), or remove that file first")
    existing = target
    while not existing.exists():
        if existing.is_symlink():
            raise ReportPathError(str(existing), "is a symlink to nothing", "remove it or give another directory")
        existing = existing.parent
    if not existing.is_dir():
        raise ReportPathError(str(existing), "is not a directory", "give a path whose parents are directories")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ReportPathError(str(existing), "is not writable by this user", "give a directory you can write to")


def count(reports) -> dict[str, int]:
    """{status: how many}, for every status (0 included); takes Reports or their dicts."""
    out = {"passed": 0, "failed": 0, "skipped": 0, "cannot_run": 0}
    for r in reports:
        out[r["status"] if isinstance(r, dict) else r.status] += 1
    return out


def verdict(reports) -> int:
    """The exit code of a run (see the module's doc)."""
    n = count(reports)
    if n["failed"]:
        return EXIT_FAILED
    if n["cannot_run"] or not n["passed"]:
        return EXIT_CANNOT_RUN
    return EXIT_OK


def summary(reports) -> str:
    n = count(reports)
    text = f"{n['passed']} passed, {n['failed']} failed"
    if n["skipped"]:
        text += f", {n['skipped']} skipped"
    if n["cannot_run"]:
        text += f", {n['cannot_run']} could not run"
    return text
