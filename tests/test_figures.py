"""Figures and report.html: every SVG parses as XML and shows what it was given (one lane label per end,
one mark per observed state change), from synthetic inputs and from real runs (real sockets, the real
connection table, the kernel tracepoint as root); a failed experiment says FAILED; the report opens
in a real headless browser without console errors or network requests."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import stat
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from addrinuse.errors import FigureInputError, ReportPathError
from addrinuse.figures import (CountRecorder, checks_svg, closeseq_to_sequence, counts_svg, report_html,
                               sequence_svg, write_report, write_svg)
from tests.chromium import Chromium, find_browser
from tests.helpers import wait_for

NS = {"s": "http://www.w3.org/2000/svg"}
DOCS = Path(__file__).resolve().parent.parent / "docs" / "figures"
STALE = "docs/figures is stale: redraw it with .venv/bin/python docs/figures/generate.py --render"

LOST_FINAL_ACK = {
    "title": "lost-final-ack (synthetic)",
    "ends": [{"id": "a", "label": "A 10.199.0.1:40000"}, {"id": "b", "label": "B 10.199.0.2:8080"}],
    "states": [
        {"end": "a", "state": "FIN_WAIT1", "t_s": 0.101234, "t_max_s": None, "source": "trace"},
        {"end": "b", "state": "CLOSE_WAIT", "t_s": 0.101301, "t_max_s": None, "source": "trace"},
        {"end": "a", "state": "FIN_WAIT2", "t_s": 0.101340, "t_max_s": None, "source": "trace"},
        {"end": "b", "state": "LAST_ACK", "t_s": 0.2015, "t_max_s": None, "source": "trace"},
        {"end": "a", "state": "TIME_WAIT", "t_s": 0.195, "t_max_s": 0.2051, "source": "poll"},
        {"end": "b", "state": "CLOSED", "t_s": 0.4108, "t_max_s": None, "source": "trace"},
        {"end": "a", "state": "CLOSED", "t_s": 60.5, "t_max_s": 62.4, "source": "poll"},
    ],
    "segments": [
        {"from": "a", "to": "b", "label": "FIN", "t_s": 0.101234, "t_arrive_s": 0.101301, "kind": "normal"},
        {"from": "b", "to": "a", "label": "ACK", "t_s": 0.101301, "t_arrive_s": 0.101340, "kind": "normal"},
        {"from": "b", "to": "a", "label": "FIN", "t_s": 0.2015, "t_arrive_s": None, "kind": "normal"},
        {"from": "a", "to": "b", "label": "ACK", "t_s": 0.20156, "t_arrive_s": None, "kind": "lost"},
        {"from": "b", "to": "a", "label": "FIN", "t_s": 0.4107, "t_arrive_s": 0.41074, "kind": "retransmit"},
        {"from": "a", "to": "b", "label": "ACK", "t_s": 0.41076, "t_arrive_s": 0.4108, "kind": "normal"},
        {"from": "a", "to": "b", "label": "RST", "t_s": 0.5, "t_arrive_s": 0.5, "kind": "rst"},
    ],
}
FAILED_REPORT = {
    "name": "lost-final-ack", "purpose": "The final ACK is lost once; TIME_WAIT answers the retransmitted FIN.",
    "passed": False, "skipped": None, "duration_s": 0.83, "explain": "First paragraph.\n\nSecond paragraph.",
    "checks": [
        {"what": "B retransmits its FIN", "expected": 1, "observed": 1, "ok": True},
        {"what": "A's timer restarts", "expected": [59.5, 60.0], "observed": 41.2, "ok": False},
        {"what": "tcp_retransmit_skb in LAST_ACK", "expected": "LAST_ACK", "observed": "skipped: no tracefs", "ok": None},
    ],
    "figures": [{"kind": "sequence", **LOST_FINAL_ACK}],
}


def parse(svg: str) -> ET.Element:
    """Parse as XML and check what every figure must have: viewBox, <title>, <desc>, a background
    rect first, labels as <text> of at least 11 px."""
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("viewBox")
    assert root.find("s:title", NS).text and root.find("s:desc", NS).text
    background = root.find("s:rect", NS)
    assert background.get("width") == root.get("width") and background.get("fill")
    sizes = [float(t.get("font-size") or root.get("font-size")) for t in root.iter("{%s}text" % NS["s"])]
    assert sizes and min(sizes) >= 11
    return root


def by_role(root: ET.Element, role: str) -> list[ET.Element]:
    return [e for e in root.iter() if e.get("data-role") == role]


def text_of(element: ET.Element) -> str:
    return " ".join("".join(element.itertext()).split())


# -- the sequence diagram ---------------------------------------------------------------------------

def test_sequence_synthetic_has_a_lane_per_end_and_a_mark_per_state():
    root = parse(sequence_svg(LOST_FINAL_ACK))
    lanes = by_role(root, "lane-label")
    assert [(e.get("data-end"), text_of(e)) for e in lanes] == [("a", "A 10.199.0.1:40000"), ("b", "B 10.199.0.2:8080")]
    marks = [(m.get("data-end"), m.get("data-state")) for m in by_role(root, "state-mark")]
    assert marks == [(s["end"], s["state"]) for s in LOST_FINAL_ACK["states"]]
    kinds = [g.get("data-kind") for g in by_role(root, "segment")]
    assert kinds == [s["kind"] for s in LOST_FINAL_ACK["segments"]]
    lost = by_role(root, "segment")[3]
    assert lost.find("s:polygon", NS) is None and len(lost.findall("s:line", NS)) == 3  # a line and a cross
    # The 60 s gap is labelled on the ordinal axis; the real times are printed.
    texts = [text_of(t) for t in root.iter("{%s}text" % NS["s"])]
    assert "+60.0 s" in texts and "0.101234" in texts and "62.400000" in texts


def test_sequence_rejects_a_wrong_shape_naming_the_field():
    bad = json.loads(json.dumps(LOST_FINAL_ACK))
    bad["segments"][0]["kind"] = "teleported"
    with pytest.raises(FigureInputError, match=r"segments\[0\]\.kind"):
        sequence_svg(bad)
    bad = json.loads(json.dumps(LOST_FINAL_ACK))
    bad["states"][1]["end"] = "c"
    with pytest.raises(FigureInputError, match=r"states\[1\]\.end: 'c' is not one of the ends"):
        sequence_svg(bad)
    with pytest.raises(FigureInputError, match="finite number"):
        sequence_svg({**LOST_FINAL_ACK, "states": [{"end": "a", "state": "X", "t_s": float("nan")}]})


def _check_real_sequence(result: dict) -> dict:
    data = closeseq_to_sequence(result)
    root = parse(sequence_svg(data))
    assert {e.get("data-end") for e in by_role(root, "lane-label")} == {"active", "passive"}
    assert len(by_role(root, "lane-label")) == 2
    marks = [(m.get("data-end"), m.get("data-state")) for m in by_role(root, "state-mark")]
    assert marks == [(s["end"], s["state"]) for s in data["states"]]
    return data


def test_sequence_from_a_real_close_sequence():
    """The close-sequence code on real sockets; as root with tracefs, the kernel tracepoint's times,
    in closeseq's trace format: the hand-off folded into FIN_WAIT2's handoff_s, TIME_WAIT inferred."""
    from addrinuse.closeseq import run_close_sequence

    result = run_close_sequence(hold=0.15)
    data = _check_real_sequence(result)
    order = {end: [s["state"] for s in data["states"] if s["end"] == end] for end in ("active", "passive")}
    if result["trace"] is not None:
        assert order["active"][-4:] == ["ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT"]
        assert order["passive"] == ["ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"]
        _check_inferred_time_wait(data)
        assert [s["label"].split()[0] for s in data["segments"]] == ["FIN", "ACK", "FIN", "ACK"]
    # The polled path, from the same real run: one mark per state the poller saw, bracketed.
    polled = _check_real_sequence({**result, "trace": None, "trace_unavailable": "not asked"})
    assert len(polled["states"]) == len(result["poll"]["active"]) + len(result["poll"]["passive"])
    assert polled["segments"] == [] and all(s["t_max_s"] is not None for s in polled["states"][1:2])
    assert {s["source"] for s in polled["states"]} == {"poll"}


def _check_inferred_time_wait(data: dict) -> None:
    """A's TIME_WAIT is inferred (its own mark and legend entry, never 'polling'), bracketed by B's FIN
    leaving and A's ACK reaching B; the hand-off is on FIN_WAIT2, not a state of its own."""
    active = {s["state"]: s for s in data["states"] if s["end"] == "active"}
    tw, fw2 = active["TIME_WAIT"], active["FIN_WAIT2"]
    passive = {s["state"]: s for s in data["states"] if s["end"] == "passive"}
    assert tw["source"] == "inferred" and tw["t_s"] == passive["LAST_ACK"]["t_s"] <= tw["t_max_s"]
    assert tw["t_max_s"] == passive["CLOSED"]["t_s"] and "CLOSED" not in active
    assert fw2["source"] == "trace" and fw2["t_s"] <= fw2["handoff_t_s"] < tw["t_s"]
    root = parse(sequence_svg(data))
    mark = next(m for m in by_role(root, "state-mark") if m.get("data-state") == "TIME_WAIT")
    assert mark.get("data-source") == "inferred" and mark.find("s:circle", NS).get("stroke-dasharray")
    assert "inferred from the other end" in mark.find("s:title", NS).text and "poll" not in mark.find("s:title", NS).text
    handoff = next(m for m in by_role(root, "state-mark") if m.get("data-state") == "FIN_WAIT2")
    assert "handed to a timewait socket" in handoff.find("s:title", NS).text
    legend = [text_of(t) for t in root.iter("{%s}text" % NS["s"])]
    assert any(t.startswith("state change inferred from the other end") for t in legend)
    assert "state seen by polling" not in legend


