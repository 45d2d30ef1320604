"""Property-based fuzzing of argument vectors for every command (hypothesis).

For any argument vector: no traceback, no "internal error", an exit code from errors.EXIT_CODES, and
with --json a stdout that parses. The vectors are built from the command tree itself (every option
of every command, with values chosen to break things: NaN, infinities, huge, negative, empty,
paths that climb, names that are not names) so a new option is fuzzed without touching this file.

Kept safe and short on a shared machine: ports are ours or unusable ones (never another program's,
so nothing connects to a stranger), hosts are literals or localhost (no DNS), state dirs live under
the test's tmp dir, commands that would run until Ctrl-C (start --foreground, connect --hold) are
left out, long ones get a small --duration / --timeout first (a drawn one still overrides it), and
every server an example starts is stopped after it. The seed is fixed: the run is the same every
time."""

from __future__ import annotations

import json
import os

import click
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from addrinuse.cli import cli
from addrinuse.control import stop_servers
from addrinuse.errors import EXIT_CODES
from addrinuse.registry import Registry

LEFT_OUT = {"--foreground", "--hold", "--allow-public", "--help", "-h", "--version"}
# experiment run --all runs the whole catalogue (seconds each time): covered by its own tests.
LEFT_OUT_PER_COMMAND = {("experiment", "run"): {"--all"}}
FIRST = {("watch",): ["--duration", "0.2"], ("wait",): ["--timeout", "0.2"], ("kill",): ["--timeout", "1"]}
SECONDS = ["0", "0.05", "0.2", "-1", "nan", "NaN", "inf", "-inf", "1e309", "1e-9", "abc", "", "0x10"]
WORDS = ["0", "1", "-1", "65535", "65536", "99999", "http", "", "nan", "inf", "../x", "web", "a" * 70, "..",
         "TIME_WAIT", "time-wait", "WAITING", "restart-after-server-close", "nosuch", "x.toml", "/etc/passwd",
         "127.0.0.1", "::1", "0.0.0.0", "::", "192.0.2.1", "localhost", "127.0.0.2", "--", "{port}",
         "TERM", "KILL", "STOP", "plain", "reuseaddr", "reuseport", "netlink", "psutil", "bogus", "\udcff", "é",
         " ", "-", "--json"]


def _commands():
    out = []
    for name, command in sorted(cli.commands.items()):
        if isinstance(command, click.Group):
            out += [((name, sub), c) for sub, c in sorted(command.commands.items())]
        else:
            out.append(((name,), command))
    return out


COMMANDS = _commands()


def pool(param, port: int) -> list[str]:
    """Values for one parameter, by its type: mostly plausible, some made to break it."""
    from addrinuse.cli.options import PortType, Seconds, StateType

    kind = param.type
    if isinstance(kind, click.Choice):
        return [*kind.choices, "bogus", ""]
    if isinstance(kind, PortType):
        return [str(port), str(port), "0", "1", "65535", "65536", "99999", "-1", "http", "", "1e3"]
    if isinstance(kind, (Seconds, click.FloatRange)):
        return SECONDS
    if isinstance(kind, StateType):
        return ["TIME_WAIT", "time-wait", "LISTEN", "close-wait", "WAITING", ""]
    if isinstance(kind, click.IntRange):
        return ["1", "3", "0", "-1", "10001", "x", "1.5"]
    if param.name == "host":
        return ["127.0.0.1", "::1", "0.0.0.0", "::", "192.0.2.1", "localhost", "127.0.0.2", "", "::ffff:127.0.0.1"]
    return WORDS + [str(port)]


@st.composite
def argv(draw, port: int, dirs: list[str]):
    path, command = draw(st.sampled_from(COMMANDS))
    skip = LEFT_OUT | LEFT_OUT_PER_COMMAND.get(path, set())
    tokens: list[list[str]] = []
    for param in command.params:
        if isinstance(param, click.Option):
            opts = [o for o in param.opts + param.secondary_opts if o not in skip]
            numeric = isinstance(param.type, (click.FloatRange, click.IntRange)) or param.type.name == "SECONDS"
            if not opts or draw(st.integers(0, 1 if numeric else 3)) != 0:
                continue  # each option given one time in four, numbers one time in two
            option = [draw(st.sampled_from(opts))]
            if not (param.is_flag or param.count):
                option.append(draw(st.sampled_from(pool(param, port))))
            tokens.append(option)
    positional = []
    for param in command.params:
        if isinstance(param, click.Argument) and param.name != "command" and draw(st.integers(0, 7)) > 0:
            for _ in range(1 if param.nargs == 1 else draw(st.integers(0, 2))):
                positional.append(draw(st.sampled_from(pool(param, port))))
    junk = draw(st.lists(st.sampled_from(WORDS + [str(port)]), max_size=2)) if draw(st.integers(0, 4)) == 0 else []
    head = ["--state-dir", draw(st.sampled_from(dirs))] if draw(st.integers(0, 3)) == 0 else []
    # Options in any order, each with its value; the junk words anywhere between them.
    shuffled = [t for unit in draw(st.permutations(tokens + [[j] for j in junk])) for t in unit]
    return [*head, *path, *FIRST.get(path, []), *shuffled, *positional]


