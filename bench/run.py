"""`make bench`: addrinuse against the peers it competes with, at 1k, 10k, 50k and 200k TIME_WAIT
entries, each goal a ratio against a peer measured in the same run (absolute times drift on a
shared machine). Prints one table (method, N, median, peer, ratio, peak RSS), how each method grows
with N, start-up against `python -c 'import click'`, and the goals; writes the same to
bench/results.md.

Peers: `ss` (iproute2, C, the same sock_diag interface), psutil.net_connections() and /proc/net/tcp
parsing (what a Python tool would otherwise do), `python -c 'import click'` (start-up floor).
Each scale gets a fresh network namespace, a fresh background and fresh targets made right before it
is measured (targets are made again whenever they near their 60 s end)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench import measure, workload
from bench.measure import Run, interleaved, spawn
from bench.peers import proc_rows, raw_dump_count

SCALES = (1_000, 10_000, 50_000, 200_000)
REPEATS = 9  # spawned processes (ss, the CLI)
FAST_REPEATS = 31  # in-process library calls: cheap, and more of them outvote other people's bursts
STARTUP_REPEATS = 31  # start-up differences are a few ms: many runs, interleaved
SLOW_REPEATS = 3  # psutil and /proc parsing at large N take seconds each
INTERVAL = 0.1
WATCH_SECONDS = 3.0
RESULTS = Path(__file__).with_name("results.md")
TABLE_STATES = ("LISTEN", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "CLOSING",
                "LAST_ACK", "TIME_WAIT")


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple] = []  # (method, n, Run, peer name, peer Run, TIME_WAIT present)
        self.lines: list[str] = []
        self.goals: list[tuple[str, bool, str]] = []

    def add(self, method: str, n: int | str, run: Run, peer: str | None = None, peer_run: Run | None = None) -> None:
        present = workload.time_wait_count() if isinstance(n, int) else None  # entries still there (60 s each)
        self.rows.append((method, n, run, peer, peer_run, present))
        ratio = f"{run.ms / peer_run.ms:6.2f}x {peer}" if peer_run else ""
        rss = f"{run.rss_mib:6.1f}" if run.rss_mib else "     -"
        cpu = f"{run.cpu_ms:8.1f}" if run.cpu_ms is not None else "       -"
        print(f"  {method:<58} {run.ms:9.2f} ms {cpu} cpu {rss} MiB  {ratio}", flush=True)

    def note(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)

    def goal(self, what: str, ok: bool, value: str) -> None:
        self.goals.append((what, ok, value))


def cli(*args: str) -> list[str]:
    """The CLI as installed: the console script next to this Python."""
    return [str(Path(sys.executable).with_name("addrinuse")), *args]


def ss(*args: str) -> list[str]:
    return ["ss", "-tanoH", *args]


def measure_scale(report: Report, n: int) -> None:
    from addrinuse.conntable import get_backend

    began = time.monotonic()
    background = workload.Background(n)
    target = workload.Target()
    present = workload.time_wait_count()
    report.note(f"\n--- {n:,} background TIME_WAIT (made in {background.made_in_s:.1f} s; {present:,} in the "
                f"namespace's table) ---")
    netlink, plain = get_backend("netlink"), get_backend("psutil")
    try:
        check_targets(netlink, target.fresh())
        # 1. the whole table, streamed, against ss -tanoH: first, while every entry is there
        r = interleaved({"json": lambda: spawn(cli("table", "--json")), "text": lambda: spawn(cli("table")),
                         "ss": lambda: spawn(ss())}, SLOW_REPEATS if n > 50_000 else 5)
        report.add("table --json (whole table)", n, r["json"], "ss -tanoH", r["ss"])
        report.add("table (text, whole table)", n, r["text"], "ss -tanoH", r["ss"])
        report.add("  ss -tanoH", n, r["ss"])
        if n == 50_000:
            report.goal("table --json <= 3x ss -tanoH at 50k", r["json"].ms <= 3 * r["ss"].ms,
                        f"{r['json'].ms / r['ss'].ms:.2f}x")
            report.goal("table --json peak RSS <= 30 MiB at 50k", r["json"].rss_mib <= 30, f"{r['json'].rss_mib:.1f} MiB")
            report.goal("table text <= 2x ss -tanoH at 50k", r["text"].ms <= 2 * r["ss"].ms,
                        f"{r['text'].ms / r['ss'].ms:.2f}x")
        # 2. one port's TIME_WAIT, both sides: one kernel walk, against ss with the same filter, and
        #    against the floor: one raw dump (one walk, nothing decoded)
        port = target.fresh().quiet
        r = interleaved({"lib": lambda: measure.call(lambda: netlink.snapshot(port, ["TIME_WAIT"])),
                         "ss": lambda: spawn(ss("state", "time-wait", f"( sport = :{port} or dport = :{port} )")),
                         "raw": lambda: measure.call(lambda: raw_dump_count(port, 1 << 6))}, REPEATS)
        report.add("snapshot(port, TIME_WAIT): both sides", n, r["lib"], "ss", r["ss"])
        report.add("  ss -tanoH state time-wait '( sport = :P or dport = :P )'", n, r["ss"])
        report.add("  raw sock_diag dump: one walk, nothing decoded", n, r["raw"], "ss", r["ss"])
        if n == 50_000:
            report.goal("snapshot of one port <= 0.3x ss at 50k", r["lib"].ms <= 0.3 * r["ss"].ms,
                        f"{r['lib'].ms / r['ss'].ms:.2f}x (the raw one-walk dump: {r['raw'].ms / r['ss'].ms:.2f}x)")
            report.goal("snapshot of one port <= 1.2x the raw one-walk dump at 50k (the kernel's floor)",
                        r["lib"].ms <= 1.2 * r["raw"].ms, f"{r['lib'].ms / r['raw'].ms:.2f}x")
        # 3. the local side only: what demo, wait and clear ask
        port = target.fresh().quiet
        r = interleaved({"lib": lambda: measure.call(lambda: netlink.snapshot(port, ["TIME_WAIT"], local=True)),
                         "ss": lambda: spawn(ss("state", "time-wait", f"( sport = :{port} )"))}, REPEATS)
        report.add("snapshot(port, TIME_WAIT, local)", n, r["lib"], "ss", r["ss"])
        # 4. no state filter against the table's states named: an extra walk (the bind hash), or not
        r = interleaved({"none": lambda: measure.call(lambda: netlink.snapshot(port, local=True)),
                         "named": lambda: measure.call(lambda: netlink.snapshot(port, TABLE_STATES, local=True))},
                        FAST_REPEATS)
        report.add("snapshot(port, local): no state filter", n, r["none"], "states named", r["named"])
        if n == 50_000:
            report.goal("no state filter costs no extra walk (<= 1.15x states named) at 50k",
                        r["none"].ms <= 1.15 * r["named"].ms, f"{r['none'].ms / r['named'].ms:.2f}x")
        # 5. a live port, every state, both sides, with the processes: against ss -p
        port = target.fresh().live
        r = interleaved({"lib": lambda: measure.call(lambda: netlink.snapshot(port)),
                         "ss": lambda: spawn(ss("-p", f"( sport = :{port} or dport = :{port} )"))}, REPEATS)
        report.add("snapshot(port): live, all states, owners", n, r["lib"], "ss -p", r["ss"])
        # 6. watch --port (a live port), CPU per poll, against an ss -o loop at the same interval
        port = target.fresh().live
        w = measure.watch_cpu(cli("watch", "--port", str(port), "--interval", str(INTERVAL), "--json"), WATCH_SECONDS)
        s = measure.loop_cpu(ss(f"( sport = :{port} or dport = :{port} )"), INTERVAL, WATCH_SECONDS)
        report.add("watch --port P, CPU per poll", n, Run(w.cpu_per_poll_ms, None, w.cpu_per_poll_ms), "ss -o loop",
                   Run(s.cpu_per_poll_ms))
        report.add("  ss -o loop, CPU per poll", n, Run(s.cpu_per_poll_ms, None, s.cpu_per_poll_ms))
        report.note(f"  (watch: {w.polls} polls, ss loop: {s.polls} runs, {WATCH_SECONDS:g} s each)")
        report.add(f"watch period at --interval {INTERVAL:g}", n, Run(w.period_ms), "interval", Run(INTERVAL * 1000))
        if n == 50_000:
            report.goal("watch --port CPU per poll <= 1x ss -o loop at 50k", w.cpu_per_poll_ms <= s.cpu_per_poll_ms,
                        f"{w.cpu_per_poll_ms / s.cpu_per_poll_ms:.2f}x")
            report.goal(f"watch holds its period (<= 1.02x --interval {INTERVAL:g})", w.period_ms <= 1020 * INTERVAL,
                        f"{w.period_ms:.1f} ms")
            trace = watch_source_trace(port)
            if trace is None:
                report.note("  hook: watch --source trace is not on this branch (lab issue); nothing measured")
            else:
                report.add(f"watch --source trace, CPU per {INTERVAL:g} s", n, Run(trace.cpu_per_poll_ms),
                           "ss -o loop", Run(s.cpu_per_poll_ms))
        # 7. Python peers, last: slow at large N, and the entries must not expire meanwhile
        if time.monotonic() - began > 40:  # the first background entries are 60 s old at began + 60
            report.note("  (psutil and /proc parsing skipped: the background would expire while they run)")
            return
        port = target.fresh().quiet
        import psutil

        r = interleaved({"psutil backend": lambda: measure.call(lambda: plain.snapshot(port, ["TIME_WAIT"], local=True)),
                         "psutil.net_connections": lambda: measure.call(lambda: psutil.net_connections("tcp")),
                         "/proc/net/tcp parsing": lambda: measure.call(lambda: proc_rows(port))},
                        SLOW_REPEATS if n >= 50_000 else 5)
        for name, run in r.items():
            report.add(f"  {name}", n, run)
    finally:
        netlink.close()
        plain.close()
        target.close()
        background.close()
        report.note(f"  ({time.monotonic() - began:.0f} s for this scale; {workload.time_wait_count():,} TIME_WAIT left)")


def check_targets(netlink, target) -> None:
    """The benchmark measures what it thinks it does: the targets hold exactly their entries."""
    for port, expected in ((target.quiet, workload.TARGET_TIME_WAIT), (target.live, workload.TARGET_TIME_WAIT + 3)):
        out = subprocess.run(ss(f"( sport = :{port} or dport = :{port} )"), capture_output=True, text=True, check=True)
        got = len(netlink.snapshot(port))
        if got != expected or len(out.stdout.splitlines()) != expected:
            raise RuntimeError(f"target port {port}: netlink {got}, ss {len(out.stdout.splitlines())} entries; "
                               f"expected {expected}")


def watch_source_trace(port: int):
    """Hook for the lab branch's tracepoint streaming: measured when `watch --source` exists."""
    help_text = subprocess.run(cli("watch", "--help"), capture_output=True, text=True).stdout
    if "--source" not in help_text:
        return None
    return measure.watch_cpu(cli("watch", "--port", str(port), "--source", "trace", "--json"), WATCH_SECONDS,
                             interval=INTERVAL)


