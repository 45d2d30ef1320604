"""Commands that read the connection table: table, watch, states."""

from __future__ import annotations

import sys
import time

import click

from addrinuse.cli.app import cli, emit
from addrinuse.cli.options import Seconds, backend_option, interval_option, json_option, port_filter_option, states_option

host_filter_option = click.option("--host", default=None,
                                  help="Only entries with this local or remote address (default: any).")


def _filtered(source, port, host, states):
    """One snapshot; port, host and states are all chosen by the kernel (netlink) in one walk."""
    return source.snapshot(port, states or None, host=host)


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

        click.echo(f"local port {port} frees {estimate_text(estimate)}")


@cli.command()
@port_filter_option
@host_filter_option
@states_option
@interval_option()
@click.option("--duration", type=Seconds(0, 7 * 86_400, low_inclusive=False), help="Stop after this many seconds.")
@click.option("--until-empty", is_flag=True, help="Stop once no matching entry is left.")
@backend_option
@json_option
def watch(port, host, states, interval, duration, until_empty, backend, as_json):
    """Poll the table and print entries as they appear, change state and vanish.

    Ends with a summary: entries per state and min/median/max lifetime. Ctrl-C ends it (exit 0).

    \b
    Example:
      addrinuse watch --port 8080 --state TIME_WAIT --until-empty
    """
    from addrinuse.conntable import get_backend
    from addrinuse.render.tables import EVENT_HEADER, event as render_event, summary as render_summary
    from addrinuse.tracker import Tracker

    address = _numeric(host)
    source = get_backend(backend, cache_owners=True)
    what = (f"port {port}" if port else "all ports") + (f" of {host}" if host else "")
    tracker = Tracker()
    began = time.monotonic()
    try:
        # The start line follows the first snapshot: from then on, every change is seen.
        entries = _filtered(source, port, address, states)
        click.echo(f"Watching TCP entries on {what} (states: {', '.join(states) or 'all'}) every {interval:g} s "
                   f"with {source.name}. Ctrl-C to end.", err=as_json)
        if not as_json:
            click.echo(EVENT_HEADER)
        polls = 0
        while True:
            now = time.monotonic() - began
            for ev in tracker.update(entries, now):
                emit(ev.to_dict()) if as_json else click.echo(render_event(ev.to_dict()))
            if (until_empty and tracker.live == 0) or (duration and now >= duration):
                break
            # The period is held: poll k is due at began + k * interval, whatever a poll cost; a
            # poll that overran is not made up for by a burst.
            polls += 1
            due = began + polls * interval
            if duration:
                due = min(due, began + duration)
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                polls = int((time.monotonic() - began) / interval)
            entries = _filtered(source, port, address, states)
    except KeyboardInterrupt:
        pass
    finally:
        source.close()
    data = tracker.summary(time.monotonic() - began)
    emit(data) if as_json else click.echo(render_summary(data))


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
