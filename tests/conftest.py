"""Fixtures: each test gets its own state dir; after each test no process it started may remain.

The pytest process makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so a server
started by an `addrinuse start` subprocess is re-parented to pytest when that subprocess exits,
and the leak check sees it instead of losing it to init.

The whole run happens on a busy machine (tests/busy.py): thousands of TIME_WAIT entries on other
ports, and other loopback addresses using the very port numbers the tests listen on. One process
for the run, started by the controller (not by each xdist worker) and ended by its pid at the end;
ADDRINUSE_TEST_BUSY=0 turns it off (the `busy_machine` fixture then says so)."""

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
from tests.helpers import living_children, reap

PR_SET_CHILD_SUBREAPER = 36
pytest_plugins = ["tests._headstart", "tests._schedule"]


BUSY_ENV = "ADDRINUSE_TEST_BUSY"
BUSY_PID_ENV = "ADDRINUSE_TEST_BUSY_PID"
_busy: subprocess.Popen | None = None


def pytest_configure(config):
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    is_worker = hasattr(config, "workerinput")
    if not is_worker and os.environ.get(BUSY_ENV, "1") != "0" and sys.platform.startswith("linux"):
        _start_busy()


def _start_busy() -> None:
    global _busy
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _busy = subprocess.Popen([sys.executable, "-m", "tests.busy"], cwd=root, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    line = _busy.stdout.readline()  # its first TIME_WAIT batch is in place
    if line.strip() != "ready":
        _busy.kill()
        _busy.wait()
        raise pytest.UsageError("the busy-machine process (tests/busy.py) did not start; ADDRINUSE_TEST_BUSY=0 skips it")
    os.environ[BUSY_PID_ENV] = str(_busy.pid)  # workers inherit it: the busy_machine fixture checks it


def pytest_unconfigure(config):
    global _busy
    if _busy is not None:
        _busy.terminate()  # by its pid: the one process this run started for it
        try:
            _busy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _busy.kill()
            _busy.wait()
        _busy.stdin.close()
        _busy.stdout.close()
        _busy = None
        os.environ.pop(BUSY_PID_ENV, None)


@pytest.fixture(scope="session", autouse=True)
def busy_machine():
    """The busy-machine process, alive for the whole session (None when turned off)."""
    pid = os.environ.get(BUSY_PID_ENV)
    if pid is None:
        yield None
        return
    proc = psutil.Process(int(pid))
    assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE, "tests/busy.py died"
    yield proc


@pytest.fixture(autouse=True)
def no_leaked_process():
    from tests._headstart import ours as head_start_process  # a plugin: imported after pytest registers it

    before = {p.pid for p in living_children()}
    yield
    deadline = time.monotonic() + 5
    while True:
        # A head-start scenario (tests/_headstart.py) runs beside every test; it is not theirs.
        leaked = [p for p in living_children() if p.pid not in before and not head_start_process(p)]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    for proc in leaked:
        proc.kill()
    reap()
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