def test_sequence_from_the_committed_real_run():
    """docs/figures/close-sequence.json is a real run (generate.py), recorded before closeseq folded the
    hand-off itself (its raw FIN_WAIT2 -> CLOSED): the adapter folds it the same way, and its figure is
    the committed one."""
    result = json.loads((DOCS / "close-sequence.json").read_text())
    assert ("FIN_WAIT2", "CLOSED") in [(s["old"], s["new"]) for s in result["trace"]["active"]]
    data = _check_real_sequence(result)
    _check_inferred_time_wait(data)
    assert sequence_svg(closeseq_to_sequence(result)) == (DOCS / "close-sequence.svg").read_text(), STALE


def test_a_polled_state_the_trace_already_shows_gets_no_second_label():
    """The committed lost-final-ack run: A's TIME_WAIT was seen by a poll and inferred from B's FIN.
    One label, the inferred one; the poll is a small diamond on its bracket, its tooltip says so."""
    seq = json.loads((DOCS / "lost-final-ack.json").read_text())["sequence"]
    assert [s["source"] for s in seq["states"] if s["end"] == "a" and s["state"] == "TIME_WAIT"] == ["poll", "inferred"]
    root = parse(sequence_svg(seq))
    marks = [m for m in by_role(root, "state-mark") if (m.get("data-end"), m.get("data-state")) == ("a", "TIME_WAIT")]
    assert [(m.get("data-source"), m.get("data-repeats")) for m in marks] == [("poll", "inferred"), ("inferred", None)]
    assert [len(m.findall("s:text", NS)) for m in marks] == [0, 1]
    assert "the same TIME_WAIT as the inferred mark" in marks[0].find("s:title", NS).text
    # A polled state nothing else shows keeps its label (the synthetic figure's polled CLOSED).
    root = parse(sequence_svg(LOST_FINAL_ACK))
    closed = [m for m in by_role(root, "state-mark") if (m.get("data-end"), m.get("data-state")) == ("a", "CLOSED")]
    assert [t.text for t in closed[0].findall("s:text", NS)] == ["CLOSED"] and closed[0].get("data-repeats") is None


