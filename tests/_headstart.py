"""Start the suite's two real 60 s waits when the session starts, not when a worker reaches them.

Two tests wait out a real TIME_WAIT (about 62 s each); everything else takes about 10 s. Scheduled
first (tests/_schedule.py) they still begin only once xdist's workers have started and collected, 4-5 s
into the run on two cores: the environment sets PYTHONDONTWRITEBYTECODE=1, so every worker redoes
pytest's assertion rewrite. So the controller (or the single pytest process) launches each slow
scenario as a subprocess of its own from pytest_configure, before any worker exists; the test, run
last, takes the scenario's outcome and makes its assertions on it.

- Launched only where the test will surely be collected: no -k/-m/--deselect/--lf/--sw/--co, and
  every path argument covers the test's file. Anywhere else (and with ADDRINUSE_TEST_HEADSTART=0,
  or not as root for a scenario that needs root) the test runs its scenario itself, as before.
- The outcome comes back through a 0700 temp dir of this run: `<slug>.pid` written by the launcher
  (the test's sign that it was launched), `<slug>.result` written atomically by the scenario.
- Each scenario runs in a new session (its own process group) with PDEATHSIG: pytest_unconfigure
  ends the group by the leader's pid (not yet reaped, so the id cannot have been reused), and a
  killed pytest takes the leader with it.

Scenario processes: `python -m tests._headstart DIR SLUG`."""

from __future__ import annotations

import importlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest

from addrinuse.polling import until
from tests.helpers import dead

HEADSTART_ENV = "ADDRINUSE_TEST_HEADSTART"
DIR_ENV = "ADDRINUSE_TEST_HEADSTART_DIR"
ROOT_DIR = Path(__file__).resolve().parent.parent

# node id -> (module, function, needs root): the function runs the scenario and returns its outcome.
SCENARIOS = {
    "tests/test_experiments.py::test_time_wait_lifetime": ("tests.test_experiments", "time_wait_lifetime", False),
    "tests/test_truth.py::test_clients_that_close_later_free_the_port_within_the_bound_for_real":
        ("tests.test_truth", "clients_close_later", True),
}

_launched: dict[str, subprocess.Popen] = {}
_dir: str | None = None


def _slug(nodeid: str) -> str:
    return nodeid.rpartition("::")[2]


def _covered(config: pytest.Config, nodeid: str) -> bool:
    """True when the arguments surely collect this node id (only paths, none that leaves it out)."""
    opt = config.option
    for name in ("keyword", "markexpr", "deselect", "lf", "stepwise", "collectonly", "ignore", "ignore_glob"):
        if getattr(opt, name, None):
            return False
    path = (ROOT_DIR / nodeid.partition("::")[0]).resolve()
    covers = []
    for arg in config.args or []:
        file, sep, name = arg.partition("::")
        target = Path(config.invocation_params.dir, file).resolve()
        if sep and not (target == path and name == nodeid.partition("::")[2]):
            return False  # a narrower selection: run as it comes, not ahead
        covers.append(target == path or target in path.parents)
    return any(covers)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    global _dir
    if hasattr(config, "workerinput") or os.environ.get(HEADSTART_ENV, "1") == "0":
        return
    if not sys.platform.startswith("linux"):
        return
    wanted = [n for n, (_, _, root) in SCENARIOS.items()
              if _covered(config, n) and (not root or os.geteuid() == 0)]
    if not wanted:
        return
    _dir = tempfile.mkdtemp(prefix="addrinuse-headstart-")  # 0700, ours
    for nodeid in wanted:
        slug = _slug(nodeid)
        proc = subprocess.Popen([sys.executable, "-m", "tests._headstart", _dir, nodeid, str(os.getpid())],
                                cwd=ROOT_DIR, start_new_session=True, stdin=subprocess.DEVNULL)
        _launched[nodeid] = proc
        Path(_dir, f"{slug}.pid").write_text(str(proc.pid))
    os.environ[DIR_ENV] = _dir  # workers inherit it


def launched(nodeid: str) -> bool:
    where = os.environ.get(DIR_ENV)
    return nodeid in SCENARIOS and where is not None and Path(where, f"{_slug(nodeid)}.pid").exists()


def pytest_unconfigure(config: pytest.Config) -> None:
    global _dir
    for proc in _launched.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the group we created; the leader is not reaped yet
        proc.wait()
    _launched.clear()
    if _dir is not None:
        shutil.rmtree(_dir, ignore_errors=True)
        os.environ.pop(DIR_ENV, None)
        _dir = None


def ours(proc) -> bool:
    """True for a scenario process or one of its descendants (the leak check leaves them alone)."""
    pids = {p.pid for p in _launched.values()}
    try:
        return proc.pid in pids or any(p.pid in pids for p in proc.parents())
    except Exception:  # noqa: BLE001 - gone meanwhile: not a leak either way
        return True


def outcome(nodeid: str, timeout: float = 150.0):
    """The scenario's return value: from its head start when launched, else run here and now."""
    module, function, _ = SCENARIOS[nodeid]
    if not launched(nodeid):
        return getattr(importlib.import_module(module), function)()
    where, slug = Path(os.environ[DIR_ENV]), _slug(nodeid)
    pid = int((where / f"{slug}.pid").read_text())
    result = where / f"{slug}.result"
    # The file is renamed into place before the process exits: checked again once it is dead.
    if not until(lambda: result.exists() or dead(pid), timeout, 0.1):
        raise AssertionError(f"no result from the head-start process {pid} of {nodeid} after {timeout} s")
    if not result.exists():
        raise AssertionError(f"the head-start process {pid} of {nodeid} ended without a result")
    kind, value = pickle.loads(result.read_bytes())
    if kind == "skip":
        pytest.skip(value)
    if kind == "error":
        raise AssertionError(f"in the head-start process of {nodeid}:\n{value}")
    return value


def _main(where: str, nodeid: str, parent: int) -> int:
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the launcher died before the line above took effect
        return 1
    module, function, _ = SCENARIOS[nodeid]
    try:
        value = ("ok", getattr(importlib.import_module(module), function)())
    except pytest.skip.Exception as skip:
        value = ("skip", str(skip.msg))
    except BaseException:  # noqa: BLE001 - everything goes back to the test
        value = ("error", traceback.format_exc())
    tmp = Path(where, f"{_slug(nodeid)}.tmp")
    tmp.write_bytes(pickle.dumps(value))
    tmp.rename(Path(where, f"{_slug(nodeid)}.result"))  # atomic: the test never reads half a file
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
