"""Every experiment file runs here against the real kernel; invalid files give the documented error;
the CLI's list/show/run, JSON, JUnit XML and exit codes; the action-registration API."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from addrinuse.conntable import STATES
from addrinuse.experiments import builtin, catalogue, find, loads
from addrinuse.experiments import run as run_experiment
from addrinuse.experiments.params import REQUIRED
from tests.helpers import wait_for

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
README = (EXPERIMENTS / "README.md").read_text()
HEAD = 'name = "t"\npurpose = "p"\nexplain = "e"\n'


def results(name: str):
    report = run_experiment(find(name))
    assert report.skipped is None, report.skipped
    failed = [c.to_dict() for c in report.checks if c.ok is False]
    assert report.passed and not failed, (report.error, failed)
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


def test_time_wait_lifetime():
    """Slow by nature (about 62 s): TIME_WAIT is a kernel timer of 60 s, plus timer-wheel rounding."""
    r = results("time-wait-lifetime")["gone"]
    assert 60.0 <= r["lifetime_s"] <= 62.5 and r["ok"] is True and r["gap_s"] < 0.5


def _gone(pid: int) -> bool:
    """A zombie is dead: /proc/PID/stat's state field, not kill(pid, 0)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_http_server_restart():
    """python3 -m http.server, killed for real after serving, restarted for real on the same port."""
    r = results("http-server-restart")
    assert r["web"]["command"][:3] == ["python3", "-m", "http.server"] and str(r["web"]["port"]) in r["web"]["command"]
    assert r["clients"]["server_closed_first"] == 3 and r["clients"]["bytes_received"] > 0
    assert r["stop"]["signal"] == "INT" and r["stop"]["exited"]
    assert r["restart"]["port"] == r["web"]["port"] and r["restart"]["pid"] != r["web"]["pid"]
    assert _gone(r["web"]["pid"]) and _gone(r["restart"]["pid"])  # the run stopped what it started


def test_socketserver_restart():
    r = results("socketserver-restart")
    assert r["restart"]["ok"] is False and r["restart"]["exit_status"] == 1
    assert "Address already in use" in r["restart"]["message"]
    assert r["left"]["count"] == 3 and {e["lport"] for e in r["left"]["entries"]} == {r["srv"]["port"]}


TESTED = {name[len("test_"):].replace("_", "-") for name in dir() if name.startswith("test_")}


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


# -- the CLI -----------------------------------------------------------------------------------

def test_list_shows_states_and_fits_80_columns(run):
    listed = run("experiment", "list", "--json").json()["experiments"]
    assert {e["name"] for e in listed} == {p.stem for p in EXPERIMENTS.glob("*.toml")}
    assert all({"name", "purpose", "states", "slow", "requires", "path"} <= e.keys() for e in listed)
    text = run("experiment", "list")
    assert text.exit_code == 0 and "STATES" in text.stdout.splitlines()[0]
    assert "LISTEN TIME_WAIT" in text.stdout and max(map(len, text.stdout.splitlines())) <= 80
    shown = run("experiment", "show", "reuseaddr-matrix")
    assert shown.exit_code == 0 and "inet_bind_conflict" in shown.stdout
    assert max(map(len, shown.stdout.splitlines())) <= 80


def test_an_empty_selection_is_an_error_never_a_pass(run, tmp_path):
    for args in (("experiment", "list", "--dir", tmp_path), ("experiment", "run", "--dir", tmp_path),
                 ("experiment", "run", "--all", "--dir", tmp_path)):
        out = run(*args)
        assert out.exit_code == 1 and f"no experiments found in {tmp_path}" in out.stderr, (args, out.stderr)
        out = run(*args, "--json")
        assert out.exit_code == 1 and out.json()["error"]["code"] == 1
    out = run("experiment", "run", "--dir", tmp_path / "missing")
    assert out.exit_code == 2 and "is not a directory" in out.stderr
    out = run("experiment", "run")
    assert out.exit_code == 2 and "--all" in out.stderr


