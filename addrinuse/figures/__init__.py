"""Figures as SVG and the experiments' report.html, made with the standard library only (the shapes are
simple: lines, rects, text). Nothing here imports click or reads the kernel; inputs are plain dicts.

Input shapes (times in seconds since the run began; null has the meaning given):

sequence  {"title", "ends": [{"id", "label"}],
           "states": [{"end", "state", "t_s", "t_max_s": null = exact time | the change happened between
                       t_s and t_max_s, "source": "trace" | "poll"}],
           "segments": [{"from", "to", "label", "t_s", "t_arrive_s": null = arrival not observed,
                         "kind": "normal" | "retransmit" | "lost" | "rst"}],
           "notes": [str] (optional, printed under the figure)}
counts    {"title", "port", "samples": [{"t_s", "counts": {state: n}}],
           "predicted_ends": [{"key", "from_s", "end_min_s", "end_max_s",
                               "vanished_s": null = still present when the recording ended}]}
report    an experiment report dict {"name", "purpose", "passed", "skipped": null | reason, "duration_s",
          "checks": [{"what", "expected", "observed", "ok": true | false | null = not observed here}],
          "explain", "steps", optional "figures": [{"kind": "sequence" | "counts", ...that shape}]}
"""

from addrinuse.figures.adapt import CountRecorder, closeseq_to_sequence, demo_report
from addrinuse.figures.checks import checks_svg
from addrinuse.figures.counts import counts_svg
from addrinuse.figures.report import figures_for, report_html
from addrinuse.figures.sequence import sequence_svg
from addrinuse.figures.write import ReportFiles, write_report, write_svg

__all__ = ["CountRecorder", "ReportFiles", "checks_svg", "closeseq_to_sequence", "counts_svg", "demo_report",
           "figures_for", "report_html", "sequence_svg", "write_report", "write_svg"]
