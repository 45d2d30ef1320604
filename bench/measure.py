"""How the benchmark measures, on a machine other people are using at the same time.

Every figure is compared with a peer measured in the same run, interleaved with it (method, peer,
method, peer, ...) so that both see the same load; medians, not means, so that a burst of someone
else's work moves neither much. Subprocesses are timed from spawn to exit, with their peak RSS from
wait4(); CPU per poll of a long-running process comes from /proc/PID/schedstat (ns of CPU time)."""

from __future__ import annotations

import json
import os
import select
import shutil
import statistics
import subprocess
import time
from typing import Callable, NamedTuple


class Run(NamedTuple):
    ms: float
    rss_mib: float | None = None
    cpu_ms: float | None = None  # user + system CPU time (spawned processes)


def call(fn: Callable[[], object]) -> Run:
    """Wall and CPU time (user + system: the kernel's walk runs in this process's recv calls)."""
    cpu, began = time.process_time(), time.perf_counter()
    fn()
    return Run((time.perf_counter() - began) * 1000, None, (time.process_time() - cpu) * 1000)


TIME = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)


def spawn(argv: list[str], env: dict | None = None) -> Run:
    """Wall time, CPU time and peak RSS of one process, its output thrown away (as a pipe reader
    would).

    The peak RSS comes from GNU time (`-f %M`), which forks the command itself: wait4() on a child
    of this Python process would report this process's own RSS, as a forked child's maxrss counts
    the memory it shared before exec(). The CPU time comes from wait4() on GNU time, which
    includes the command it waited for (in us; time's own %U/%S print 10 ms steps). Both a
    method and its peer pay time's ~1 ms alike."""
    read, write = os.pipe()
    prefix = [TIME, "-f", "%M", "-o", f"/dev/fd/{write}"] if TIME else []
    with os.fdopen(read) as rss_out:
        try:
            began = time.perf_counter()
            proc = subprocess.Popen(prefix + argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                    pass_fds=[write])
        finally:
            os.close(write)
        _, status, usage = os.wait4(proc.pid, 0)
        took = (time.perf_counter() - began) * 1000
        proc.returncode = os.waitstatus_to_exitcode(status)
        report = rss_out.read().split()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}")
    cpu = (usage.ru_utime + usage.ru_stime) * 1000
    return Run(took, int(report[-1]) / 1024 if report else None, cpu)  # without GNU time: no RSS


def interleaved(runs: dict[str, Callable[[], Run]], repeats: int) -> dict[str, Run]:
    """Median time (and largest RSS) of each, measured in turns; one warm-up round first."""
    for fn in runs.values():
        fn()
    seen: dict[str, list[Run]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            seen[name].append(fn())
    out = {}
    for name, results in seen.items():
        rss = [r.rss_mib for r in results if r.rss_mib is not None]
        cpu = [r.cpu_ms for r in results if r.cpu_ms is not None]
        out[name] = Run(statistics.median(r.ms for r in results), max(rss) if rss else None,
                        statistics.median(cpu) if cpu else None)
    return out


def cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


class Poller(NamedTuple):
    cpu_per_poll_ms: float
    period_ms: float  # mean time between polls (the watch's own t_s over its polls)
    polls: int


def watch_cpu(argv: list[str], seconds: float, env: dict | None = None, interval: float = 0.1) -> Poller:
    """Run `addrinuse watch ... --json --duration S` to its end: CPU used after its start line (its
    first poll done) / polls made after it, and the period it held. With --duration the last poll
    falls at exactly S (the watch clips its schedule to it), so the summary's t_s / (polls - 1)
    is the mean period, unbiased; CPU at the end comes from wait4(), at the start line from
    /proc/PID/schedstat, both the kernel's sum of the process's run time."""
    proc = subprocess.Popen([*argv, "--duration", str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 30)
        if not ready or "Ctrl-C to end." not in proc.stderr.readline():
            raise RuntimeError(f"{' '.join(argv)} did not start")
        first = cpu_ns(proc.pid)
        out = proc.stdout.read()
        proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    summary = json.loads(out.strip().splitlines()[-1])
    if "polls" in summary:
        polls = summary["polls"] - 1  # the first poll came before the start line
    else:  # --source trace: no polls; its CPU is spread over the periods a poller would have had
        polls = round(seconds / interval)
    used_ms = (usage.ru_utime + usage.ru_stime) * 1000 - first / 1e6
    return Poller(used_ms / max(polls, 1), summary["t_s"] * 1000 / max(polls, 1), polls)


def loop_cpu(argv: list[str], interval: float, seconds: float) -> Poller:
    """The same job as a shell loop of `ss` would do it: CPU of each ss process (wait4), per poll."""
    total, polls = 0.0, 0
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        due = time.monotonic() + interval
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        _, _, usage = os.wait4(proc.pid, 0)
        total += (usage.ru_utime + usage.ru_stime) * 1000
        polls += 1
        time.sleep(max(0.0, due - time.monotonic()))
    return Poller(total / polls, (time.monotonic() - began) * 1000 / polls, polls)