def test_sequence_refuses_an_unknown_state_source():
    bad = json.loads(json.dumps(LOST_FINAL_ACK))
    bad["states"][0]["source"] = "guessed"
    with pytest.raises(FigureInputError, match=r"states\[0\]\.source: 'guessed' is not one of trace, inferred, poll"):
        sequence_svg(bad)


# -- the count over time ----------------------------------------------------------------------------

def test_counts_synthetic_lines_bands_and_groups():
    data = {"title": "synthetic", "port": 8080,
            "samples": [{"t_s": 0.0, "counts": {"ESTABLISHED": 2}}, {"t_s": 1.0, "counts": {"TIME_WAIT": 2}},
                        {"t_s": 61.5, "counts": {"TIME_WAIT": 1}}, {"t_s": 62.0, "counts": {}}],
            "predicted_ends": [
                {"key": "127.0.0.1:8080->127.0.0.1:50000", "from_s": 1.0, "end_min_s": 61.0, "end_max_s": 63.0,
                 "vanished_s": 61.5},
                {"key": "127.0.0.1:8080->127.0.0.1:50001", "from_s": 1.0, "end_min_s": 61.0, "end_max_s": 63.0,
                 "vanished_s": None}]}
    root = parse(counts_svg(data))
    assert {e.get("data-state") for e in by_role(root, "count-line")} == {"ESTABLISHED", "TIME_WAIT"}
    rows = by_role(root, "predicted-end")
    assert len(rows) == 2 and sum(len(r.findall("s:polygon", NS)) for r in rows) == 1  # one vanished mark
    assert "still present" in text_of(rows[1].find("s:title", NS))
    many = {**data, "predicted_ends": [{**data["predicted_ends"][0], "key": f"k{i}", "end_min_s": 61 + i / 1000,
                                        "end_max_s": 63 + i / 1000}
                                       for i in range(5000)]}
    svg = counts_svg(many)
    assert len(by_role(parse(svg), "predicted-end")) == 16 and len(svg) < 40_000  # grouped, stays small


