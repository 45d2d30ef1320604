"""Fixtures: each test gets its own state dir; after each test no process it started may remain.

The pytest process makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so a server
started by an `addrinuse start` subprocess is re-parented to pytest when that subprocess exits,
and the leak check sees it instead of losing it to init."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time

import psutil
import pytest
from click.testing import CliRunner

from addrinuse.cli import run as run_cli
from addrinuse.control import stop_servers
from addrinuse.registry import Registry

PR_SET_CHILD_SUBREAPER = 36
pytest_plugins = ["tests._schedule"]


def pytest_configure(config):
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _living_children() -> list[psutil.Process]:
    _reap()
    alive = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture(autouse=True)
def no_leaked_process():
    before = {p.pid for p in _living_children()}
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = [p for p in _living_children() if p.pid not in before]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    for proc in leaked:
        proc.kill()
    _reap()
    assert not leaked, f"processes left behind: {[(p.pid, p.cmdline()) for p in leaked]}"


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    path = tmp_path / "state"
    monkeypatch.setenv("ADDRINUSE_STATE_DIR", str(path))
    yield path
    # Whatever a failing test left running ends here, by record (pid + create time).
    stop_servers(Registry(path), everything=True, sig=9, timeout=5)


class Result:
    def __init__(self, code, stdout, stderr):
        self.exit_code, self.stdout, self.stderr = code, stdout, stderr

    def json(self):
        import json

        return json.loads(self.stdout)


@pytest.fixture
def run(state_dir):
    """Run the CLI in-process (CliRunner) and return exit code, stdout and stderr."""

    def invoke(*args: str) -> Result:
        # Through app.run, as the console script does: errors become exit codes there.
        with CliRunner().isolation() as streams:
            code = run_cli([str(a) for a in args])
            out, err = streams[0].getvalue().decode(), streams[1].getvalue().decode()
        return Result(code, out, err)

    return invoke


@pytest.fixture
def sub(state_dir):
    """Run the CLI as a real subprocess (`python -m addrinuse`)."""

    def invoke(*args: str, timeout: float = 30) -> Result:
        proc = subprocess.run([sys.executable, "-m", "addrinuse", *map(str, args)], capture_output=True,
                              text=True, timeout=timeout)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return invoke