def test_run_dir_and_path(run, tmp_path):
    for name in ("no-connections", "reuseport"):
        (tmp_path / f"{name}.toml").write_text((EXPERIMENTS / f"{name}.toml").read_text())
    (tmp_path / "notes.txt").write_text("not a scenario")
    out = run("experiment", "run", "--dir", tmp_path, "--json")
    assert out.exit_code == 0, out.stderr
    assert [r["name"] for r in out.json()["experiments"]] == ["no-connections", "reuseport"]
    listed = run("experiment", "list", "--dir", tmp_path, "--json").json()["experiments"]
    assert [e["name"] for e in listed] == ["no-connections", "reuseport"]
    out = run("experiment", "run", "reuseport", "--dir", tmp_path)
    assert out.exit_code == 0 and "PASSED: reuseport" in out.stdout


def test_run_json_is_one_shape(run):
    out = run("experiment", "run", "no-connections", "--json")
    assert out.exit_code == 0
    doc = out.json()
    assert set(doc) == {"passed", "experiments"} and doc["passed"] is True and len(doc["experiments"]) == 1
    data = doc["experiments"][0]
    assert {"name", "status", "passed", "skipped", "error", "checks", "steps", "ports", "states", "states_seen",
            "duration_s", "kernel", "sysctls", "path", "explain"} <= data.keys()
    assert data["status"] == "passed" and data["skipped"] is None and data["error"] is None
    assert set(data["sysctls"]) == {"tcp_fin_timeout", "tcp_tw_reuse", "ip_local_port_range", "bindv6only"}
    assert all({"what", "expected", "observed", "ok"} <= c.keys() for c in data["checks"])
    assert all({"id", "do", "t_s", "result"} <= s.keys() for s in data["steps"])


def test_a_user_file_run_by_path(run, tmp_path):
    incident = tmp_path / "incident.toml"
    incident.write_text((EXPERIMENTS / "restart-after-server-close.toml").read_text().replace(
        'name = "restart-after-server-close"', 'name = "my-incident"'))
    out = run("experiment", "run", str(incident))
    assert out.exit_code == 0 and "PASSED: my-incident" in out.stdout


def test_an_expectation_that_differs_exits_1_and_says_which(run, tmp_path):
    wrong = tmp_path / "wrong.toml"
    wrong.write_text((EXPERIMENTS / "no-connections.toml").read_text().replace("ok = true", "ok = false"))
    out = run("experiment", "run", str(wrong))
    assert out.exit_code == 1
    assert "FAIL  plain restart: ok: expected false, observed true" in out.stdout
    assert "FAILED: no-connections" in out.stdout and out.stdout.rstrip().endswith("0 passed, 1 failed")


def test_an_unchecked_step_that_fails_ends_the_experiment_as_failed(run, tmp_path):
    path = tmp_path / "early.toml"
    path.write_text(HEAD + '[[step]]\nid = "a"\ndo = "listen"\n\n[[step]]\nid = "b"\ndo = "listen"\nport = "@a"\n\n'
                    '[[step]]\nid = "c"\ndo = "probe"\nport = "@a"\n\n[[expect]]\nstep = "c"\nok = false\n')
    out = run("experiment", "run", path, "--json")
    assert out.exit_code == 1
    report = out.json()["experiments"][0]
    assert report["status"] == "failed" and "step b (listen) failed" in report["error"] and not report["checks"]
    assert [s["id"] for s in report["steps"]] == ["a", "b"]


# -- skipped, could not run, JUnit XML -------------------------------------------------------------

@pytest.fixture
def never_here():
    """A requirement this machine never has, registered through the documented API: a real skip."""
    from addrinuse.experiments.actions import REQUIREMENTS, requirement

    requirement("test-never")(lambda: "test-never: this machine has no such thing")
    yield "test-never"
    REQUIREMENTS.pop("test-never")