def test_counts_recorded_from_the_real_table():
    """Real TIME_WAIT entries on a kernel-picked port, recorded as `watch --svg` would: a predicted end
    per entry from the kernel's timer, and (as root) a real vanishing through SOCK_DESTROY."""
    from addrinuse.conntable import get_backend

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    ours = {c.getsockname()[1] for c in clients}
    servers = [listener.accept()[0] for _ in clients]
    source = get_backend()
    recorder, began = CountRecorder(port), time.monotonic()

    def poll():
        entries = [e for e in source.snapshot(port, local=True) if e.rport in ours or e.state == "LISTEN"]
        recorder.add(time.monotonic() - began, entries)
        return entries

    def time_wait(count: int):
        found = [e for e in poll() if e.state == "TIME_WAIT"]
        return found if len(found) == count else None

    try:
        poll()
        for s in servers:
            s.close()  # the server's side closes first: it will hold TIME_WAIT
        for c in clients:
            c.close()
        tw = wait_for(lambda: time_wait(3), what="3 TIME_WAIT entries")
        data = recorder.to_dict()
        assert data["samples"][0]["counts"].get("ESTABLISHED") == 3
        assert {p["key"].rsplit(":", 1)[1] for p in data["predicted_ends"]} == {str(p) for p in ours}
        for p in data["predicted_ends"]:
            assert p["end_max_s"] - p["end_min_s"] > 0 and p["vanished_s"] is None
            if source.has_timers:  # the kernel's own timer: TIME_WAIT lasts 60 s from when it began
                assert abs(p["end_min_s"] - p["from_s"] - 60.0) < 0.05
        if os.geteuid() == 0 and hasattr(source, "destroy"):
            for entry in tw:
                assert source.destroy(entry) == 0
            wait_for(lambda: time_wait(0) == [], what="TIME_WAIT entries destroyed")
            data = recorder.to_dict()
            assert all(p["vanished_s"] is not None for p in data["predicted_ends"])
        root = parse(counts_svg(data))
        assert "TIME_WAIT" in {e.get("data-state") for e in by_role(root, "count-line")}
        assert len(by_role(root, "predicted-end")) == 3
    finally:
        source.close()
        listener.close()


