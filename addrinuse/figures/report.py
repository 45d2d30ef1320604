"""report.html: one self-contained page for a run of experiments (no network, no scripts, no external
fonts or stylesheets; a Content-Security-Policy says so to the browser), one section per experiment:
title, status in words, purpose, the expected vs observed table, its figures inline, the explanation."""

from __future__ import annotations

import re
import time

from addrinuse.figures.checks import check_status, checks_svg, format_value, report_status, tally
from addrinuse.figures.counts import counts_svg
from addrinuse.figures.svg import esc
from addrinuse.figures.sequence import sequence_svg

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
:root{color-scheme:light dark;--bg:#fff;--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--stripe:#f6f8fa;
--pass:#1a7f37;--fail:#c21c1c;--skip:#7d5800}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6e9ed;--muted:#a3acb7;--line:#30363d;
--stripe:#161b22}}
body{margin:0 auto;max-width:1000px;padding:16px 20px 40px;background:var(--bg);color:var(--fg);
font:15px/1.5 "DejaVu Sans",Verdana,Arial,sans-serif}
h1{font-size:22px;margin:8px 0}h2{font-size:19px;margin:0 0 6px}h3{font-size:15px;margin:18px 0 4px}
.muted{color:var(--muted)}code,td.v{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:13px}
.badge{display:inline-block;color:#fff;font-weight:bold;border-radius:4px;padding:1px 8px;font-size:14px;
margin-right:6px;vertical-align:1px;white-space:nowrap}
.badge.pass{background:var(--pass)}.badge.fail{background:var(--fail)}.badge.skip{background:var(--skip)}
section{border:1px solid var(--line);border-left:8px solid var(--line);border-radius:6px;padding:14px 12px;
margin:22px 0}
section.pass{border-left-color:var(--pass)}section.fail{border-left-color:var(--fail)}
section.skip{border-left-color:var(--skip)}
table{border-collapse:collapse;width:100%;margin:8px 0}
th,td{text-align:left;vertical-align:top;padding:5px 8px;border-bottom:1px solid var(--line);
overflow-wrap:anywhere}
tbody tr:nth-child(even){background:var(--stripe)}
figure{margin:14px 0}figure svg{max-width:100%;height:auto;display:block}
figcaption{font-size:13px;color:var(--muted)}
ul.toc{padding-left:20px}a{color:inherit}
"""


def safe_name(name: str) -> str:
    """A file-name-safe, id-safe slug of an experiment name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "experiment"


def figures_for(report: dict) -> list[dict]:
    """The figures of one report, each {"kind": "sequence"|"counts", ...its shape}.

    Taken from report["figures"] when the producer gives them; otherwise found in the steps: a
    close_sequence step's result (through closeseq_to_sequence), and any step result carrying a
    "sequence" or "counts" shape (or a list of them)."""
    if report.get("figures") is not None:
        return list(report["figures"])
    from addrinuse.figures.adapt import closeseq_to_sequence

    found = []
    for step in report.get("steps") or []:
        result = step.get("result") if isinstance(step, dict) else None
        if not isinstance(result, dict):
            continue
        if step.get("do") == "close_sequence" and "poll" in result:
            found.append({"kind": "sequence", **closeseq_to_sequence(result)})
        for kind in ("sequence", "counts"):
            shapes = result.get(kind)
            for shape in shapes if isinstance(shapes, list) else [shapes] if isinstance(shapes, dict) else []:
                found.append({"kind": kind, **shape})
    return found


def render_figure(figure: dict, id_prefix: str) -> str:
    from addrinuse.errors import FigureInputError

    kind = figure.get("kind")
    if kind == "sequence":
        return sequence_svg(figure, id_prefix)
    if kind == "counts":
        return counts_svg(figure, id_prefix)
    raise FigureInputError("report", "figures[].kind", f"{kind!r} is not 'sequence' or 'counts'")


def build(reports: list[dict], title: str | None = None) -> tuple[str, dict[str, str]]:
    """(report.html text, {file name: SVG text}) for a list of experiment report dicts."""
    files: dict[str, str] = {}
    sections, toc = [], []
    counts = {"PASSED": 0, "FAILED": 0, "COULD NOT RUN": 0, "SKIPPED": 0}
    used: set[str] = set()
    for report in reports:
        name = str(report.get("name") or "experiment")
        slug = safe_name(name)
        while slug in used:
            slug += "-2"
        used.add(slug)
        word, role = report_status(report)
        counts[word] += 1
        toc.append(f'<li><span class="badge {role}">{word}</span> <a href="#exp-{slug}">{esc(name)}</a></li>')
        figs = []
        for k, figure in enumerate(figures_for(report), 1):
            fname = f"{slug}-{figure.get('kind')}-{k}.svg"
            svg = render_figure(figure, f"{slug}-{k}")
            files[fname] = svg
            # An <svg> element is valid HTML as is; its ids are unique in the page (the prefix).
            figs.append(f'<figure>{svg}<figcaption>Figure: {esc(figure.get("title") or fname)} '
                        f'(also <a href="{esc(fname)}">{esc(fname)}</a>)</figcaption></figure>')
        files[f"{slug}-checks.svg"] = checks_svg(report, f"{slug}-checks")
        sections.append(_section(report, slug, word, role, figs))
    # The page's verdict follows the run's exit code (experiments.report.verdict): any failure fails
    # it; else one that could not run, or nothing that ran, is not a pass.
    if counts["FAILED"]:
        verdict, vrole = "FAILED", "fail"
    elif counts["COULD NOT RUN"]:
        verdict, vrole = "COULD NOT RUN", "skip"
    else:
        verdict, vrole = ("PASSED", "pass") if counts["PASSED"] else ("SKIPPED", "skip")
    summary = ", ".join(f"{n} {w.lower()}" for w, n in counts.items() if n)
    page_title = title or "addrinuse experiments"
    generated = time.strftime("%Y-%m-%d %H:%M:%S %z")
    html = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="color-scheme" content="light dark">',
        f"<title>{verdict}: {esc(page_title)} ({summary or 'no experiments'})</title>",
        f"<style>{STYLE}</style></head><body>",
        f'<header><h1><span class="badge {vrole}" data-role="verdict">{verdict}</span> {esc(page_title)}</h1>',
        f'<p class="muted">{len(reports)} experiment{"" if len(reports) == 1 else "s"}: {summary or "none"}. '
        f'Generated {esc(generated)}.</p>',
        f'<ul class="toc">{"".join(toc)}</ul></header>',
        "<main>", *sections, "</main>",
        "</body></html>",
    ])
    return html + "\n", files