def startup(report: Report) -> None:
    py = sys.executable
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    listing = subprocess.run(cli("experiment", "list"), capture_output=True, text=True).stdout.split()
    one = "two-reuseaddr-listeners" if "two-reuseaddr-listeners" in listing else None
    commands = {
        "python -c pass": [py, "-c", "pass"],
        "addrinuse --version": cli("--version"),
        "addrinuse rebind P": cli("rebind", port),
        "addrinuse why P": cli("why", port),
    }
    if one:
        commands[f"addrinuse experiment run {one}"] = cli("experiment", "run", one)
    runs = interleaved({"python -c 'import click'": lambda: spawn([py, "-c", "import click"]),
                        **{name: (lambda argv=argv: spawn(argv)) for name, argv in commands.items()}}, STARTUP_REPEATS)
    base = runs.pop("python -c 'import click'")
    report.note("\n--- start-up, whole process, as installed (console script) ---")
    report.add("python -c 'import click'", "-", base)
    for name, run in runs.items():
        report.add(name, "-", run, "import click", base)
    for name, limit in (("addrinuse rebind P", 1.3), ("addrinuse why P", 1.6), (f"addrinuse experiment run {one}", 2.5)):
        if name in runs:
            report.goal(f"{name} start-up <= {limit}x import click", runs[name].ms <= limit * base.ms,
                        f"{runs[name].ms / base.ms:.2f}x (CPU {runs[name].cpu_ms / base.cpu_ms:.2f}x)")
    if not one:
        report.note("  (experiment run: no quick experiment named two-reuseaddr-listeners on this branch)")
    pytest_plugin(report)


