"""What a user can type: help, bad input, records, interrupts, watch, states and the demo."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import local, wait_client_side, wait_for, wait_local, write_record

def test_version(run):
    out = run("--version")
    assert out.exit_code == 0 and out.stdout.startswith("addrinuse, version ")


BAD_INPUTS = [
    (("rebind", "70000"), "out of range"),
    (("rebind", "http"), "not a port number"),
    (("start", "--port", "-1"), "out of range"),
    (("rebind",), "Missing argument 'PORT'"),
    (("kill", "nosuch"), "no server named 'nosuch'"),
    (("kill",), "say which server"),
    (("table", "--state", "WAITING"), "unknown state 'WAITING'"),
    (("watch", "--interval", "-1"), "out of range"),
    (("watch", "--interval", "0"), "out of range"),
    (("watch", "--interval", "nan"), "out of range"),
    (("watch", "--interval", "inf"), "out of range"),
    (("watch", "--duration", "nan"), "out of range"),
    (("wait", "9", "--timeout", "-inf"), "out of range"),
    (("connect", "9", "-n", "0"), "not in the range"),
    (("rebind", "9", "--host", "no-such-host.invalid"), "does not resolve"),
    (("start", "--host", "no-such-host.invalid"), "does not resolve"),
    (("start", "--host", "0.0.0.0"), "--allow-public"),
    (("connect", "9", "--host", "192.0.2.1"), "--allow-public"),
    (("rebind", "9", "--host", "192.0.2.1"), "not an address of this machine"),
    (("start", "--close", "sometimes"), "sometimes"),
    (("nosuchcommand",), "No such command"),
]


@pytest.mark.parametrize("args,fragment", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2(args, fragment, sub):
    out = sub(*args)
    assert out.exit_code == 2, out.stderr
    assert fragment in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr + out.stdout


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _nobody_available() -> bool:
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


def _nobody_can_spawn_python() -> bool:
    """`start` re-executes the interpreter for its server; where the interpreter lives in a directory
    an unprivileged user cannot enter (e.g. under /root), that second exec is refused."""
    code = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'pass'], check=True)"
    return subprocess.run([*NOBODY, sys.executable, "-c", code], capture_output=True).returncode == 0


@pytest.mark.skipif(not _nobody_available(), reason="needs root and setpriv to run a command as an unprivileged user")
@pytest.mark.parametrize("command", ["rebind", "start"])
def test_privileged_port_as_non_root_is_bad_input(command, tmp_path_factory):
    """Produced for real: the command runs as uid 65534, and the kernel answers bind() with EACCES."""
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="addrinuse-nobody-"))
    os.chmod(shared, 0o777)
    if command == "start" and not _nobody_can_spawn_python():
        shutil.rmtree(shared)
        pytest.skip(f"uid 65534 cannot execute {sys.executable} from a child process on this machine")
    args = [command, "--port", "80"] if command == "start" else [command, "80"]
    env = {**os.environ, "ADDRINUSE_STATE_DIR": str(shared / "state"), "PYTHONPATH": os.getcwd()}
    out = subprocess.run([*NOBODY, sys.executable, "-m",
                          "addrinuse", *args], capture_output=True, text=True, env=env, timeout=30)
    shutil.rmtree(shared)
    assert out.returncode == 2, out.stderr
    assert "privileged" in out.stderr and "run as root" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_unusable_state_dir_is_one_line_exit_2(sub, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = sub("--state-dir", blocker / "sub", "start")
    assert out.exit_code == 2 and "pass --state-dir" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_stale_record_of_a_dead_process_is_cleaned(run, state_dir):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    write_record(state_dir, "ghost", pid=proc.pid, create_time=1.0)
    out = run("kill", "--all")
    assert out.exit_code == 0 and "stale record 'ghost'" in out.stderr
    assert not (state_dir / "ghost.addrinuse.json").exists()


def test_record_whose_pid_was_reused_is_refused_never_signalled(run, state_dir):
    """A process we started ourselves stands in for 'another process' that got the pid."""
    import psutil

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_record(state_dir, "reused", pid=other.pid, create_time=psutil.Process(other.pid).create_time() - 100)
        out = run("kill", "reused")
        assert out.exit_code == 1
        assert "now belongs to another process" in out.stderr and "nothing signalled" in out.stderr
        assert other.poll() is None  # still alive: never signalled
        assert not (state_dir / "reused.addrinuse.json").exists()
    finally:
        other.kill()
        other.wait()


def test_start_as_subprocess_leaves_a_detached_server_that_kill_ends(sub):
    out = sub("start", "--json")
    assert out.exit_code == 0, out.stderr
    rec = json.loads(out.stdout)
    assert local(rec["port"], "LISTEN")[0].pid == rec["pid"]
    assert sub("kill", rec["name"]).exit_code == 0


def _popen(*args):
    return subprocess.Popen([sys.executable, "-m", "addrinuse", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_foreground_server_stops_on_ctrl_c_and_removes_its_record(run, state_dir):
    proc = _popen("start", "--foreground", "--name", "fg", "--json")
    try:
        rec = json.loads(proc.stdout.readline())
        assert local(rec["port"], "LISTEN")[0].pid == proc.pid
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert local(rec["port"], "LISTEN") == []
    assert not (state_dir / "fg.addrinuse.json").exists()


def test_connect_hold_keeps_connections_until_ctrl_c(run):
    rec = run("start", "--json").json()
    proc = _popen("connect", rec["port"], "-n", 3, "--hold", "--json")
    try:
        clients = json.loads(proc.stdout.readline())["local_ports"]
        assert "Ctrl-C to end" in proc.stderr.readline()
        wait_local(rec["port"], "ESTABLISHED", 3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "the client closed first" in err
    # The client closed first: its ports, not the server's, hold the TIME_WAIT entries.
    wait_client_side(rec["port"], clients, "TIME_WAIT")
    assert local(rec["port"], "TIME_WAIT") == []
    run("kill", rec["name"])


def test_connect_to_nothing_is_a_one_line_failure(run):
    import socket

    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    out = run("connect", port)
    assert out.exit_code == 1 and "ECONNREFUSED" in out.stderr


def test_states_lists_every_state(run):
    data = run("states", "--json").json()["states"]
    assert [s["state"] for s in data] == ["LISTEN", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2",
                                          "CLOSE_WAIT", "CLOSING", "LAST_ACK", "TIME_WAIT", "CLOSED"]
    assert "60 s" in run("states").stdout


class LineReader:
    """Collect a subprocess's stdout lines on a thread, so a test can poll them with a deadline."""

    def __init__(self, stream):
        import threading

        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")), daemon=True)
        self.thread.start()

    def events(self) -> list[dict]:
        return [json.loads(line) for line in list(self.lines)]


