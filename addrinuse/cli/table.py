"""Commands that read the connection table: table, watch, states."""

from __future__ import annotations

import sys
import time

import click

from addrinuse.cli.app import cli, emit
from addrinuse.cli.options import Seconds, backend_option, interval_option, json_option, port_filter_option, states_option
from addrinuse.errors import BadInput

host_filter_option = click.option("--host", default=None,
                                  help="Only entries with this local or remote address (default: any).")


def _numeric(host):
    if host is None:
        return None
    from addrinuse.sockets import resolve

    return resolve(host)[1]


def port_estimate(entries, port):
    """How the port's local side frees, from the entries already read (no second walk)."""
    from addrinuse.estimate import free_in

    return free_in([e for e in entries if e.lport == port])


@cli.command("table")
@port_filter_option
@host_filter_option
@states_option
@backend_option
@json_option
def table_cmd(port, host, states, backend, as_json):
    """One snapshot of the TCP connection table, filtered.

    With --port, ends with when the port's local side frees, and what kind of estimate that is.

    \b
    Example:
      addrinuse table --port 8080 --state TIME_WAIT
    """
    from addrinuse.conntable import get_backend

    address = _numeric(host)
    source = get_backend(backend)
    try:
        rows = source.table(port, states or None, host=address)
    finally:
        source.close()
    # The whole table is written while it is decoded (a 50k-entry table never sits in memory as
    # objects); the port's own local entries are kept aside for the estimate at the end.
    mine = []

    def walk():
        for entry in rows:
            if entry.lport == port:
                mine.append(entry)
            yield entry

    out = sys.stdout  # where click.echo writes too (CliRunner swaps it in tests)
    if as_json:
        from addrinuse.jsonstream import DocumentWriter, entry_json

        doc = DocumentWriter(out, {"port": port, "host": host, "states": list(states) or None,
                                   "backend": source.name})
        # Without --port there is no estimate to make: the netlink dump writes its JSON straight
        # from the kernel's bytes (the same text as entry_json of each entry).
        fast = port is None and hasattr(rows, "json_items")
        count = doc.stream("entries", rows.json_items() if fast else map(entry_json, walk()))
        estimate = port_estimate(mine, port) if port else None
        doc.close({"count": count, "free_in": estimate.to_dict() if estimate else None})
        return
    from addrinuse.render.tables import table_header, table_lines

    out.write(table_header(source.has_timers) + "\n")
    count = 0
    batch = []
    fast = port is None and hasattr(rows, "text_lines")  # as for JSON: no estimate, straight from the bytes
    for line in rows.text_lines(source.has_timers) if fast else table_lines(walk(), source.has_timers):
        batch.append(line)
        if len(batch) == 512:
            out.write("\n".join(batch) + "\n")
            count += len(batch)
            batch = []
    if batch:
        out.write("\n".join(batch) + "\n")
        count += len(batch)
    out.flush()
    click.echo(f"{count} entries" + (f" on port {port}" if port else "") + f" ({source.name})")
    estimate = port_estimate(mine, port) if port else None
    if estimate is not None and estimate.kind != "now":
        from addrinuse.render.tables import estimate_text

        from addrinuse.render import wrap

        click.echo(wrap(f"local port {port} frees {estimate_text(estimate)}", "", "  "))


@cli.command()
@port_filter_option
@host_filter_option
@states_option
@click.option("--source", "source_name", type=click.Choice(["poll", "trace"]), default="poll", show_default=True,
              help="poll: read the table every --interval (lifetimes, kernel timers). trace: every state change "
                   "as the kernel makes it, from the tracepoint sock:inet_sock_set_state (root and tracefs; "
                   "elsewhere it polls and says so).")
@interval_option()
@click.option("--duration", type=Seconds(0, 7 * 86_400, low_inclusive=False), help="Stop after this many seconds.")
@click.option("--until-empty", is_flag=True, help="Stop once no matching entry is left (polling only).")
@click.option("--svg", "svg_path", type=click.Path(dir_okay=False),
              help="When the watch ends (Ctrl-C too), write the count of entries per state over time to this "
                   "SVG file; the table is sampled every --interval, whatever --source.")
