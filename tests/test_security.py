"""Attacks on the state dir and its records: the tool, run as root, must not be a weapon.

A process this test starts stands in for the victim (a stranger's process): every attack below must
leave it alive and unsignalled, leave every file the tool did not write as it was, and end in one
line with a documented exit code, never a traceback."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from addrinuse.errors import EXIT_BAD_INPUT, EXIT_UNSAFE
from addrinuse.registry import FORMAT, SUFFIX, Registry, ServerRecord
from tests.helpers import living_children, local, wait_for, write_record

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


@pytest.fixture
def victim():
    """A live process that the tool did not start as a server: it must never be signalled."""
    proc = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    wait_for(lambda: psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE, what="the victim to run")
    yield proc
    proc.kill()
    proc.wait()


def victim_record(victim) -> dict:
    """Everything a hostile record needs to aim at the victim: its pid and its true create time."""
    return {"pid": victim.pid, "create_time": psutil.Process(victim.pid).create_time()}


def one_line(out) -> None:
    assert "Traceback" not in out.stderr + out.stdout
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def unsafe(out, fragment: str) -> None:
    assert out.exit_code == EXIT_UNSAFE, out.stderr
    assert fragment in out.stderr
    one_line(out)


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True)
    return path


# -- the directory ------------------------------------------------------------------------------
@ROOT_ONLY
@pytest.mark.parametrize("command", [("servers",), ("kill", "--all"), ("start",), ("why", "1")])
def test_foreign_owned_state_dir_is_refused(command, sub, tmp_path, victim):
    planted = private_dir(tmp_path / "planted")
    write_record(planted, "evil", **victim_record(victim))
    os.chown(planted / f"evil{SUFFIX}", 65534, 65534)
    os.chown(planted, 65534, 65534)
    out = sub("--state-dir", planted, *command)
    unsafe(out, "is owned by uid 65534")
    assert "--state-dir" in out.stderr
    assert victim.poll() is None


@ROOT_ONLY
def test_planted_default_dir_in_tmp_is_harmless(tmp_path, victim):
    """No XDG_RUNTIME_DIR: the default is TMPDIR/addrinuse-EUID, which anyone could create first."""
    tmp = private_dir(tmp_path / "tmp")
    os.chmod(tmp, 0o1777)
    planted = tmp / f"addrinuse-{os.geteuid()}"
    planted.mkdir(mode=0o700)
    write_record(planted, "evil", **victim_record(victim))
    os.chown(planted / f"evil{SUFFIX}", 65534, 65534)
    os.chown(planted, 65534, 65534)
    env = {k: v for k, v in os.environ.items() if k not in ("ADDRINUSE_STATE_DIR", "XDG_RUNTIME_DIR")}
    env["TMPDIR"] = str(tmp)
    for command in (["kill", "--all"], ["servers"], ["kill", "evil"]):
        out = subprocess.run([sys.executable, "-m", "addrinuse", *command], capture_output=True, text=True, env=env,
                             timeout=30)
        assert out.returncode == EXIT_UNSAFE, out.stderr
        assert str(planted) in out.stderr and "Traceback" not in out.stderr
    assert victim.poll() is None


@pytest.mark.parametrize("tmpdir", ["given", "missing", None])
def test_default_dir_parent_is_the_one_tempfile_would_choose(tmpdir, tmp_path):
    """statedir chooses TMPDIR & co. without importing tempfile (start-up cost): same answer."""
    env = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "TEMP", "TMP")}
    if tmpdir:
        env["TMPDIR"] = str(tmp_path if tmpdir == "given" else tmp_path / "missing")
    code = "import tempfile; from addrinuse.statedir import _temp_root; print(_temp_root()); print(tempfile.gettempdir())"
    ours, stdlib = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                  check=True, timeout=30).stdout.split()
    assert ours == stdlib


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_group_or_world_writable_state_dir_is_refused(mode, sub, tmp_path, victim):
    state = private_dir(tmp_path / "addrinuse-open")
    write_record(state, "evil", **victim_record(victim))
    os.chmod(state, mode)
    out = sub("--state-dir", state, "kill", "--all")
    unsafe(out, "writable by group or other")
    assert f"chmod 700 {state}" in out.stderr  # named like the tool's own dirs: fixing it is the user's call
    assert victim.poll() is None


def test_a_shared_directory_is_refused_without_suggesting_to_chmod_it(sub):
    """/tmp as a state dir: the fix is a private dir of one's own, never 'chmod 700 /tmp'."""
    out = sub("--state-dir", "/tmp", "servers")
    unsafe(out, "writable by group or other")
    assert "chmod" not in out.stderr and "remove it" not in out.stderr and "mode 0700" in out.stderr