def test_counts_from_the_committed_real_run():
    data = json.loads((DOCS / "time-wait-count.json").read_text())
    root = parse(counts_svg(data))
    assert counts_svg(data) == (DOCS / "time-wait-count.svg").read_text(), STALE
    assert all(p["vanished_s"] is not None and p["vanished_s"] - p["from_s"] >= 60 for p in data["predicted_ends"])
    assert len(by_role(root, "predicted-end")) == len(data["predicted_ends"])


# -- the checks table and the report -----------------------------------------------------------------

def test_checks_table_says_pass_fail_and_skip_in_words():
    root = parse(checks_svg(FAILED_REPORT))
    assert text_of(by_role(root, "verdict")[0]) == "FAILED"
    assert [c.get("data-status") for c in by_role(root, "check")] == ["PASS", "FAIL", "SKIP"]
    assert "✗ FAIL" in text_of(by_role(root, "check")[1])
    # ok null is never shown as passed, even when the experiment passed.
    unobserved = {**FAILED_REPORT, "passed": True, "checks": [FAILED_REPORT["checks"][2]]}
    root = parse(checks_svg(unobserved))
    assert text_of(by_role(root, "verdict")[0]) == "PASSED" and by_role(root, "check")[0].get("data-status") == "SKIP"
    skipped = {"name": "dual-stack", "passed": True, "skipped": "no IPv6 loopback", "checks": []}
    root = parse(checks_svg(skipped))
    assert text_of(by_role(root, "verdict")[0]) == "SKIPPED" and "no checks ran" in text_of(root)


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.chunks = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.chunks.append(data)


def test_report_of_a_failed_experiment_says_failed():
    passed = {"name": "no-connections", "purpose": "p", "passed": True, "skipped": None, "duration_s": 0.1,
              "checks": [{"what": "restart", "expected": True, "observed": True, "ok": True}]}
    html = report_html([passed, FAILED_REPORT])
    page = _Text()
    page.feed(html)
    text = " ".join(" ".join(page.chunks).split())
    assert re.search(r"<title>FAILED: ", html) and "FAILED lost-final-ack" in text and "PASSED no-connections" in text
    sections = [a for t, a in page.tags if t == "section"]
    assert [s["data-status"] for s in sections] == ["PASSED", "FAILED"]
    assert "✗ FAIL" in text and "– SKIP" in text
    # Self-contained: no script, no external resource; the only URL is the SVG namespace name.
    assert not [t for t, _ in page.tags if t in ("script", "link", "img", "iframe", "object")]
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) == {"http://www.w3.org/2000/svg"}
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_an_experiment_that_could_not_run_or_was_skipped_never_says_failed():
    """The engine's own reports (experiments.report.Report): could not run and skipped are said in
    words, with the reason, in the checks figure, the section and the page's verdict."""
    from addrinuse.experiments.checks import Check
    from addrinuse.experiments.report import Report

    cannot = Report("lost-final-ack", "p", "e", "x.toml", cannot_run=True,
                    message="step 1: the lab needs root (unshare(CLONE_NEWNET), veth, nftables)",
                    checks=[Check("B retransmits its FIN", 1, None, False)]).to_dict()
    skipped = Report("dual-stack", "p", "e", "y.toml", skipped="no IPv6 loopback here").to_dict()
    assert (cannot["status"], cannot["passed"], skipped["status"]) == ("cannot_run", False, "skipped")
    for report, word, reason in ((cannot, "COULD NOT RUN", "the lab needs root"),
                                 (skipped, "SKIPPED", "no IPv6 loopback here")):
        root = parse(checks_svg(report))
        assert text_of(by_role(root, "verdict")[0]) == word and reason in text_of(root)
        assert "FAILED" not in text_of(root) and "FAILED" not in root.find("s:title", NS).text
        html = report_html([report])
        page = _Text()
        page.feed(html)
        assert [a["data-status"] for t, a in page.tags if t == "section"] == [word]
        assert f"<title>{word}: " in html and "FAILED" not in html and reason in html
    html = report_html([cannot, skipped])
    assert "<title>COULD NOT RUN: " in html and "1 could not run, 1 skipped" in html
    passed = {"name": "n", "passed": True, "status": "passed", "skipped": None, "checks": []}
    assert "<title>COULD NOT RUN: " in report_html([passed, cannot])
    assert "<title>PASSED: " in report_html([passed, skipped])


