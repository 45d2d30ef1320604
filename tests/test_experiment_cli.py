"""The experiment commands as a CI script uses them: list, show and run; --dir, paths; one JSON
shape; exit codes for passed, failed, skipped and could-not-run; JUnit XML; 80 columns; the
countdown drawn on a terminal only; an invalid file is one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from addrinuse.experiments import catalogue
from tests.test_experiments import EXPERIMENTS, HEAD, WAIT

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


def test_the_env_dir_is_the_default_for_dir_but_does_not_run_everything(run, tmp_path, monkeypatch):
    (tmp_path / "reuseport.toml").write_text((EXPERIMENTS / "reuseport.toml").read_text())
    monkeypatch.setenv("ADDRINUSE_EXPERIMENTS_DIR", str(tmp_path))
    assert [e["name"] for e in run("experiment", "list", "--json").json()["experiments"]] == ["reuseport"]
    out = run("experiment", "run")
    assert out.exit_code == 2 and "--all" in out.stderr
    out = run("experiment", "run", "--all", "--json")
    assert out.exit_code == 0 and [r["name"] for r in out.json()["experiments"]] == ["reuseport"]


def test_run_json_is_one_shape(run):
    out = run("experiment", "run", "no-connections", "--json")
    assert out.exit_code == 0
    doc = out.json()
    assert set(doc) == {"passed", "experiments"} and doc["passed"] is True and len(doc["experiments"]) == 1
    data = doc["experiments"][0]
    assert {"name", "status", "passed", "skipped", "message", "checks", "steps", "ports", "states", "states_seen",
            "duration_s", "kernel", "sysctls", "path", "explain"} <= data.keys()
    assert data["status"] == "passed" and data["skipped"] is None and data["message"] is None
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
    assert report["status"] == "failed" and "step b (listen) failed" in report["message"] and not report["checks"]
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
    assert doc[0]["status"] == "cannot_run" and "cannot run '/nonexistent/addrinuse-test-server'" in doc[0]["message"]
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
    blocks = ("\n" + out.stdout).split("\n== ")
    failed = [b for b in blocks if "\nFAILED:" in b]
    assert out.exit_code in (0, 6), failed or out.stdout[-2000:]
    too_long = [line for line in out.stdout.splitlines() if len(line) > 80]
    assert not too_long, too_long
    fast = [s for s in catalogue() if not s.slow]
    assert out.stdout.count("\n== ") + out.stdout.startswith("== ") == len(fast)
    assert "\r" not in out.stderr  # not a terminal: no countdown drawn


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


def test_an_invalid_file_exits_2_with_one_line(sub, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(HEAD + '[[step]]\nid = "a"\ndo = "probe"\nport = "99999"\n\n[[expect]]\nstep = "a"\nok = true\n')
    out = sub("experiment", "run", path)
    assert out.exit_code == 2 and out.stdout == ""
    assert out.stderr.strip() == (f"addrinuse: error: {path}: step[0].port: '99999' is not a port: "
                                  "use 1-65535, \"new\" (the kernel picks) or \"@step\"")
    out = sub("experiment", "run", "no-such-experiment")
    assert out.exit_code == 2 and "no such experiment" in out.stderr and "reuseport" in out.stderr
