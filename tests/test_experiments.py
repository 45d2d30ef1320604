"""Every experiment file runs here against the real kernel (the user's own servers killed and
restarted for real), the catalogue is complete and documented, and the runner reports progress,
takes actions registered through its API, and leaves nothing behind. The CLI: test_experiment_cli.py;
the loader's validation: test_scenario.py."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from addrinuse.conntable import STATES, snapshot
from addrinuse.experiments import builtin, catalogue, find, loads
from addrinuse.experiments import run as run_experiment
from tests import _headstart as headstart
from tests.helpers import dead, wait_for
from tests.test_lab_experiments import TESTED as LAB_TESTED

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
README = (EXPERIMENTS / "README.md").read_text()
HEAD = 'name = "t"\npurpose = "p"\nexplain = "e"\n'


def results(name: str, report=None):
    report = report or run_experiment(find(name))
    assert report.skipped is None, report.skipped
    failed = [c.to_dict() for c in report.checks if c.ok is False]
    assert report.passed and not failed, (report.message, failed)
    # The states a file declares are the ones its run read from the connection table.
    assert set(report.states) <= report.states_seen, (report.states, report.states_seen)
    return report.results


# One test per experiment file, named after it: test_every_file_has_a_test fails when one is missing.
def test_restart_after_server_close():
    r = results("restart-after-server-close")
    assert r["tw"]["count"] == 3 and r["restart"]["error"] == "EADDRINUSE"


def test_reuseaddr_matrix():
    r = results("reuseaddr-matrix")
    outcomes = {tag: r[f"new_{tag}"]["ok"] for tag in ("pp", "pr", "rp", "rr")}
    assert outcomes == {"pp": False, "pr": False, "rp": False, "rr": True}


def test_no_connections():
    assert results("no-connections")["restart"]["ok"] is True


def test_client_closes_first():
    r = results("client-closes-first")
    assert {e["rport"] for e in r["client_side"]["entries"]} == {r["srv"]["port"]}
    assert {e["lport"] for e in r["client_side"]["entries"]} == set(r["clients"]["local_ports"])


def test_an_earlier_servers_clients_on_the_same_port_are_not_counted():
    """The kernel gives a new server a port whose earlier clients' TIME_WAIT entries still point at it
    (they sit on the clients' ports and never block the bind): the run counts its own by 4-tuple."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    earlier = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    accepted = [listener.accept()[0] for _ in earlier]
    theirs = {c.getsockname()[1] for c in earlier}
    for client in earlier:
        client.close()  # the clients close first: TIME_WAIT on their ports, remote port = port
    for conn in accepted:
        conn.close()
    listener.close()
    wait_for(lambda: {e.lport for e in snapshot(port, ["TIME_WAIT"])
                      if e.rport == port and e.raddr == e.laddr == "127.0.0.1"} >= theirs,
             what="the earlier clients' TIME_WAIT entries")
    for name, step, count in (("client-closes-first", "client_side", 3), ("no-connections", "left", 0)):
        scenario = (EXPERIMENTS / f"{name}.toml").read_text().replace(
            'id = "srv"\ndo = "server"\n', f'id = "srv"\ndo = "server"\nport = {port}\n')
        report = run_experiment(loads(scenario))
        assert report.passed, (name, [c.to_dict() for c in report.checks if c.ok is False])
        assert report.results["srv"]["port"] == port and report.results[step]["count"] == count


def test_linger_zero():
    r = results("linger-zero")
    assert r["clients"]["server_closed_first"] == 0  # the clients saw RST, not a FIN


def test_listener_still_alive():
    r = results("listener-still-alive")
    assert r["listeners"]["pids"] == [r["srv"]["child_pid"]] and r["srv"]["child_pid"] != r["srv"]["pid"]


def test_reuseport():
    r = results("reuseport")
    assert r["third"]["syscall"] == "bind" and r["listeners"]["pids"] == [os.getpid()]


def test_two_reuseaddr_listeners():
    r = results("two-reuseaddr-listeners")
    assert (r["b"]["ok"], r["b_listens"]["syscall"]) == (True, "listen")


def test_dual_stack():
    report = run_experiment(find("dual-stack"))
    if report.skipped:
        pytest.skip(report.skipped)
    assert report.passed, [c.to_dict() for c in report.checks]


def test_close_sequence():
    r = results("close-sequence")["seq"]
    active = [s["state"] for s in r["poll"]["active"]]
    assert active[:4] == ["ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT"]
    firsts = [s["first_s"] for s in r["poll"]["active"]]
    assert firsts == sorted(firsts)
    assert r["bytes_received"] == r["bytes_queued"]  # the FIN came after all the data


def test_close_wait_leak():
    r = results("close-wait-leak")
    assert r["server_side"]["pids"] == [r["srv"]["pid"]]


def time_wait_lifetime():
    """The run itself, started at session start by tests/_headstart.py where it can be."""
    return run_experiment(find("time-wait-lifetime"))


def test_time_wait_lifetime():
    """Slow by nature (about 62 s): TIME_WAIT is a kernel timer of 60 s, plus timer-wheel rounding."""
    report = headstart.outcome("tests/test_experiments.py::test_time_wait_lifetime")
    r = results("time-wait-lifetime", report)["gone"]
    assert 60.0 <= r["lifetime_s"] <= 62.5 and r["ok"] is True and r["gap_s"] < 0.5


def test_http_server_restart():
    """python3 -m http.server, killed for real after serving, restarted for real on the same port."""
    r = results("http-server-restart")
    assert r["web"]["command"][:3] == ["python3", "-m", "http.server"] and str(r["web"]["port"]) in r["web"]["command"]
    assert r["clients"]["server_closed_first"] == 3 and r["clients"]["bytes_received"] > 0
    assert r["stop"]["signal"] == "INT" and r["stop"]["exited"]
    assert r["restart"]["port"] == r["web"]["port"] and r["restart"]["pid"] != r["web"]["pid"]
    assert dead(r["web"]["pid"]) and dead(r["restart"]["pid"])  # the run stopped what it started


def test_socketserver_restart():
    r = results("socketserver-restart")
    assert r["restart"]["ok"] is False and r["restart"]["exit_status"] == 1
    assert "Address already in use" in r["restart"]["message"]
    assert r["left"]["count"] == 3 and {e["lport"] for e in r["left"]["entries"]} == {r["srv"]["port"]}


TESTED = {name[len("test_"):].replace("_", "-") for name in dir() if name.startswith("test_")}
TESTED |= LAB_TESTED  # the lab experiments run in tests/test_lab_experiments.py


def test_every_file_has_a_test_and_a_readme_entry():
    names = {p.stem for p in EXPERIMENTS.glob("*.toml")}
    assert names <= TESTED, f"experiment files without a test: {sorted(names - TESTED)}"
    for name in names:
        assert f"### {name}" in README, f"experiments/README.md has no entry for {name}"
        entry = README.split(f"### {name}")[1].split("### ")[0]
        assert f"$ addrinuse experiment run {name}" in entry and f"PASSED: {name}" in entry, \
            f"README entry for {name} shows no captured run"


def test_the_readme_documents_every_action_and_expectation():
    from addrinuse.experiments.actions import ACTION_MODULES, actions
    from addrinuse.experiments.checks import CHECKS

    builtin_actions = [a for a in actions().values() if a.run.__module__ in ACTION_MODULES[:3]]
    for a in builtin_actions:
        assert f"| `{a.name}` |" in README, f"experiments/README.md does not document the action {a.name}"
        row = README.split(f"| `{a.name}` |")[1].split("\n")[0]
        assert all(f"`{p}`" in row for p in a.params), (a.name, [p for p in a.params if f"`{p}`" not in row])
    assert all(f"`{key}`" in README for key in CHECKS)


def test_catalogue_names_match_files_and_declare_their_states():
    found = catalogue()
    assert [s.name for s in found] == sorted(p.stem for p in EXPERIMENTS.glob("*.toml"))
    assert all(s.states for s in found), [s.name for s in found if not s.states]
    union = set().union(*(s.states for s in found))
    assert union <= set(STATES)
    assert {"LISTEN", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "TIME_WAIT"} <= union, union


def test_the_catalogue_is_read_through_importlib_resources_or_the_checkout():
    root = builtin()
    assert sorted(f.name for f in root.iterdir() if f.name.endswith(".toml")) == \
        sorted(p.name for p in EXPERIMENTS.glob("*.toml"))


# -- the runner: progress, the action API, nothing left behind ------------------------------------

WAIT = HEAD + '''[[step]]
id = "l"
do = "listen"

[[step]]
id = "wait"
do = "table"
port = "@l"
states = ["ESTABLISHED"]
wait_for = 1
timeout = 1.6

[[expect]]
step = "wait"
count = 0
'''


def test_a_wait_over_a_second_reports_progress():
    seen = []
    report = run_experiment(loads(WAIT), on_progress=seen.append)
    assert report.passed
    assert seen and all("0 of 1 entries on port" in text and "s left" in text for text in seen)


def test_no_progress_for_a_short_wait():
    seen = []
    assert run_experiment(loads(WAIT.replace("timeout = 1.6", "timeout = 0.3")), on_progress=seen.append).passed
    assert seen == []


def test_an_action_registered_through_the_api_runs_and_is_validated(tmp_path):
    from addrinuse.experiments.actions import action
    from addrinuse.experiments.params import Count, Port
    from addrinuse.experiments.scenario import ScenarioError

    undone = []

    @action("test_double", {"port": Port(default=None), "times": Count(default=2, high=10)}, provides=("n",),
            describe=lambda r: f"doubled to {r['n']}")
    def test_double(ctx, p):
        ctx.defer(lambda: undone.append(ctx.step))
        return {"ok": True, "n": ctx.port(p["port"]) * p["times"]}

    body = HEAD + '[[step]]\nid = "l"\ndo = "listen"\n\n[[step]]\nid = "d"\ndo = "test_double"\nport = "@l"\n' \
                  'times = 3\n\n[[expect]]\nstep = "d"\nok = true\n'
    report = run_experiment(loads(body))
    assert report.passed and report.results["d"]["n"] == 3 * report.results["l"]["port"] and undone == ["d"]
    with pytest.raises(ScenarioError, match=r"step\[1\]\.times: 11 is out of range: give a whole number from 1 to 10"):
        loads(body.replace("times = 3", "times = 11"))


def _temp_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "addrinuse-experiment-*")))