def test_write_report_creates_the_directory_and_never_follows_a_planted_symlink(tmp_path):
    out = tmp_path / "deep" / "report"
    files = write_report(out, [FAILED_REPORT])
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o755
    names = sorted(p.name for p in out.iterdir())
    assert names == ["lost-final-ack-checks.svg", "lost-final-ack-sequence-1.svg", "report.html"]
    for path in files.figures:
        parse(path.read_text())
    assert files.total_bytes == sum(p.stat().st_size for p in out.iterdir())
    # A symlink planted where the report goes is replaced, its target untouched.
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    for name in ("report.html", "lost-final-ack-checks.svg"):
        (out / name).unlink()
        (out / name).symlink_to(victim)
    write_report(out, [FAILED_REPORT])
    assert victim.read_text() == "keep me"
    assert not (out / "report.html").is_symlink() and "FAILED" in (out / "report.html").read_text()
    assert sorted(p.name for p in out.iterdir()) == names  # no temporary file left


def test_write_report_refuses_a_path_that_is_not_a_directory(tmp_path):
    plain = tmp_path / "file"
    plain.write_text("x")
    with pytest.raises(ReportPathError, match="exists and is not a directory"):
        write_report(plain, [FAILED_REPORT])
    with pytest.raises(ReportPathError, match="Not a directory"):
        write_report(plain / "sub", [FAILED_REPORT])
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ReportPathError, match="symlink to nothing"):
        write_report(dangling, [FAILED_REPORT])
    assert plain.read_text() == "x" and not (tmp_path / "nowhere").exists()