def _copy(tmp_path, name: str, new_name: str | None = None, **replace) -> Path:
    text = (EXPERIMENTS / f"{name}.toml").read_text()
    if new_name:
        text = text.replace(f'name = "{name}"', f'name = "{new_name}"')
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / f"{new_name or name}.toml"
    path.write_text(text)
    return path


def test_exit_codes_passed_failed_skipped_could_not_run(run, tmp_path, never_here):
    passing = _copy(tmp_path, "no-connections")
    failing = _copy(tmp_path, "reuseport", "reuseport-wrong", **{'error = "EADDRINUSE"': 'error = "EACCES"'})
    skipped = tmp_path / "skipped.toml"
    skipped.write_text(_copy(tmp_path, "reuseport", "skipped").read_text().replace(
        'states = ["LISTEN"]\n', f'states = ["LISTEN"]\nrequires = ["{never_here}"]\n', 1))
    cannot = tmp_path / "cannot.toml"
    cannot.write_text(HEAD + '[[step]]\nid = "s"\ndo = "server"\ncommand = ["/nonexistent/addrinuse-test-server", '
                      '"{port}"]\n\n[[expect]]\nstep = "s"\nok = true\n')
    cases = [([passing], 0), ([skipped], 6), ([passing, skipped], 0), ([failing, skipped], 1),
             ([cannot], 6), ([passing, cannot], 6), ([failing, cannot], 1)]
    for paths, code in cases:
        out = run("experiment", "run", *paths, "--json")
        assert out.exit_code == code, (paths, out.stdout[-500:], out.stderr)
        assert out.json()["passed"] is (code == 0)
    doc = run("experiment", "run", cannot, skipped, "--json").json()["experiments"]
    assert doc[0]["status"] == "error" and "cannot run '/nonexistent/addrinuse-test-server'" in doc[0]["error"]
    assert doc[1]["status"] == "skipped" and doc[1]["skipped"] == "test-never: this machine has no such thing"
    text = run("experiment", "run", passing, skipped, cannot)
    assert text.stdout.rstrip().endswith("1 passed, 0 failed, 1 skipped, 1 could not run")
    assert "SKIPPED: skipped (test-never" in text.stdout and "COULD NOT RUN: t " in text.stdout


def test_junit_xml_report(run, tmp_path, never_here):
    passing = _copy(tmp_path, "no-connections")
    failing = _copy(tmp_path, "reuseport", "reuseport-wrong", **{'error = "EADDRINUSE"': 'error = "EACCES"'})
    skipped = tmp_path / "skipped.toml"
    skipped.write_text(HEAD.replace('"t"', '"skipped"') + f'requires = ["{never_here}"]\n'
                       '[[step]]\nid = "a"\ndo = "listen"\n\n[[expect]]\nstep = "a"\nok = true\n')
    report = tmp_path / "out" / "junit.xml"
    out = run("experiment", "run", passing, failing, skipped, "--junit-xml", report)
    assert out.exit_code == 2 and "cannot write the JUnit report" in out.stderr  # its folder does not exist
    report.parent.mkdir()
    out = run("experiment", "run", passing, failing, skipped, "--junit-xml", report)
    assert out.exit_code == 1
    root = ET.parse(report).getroot()
    assert root.tag == "testsuites" and (root.get("tests"), root.get("failures"), root.get("skipped")) == ("3", "1", "1")
    suite = root.find("testsuite")
    assert suite.get("errors") == "0" and suite.find("properties/property[@name='kernel']") is not None
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {"no-connections", "reuseport-wrong", "skipped"}
    assert all(c.get("classname") == "addrinuse.experiments" and float(c.get("time")) >= 0 for c in cases.values())
    assert list(cases["no-connections"]) == [cases["no-connections"].find("system-out")]
    failure = cases["reuseport-wrong"].find("failure")
    assert failure.get("message") == "1 of 5 expectations differed"
    assert "FAIL  third listener without it: error: expected EACCES, observed EADDRINUSE" in failure.text
    assert "ok    second listener with SO_REUSEPORT: ok: expected true, observed true" in failure.text
    skip = cases["skipped"].find("skipped")
    assert skip is not None and skip.get("message") == "test-never: this machine has no such thing"