def test_symlinked_state_dir_is_refused(sub, tmp_path, victim):
    real = private_dir(tmp_path / "real")
    write_record(real, "evil", **victim_record(victim))
    link = tmp_path / "link"
    link.symlink_to(real)
    for command in (("kill", "--all"), ("start",), ("servers",)):
        unsafe(sub("--state-dir", link, *command), "is a symlink")
    assert victim.poll() is None


def test_env_var_is_checked_like_the_option(tmp_path, victim):
    state = private_dir(tmp_path / "open")
    os.chmod(state, 0o777)
    out = subprocess.run([sys.executable, "-m", "addrinuse", "servers"], capture_output=True, text=True,
                         env={**os.environ, "ADDRINUSE_STATE_DIR": str(state)}, timeout=30)
    assert out.returncode == EXIT_UNSAFE and "writable by group or other" in out.stderr


def test_new_state_dir_is_created_0700(run, tmp_path):
    state = tmp_path / "a" / "b"
    rec = run("--state-dir", state, "start", "--json")
    assert rec.exit_code == 0, rec.stderr
    assert (os.stat(state).st_mode & 0o777) == 0o700
    assert (os.stat(state / f"{rec.json()['name']}{SUFFIX}").st_mode & 0o777) == 0o600
    assert run("--state-dir", state, "kill", "--all").exit_code == 0


# -- names and files ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "-rf", "x" * 65, "", "web\n", "é"])
def test_bad_record_names_are_usage_errors(name, sub, tmp_path):
    outside = tmp_path / "x"
    outside.write_text("keep")
    for command in (("start", "--name", name), ("kill", name)):
        out = sub(*command)
        assert out.exit_code == EXIT_BAD_INPUT, out.stderr
        one_line(out)
    assert outside.read_text() == "keep"


def test_record_file_naming_another_file_is_corrupt(run, state_dir, victim, tmp_path):
    outside = tmp_path / "x.addrinuse.json"
    outside.write_text("keep")
    write_record(state_dir, "x", name="../x", **victim_record(victim))
    out = run("kill", "--all")
    assert "record x is corrupt: name is '../x'" in out.stderr
    assert victim.poll() is None and outside.read_text() == "keep"


def unrelated_files(state: Path, target: Path) -> dict[Path, str]:
    files = {state / "package.json": '{"name": "mine"}', state / "notes.json": "[]",
             state / "web.json": json.dumps({"name": "web", "pid": 1, "create_time": 1.0, "host": "127.0.0.1",
                                             "port": 1, "close": "never"}),  # the old format: not ours now
             state / f"plain{SUFFIX}": "{not json", state / f"other{SUFFIX}": json.dumps({"format": "other/1"}),
             state / f"web{SUFFIX[:-5]}.log": "a log I wrote myself"}
    for path, text in files.items():
        path.write_text(text)
    (state / f"link{SUFFIX}").symlink_to(target)
    os.mkfifo(state / f"fifo{SUFFIX}")
    return files