def pytest_plugin(report: Report) -> None:
    """What the addrinuse pytest plugin adds to every pytest start (branch plugin)."""
    import importlib.util
    import tempfile

    if importlib.util.find_spec("addrinuse.pytest_plugin") is None:
        report.note("  hook: addrinuse/pytest_plugin.py is not on this branch (plugin issue); nothing measured")
        return
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "test_empty.py").write_text("")
        base = [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", str(Path(tmp, "test_empty.py"))]
        runs = interleaved({"with": lambda: spawn_ok(base), "without": lambda: spawn_ok(base + ["-p", "no:addrinuse"])},
                           9)
    report.add("pytest --co -q (plugin loaded)", "-", runs["with"], "-p no:addrinuse", runs["without"])
    # Whole pytest starts differ by more than the plugin's cost from run to run (noise of a shared
    # machine): the goal is judged on the in-process measure of import + registration.
    from bench import plugin_startup

    line = plugin_startup.main()
    report.note("  " + line)
    ms = float(line.split("addrinuse ", 1)[1].split(" ms", 1)[0])
    report.goal(f"pytest plugin import+register <= {plugin_startup.GOAL_MS:g} ms", ms <= plugin_startup.GOAL_MS,
                f"{ms:.2f} ms")


def spawn_ok(argv: list[str]) -> Run:
    """pytest --co on an empty file exits 5 (no tests): time it all the same."""
    began = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Run((time.perf_counter() - began) * 1000)


def growth(report: Report) -> list[str]:
    """Median ms per method and N, and a bar per N relative to the method's largest."""
    methods = [m for m in dict.fromkeys(r[0] for r in report.rows if isinstance(r[1], int))]
    scales = sorted({r[1] for r in report.rows if isinstance(r[1], int)})
    lines = ["", "--- growth with N (median ms; bar: share of the method's largest) ---",
             f"{'method':<58} " + " ".join(f"{n:>9,}" for n in scales)]
    for method in methods:
        cells = {r[1]: r[2].ms for r in report.rows if r[0] == method and isinstance(r[1], int)}
        if "period" in method:
            continue
        lines.append(f"{method:<58} " + " ".join(f"{cells[n]:9.2f}" if n in cells else f"{'-':>9}" for n in scales))
        top = max(cells.values())
        for n in scales:
            if n in cells:
                lines.append(f"{'':<8}{n:>9,} |{'#' * max(1, round(30 * cells[n] / top))}")
    return lines


def markdown(report: Report, header: str) -> str:
    out = [f"# make bench results\n\n{header}\n",
           "N: the scale; TIME_WAIT: entries present when the row was measured (each lives 60 s).\n",
           "| method | N | TIME_WAIT | median ms | peer | x peer | peak RSS MiB | CPU ms |",
           "|---|---:|---:|---:|---|---:|---:|---:|"]
    for method, n, run, peer, peer_run, present in report.rows:
        ratio = f"{run.ms / peer_run.ms:.2f}" if peer_run else ""
        rss = f"{run.rss_mib:.1f}" if run.rss_mib else ""
        cpu = f"{run.cpu_ms:.0f}" if run.cpu_ms is not None else ""
        out.append(f"| {method.strip()} | {n if n == '-' else f'{n:,}'} | {'' if present is None else f'{present:,}'} "
                   f"| {run.ms:.2f} | {peer or ''} | {ratio} | {rss} | {cpu} |")
    out += ["", "## Goals", "", "| goal | met | value |", "|---|---|---|"]
    out += [f"| {what} | {'yes' if ok else 'NO'} | {value} |" for what, ok, value in report.goals]
    out += ["", "```", *growth(report), "```", ""]
    if report.lines:
        out += ["## Notes", "", "```", *[line.strip("\n") for line in report.lines], "```", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    """`python -m bench [N ...]`: the scales to run (default: 1k, 10k, 50k, 200k)."""
    import psutil

    from addrinuse.conntable import get_backend  # noqa: F401  (fail early if the project is missing)

    isolated = workload.private_netns(max(SCALES) + 50_000)
    header = (f"{socket.gethostname()}, Linux {platform.release()}, {psutil.cpu_count()} CPUs, load "
              f"{os.getloadavg()[0]:.1f} at start; {'a private network namespace per scale' if isolated else 'the host table'}; "
              f"medians of {REPEATS} runs of a process, {FAST_REPEATS} library calls (whole-table runs and "
              f"Python peers: 3-5), each interleaved with its peer")
    report = Report()
    print(f"addrinuse benchmark: {header}", flush=True)
    scales = [int(a) for a in (sys.argv[1:] if argv is None else argv)] or list(SCALES)
    for n in scales:
        if n + 1000 > workload.max_time_wait():
            report.note(f"\n--- {n:,}: skipped, tcp_max_tw_buckets is {workload.max_time_wait():,} here ---")
            continue
        measure_scale(report, n)
        if isolated:
            # A fresh, empty table for the next scale, and for start-up: `why` reads the table, and
            # the last scale's entries would make it a measure of N instead.
            workload.private_netns(max(SCALES) + 50_000)
    startup(report)
    for line in growth(report):
        print(line)
    print("\n--- goals (ratios against peers measured in this run) ---")
    for what, ok, value in report.goals:
        print(f"{'met   ' if ok else 'MISSED'}  {what}: {value}")
    RESULTS.write_text(markdown(report, header))
    print(f"\nwritten to {RESULTS}")
