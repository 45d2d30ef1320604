"""Every experiment file runs here against the real kernel; invalid files give the documented error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from addrinuse.experiments import catalogue, experiments_dir, find
from addrinuse.experiments import run as run_experiment

EXPERIMENTS = experiments_dir()
README = (EXPERIMENTS / "README.md").read_text()


def results(name: str):
    report = run_experiment(find(name))
    assert report.skipped is None, report.skipped
    failed = [c.to_dict() for c in report.checks if c.ok is False]
    assert report.passed and not failed, failed
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


def test_linger_zero():
    r = results("linger-zero")
    assert r["clients"]["server_closed_first"] == 0  # the clients saw RST, not a FIN


def test_listener_still_alive():
    r = results("listener-still-alive")
    assert r["listeners"]["pids"] == [r["srv"]["child_pid"]] and r["srv"]["child_pid"] != r["srv"]["pid"]


def test_reuseport():
    assert results("reuseport")["third"]["syscall"] == "bind"


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


TESTED = {name[len("test_"):].replace("_", "-") for name in dir() if name.startswith("test_")}


def test_every_file_has_a_test_and_a_readme_entry():
    names = {p.stem for p in EXPERIMENTS.glob("*.toml")}
    assert names <= TESTED, f"experiment files without a test: {sorted(names - TESTED)}"
    for name in names:
        assert f"### {name}" in README, f"experiments/README.md has no entry for {name}"
        assert "```" in README.split(f"### {name}")[1].split("### ")[0], f"README entry for {name} shows no output"


def test_catalogue_names_match_files():
    assert [s.name for s in catalogue()] == sorted(p.stem for p in EXPERIMENTS.glob("*.toml"))


# -- the CLI -----------------------------------------------------------------------------------

def test_list_and_show(run):
    listed = run("experiment", "list", "--json").json()["experiments"]
    assert {e["name"] for e in listed} == {p.stem for p in EXPERIMENTS.glob("*.toml")}
    shown = run("experiment", "show", "reuseaddr-matrix")
    assert shown.exit_code == 0 and "inet_bind_conflict" in shown.stdout


def test_run_json_report_has_the_documented_keys(run):
    out = run("experiment", "run", "no-connections", "--json")
    assert out.exit_code == 0
    assert out.json()["passed"] is True and len(out.json()["experiments"]) == 1
    data = out.json()["experiments"][0]
    assert {"name", "passed", "checks", "ports", "duration_s", "kernel", "sysctls"} <= data.keys()
    assert set(data["sysctls"]) == {"tcp_fin_timeout", "tcp_tw_reuse", "ip_local_port_range", "bindv6only"}
    assert all({"what", "expected", "observed", "ok"} <= c.keys() for c in data["checks"])


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
    assert "FAIL  plain restart: ok: expected False, observed True" in out.stdout


INVALID = [
    ('[[step]]\nid = "a"\ndo = "teleport"\n', "step[0].do", "unknown step 'teleport'"),
    ('[[step]]\nid = "a"\ndo = "connect"\n', "step[0].to", "missing"),
    ('[[step]]\nid = "a"\ndo = "server"\nreuseaddr = "yes"\n', "step[0].reuseaddr", "is a str"),
    ('[[step]]\nid = "a"\ndo = "connect"\nto = "@nobody"\n', "step[0].to", "names no earlier step"),
    ('[[step]]\nid = "a"\ndo = "server"\nclose = "sometimes"\n', "step[0].close", "not allowed"),
    ('[[step]]\nid = "a"\ndo = "table"\nport = "new"\nstates = ["WAITING"]\n', "step[0].states", "unknown state"),
    ('[[step]]\nid = "a"\ndo = "probe"\nport = "eighty"\n', "step[0].port", "is not a port"),
]


@pytest.mark.parametrize("body,key,problem", INVALID, ids=[k for _, k, _ in INVALID])
def test_invalid_files_exit_2_naming_file_key_and_fix(body, key, problem, sub, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\npurpose = "p"\nexplain = "e"\n' + body +
                    '\n[[expect]]\nstep = "a"\nok = true\n')
    out = sub("experiment", "run", path)
    assert out.exit_code == 2, out.stderr
    line = out.stderr.strip()
    assert str(path) in line and key in line and problem in line and len(line.splitlines()) == 1


def test_missing_key_and_unknown_name(sub, tmp_path):
    path = tmp_path / "nokey.toml"
    path.write_text('name = "x"\npurpose = "p"\n')
    out = sub("experiment", "run", path)
    assert out.exit_code == 2 and "explain: missing" in out.stderr
    out = sub("experiment", "run", "no-such-experiment")
    assert out.exit_code == 2 and "no such experiment" in out.stderr


def test_nothing_is_left_behind_by_a_run_with_a_child_holder():
    import psutil

    r = results("listener-still-alive")
    assert not psutil.pid_exists(r["srv"]["child_pid"]) or \
        psutil.Process(r["srv"]["child_pid"]).status() == psutil.STATUS_ZOMBIE
