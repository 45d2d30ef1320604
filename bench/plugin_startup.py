"""What the addrinuse pytest plugin adds to every pytest start, against the other pytest11 plugins
installed beside it (pytest-xdist, hypothesis): one line.

Measured in-process, in a fresh interpreter per run where pytest is already imported (as it is when
pytest loads its entry points): the import of the entry point's module, then its registration with
pytest's plugin manager (pluggy reads its hooks). Median of RUNS fresh processes per plugin,
interleaved so other people's bursts on a shared machine fall on all of them alike. Issue 13 §3
asks for <= 5 ms; the ratio against each peer is what `make bench` compares across runs.
Bytecode must be current (`make` compiles it at install; PYTHONDONTWRITEBYTECODE=1 here, so a
module edited since is compiled again at every import: 1.14 ms instead of 0.50 ms, measured).

    python -m bench.plugin_startup [RUNS]"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys

RUNS = 41
GOAL_MS = 5.0
PLUGINS = {"addrinuse": "addrinuse.pytest_plugin", "xdist": "xdist.plugin", "hypothesis": "_hypothesis_pytestplugin"}

CODE = """
import importlib, sys, time
import pytest
from _pytest.config import PytestPluginManager

pm = PytestPluginManager()
t0 = time.perf_counter_ns()
module = importlib.import_module(sys.argv[1])
t1 = time.perf_counter_ns()
pm.register(module, sys.argv[1])
t2 = time.perf_counter_ns()
print(t1 - t0, t2 - t1)
"""


def once(module: str) -> tuple[float, float]:
    """(import ms, register ms) in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", CODE, module], capture_output=True, text=True, check=True).stdout
    imported, registered = (int(x) / 1e6 for x in out.split())
    return imported, registered


def main(runs: int = RUNS) -> str:
    present = {name: module for name, module in PLUGINS.items() if importlib.util.find_spec(module.split(".")[0])}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in present}
    for _ in range(runs):
        for name, module in present.items():
            samples[name].append(once(module))
    total = {name: statistics.median(i + r for i, r in s) for name, s in samples.items()}
    ours = samples["addrinuse"]
    head = (f"pytest plugin import+register, median of {runs} fresh processes: addrinuse "
            f"{total['addrinuse']:.2f} ms (import {statistics.median(i for i, _ in ours):.2f} + register "
            f"{statistics.median(r for _, r in ours):.2f})")
    peers = "".join(f"; {name} {total[name]:.2f} ms ({total['addrinuse'] / total[name]:.2f}x)"
                    for name in total if name != "addrinuse")
    verdict = "ok" if total["addrinuse"] <= GOAL_MS else "OVER"
    return f"{head}{peers}; goal <= {GOAL_MS:g} ms: {verdict}"


if __name__ == "__main__":
    print(main(int(sys.argv[1]) if len(sys.argv) > 1 else RUNS))