# -- output: 80 columns, progress --------------------------------------------------------------

def test_run_all_fits_80_columns_and_counts(run):
    out = run("experiment", "run", "--all")
    assert out.exit_code in (0, 6), out.stdout[-2000:]
    too_long = [line for line in out.stdout.splitlines() if len(line) > 80]
    assert not too_long, too_long
    fast = [s for s in catalogue() if not s.slow]
    assert out.stdout.count("\n== ") + out.stdout.startswith("== ") == len(fast)
    assert "\r" not in out.stderr  # not a terminal: no countdown drawn


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


def test_the_countdown_is_drawn_on_a_tty_only(tmp_path, state_dir):
    import pty

    path = tmp_path / "wait.toml"
    path.write_text(WAIT)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "addrinuse", "experiment", "run", str(path)],
                                stdout=subprocess.PIPE, stderr=slave, text=True)
        os.close(slave)
        out, _ = proc.communicate(timeout=30)
        drawn = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0 and "PASSED: t" in out and "\r" not in out
    assert b"\r  0 of 1 entries on port" in drawn and b"s left" in drawn
    piped = subprocess.run([sys.executable, "-m", "addrinuse", "experiment", "run", str(path)],
                           capture_output=True, text=True, timeout=30)
    assert piped.returncode == 0 and "\r" not in piped.stderr and "entries on port" not in piped.stderr


