"""Figures as SVG and the experiments' report.html, made with the standard library only (the shapes are
simple: lines, rects, text). Nothing here imports click or reads the kernel; inputs are plain dicts.

Input shapes (times in seconds since the run began; null has the meaning given):

sequence  {"title", "ends": [{"id", "label"}],
           "states": [{"end", "state", "t_s", "t_max_s": null = exact time | the change happened between
                       t_s and t_max_s, "source": "trace" | "inferred" (from the other end's events) | "poll",
                       "handoff_t_s" (optional): a FIN_WAIT2 handed to a timewait socket then}],
           "segments": [{"from", "to", "label", "t_s", "t_arrive_s": null = arrival not observed,
                         "kind": "normal" | "retransmit" | "lost" | "rst"}],
           "notes": [str] (optional, printed under the figure)}
counts    {"title", "port", "samples": [{"t_s", "counts": {state: n}}],
           "predicted_ends": [{"key", "from_s", "end_min_s", "end_max_s",
                               "vanished_s": null = still present when the recording ended}]}
report    an experiment report dict {"name", "purpose", "passed", "skipped": null | reason, "duration_s",
          "status" (optional): "passed" | "failed" | "skipped" | "cannot_run", "message": why it stopped,
          "checks": [{"what", "expected", "observed", "ok": true | false | null = not observed here}],
          "explain", "steps", optional "figures": [{"kind": "sequence" | "counts", ...that shape}]}
"""

# Imported on first use (PEP 562): `watch --svg` loads the count chart, not the report or the sequence.
_HOME = {"CountRecorder": "adapt", "closeseq_to_sequence": "adapt", "demo_report": "adapt", "checks_svg": "checks",
         "counts_svg": "counts", "figures_for": "report", "report_html": "report", "sequence_svg": "sequence",
         "ReportFiles": "write", "check_svg_path": "write", "write_report": "write", "write_svg": "write"}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'addrinuse.figures' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"addrinuse.figures.{_HOME[name]}"), name)