def test_no_temp_dir_is_left_on_any_path(tmp_path):
    before = _temp_dirs()
    assert run_experiment(find("no-connections")).passed
    cannot = loads(HEAD + '[[step]]\nid = "s"\ndo = "server"\ncommand = ["/nonexistent/x", "{port}"]\n\n'
                          '[[expect]]\nstep = "s"\nok = true\n')
    assert run_experiment(cannot).status == "cannot_run"

    def interrupted(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(find("no-connections"), on_step=interrupted)
    assert _temp_dirs() <= before
    assert run_experiment(find("reuseport")).passed and _temp_dirs() <= before  # no built-in server: no dir


HANG = '[[step]]\nid = "wait"\ndo = "table"\nport = "@srv"\nstates = ["ESTABLISHED"]\nwait_for = 1\ntimeout = 60\n' \
    '\n[[expect]]\nstep = "wait"\ncount = 0\n'


def _killed_runner(path: Path, server_step: str, while_running=lambda runner: None):
    """Run a file whose server step is followed by a 60 s wait; once the server listens, call
    while_running(runner), then SIGKILL the runner. Returns (server pid, what while_running gave)."""
    path.write_text(HEAD + server_step + HANG)
    runner = subprocess.Popen([sys.executable, "-m", "addrinuse", "experiment", "run", str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = wait_for(lambda: (lambda l: l if "listens on" in l else None)(runner.stdout.readline()), 20,
                        what="the server to listen")
        return int(line.split("pid ")[1].split()[0]), while_running(runner)
    finally:
        runner.kill()
        runner.wait()


def test_a_killed_runner_leaves_no_server_and_no_file(tmp_path):
    """SIGKILL leaves the runner no chance to clean up: its built-in servers are recorded in memory
    only and die with it (PR_SET_PDEATHSIG), and it made no temp dir."""
    before = set(os.listdir(tempfile.gettempdir()))
    server, _ = _killed_runner(tmp_path / "hang.toml", '[[step]]\nid = "srv"\ndo = "server"\n\n')
    wait_for(lambda: dead(server), 10, what=f"the built-in server {server} to die with its runner")
    made = {n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("addrinuse")}
    assert made == set()


def test_the_users_server_dies_with_a_killed_runner(tmp_path):
    """SIGKILL to the runner cannot run its clean-up: PR_SET_PDEATHSIG ends the user's server anyway.
    (A command server only: the runner makes no temp dir that SIGKILL could leave.)"""
    pid, _ = _killed_runner(tmp_path / "hang.toml", '[[step]]\nid = "srv"\ndo = "server"\ncommand = ["python3", '
                            '"-m", "http.server", "{port}", "--bind", "127.0.0.1"]\n\n')
    wait_for(lambda: dead(pid), 10, what=f"the user's server {pid} to die with its runner")


def test_a_step_error_fails_that_experiment_and_the_run_goes_on(tmp_path):
    bad_host = loads(HEAD + '[[step]]\nid = "p"\ndo = "probe"\nhost = "no-such-host.invalid"\nport = 1\n\n'
                            '[[expect]]\nstep = "p"\nok = true\n')
    report = run_experiment(bad_host)
    assert report.status == "failed" and "step p: host 'no-such-host.invalid' does not resolve" in report.message