def test_write_svg_replaces_atomically_and_refuses_bad_paths(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    target = tmp_path / "counts.svg"
    target.symlink_to(victim)
    write_svg(target, checks_svg(FAILED_REPORT))
    assert victim.read_text() == "keep me" and not target.is_symlink()
    parse(target.read_text())
    with pytest.raises(ReportPathError, match="no such directory"):
        write_svg(tmp_path / "missing" / "x.svg", "<svg/>")
    with pytest.raises(ReportPathError, match="is a directory"):
        write_svg(tmp_path, "<svg/>")


def test_report_from_a_real_experiment_run(tmp_path):
    """experiment close-sequence for real: the report finds its sequence diagram in the steps."""
    from addrinuse.experiments import find, run

    report = run(find("close-sequence")).to_dict()
    files = write_report(tmp_path / "r", [report])
    kinds = sorted(p.name for p in files.figures)
    assert kinds == ["close-sequence-checks.svg", "close-sequence-sequence-1.svg"]
    root = parse((tmp_path / "r" / "close-sequence-sequence-1.svg").read_text())
    assert len(by_role(root, "lane-label")) == 2 and by_role(root, "state-mark")


def test_demo_report_from_a_real_demo(state_dir, tmp_path):
    """`demo --report`: the real demo (real server processes) as a report with its checks."""
    from addrinuse.demo import run_demo
    from addrinuse.figures import demo_report
    from addrinuse.registry import Registry

    report = demo_report(run_demo(Registry(state_dir), clients=2).to_dict(), duration_s=1.0)
    assert report["passed"] and [c["ok"] for c in report["checks"]] == [True] * 5
    files = write_report(tmp_path / "demo", [report])
    assert "PASSED" in text_of(by_role(parse(files.figures[0].read_text()), "verdict")[0])


# -- a real browser -----------------------------------------------------------------------------------

def open_in_browser(path: Path, profile: Path, dark: bool = False, width: int = 1000):
    exe = find_browser()
    if exe is None:
        pytest.skip("no headless browser: apt-get install -y --no-install-recommends chromium-headless-shell "
                    "(or set ADDRINUSE_BROWSER)")
    browser = Chromium(exe, profile, width=width)
    try:
        if dark:
            browser.call("Emulation.setEmulatedMedia", session=True,
                         features=[{"name": "prefers-color-scheme", "value": "dark"}])
        browser.call("Page.navigate", session=True, url=path.as_uri())
        browser.wait_event("Page.loadEventFired")
    except BaseException:
        browser.close()
        raise
    return browser


SMALLEST_TEXT_JS = """Math.min(...[...document.querySelectorAll('svg text')].map(t => {
  const m = t.getScreenCTM(); return parseFloat(getComputedStyle(t).fontSize) * Math.hypot(m.a, m.b);
}))"""


def test_report_renders_in_a_headless_browser(tmp_path):
    """report.html in a real Chromium: no console error, no request for anything outside the file,
    the failed experiment visibly FAILED, every figure titled, text >= 11 px at 100 % zoom, and a
    screenshot of the whole page."""
    real = json.loads((DOCS / "close-sequence.json").read_text())
    counts = json.loads((DOCS / "time-wait-count.json").read_text())
    passed = {"name": "close-sequence", "purpose": "real run", "passed": True, "skipped": None, "duration_s": 1.2,
              "checks": [{"what": "order", "expected": ["ESTABLISHED"], "observed": ["ESTABLISHED"], "ok": True}],
              "figures": [{"kind": "sequence", **closeseq_to_sequence(real)}, {"kind": "counts", **counts}]}
    files = write_report(tmp_path / "out", [passed, FAILED_REPORT])
    for dark in (False, True):
        browser = open_in_browser(files.report, tmp_path / f"profile-{dark}", dark=dark)
        try:
            assert browser.evaluate("document.readyState") == "complete"
            assert browser.problems(files.report.as_uri()) == []
            failed = browser.evaluate("document.querySelector('section[data-status=FAILED] h2').innerText")
            assert failed.split() == ["FAILED", "lost-final-ack"]
            assert browser.evaluate("document.title").startswith("FAILED")
            svgs = browser.evaluate("[...document.querySelectorAll('svg')].map(s => s.querySelector('title')"
                                    ".textContent)")
            assert len(svgs) == 3 and all(svgs)
            assert browser.evaluate(SMALLEST_TEXT_JS) >= 11
            assert browser.evaluate("getComputedStyle(document.body).backgroundColor") == (
                "rgb(13, 17, 23)" if dark else "rgb(255, 255, 255)")
            shot = base64.b64decode(browser.call("Page.captureScreenshot", session=True, format="png",
                                                 captureBeyondViewport=True)["data"])
            assert shot[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(shot[16:20], "big") == 1000
            (tmp_path / f"report-{'dark' if dark else 'light'}.png").write_bytes(shot)
        finally:
            browser.close()