def test_watch_reports_appeared_changed_vanished_and_summary(run):
    rec = run("start", "--json", "--close", "never").json()
    port = rec["port"]
    # --host: only our address. Other programs' entries use the same port number between other
    # addresses (the busy-machine fixture sees to it) and are not this test's.
    watcher = _popen("watch", "--port", port, "--host", "127.0.0.1", "--interval", "0.02", "--json", "--duration", "30")
    try:
        assert "Ctrl-C to end." in watcher.stderr.readline()
        reader = LineReader(watcher.stdout)
        run("connect", port, "-n", 2)
        wait_for(lambda: len([e for e in reader.events() if e["lport"] == port and e["state"] == "CLOSE_WAIT"]) == 2,
                 what="the watcher to see 2 CLOSE_WAIT entries")
        run("kill", rec["name"])
        wait_for(lambda: len([e for e in reader.events() if e["event"] == "vanished" and e["lport"] == port]) == 3,
                 what="the watcher to see the listener and both CLOSE_WAIT entries vanish")
        watcher.send_signal(signal.SIGINT)
        watcher.wait(timeout=15)
        reader.thread.join(timeout=5)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0
    events = reader.events()
    assert events[-1]["event"] == "summary"
    body = events[:-1]
    assert {"t_s", "event", "laddr", "lport", "raddr", "rport", "state", "owners"} <= body[0].keys()
    assert all("127.0.0.1" in (e["laddr"], e["raddr"]) for e in body)
    listen = [e for e in body if e["state"] == "LISTEN"]
    assert [e["event"] for e in listen] == ["appeared", "vanished"] and listen[0]["present_at_start"]
    vanished = [e for e in body if e["event"] == "vanished"]
    assert all(0 <= e["lifetime_s"] <= e["lifetime_max_s"] for e in vanished)
    # Each server-side entry: seen while the server holds it in CLOSE_WAIT, then gone after the kill.
    for event in [e for e in body if e["lport"] == port and e["state"] == "CLOSE_WAIT" and e["event"] == "vanished"]:
        assert not event["present_at_start"] and event["lifetime_max_s"] > 0
    summary = events[-1]
    assert summary["states"]["LISTEN"]["entries"] == 1 and summary["states"]["CLOSE_WAIT"]["entries"] >= 2


def test_watch_until_empty_text(run):
    rec = run("start", "--json").json()
    out = run("watch", "--port", rec["port"], "--host", "127.0.0.1", "--state", "TIME_WAIT", "--until-empty",
              "--interval", "0.05")
    assert out.exit_code == 0
    assert "Ctrl-C to end." in out.stdout.splitlines()[0]
    assert "summary after" in out.stdout
    run("kill", rec["name"])


def test_demo_reproduces_for_real(run):
    out = run("demo", "--json")
    assert out.exit_code == 0, out.stderr
    data = out.json()
    assert data["reproduced"] and data["time_wait"] == 5
    assert (data["plain"]["error"], data["plain"]["syscall"]) == ("EADDRINUSE", "bind")
    assert data["control_reuseaddr"]["ok"] is True
    # Checked independently of the demo's own report: the kernel still holds those entries.
    assert len(local(data["port"], "TIME_WAIT")) == 5
    assert run("servers", "--json").json()["servers"] == []


def test_demo_text(sub):
    out = sub("demo")
    assert out.exit_code == 0 and "reproduced: EADDRINUSE" in out.stdout
    assert "Traceback" not in out.stderr
