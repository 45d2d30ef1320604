"""Schedule the suite's slow tests first, so they overlap everything else.

Two tests wait out a real 60 s TIME_WAIT (test_experiments.py::test_time_wait_lifetime and the
clients-close-later bound in test_truth.py). Run last or in the middle, the slow test adds its 60 s to the
total; started first on one worker while the others take everything else, the total is about the slow
test alone. Three parts:
- collection order: tests named in SLOW_TESTS, or marked `slow`, come first;
- a slow test whose scenario tests/_headstart.py already launched at session start comes last instead:
  it only collects that outcome, and every worker is free for the rest meanwhile;
- with pytest-xdist, `--dist load` (what `-n N` implies) hands each worker a batch up front, so the
  tests queued behind the slow one would wait for it; `worksteal` (xdist >= 3.2) lets an idle worker
  take them. `--dist load` becomes `worksteal`; other --dist modes are left as they are.
Hooked up from tests/conftest.py: pytest_plugins = ["tests._headstart", "tests._schedule"]."""

from __future__ import annotations

import pytest

from tests._headstart import SCENARIOS, launched  # registered before this plugin (conftest's order)

SLOW_TESTS = tuple(SCENARIOS)  # the 60 s ones, named once, where their head start is


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes tens of seconds (real kernel timers); scheduled first")
    if getattr(config.option, "dist", "no") == "load" and getattr(config.option, "numprocesses", None):
        config.option.dist = "worksteal"


def _slow(item: pytest.Item) -> bool:
    return item.nodeid.endswith(SLOW_TESTS) or item.get_closest_marker("slow") is not None


def chunk_starts(total: int, workers: int) -> list[int]:
    """Where each worker's first batch begins: worksteal's first schedule hands out the pending list
    in consecutive chunks, len(pending) // workers_left each (xdist/scheduler/worksteal.py)."""
    starts, position, left = [], 0, total
    for i in range(workers):
        starts.append(position)
        size = left // (workers - i)
        position, left = position + size, left - size
    return starts


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The slow ones first, every other test in its collected order. Under xdist each slow test
    # heads a different worker's first batch: queued one behind the other on one worker (they are
    # stolen from the tail, never the head) they would add their minutes instead of overlapping.
    # Launched at session start (tests/_headstart.py): such a test only collects an outcome, so it goes last.
    last = [i for i in items if launched(i.nodeid)]
    others = [i for i in items if i not in last]
    slow, rest = [i for i in others if _slow(i)], [i for i in others if not _slow(i)]
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    if workers < 2:
        items[:] = slow + rest + last
        return
    starts = chunk_starts(len(items), workers)
    ordered = list(rest)
    for k, item in enumerate(slow):
        ordered.insert(starts[k % workers] + k // workers, item)
    items[:] = ordered + last