def report_html(reports: list[dict], title: str | None = None) -> str:
    """The self-contained report.html text for experiment report dicts."""
    return build(reports, title)[0]


def _paragraphs(text: str) -> str:
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return "".join(f"<p>{esc(p)}</p>" for p in paras)


def _section(report: dict, slug: str, word: str, role: str, figs: list[str]) -> str:
    name = str(report.get("name") or "experiment")
    meta = [tally(report)]
    if isinstance(report.get("duration_s"), (int, float)):
        meta.append(f"{report['duration_s']:.2f} s")
    if report.get("kernel"):
        meta.append(f"Linux {esc(report['kernel'])}")
    out = [f'<section id="exp-{slug}" class="{role}" aria-labelledby="h-{slug}" data-status="{word}">',
           f'<h2 id="h-{slug}"><span class="badge {role}">{word}</span> {esc(name)}</h2>']
    if report.get("purpose"):
        out.append(f"<p>{esc(report['purpose'])}</p>")
    out.append(f'<p class="muted">{" · ".join(esc(m) for m in meta)}</p>')
    if report.get("skipped"):
        out.append(f"<p><strong>Skipped:</strong> {esc(report['skipped'])}</p>")
    if report.get("message"):
        why = "Could not run" if word == "COULD NOT RUN" else "Stopped"
        out.append(f"<p><strong>{why}:</strong> {esc(report['message'])}</p>")
    checks = [c for c in report.get("checks") or [] if isinstance(c, dict)]
    if checks:
        out.append('<table><caption class="muted">Expected vs observed</caption><thead><tr><th scope="col">result'
                   '</th><th scope="col">check</th><th scope="col">expected</th><th scope="col">observed</th></tr>'
                   "</thead><tbody>")
        for c in checks:
            cw, symbol, crole = check_status(c.get("ok"))
            out.append(f'<tr data-status="{cw}"><td><span class="badge {crole}">{symbol} {cw}</span></td>'
                       f"<td>{esc(c.get('what', ''))}</td><td class=\"v\">{esc(format_value(c.get('expected')))}</td>"
                       f"<td class=\"v\">{esc(format_value(c.get('observed')))}</td></tr>")
        out.append("</tbody></table>")
    out += figs
    if report.get("explain"):
        out.append(f"<h3>Explain</h3>{_paragraphs(str(report['explain']))}")
    out.append("</section>")
    return "\n".join(out)