def test_unrelated_files_survive_servers_kill_and_prune(run, tmp_path, victim):
    """`--state-dir .` in a project: nothing the tool did not write is read as a record or deleted."""
    state = private_dir(tmp_path / "project")
    target = tmp_path / "target"
    target.write_text(json.dumps({"format": FORMAT, "name": "link", **victim_record(victim), "host": "127.0.0.1",
                                  "port": 1, "close": "never"}))
    files = unrelated_files(state, target)
    before = sorted(os.listdir(state))
    for command in (("servers",), ("kill", "--all"), ("servers", "--prune"), ("kill", "link"), ("servers", "--json")):
        out = run("--state-dir", state, *command)
        assert "Traceback" not in out.stderr and out.exit_code in (0, 1, 2), out.stderr
    assert sorted(os.listdir(state)) == before
    assert all(path.read_text() == text for path, text in files.items())
    assert victim.poll() is None
    listed = run("--state-dir", state, "servers", "--json").json()
    assert listed["servers"] == [] and any("left alone" in p for p in listed["problems"])


def test_a_started_server_is_recorded_beside_unrelated_files_and_only_its_files_go(run, tmp_path):
    state = private_dir(tmp_path / "project")
    target = tmp_path / "target"
    target.write_text("untouched")
    files = unrelated_files(state, target)
    rec = run("--state-dir", state, "start", "--name", "web", "--json")
    assert rec.exit_code == 0, rec.stderr
    assert run("--state-dir", state, "kill", "web").exit_code == 0
    assert not (state / f"web{SUFFIX}").exists()
    assert all(path.read_text() == text for path, text in files.items()) and target.read_text() == "untouched"


def test_planted_symlinks_at_record_log_and_temp_names_are_not_followed(run, state_dir, tmp_path, monkeypatch):
    """The record is written to a fresh temp file (O_CREAT|O_EXCL|O_NOFOLLOW) and linked into place;
    a symlink planted at a temp name, at the log's name or at the old-format names is never written
    through."""
    import secrets

    target = tmp_path / "target"
    target.write_text("untouched")
    state_dir.mkdir(mode=0o700)
    names = ["fixed", "fixed"]  # the first two temp names the registry will draw, then random ones
    real = secrets.token_hex
    monkeypatch.setattr(secrets, "token_hex", lambda n: names.pop() if names else real(n))
    for planted in (".web.fixed.tmp", "web.addrinuse.log", ".web.json.tmp", "web.json"):
        (state_dir / planted).symlink_to(target)
    rec = run("start", "--name", "web", "--json")
    assert rec.exit_code == 0, rec.stderr
    assert target.read_text() == "untouched"
    assert run("kill", "web").exit_code == 0
    assert target.read_text() == "untouched"
    assert (state_dir / ".web.fixed.tmp").is_symlink() and (state_dir / "web.addrinuse.log").is_symlink()


def test_symlink_at_the_record_name_takes_the_name_but_is_left_alone(run, state_dir, tmp_path):
    target = tmp_path / "target"
    target.write_text("untouched")
    state_dir.mkdir(mode=0o700)
    (state_dir / f"web{SUFFIX}").symlink_to(target)
    out = run("start", "--name", "web")
    assert out.exit_code == EXIT_BAD_INPUT and "name web is taken" in out.stderr
    assert target.read_text() == "untouched" and (state_dir / f"web{SUFFIX}").is_symlink()