@pytest.fixture
def target(tmp_path):
    """A server of ours, recorded outside the fuzzed state dirs so no vector stops it: the one live
    port number the fuzzer may connect to."""
    from addrinuse.control import start_server
    from addrinuse.server import ServerConfig

    registry = Registry(tmp_path / "target-state")
    record = start_server(registry, ServerConfig())
    yield record.port
    stop_servers(registry, everything=True, sig=9)


@pytest.fixture
def dirs(tmp_path):
    fresh = tmp_path / "fresh"
    blocker = tmp_path / "file"
    blocker.write_text("")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    return [str(fresh), str(blocker), str(blocker / "sub"), str(open_dir), str(link), "/tmp"]


def stop_all(*state_dirs) -> None:
    """Every server an example started, by record, in the state dirs a vector could name."""
    for d in state_dirs:
        if os.path.isdir(d) and not os.path.islink(d):
            stop_servers(Registry(d), everything=True, sig=9, timeout=5)


def json_mode(args: list[str]) -> bool:
    """Whether --json reached the command as its flag (not as the value of another option)."""
    takes_value = {opt for _, c in COMMANDS for p in c.params if isinstance(p, click.Option)
                   and not (p.is_flag or p.count) for opt in p.opts + p.secondary_opts} | {"--state-dir"}
    skip = False
    for token in args:
        if skip:
            skip = False
        elif token == "--":
            return False
        elif token == "--json":
            return True
        elif token in takes_value:
            skip = True
    return False


NOT_NUMBERS = {"nan", "NaN", "inf", "-inf", "1e309", "-1"}


def last_values(args: list[str]) -> dict[str, str]:
    """The value each option ends with (click keeps the last occurrence), walking as click parses."""
    takes_value = {opt for _, c in COMMANDS for p in c.params if isinstance(p, click.Option)
                   and not (p.is_flag or p.count) for opt in p.opts + p.secondary_opts} | {"--state-dir"}
    values, i = {}, 0
    while i < len(args):
        if args[i] == "--":
            break
        if args[i] in takes_value and i + 1 < len(args):
            values[args[i]] = args[i + 1]
            i += 2
        else:
            i += 1
    return values


def check(args, out) -> None:
    shown = f"argv {args!r}: exit {out.exit_code}\nstdout: {out.stdout[-800:]}\nstderr: {out.stderr[-800:]}"
    assert out.exit_code in EXIT_CODES, shown
    assert "Traceback" not in out.stdout + out.stderr, shown
    assert "internal error" not in out.stderr, shown
    seconds = {k: v for k, v in last_values(args).items() if k in ("--interval", "--duration", "--timeout")}
    if any(v in NOT_NUMBERS for v in seconds.values()):
        assert out.exit_code == 2, "a NaN, infinite or negative number of seconds must be refused: " + shown
    if json_mode(args):
        for line in out.stdout.splitlines():  # one document, or NDJSON for streams
            if line.strip():
                json.loads(line)


@pytest.fixture(autouse=True)
def scratch_cwd(tmp_path, monkeypatch):
    """Path options take the fuzzer's words (`--`, `../x`, `bogus/`): whatever a command writes
    lands under this test's tmp dir, never in the checkout. Two levels deep, so `../x` stays inside."""
    deep = tmp_path / "cwd" / "deep"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)


@seed(20261202)
@settings(max_examples=600, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_argument_vector_ends_in_a_documented_exit_code(data, run, target, dirs, state_dir, monkeypatch):
    import addrinuse.control as control

    monkeypatch.setattr(control, "READY_TIMEOUT_S", 2.0)
    args = data.draw(argv(target, dirs))
    try:
        out = run(*args)
    finally:
        stop_all(state_dir, dirs[0])
    check(args, out)


@seed(20261202)
@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_argument_vectors_through_the_console_entry_point(data, sub, target, dirs, state_dir):
    """The same property through `python -m addrinuse` (entry.py: signals, final flush, os._exit)."""
    args = data.draw(argv(target, dirs))
    args = [a for a in args if "\udcff" not in a]  # argv of a real process is bytes; tested in-process
    try:
        out = sub(*args)
    finally:
        stop_all(state_dir, dirs[0])
    check(args, out)


# The vectors the issue measured, kept as plain cases beside the fuzzer (which draws them too).
FLOATS = [
    (["watch", "--interval", "nan"], {2}), (["watch", "--interval", "inf"], {2}), (["watch", "--duration", "nan"], {2}),
    (["watch", "--duration", "-inf"], {2}), (["wait", "PORT", "--timeout", "inf"], {2}),
    (["wait", "PORT", "--interval", "nan"], {2}), (["kill", "--all", "--timeout", "nan"], {2}),
    # --timeout 0 checks once: free (0) or blocked (4), never a usage error.
    (["wait", "PORT", "--timeout", "0"], {0, 4}), (["kill", "--all", "--timeout", "0"], {0}),
]


@pytest.mark.parametrize("args,codes", FLOATS, ids=[" ".join(a) for a, _ in FLOATS])
def test_numbers_that_are_not_numbers(args, codes, run, target):
    args = [str(target) if a == "PORT" else a for a in args]
    out = run(*args)
    check(args, out)
    assert out.exit_code in codes, out.stderr
