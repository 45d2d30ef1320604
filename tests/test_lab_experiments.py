"""The lab experiments as catalogue entries: run through the experiment engine and its CLI, checked
by their own [[expect]] tables, drawn in `--report`; skipped with the reason where no lab can be
made, never passed.

Each lab experiment runs exactly once in this file (its parametrized engine test), so the lab suite
costs what the eight experiments cost: measured 6.9 s of 12.5 s for the file (the --report test
runs lost-final-ack and its counterfactual again: 2.3 s), load average 3.3 on 2 cores;
`--durations=0` shows each. As root every test here is followed by tests/test_lab's
check: the host's network sysctls and nft ruleset unchanged, no agent alive, no namespace or
tracefs instance of a lab left."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from addrinuse.experiments import catalogue, find, loads, run, verdict
from addrinuse.experiments.actions import actions
from addrinuse.lab import scenarios, unavailable_reason
from addrinuse.lab.observe import ALL_STATES
from addrinuse.render.experiments import experiment_step
from addrinuse.render.sequence import two_lanes

REASON = unavailable_reason()
if REASON is None:  # as root with nft, ip and tracefs: after each test, nothing of a lab is left
    from tests.test_lab import leaves_nothing  # noqa: F401 (an autouse fixture)

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"
LAB = [s.name for s in catalogue() if "lab" in s.requires]
TESTED = set(LAB)  # the catalogue entries this file runs (tests/test_experiments.py asks every file for a test)


def test_the_lab_experiments_are_in_the_catalogue():
    assert set(LAB) == set(scenarios.EXPERIMENTS)
    for name in LAB:
        s = find(name)
        assert set(s.states) == set(scenarios.STATES[name]), name  # `experiment list` shows what the lab observes
        assert not s.slow and s.expect


def test_the_catalogue_covers_every_state():
    """Every state of RFC 9293 is declared by some experiment; each lab experiment's run (below)
    asserts that it observed live every state it declares, so together the runs observe them all."""
    union = set().union(*(s.states for s in catalogue()))
    assert union == set(ALL_STATES), set(ALL_STATES) - union


@pytest.mark.parametrize("name", LAB)
def test_lab_experiment_through_the_engine(name):
    scenario = find(name)
    report = run(scenario)
    if REASON is not None:
        assert report.status == "skipped" and report.skipped == REASON and not report.checks
        pytest.skip(REASON)
    data = report.to_dict()
    table = "\n".join(f"{c['ok']} {c['what']}: {c['expected']} / {c['observed']}" for c in data["checks"])
    assert report.status == "passed", f"{report.message}\n{table}"
    assert all(c["ok"] is True or str(c["observed"]).startswith("skipped: ") for c in data["checks"]), table
    assert set(scenario.states) <= report.states_seen, (scenario.states, sorted(report.states_seen))
    assert data["purpose"] == scenario.purpose
    for row in report.steps:
        seq = row["result"]["sequence"]
        assert [e["id"] for e in seq["ends"]] == ["a", "b"] and seq["states"] and seq["segments"]
        text = experiment_step(row)
        assert max(map(len, text.splitlines())) <= 80, text
        assert " t (s)  A 10.199." in text and "B 10.199." in text
    json.dumps(data)


def test_the_seed_s_argument_is_in_the_explanations():
    kept, lost = find("lost-final-ack"), find("lost-final-ack-without-time-wait")
    for s in (kept, lost):
        text = " ".join(s.explain.split())
        assert "final ACK" in text and "retransmitted FIN" in text and "TIME_WAIT exists" in text
    assert "ECONNRESET" in lost.explain and "lost-final-ack-without-time-wait" in kept.explain


def test_without_a_lab_it_is_skipped_or_could_not_run_never_passed(tmp_path):
    """A forked child drops to nobody (everything is imported already) and runs lost-final-ack: skipped
    with the lab's reason (exit 6 for a run of it alone); the same file without `requires` reports
    could not run, with the reason as its message."""
    if os.geteuid() != 0:
        pytest.skip("dropping to another user needs root (as this user the engine test above checks the skip)")
    kept = find("lost-final-ack")
    bare = loads((Path(kept.path)).read_text().replace('requires = ["lab"]\n', ""), str(tmp_path / "bare.toml"))
    assert bare.requires == []
    from tests.helpers import as_nobody

    def both():
        out = [run(s).to_dict() for s in (kept, bare)]
        return [{k: d[k] for k in ("status", "skipped", "message", "checks")} for d in out] + [verdict(out[:1])]

    skipped, cannot, code = as_nobody(both)["value"]
    assert skipped["status"] == "skipped" and "needs root" in skipped["skipped"] and not skipped["checks"]
    assert code == 6
    assert cannot["status"] == "cannot_run" and "needs root" in cannot["message"] and not cannot["checks"]


# -- --report ---------------------------------------------------------------------------------------

def _parse_all(directory: Path) -> dict[str, ET.Element]:
    return {p.name: ET.parse(p).getroot() for p in sorted(directory.glob("*.svg"))}


def test_report_draws_each_experiment(run, tmp_path):
    out_dir = tmp_path / "out" / "report"  # created, parents too
    names = ["lost-final-ack", "lost-final-ack-without-time-wait", "close-sequence"]
    out = run("experiment", "run", *names, "--report", out_dir, "--json")
    assert out.exit_code == (0 if REASON is None else 0), out.stderr
    reports = {r["name"]: r for r in out.json()["experiments"]}
    assert "report: " in out.stderr and str(out_dir / "report.html") in out.stderr
    html = (out_dir / "report.html").read_text()
    svgs = _parse_all(out_dir)  # every SVG parses as XML
    for name in names:
        status = {"passed": "PASSED", "skipped": "SKIPPED"}[reports[name]["status"]]
        assert f'id="exp-{name}"' in html and f'data-status="{status}"' in html
        assert f"{name}-checks.svg" in svgs and reports[name]["purpose"] in html
    if REASON is not None:
        assert {reports[n]["status"] for n in names[:2]} == {"skipped"}
        return
    sequences = [n for n in svgs if re.search(r"-sequence-\d+\.svg$", n)]
    assert sorted(sequences) == ["close-sequence-sequence-1.svg", "lost-final-ack-sequence-1.svg",
                                 "lost-final-ack-without-time-wait-sequence-1.svg"]
    for n in sequences[1:]:
        lanes = ["".join(t.itertext()) for t in svgs[n].iter("{http://www.w3.org/2000/svg}text")
                 if t.get("data-role") == "lane-label"]
        assert [lane[:9] for lane in lanes] == ["A 10.199.", "B 10.199."], (n, lanes)
        assert svgs[n].find("{http://www.w3.org/2000/svg}title") is not None


def test_a_failed_experiment_s_report_says_failed(run, tmp_path):
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(Path(find("no-connections").path).read_text().replace("ok = true", "ok = false"))
    out = run("experiment", "run", wrong, "--report", tmp_path / "r")
    assert out.exit_code == 1
    html = (tmp_path / "r" / "report.html").read_text()
    assert 'data-status="FAILED"' in html and "<title>FAILED" in html
    assert 'data-status="FAIL"' in (tmp_path / "r" / "no-connections-checks.svg").read_text()


def test_report_path_errors_are_one_line_and_nothing_runs(run, tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    for target, words in ((afile, "is a file"), (afile / "sub", "is not a directory"),
                          (dangling, "symlink to nothing")):
        out = run("experiment", "run", "no-connections", "--report", target)
        assert out.exit_code == 2 and out.stdout == "", (target, out.stdout)
        assert len(out.stderr.strip().splitlines()) == 1 and words in out.stderr, out.stderr
    assert afile.read_text() == "x" and not (tmp_path / "nowhere").exists()


def test_wait_gone_feeds_the_count_chart(run, tmp_path):
    """time-wait-lifetime's wait_gone step records the entries per state: here cut short (0.5 s) on
    one real TIME_WAIT entry, whose predicted end is 60 s after its close."""
    path = tmp_path / "short.toml"
    path.write_text(Path(find("time-wait-lifetime").path).read_text()
                    .replace("timeout = 75.0", "timeout = 0.5").replace("slow = true", "slow = false")
                    .split("[[expect]]")[0] + '[[expect]]\nstep = "gone"\nwhat = "still there"\nequals.gone = false\n')
    out = run("experiment", "run", path, "--report", tmp_path / "r", "--json")
    assert out.exit_code == 0, out.stdout
    steps = {s["id"]: s["result"] for s in out.json()["experiments"][0]["steps"]}
    counts = steps["gone"]["counts"]
    assert counts["samples"][0]["counts"] == {"TIME_WAIT": 1}
    (end,) = counts["predicted_ends"]
    assert 59 <= end["end_min_s"] <= 60.5 and end["vanished_s"] is None
    assert "time-wait-lifetime-counts-1.svg" in _parse_all(tmp_path / "r")


# -- text -----------------------------------------------------------------------------------------

def test_show_writes_keyed_expectations_as_toml(run):
    out = run("experiment", "show", "lost-final-ack")
    assert out.exit_code == 0 and "within.fin_retransmit_delay_ms = [195, 1000]" in out.stdout
    assert "lost_final_ack" in out.stdout and max(map(len, out.stdout.splitlines())) <= 80


def test_the_text_diagram_of_a_real_run():
    """The run behind docs/figures/lost-final-ack.svg, drawn as text: the lost ACK and the resent FIN."""
    result = json.loads((FIGURES / "lost-final-ack.json").read_text())
    text = two_lanes(result["sequence"])
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80 and lines[0].split()[:2] == ["t", "(s)"]
    lost = next(i for i, line in enumerate(lines) if "ACK (lost) -----X" in line)
    assert "TIME_WAIT~" in lines[lost - 1] and "LAST_ACK" in lines[lost - 1]
    assert "<---- FIN (resent) -----" in lines[lost + 1] and "- ACK --------->" in lines[lost + 2]
    assert "CLOSED" in lines[lost + 2] + lines[lost + 3]  # B, when that ACK arrived (in the same 0.1 ms or not)
    assert lines[-1].lstrip().startswith("~ inferred")


# -- the generic expectations -----------------------------------------------------------------------

HEAD = 'name = "t"\npurpose = "p"\nexplain = "e"\n[[step]]\nid = "a"\ndo = "probe"\nport = "new"\n'


def test_keyed_expectations_check_any_value_by_its_key():
    from addrinuse.experiments.checks import check

    s = loads(HEAD + '[[expect]]\nstep = "a"\nwhat = "w"\nequals.flag = true\nequals.n.x = 1\n'
                     'within.rounds.0.t = [0, 1]\nwithin.rounds.1.t = [0, 1]\nincludes.seen = ["B"]\n'
                     'excludes.seen = ["C"]\nequals.missing = 1\n')
    result = {"flag": 1, "n": {"x": 1}, "rounds": [{"t": 0.5}, {"skipped": "no such sysctl"}], "seen": ["A", "B"]}
    got = {c.what: (c.ok, c.observed) for c in check(s.expect[0], result, None)}
    assert got == {"w: flag": (False, 1), "w: n.x": (True, 1), "w: rounds.0.t within": (True, 0.5),
                   "w: rounds.1.t within": (None, "skipped: no such sysctl"), "w: seen includes": (True, ["A", "B"]),
                   "w: seen excludes": (True, ["A", "B"]), "w: missing": (False, None)}


@pytest.mark.parametrize("line, words", [
    ("within.x = [2, 1]", "[2, 1] is not a range"), ("within.x = [nan, 1]", "not a finite number"),
    ('equals."a b" = 1', "is not a result key"), ("equals = 3", "give a table of result keys"),
    ("includes.x = []", "give a non-empty list"), ("equals.x = {}", "give a table of result keys"),
])
def test_keyed_expectations_are_checked_at_load(line, words):
    from addrinuse.experiments import ScenarioError

    with pytest.raises(ScenarioError, match=re.escape(words)):
        loads(HEAD + f'[[expect]]\nstep = "a"\n{line}\n')


def test_the_lab_actions_are_registered_with_their_requirement():
    from addrinuse.experiments.actions import REQUIREMENTS

    lab = [a for a in actions().values() if a.run.__module__ == "addrinuse.lab.actions"]
    assert len(lab) == len(scenarios.EXPERIMENTS) and all(a.doc and a.describe for a in lab)
    assert REQUIREMENTS["lab"]() == REASON