# -- records that lie --------------------------------------------------------------------------------
CORRUPT = {
    "nan-create-time": {"create_time": math.nan},
    "inf-create-time": {"create_time": math.inf},
    "null-pid": {"pid": None},
    "string-pid": {"pid": "1234"},
    "bool-pid": {"pid": True},
    "pid-1": {"pid": 1},
    "negative-pid": {"pid": -5},
    "float-pid": {"pid": 1234.0},
    "null-port": {"port": None},
    "port-0": {"port": 0},
    "port-99999": {"port": 99999},
    "string-port": {"port": "8080"},
    "bad-host": {"host": "not an address"},
    "bool-as-string": {"reuseaddr": "yes"},
    "bad-close": {"close": "sometimes"},
    "bad-signal": {"stop_signal": "STOP"},
    "bad-command": {"command": [1, 2]},
    "bad-child": {"child": "../x"},
    "unknown-field": {"extra": 1},
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_record_is_reported_kept_never_signalled_and_pruned(case, run, state_dir, victim):
    write_record(state_dir, case, **{**victim_record(victim), **CORRUPT[case]})
    path = state_dir / f"{case}{SUFFIX}"
    for command in (("servers",), ("kill", "--all"), ("kill", "--port", "1")):
        out = run(*command)
        assert "Traceback" not in out.stderr and out.exit_code in (0, 2), out.stderr
        assert f"record {case} is corrupt:" in out.stderr and "addrinuse servers --prune" in out.stderr
    named = run("kill", case)
    assert named.exit_code == EXIT_BAD_INPUT and "is corrupt" in named.stderr
    one_line(named)
    assert victim.poll() is None
    assert path.exists(), "a corrupt record is never deleted silently"
    pruned = run("servers", "--prune")
    assert pruned.exit_code == 0 and "pruned" in pruned.stderr
    assert not path.exists()
    assert victim.poll() is None


def test_oversized_and_unparsable_records_are_foreign(run, state_dir, victim):
    write_record(state_dir, "big", **victim_record(victim), log="x" * 70_000)
    (state_dir / f"half{SUFFIX}").write_text('{"format": "' + FORMAT + '", "pid": ')
    out = run("kill", "--all")
    assert out.exit_code == 0 and out.stderr.count("left alone") == 2
    assert victim.poll() is None and (state_dir / f"big{SUFFIX}").exists()


def test_zombie_is_dead_never_signalled(run, state_dir):
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(lambda: psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE, what="a zombie")
    write_record(state_dir, "zombie", pid=zombie.pid, create_time=psutil.Process(zombie.pid).create_time())
    out = run("kill", "zombie")
    assert out.exit_code == 2 and "no server named 'zombie'" in out.stderr
    zombie.wait()


def test_valid_record_of_the_victim_with_the_wrong_create_time_is_never_signalled(run, state_dir, victim):
    write_record(state_dir, "old", pid=victim.pid, create_time=psutil.Process(victim.pid).create_time() - 3600)
    out = run("kill", "--all")
    assert "stale record 'old'" in out.stderr and "nothing signalled" in out.stderr
    assert victim.poll() is None


# -- concurrency ---------------------------------------------------------------------------------------
def test_twenty_concurrent_starts_with_one_name_exactly_one_wins(state_dir):
    procs = [subprocess.Popen([sys.executable, "-m", "addrinuse", "start", "--name", "web", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(20)]
    results = [(p.wait(timeout=60), *p.communicate()) for p in procs]
    winners = [json.loads(out) for code, out, _ in results if code == 0]
    losers = [err for code, _, err in results if code != 0]
    assert len(winners) == 1, results
    assert len(losers) == 19 and all("name web is taken" in err and "Traceback" not in err for err in losers), losers
    (winner,) = winners
    # Each loser's server was tied to its launcher and is gone: one listener, the winner's.
    records, problems = Registry(state_dir).load()
    assert [(r.name, r.pid) for r in records] == [("web", winner["pid"])] and not problems
    assert [e.pid for e in local(winner["port"], "LISTEN")] == [winner["pid"]]
    assert [p.pid for p in living_children()] == [winner["pid"]]


def test_concurrent_claims_in_one_process_never_overwrite(state_dir):
    """link(2) refuses an existing name: the second save of a live name raises, the file is unchanged."""
    from addrinuse.errors import NameTaken

    me = psutil.Process()
    first = ServerRecord("web", me.pid, me.create_time(), "127.0.0.1", 1, "never")
    registry = Registry(state_dir)
    registry.save(first)
    with pytest.raises(NameTaken):
        registry.save(ServerRecord("web", me.pid, me.create_time(), "127.0.0.1", 2, "never"))
    assert registry.load()[0][0].port == 1
    registry.remove("web")
    assert list(state_dir.iterdir()) == []


# -- why and wait read the same records ----------------------------------------------------------------
def test_why_and_wait_honour_state_dir(run, tmp_path):
    state = tmp_path / "elsewhere"
    rec = run("--state-dir", state, "start", "--name", "named-here", "--json").json()
    try:
        assert "named-here" in run("--state-dir", state, "why", rec["port"]).stdout
        waited = run("--state-dir", state, "wait", rec["port"], "--timeout", "0", "--json")
        assert waited.exit_code == 4 and "named-here" in waited.json()["blocking"]
        os.chmod(state, 0o777)
        unsafe_why = run("--state-dir", state, "why", rec["port"])
        assert unsafe_why.exit_code == EXIT_UNSAFE
        os.chmod(state, 0o700)
    finally:
        run("--state-dir", state, "kill", "--all")


def test_user_command_server_is_recorded_stopped_with_its_signal(run, state_dir):
    """`start -- CMD`: the user's own server, {port} filled with a free port, ready once listening."""
    script = ("import signal, socket, sys; s = socket.create_server(('127.0.0.1', int(sys.argv[1]))); "
              "signal.signal(signal.SIGHUP, lambda *a: sys.exit(0)); signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "signal.pause()")
    rec = run("start", "--name", "mine", "--stop-signal", "HUP", "--json", "--", sys.executable, "-c", script, "{port}")
    assert rec.exit_code == 0, rec.stderr
    data = rec.json()
    assert data["command"][-1] == str(data["port"]) and data["stop_signal"] == "HUP" and data["close"] is None
    assert [e.pid for e in local(data["port"], "LISTEN")] == [data["pid"]]
    out = run("kill", "mine", "--json").json()  # SIGTERM is ignored by this server: HUP must be what is sent
    assert out["stopped"][0]["signal"] == "HUP" and out["stopped"][0]["exited"]
    assert local(data["port"], "LISTEN") == []


def test_user_command_that_never_listens_is_stopped_and_unrecorded(run, state_dir, monkeypatch):
    import addrinuse.control as control

    monkeypatch.setattr(control, "READY_TIMEOUT_S", 1.0)
    out = run("start", "--", sys.executable, "-c", "import time; time.sleep(60)", "{port}")
    assert out.exit_code == 1 and "did not listen" in out.stderr
    assert Registry(state_dir).load() == ([], [])


def test_http_server_as_the_users_server(run, state_dir):
    rec = run("start", "--json", "--", sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1")
    assert rec.exit_code == 0, rec.stderr
    port = rec.json()["port"]
    assert run("connect", port).exit_code == 0
    assert run("kill", "--all").exit_code == 0
    assert local(port, "LISTEN") == []


def test_memory_registry_touches_no_disk_and_its_servers_die_with_it(tmp_path, monkeypatch):
    from addrinuse.control import start_server
    from addrinuse.registry import MemoryRegistry
    from addrinuse.server import ServerConfig

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("ADDRINUSE_STATE_DIR", raising=False)
    with MemoryRegistry() as registry:
        record = start_server(registry, ServerConfig())
        assert [r.pid for r in registry.load()[0]] == [record.pid]
    assert local(record.port, "LISTEN") == []
    assert list(tmp_path.iterdir()) == []


def test_demo_is_killed_with_sigkill_and_its_servers_die_too(tmp_path):
    """PR_SET_PDEATHSIG: the demo's servers are tied to it, so even SIGKILL leaves no server."""
    proc = subprocess.Popen([sys.executable, "-m", "addrinuse", "demo", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        wait_for(lambda: any("addrinuse.server" in " ".join(c.cmdline()) for c in psutil.Process(proc.pid).children()),
                 what="the demo's first server")
    except (AssertionError, psutil.NoSuchProcess):
        pass  # the demo was quicker than the poll: nothing to kill mid-way, still nothing may be left
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not living_children(), what="no server left")
    assert list(tmp_path.iterdir()) == []
    shutil.rmtree(tmp_path, ignore_errors=True)