# -- the action-registration API, and nothing left behind -------------------------------------------

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
    assert run_experiment(cannot).status == "error"

    def interrupted(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(find("no-connections"), on_step=interrupted)
    assert _temp_dirs() <= before


def test_the_users_server_dies_with_a_killed_runner(tmp_path):
    """SIGKILL to the runner cannot run its clean-up: PR_SET_PDEATHSIG ends the user's server anyway."""
    import psutil

    path = tmp_path / "hang.toml"
    path.write_text(HEAD + '[[step]]\nid = "web"\ndo = "server"\ncommand = ["python3", "-m", "http.server", "{port}",'
                    ' "--bind", "127.0.0.1"]\n\n[[step]]\nid = "wait"\ndo = "table"\nport = "@web"\n'
                    'states = ["ESTABLISHED"]\nwait_for = 1\ntimeout = 60\n\n[[expect]]\nstep = "wait"\ncount = 0\n')
    runner = subprocess.Popen([sys.executable, "-m", "addrinuse", "experiment", "run", str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = wait_for(lambda: (lambda l: l if "listens on" in l else None)(runner.stdout.readline()), 20,
                        what="the user's server to listen")
        pid = int(line.split("pid ")[1].split()[0])
        assert psutil.Process(pid).ppid() == runner.pid
    finally:
        runner.kill()
        runner.wait()
    wait_for(lambda: _gone(pid), 10, what=f"the user's server {pid} to die with its runner")


# -- validation -------------------------------------------------------------------------------------

INVALID = [
    ('[[step]]\nid = "a"\ndo = "teleport"\n', "step[0].do", "unknown step 'teleport'"),
    ('[[step]]\nid = "a"\ndo = "connect"\n', "step[0].to", "missing"),
    ('[[step]]\nid = "a"\ndo = "server"\nreuseaddr = "yes"\n', "step[0].reuseaddr", "is a string: give true or false"),
    ('[[step]]\nid = "a"\ndo = "connect"\nto = "@nobody"\n', "step[0].to", "names no earlier step"),
    ('[[step]]\nid = "a"\ndo = "server"\nclose = "sometimes"\n', "step[0].close", "not allowed"),
    ('[[step]]\nid = "a"\ndo = "table"\nport = "new"\nstates = ["WAITING"]\n', "step[0].states", "not a TCP state"),
    ('[[step]]\nid = "a"\ndo = "probe"\nport = "eighty"\n', "step[0].port", "is not a port"),
    ('[[step]]\nid = "a"\ndo = "probe"\nport = "99999"\n', "step[0].port", "'99999' is not a port: use 1-65535"),
    ('[[step]]\nid = "a"\ndo = "probe"\nport = 0\n', "step[0].port", "0 is not a port"),
    ('[[step]]\nid = "a"\ndo = "probe"\nport = 70000\n', "step[0].port", "70000 is not a port"),
    ('[[step]]\nid = "a"\ndo = "probe"\nport = true\n', "step[0].port", "True is not a port"),
    ('[[step]]\nid = "a"\ndo = "wait_gone"\nport = "new"\ninterval = -1\n', "step[0].interval",
     "-1 is out of range: give seconds > 0 and <= 10"),
    ('[[step]]\nid = "a"\ndo = "wait_gone"\nport = "new"\ntimeout = nan\n', "step[0].timeout", "nan is not a finite"),
    ('[[step]]\nid = "a"\ndo = "wait_gone"\nport = "new"\ntimeout = inf\n', "step[0].timeout", "inf is not a finite"),
    ('[[step]]\nid = "a"\ndo = "wait_gone"\nport = "new"\ntimeout = 0\n', "step[0].timeout", "0 is out of range"),
    ('[[step]]\nid = "a"\ndo = "table"\nport = "new"\nwait_for = -1\n', "step[0].wait_for", "-1 is out of range"),
    ('[[step]]\nid = "s"\ndo = "server"\n[[step]]\nid = "a"\ndo = "connect"\nto = "@s"\ncount = 0\n',
     "step[1].count", "0 is out of range: give a whole number from 1 to 1000"),
    ('[[step]]\nid = "s"\ndo = "server"\n[[step]]\nid = "a"\ndo = "connect"\nto = "@s"\ncount = 1e3\n',
     "step[1].count", "1000.0 is a number: give a whole number"),
    ('[[step]]\nid = "s"\ndo = "server"\n[[step]]\nid = "a"\ndo = "connect"\nto = "@s"\n'
     'count = 99999999999999999\n', "step[1].count", "is out of range"),
    ('[[step]]\nid = "a"\ndo = "server"\nready_timeout = -0.5\n', "step[0].ready_timeout", "out of range"),
    ('[[step]]\nid = "a"\ndo = "close_sequence"\nhold = 1e9\n', "step[0].hold", "out of range"),
    ('[[step]]\nid = "a"\ndo = "server"\ncommand = ["python3", "-m", "http.server"]\n', "step[0].command",
     "has no {port}"),
    ('[[step]]\nid = "a"\ndo = "server"\ncommand = []\n', "step[0].command", "is empty: give the command as a list"),
    ('[[step]]\nid = "a"\ndo = "server"\ncommand = ["x", "{port}"]\nreuseaddr = true\n', "step[0]",
     "reuseaddr set with a command"),
    ('[[step]]\nid = "a"\ndo = "server"\nstop_signal = "STOP"\n', "step[0].stop_signal", "not allowed"),
    ('[[step]]\nid = "a"\ndo = "listen"\n[[step]]\nid = "b"\ndo = "kill"\nserver = "@a"\n', "step[1].server",
     "@a is a 'listen' step: refer to a step that does server"),
    ('[[step]]\nid = "a"\ndo = "probe"\nport = "@a"\n', "step[0].port", "names no earlier step"),
    ('[[step]]\nid = "a"\ndo = "listen"\n[[step]]\nid = "a"\ndo = "listen"\n', "step[1].id", "used twice"),
    ('[[step]]\nid = "a b"\ndo = "listen"\n', "step[0].id", "is not a valid id"),
]
INVALID_EXPECT = [
    ('[[expect]]\nstep = "a"\ncount = -1\n', "expect[0].count", "-1 is out of range"),
    ('[[expect]]\nstep = "a"\nbetween = [5, 1]\n', "expect[0].between", "is not a range"),
    ('[[expect]]\nstep = "a"\nbetween = [0, nan]\n', "expect[0].between", "nan is not a finite number"),
    ('[[expect]]\nstep = "a"\nerror = "EADDRINUZE"\n', "expect[0].error", "is not an errno name"),
    ('[[expect]]\nstep = "a"\nholder = "@a.nothing"\n', "expect[0].holder", "gives no nothing"),
    ('[[expect]]\nstep = "zz"\nok = true\n', "expect[0].step", "'zz' is not a step id"),
    ('[[expect]]\nstep = "a"\n', "expect[0]", "checks nothing"),
    ('[[expect]]\nstep = "a"\norder = ["LISTEN"]\n', "expect[0].end", "missing"),
]
TOP = [
    ('name = "t"\npurpose = "p"\nexplain = "e"\nstates = ["WAITING"]\n', "states", "'WAITING' is not a TCP state"),
    ('name = "t"\npurpose = "p"\nexplain = "e"\nrequires = ["gpu"]\n', "requires", "is not a list of requirements"),
    ('name = "T T"\npurpose = "p"\nexplain = "e"\n', "name", "is not a valid name"),
    ('name = "t"\npurpose = "p"\nexplain = "e"\ncolour = 1\n', "colour", "unknown key"),
    ('name = "t"\npurpose = "p"\n', "explain", "missing"),
    ('name = "t"\npurpose = ""\nexplain = "e"\n', "purpose", "is empty"),
    ('name = "t"\npurpose = "p"\nexplain = "e"\nslow = 1\n', "slow", "give true or false"),
    ('name = "t"\npurpose = "p"\nexplain = "e"\n[step]\nid = "a"\n', "step", "is not a list"),
    ('name = "t"\n[[step\n', "toml", "fix the TOML syntax"),
]
CASES = [(HEAD + body + '\n[[expect]]\nstep = "a"\nok = true\n', key, problem) for body, key, problem in INVALID] + \
    [(HEAD + '[[step]]\nid = "a"\ndo = "listen"\n\n' + body, key, problem) for body, key, problem in INVALID_EXPECT] + \
    [(body + '[[step]]\nid = "a"\ndo = "listen"\n[[expect]]\nstep = "a"\nok = true\n' if "[step" not in body else body,
      key, problem) for body, key, problem in TOP]


@pytest.mark.parametrize("text,key,problem", CASES, ids=[f"{i}-{k}" for i, (_, k, _) in enumerate(CASES)])
def test_invalid_files_are_refused_naming_file_key_and_fix(text, key, problem):
    from addrinuse.experiments.scenario import ScenarioError

    with pytest.raises(ScenarioError) as info:
        loads(text, "bad.toml")
    message = str(info.value)
    assert message.startswith(f"bad.toml: {key}: ") and problem in message, message
    assert len(message.split(": ")) >= 4 and "\n" not in message  # file: key: problem: fix


def test_an_invalid_file_exits_2_with_one_line(sub, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(HEAD + '[[step]]\nid = "a"\ndo = "probe"\nport = "99999"\n\n[[expect]]\nstep = "a"\nok = true\n')
    out = sub("experiment", "run", path)
    assert out.exit_code == 2 and out.stdout == ""
    assert out.stderr.strip() == (f"addrinuse: error: {path}: step[0].port: '99999' is not a port: "
                                  "use 1-65535, \"new\" (the kernel picks) or \"@step\"")
    out = sub("experiment", "run", "no-such-experiment")
    assert out.exit_code == 2 and "no such experiment" in out.stderr and "reuseport" in out.stderr


# -- fuzzing the loader: any document gives a Scenario or one ScenarioError, never a traceback -------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


ATOMS = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70), st.integers(min_value=-2, max_value=70000),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=8),
    st.sampled_from(["new", "@a", "@b", "@a.pid", "@a.port", "@zz", "99999", "0", "80", "{port}", "TIME_WAIT",
                     "LISTEN", "gone", "EADDRINUSE", "bind", "server-first", "TERM", "poll", "trace", "active",
                     "local", "listen", "server", "\0"]))
VALUES = st.one_of(ATOMS, st.lists(ATOMS, max_size=4), st.dictionaries(st.text(max_size=4), ATOMS, max_size=2))


def _example(kind):
    """A value `kind` accepts, so that generated documents get past the first key now and then."""
    from addrinuse.experiments import params as P

    kind = kind.inner if isinstance(kind, P.Optional) else kind
    return {P.Port: "new", P.Ref: "@a", P.Seconds: 1.0, P.Count: getattr(kind, "low", 1), P.Flag: True,
            P.States: ["LISTEN"], P.Argv: ["x", "{port}"], P.Errno: "EADDRINUSE", P.Range: [0.0, 1.0]}.get(
        type(kind), (getattr(kind, "choices", None) or ["x"])[0])


def _value(draw, kind):
    return draw(st.sampled_from([_example(kind), _example(kind), _example(kind), None])) or draw(VALUES)


@st.composite
def steps(draw, index: int):
    """A step of a registered action with some of its own parameters (and now and then a stranger)."""
    from addrinuse.experiments.actions import actions

    table = actions()
    name = draw(st.sampled_from(sorted(table)))
    required = [k for k, kind in table[name].params.items() if kind.default is REQUIRED and draw(st.integers(0, 9))]
    keys = required + draw(st.lists(st.sampled_from(sorted(table[name].params) + ["stranger"]), max_size=4,
                                    unique=True).map(lambda ks: [k for k in ks if k not in required]))
    spec = table[name].params
    step = {"id": draw(st.sampled_from(["a", "b", "a"][index:index + 1] + ["a b", 3])) if not draw(
        st.integers(0, 5)) else ["a", "b", "c"][index], "do": name,
        **{k: _value(draw, spec[k]) if k in spec else draw(VALUES) for k in keys}}
    return step if draw(st.integers(0, 9)) else draw(st.one_of(VALUES, st.just({})))


@st.composite
def expectations(draw):
    from addrinuse.experiments.checks import EXPECT_KEYS

    keys = draw(st.lists(st.sampled_from(sorted(EXPECT_KEYS) + ["stranger"]), max_size=3, unique=True))
    return {"step": draw(st.sampled_from(["a", "a", "b", "zz"])), "ok": True,
            **{k: _value(draw, EXPECT_KEYS[k]) if k in EXPECT_KEYS else draw(VALUES) for k in keys}}


@st.composite
def documents(draw):
    doc = {"name": "fuzz", "purpose": "p", "explain": "e",
           "step": [draw(steps(i)) for i in range(draw(st.integers(1, 3)))],
           "expect": draw(st.lists(expectations(), min_size=1, max_size=3))}
    for key in draw(st.lists(st.sampled_from(["name", "purpose", "explain", "states", "requires", "slow", "step",
                                              "expect", "other"]), max_size=1 if draw(st.integers(0, 3)) else 0)):
        doc[key] = draw(VALUES)
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_fuzz_validate_gives_a_scenario_or_a_scenario_error(doc):
    from hypothesis import event

    from addrinuse.experiments import validate
    from addrinuse.experiments.scenario import ScenarioError

    try:
        scenario = validate(doc, "fuzz.toml")
    except ScenarioError as err:
        assert str(err).startswith("fuzz.toml: ") and "\n" not in str(err)
        event(f"refused at {err.key.split('.')[0].split('[')[0]}")
    else:
        assert scenario.steps and scenario.expect
        event("valid")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('[]="@{}.,\n #-_01ainfstepxc\\\'')), max_size=80))
def test_fuzz_loads_on_any_text(text):
    from addrinuse.experiments.scenario import ScenarioError

    try:
        loads(text, "fuzz.toml")
    except ScenarioError:
        pass