@backend_option
@json_option
def watch(port, host, states, source_name, interval, duration, until_empty, svg_path, backend, as_json):
    """Print entries as they appear, change state and vanish; or, with --source trace, each state
    change the moment the kernel makes it.

    Ends with a summary: entries per state and min/median/max lifetime (polling), or the changes
    per state entered (trace). --state keeps entries in those states (polling), or changes into or
    out of them (trace). Ctrl-C ends it (exit 0).

    \b
    Example:
      addrinuse watch --port 8080 --state TIME_WAIT --until-empty
      addrinuse watch --port 8080 --source trace --svg counts.svg
    """
    from addrinuse.conntable import get_backend
    from addrinuse.watch import Watch, open_tracer, poll, trace

    if source_name == "trace" and until_empty:
        raise BadInput("--until-empty needs polling (the end of TIME_WAIT emits no tracepoint event): "
                       "use --source poll")
    w = Watch(port, _numeric(host), tuple(states), interval, duration, until_empty)
    recorder = None
    if svg_path:
        from addrinuse.figures import CountRecorder, check_svg_path

        check_svg_path(svg_path)  # a bad path is refused before the watch starts (exit 2)
        recorder = CountRecorder(port, f"Entries per state on {_what(port, host)}")
    began = time.monotonic()
    tracer = unavailable = source = None
    try:
        if source_name == "trace":
            tracer, unavailable = open_tracer(port, began)
        if tracer is None or recorder is not None:
            source = get_backend(backend, cache_owners=True)
        if tracer is not None:
            from addrinuse.render.transitions import HEADER, transition

            start = _start_lines(port, host, states, "Tracing", "at sock:inet_sock_set_state")
            data = trace(w, tracer, began, lambda: _started(start, HEADER, as_json), _shower(transition, as_json),
                         recorder, source)
        else:
            from addrinuse.render.tables import EVENT_HEADER, event

            how = f"every {interval:g} s ({source.name}{'; no tracepoint' if unavailable else ''})"
            start = _start_lines(port, host, states, "Polling" if unavailable else "Watching", how, unavailable)
            data = poll(w, source, began, lambda: _started(start, EVENT_HEADER, as_json), _shower(event, as_json),
                        recorder)
            if unavailable:
                data["trace_unavailable"] = unavailable
    except BaseException:
        if recorder is not None:
            _write_chart(svg_path, recorder, quiet=True)  # best effort: the error that ended the watch wins
        raise
    finally:
        if tracer is not None:
            tracer.close()  # removes the tracefs instance (its janitor does, if this process is killed)
        if source is not None:
            source.close()
    if as_json:
        emit(data)
    elif data["source"] == "trace":
        from addrinuse.render.transitions import summary

        click.echo(summary(data))
    else:
        from addrinuse.render.tables import summary

        click.echo(summary(data))
    if recorder is not None:
        _write_chart(svg_path, recorder)


def _what(port, host) -> str:
    return (f"port {port}" if port else "all ports") + (f" of {host}" if host else "")


def _start_lines(port, host, states, verb: str, how: str, unavailable: str | None = None) -> list[str]:
    """The start line, one line within 80 columns ending "Ctrl-C to end." as bcc's tools do; what
    does not fit in it (many states, why the tracepoint is unavailable) on lines before it."""
    from addrinuse.render import endpoint, fit, wrap

    scope = endpoint(host, port) if host and port else f"port {port}" if port else host or "all ports"
    lines = [wrap(f"the tracepoint is unavailable: {unavailable}", "", "  ")] if unavailable else []
    listed = f" ({', '.join(states)})" if states else ""
    line = f"{verb} {scope}{listed} {how}. Ctrl-C to end."
    if states and len(line) > 80:
        lines.append(wrap(f"states: {', '.join(states)}", "", "  "))
        line = f"{verb} {scope} ({len(states)} states) {how}. Ctrl-C to end."
    if len(line) > 80:  # a long address: wrapped, "Ctrl-C to end." kept whole at the end
        *head, last = wrap(line.removesuffix(" Ctrl-C to end."), "", "  ").split("\n")
        line = "\n".join([*head, fit(last, "Ctrl-C to end.", indent=2)])
    return lines + [line]


def _started(lines: list[str], header: str, as_json: bool) -> None:
    """The start lines (on stderr with --json), then the column header."""
    click.echo("\n".join(lines), err=as_json)
    if not as_json:
        click.echo(header)


def _shower(render, as_json: bool):
    return emit if as_json else (lambda ev: click.echo(render(ev)))


def _write_chart(path: str, recorder, quiet: bool = False) -> None:
    from addrinuse.errors import AddrinuseError
    from addrinuse.figures import counts_svg, write_svg

    try:
        written = write_svg(path, counts_svg(recorder.to_dict()))
    except AddrinuseError:
        if quiet:
            return
        raise
    from addrinuse.render import fit

    # The path on a line of its own when the whole does not fit: a path is never broken.
    click.echo(fit(f"chart ({written.stat().st_size / 1024:.0f} kB):", str(written), indent=2), err=True)


@cli.command()
@json_option
def states(as_json):
    """The TCP states: who enters each, on which segment, and what takes it out.

    \b
    Example:
      addrinuse states
    """
    from addrinuse.render import wrap
    from addrinuse.tcpstates import TCP_STATES

    if as_json:
        emit({"states": [s._asdict() for s in TCP_STATES]})
        return
    for s in TCP_STATES:
        click.echo(f"{s.state} ({s.side})\n" + wrap(s.entered_on, "  entered: ") + "\n" + wrap(s.left_by, "  left:    "))
