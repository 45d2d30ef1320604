"""The expected vs observed table of one experiment report, passed/failed at a glance.

Every status is a word (PASS, FAIL, SKIP; PASSED, FAILED, SKIPPED, COULD NOT RUN) beside its colour, so it reads in
grey scale, to a screen reader and to a colour-blind reader. A check whose `ok` is null could not be
observed here: it is SKIP, never PASS."""

from __future__ import annotations

import json

from addrinuse.figures.svg import FONT_PX, Svg, text_width, wrap

WIDTH = 900
COLS = [("result", 20, 84), ("check", 112, 270), ("expected", 390, 240), ("observed", 638, 242)]
LINE_H = 15


def format_value(value) -> str:
    """A check's expected or observed value for people: lists joined, null as 'none'."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def check_status(ok) -> tuple[str, str, str]:
    """(word, symbol, palette role) of one check."""
    if ok is True:
        return "PASS", "✓", "pass"
    if ok is False:
        return "FAIL", "✗", "fail"
    return "SKIP", "–", "skip"


def report_status(report: dict) -> tuple[str, str]:
    """(word, palette role) of a whole experiment. The engine's own status (experiments.report) wins:
    an experiment that was skipped (a requirement missing) or could not run (a privilege or feature
    missing at run time) did not fail, whatever its checks say; without one, a failed check FAILS it."""
    status = report.get("status")
    if status == "skipped" or report.get("skipped"):
        return "SKIPPED", "skip"
    if status == "cannot_run":
        return "COULD NOT RUN", "skip"
    failed = any(c.get("ok") is False for c in report.get("checks") or [])
    if failed or not report.get("passed"):
        return "FAILED", "fail"
    return "PASSED", "pass"


def tally(report: dict) -> str:
    checks = report.get("checks") or []
    n = {word: sum(1 for c in checks if check_status(c.get("ok"))[0] == word) for word in ("PASS", "FAIL", "SKIP")}
    parts = [f"{len(checks)} checks" if len(checks) != 1 else "1 check", f"{n['PASS']} passed", f"{n['FAIL']} failed"]
    if n["SKIP"]:
        parts.append(f"{n['SKIP']} not observed here")
    return ", ".join(parts)


def checks_svg(report: dict, id_prefix: str = "checks") -> str:
    """SVG text of the expected vs observed table for an experiment report dict."""
    name = str(report.get("name") or "experiment")
    word, role = report_status(report)
    checks = [c for c in report.get("checks") or [] if isinstance(c, dict)]
    head = f"{word}: {name}"
    sub = tally(report) + (f"; skipped: {report['skipped']}" if report.get("skipped") else "")
    if report.get("message"):  # why it stopped early: could not run, or a step failed
        sub += f"; {'could not run' if word == 'COULD NOT RUN' else 'stopped'}: {report['message']}"
    if isinstance(report.get("duration_s"), (int, float)):
        sub += f"; {report['duration_s']:.2f} s"
    purpose = wrap(str(report.get("purpose") or ""), WIDTH - 40, FONT_PX, max_lines=3) if report.get("purpose") else []
    rows = []
    for c in checks:
        cells = [wrap(str(c.get("what", "")), COLS[1][2] - 8, FONT_PX),
                 wrap(format_value(c.get("expected")), COLS[2][2] - 8, FONT_PX, mono=True),
                 wrap(format_value(c.get("observed")), COLS[3][2] - 8, FONT_PX, mono=True)]
        rows.append((c, cells, max(len(x) for x in cells) * LINE_H + 10))
    top = 66 + LINE_H * len(purpose)
    table_top = top + 12
    height = table_top + 26 + sum(h for *_, h in rows) + (40 if not rows else 16)

    desc = f"{head}. {sub}. " + " ".join(
        f"{check_status(c.get('ok'))[0]}: {c.get('what')}; expected {format_value(c.get('expected'))}; "
        f"observed {format_value(c.get('observed'))}." for c, *_ in rows)
    svg = Svg(WIDTH, int(height), f"{name}: expected vs observed, {word}", desc, id_prefix)
    # The verdict band: a coloured bar AND the word.
    svg.raw(svg.rect(0, 0, 8, height, role))
    badge_w = text_width(word, 14) + 22
    svg.raw(svg.rect(20, 12, badge_w, 24, role, rx=4))
    svg.raw(svg.text(20 + badge_w / 2, 29, word, size=14, bold=True, anchor="middle", fill="#ffffff",
                     class_="badge-text", data_role="verdict"))
    svg.raw(svg.text(32 + badge_w, 29, name, size=15, bold=True))
    svg.raw(svg.text(20, 54, sub, role="muted"))
    if purpose:
        svg.raw(svg.text(20, 70, purpose, line_h=LINE_H))

    y = table_top
    for title, x, _ in COLS:
        svg.raw(svg.text(x, y + 16, title, bold=True, role="muted"))
    y += 24
    svg.raw(svg.line(20, y, WIDTH - 20, y, role="grid", width=1.5))
    if not rows:
        svg.raw(svg.text(20, y + 24, "no checks ran" + (f": {report['skipped']}" if report.get("skipped") else ""),
                         role="muted", italic=True))
    for i, (c, cells, h) in enumerate(rows):
        word_c, symbol, role_c = check_status(c.get("ok"))
        parts = []
        if i % 2:
            parts.append(svg.rect(20, y, WIDTH - 40, h, "stripe"))
        parts.append(svg.rect(COLS[0][1], y + 5, 64, 19, role_c, rx=3))
        parts.append(svg.text(COLS[0][1] + 32, y + 19, f"{symbol} {word_c}", size=12, bold=True, anchor="middle",
                              fill="#ffffff", class_="badge-text"))
        for (title, x, _), lines in zip(COLS[1:], cells):
            parts.append(svg.text(x, y + 19, lines, mono=title != "check", line_h=LINE_H))
        svg.raw(svg.el("g", "".join(parts), data_role="check", data_status=word_c))
        y += h
    return svg.render()
