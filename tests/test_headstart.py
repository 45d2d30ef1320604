"""The suite's own head start (tests/_headstart.py): launched only where the test surely runs, and
its outcome read back faithfully (a scenario that died is a failure, never a pass)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import _headstart as headstart

SLOW = "tests/test_experiments.py::test_time_wait_lifetime"
ROOT = Path(__file__).resolve().parent.parent


def config(*args: str, **options) -> SimpleNamespace:
    return SimpleNamespace(args=list(args), option=SimpleNamespace(**options),
                           invocation_params=SimpleNamespace(dir=ROOT))


@pytest.mark.parametrize("args, options, covered", [
    (["tests"], {}, True),
    (["."], {}, True),
    (["tests/test_experiments.py"], {}, True),
    ([SLOW], {}, True),
    (["tests/test_truth.py"], {}, False),
    (["tests/test_experiments.py::test_http_server_restart"], {}, False),
    (["tests", "tests/test_truth.py::test_connections_a_live_process_holds_are_unknown_and_named"], {}, False),
    (["tests"], {"keyword": "lifetime"}, False),
    (["tests"], {"markexpr": "slow"}, False),
    (["tests"], {"deselect": [SLOW]}, False),
    (["tests"], {"lf": True}, False),
    (["tests"], {"collectonly": True}, False),
])
def test_launched_only_where_the_test_is_surely_collected(args, options, covered):
    assert headstart._covered(config(*args, **options), SLOW) is covered


def test_not_launched_means_run_here(monkeypatch):
    monkeypatch.delenv(headstart.DIR_ENV, raising=False)
    assert not headstart.launched(SLOW)


def _launched_with(tmp_path, monkeypatch, pid: int, result=None) -> None:
    monkeypatch.setenv(headstart.DIR_ENV, str(tmp_path))
    slug = headstart._slug(SLOW)
    (tmp_path / f"{slug}.pid").write_text(str(pid))
    if result is not None:
        (tmp_path / f"{slug}.result").write_bytes(pickle.dumps(result))


def test_a_scenario_that_died_without_a_result_fails(tmp_path, monkeypatch):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: its pid names no process of ours any more
    _launched_with(tmp_path, monkeypatch, proc.pid)
    with pytest.raises(AssertionError, match="ended without a result"):
        headstart.outcome(SLOW, timeout=5)


def test_the_outcome_comes_back_as_it_was(tmp_path, monkeypatch):
    _launched_with(tmp_path, monkeypatch, 1, ("ok", {"lifetime_s": 60.7}))
    assert headstart.outcome(SLOW) == {"lifetime_s": 60.7}
    _launched_with(tmp_path, monkeypatch, 1, ("error", "Traceback: boom"))
    with pytest.raises(AssertionError, match="boom"):
        headstart.outcome(SLOW)
    _launched_with(tmp_path, monkeypatch, 1, ("skip", "needs root"))
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        headstart.outcome(SLOW)
