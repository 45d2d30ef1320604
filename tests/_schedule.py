"""Schedule the suite's slow tests first, so they overlap everything else.

One test waits out a real 60 s TIME_WAIT (test_experiments.py::test_time_wait_lifetime); the rest of
the suite takes ~8 s on two workers. Run last or in the middle, the slow test adds its 60 s to the
total; started first on one worker while the other worker takes everything else, the total is about
the slow test alone. Two parts:
- collection order: tests named in SLOW_TESTS, or marked `slow`, come first;
- with pytest-xdist, `--dist load` (what `-n N` implies) hands each worker a batch up front, so the
  tests queued behind the slow one would wait for it; `worksteal` (xdist >= 3.2) lets an idle worker
  take them. `--dist load` becomes `worksteal`; other --dist modes are left as they are.
Hooked up from tests/conftest.py: pytest_plugins = ["tests._schedule"]."""

from __future__ import annotations

import pytest

SLOW_TESTS = ("tests/test_experiments.py::test_time_wait_lifetime",)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes tens of seconds (real kernel timers); scheduled first")
    if getattr(config.option, "dist", "no") == "load" and getattr(config.option, "numprocesses", None):
        config.option.dist = "worksteal"


def _slow(item: pytest.Item) -> bool:
    return item.nodeid.endswith(SLOW_TESTS) or item.get_closest_marker("slow") is not None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A stable partition: the slow ones first, every other test in its collected order.
    items[:] = [i for i in items if _slow(i)] + [i for i in items if not _slow(i)]
