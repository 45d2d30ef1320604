"""Commands that make real connections: connect, demo."""

from __future__ import annotations

import signal

import click

from addrinuse.cli.app import cli, emit
from addrinuse.cli.options import PortType, clients_option, host_option, json_option, public_option
from addrinuse.errors import EXIT_FAILED


def ports_text(ports: list[int]) -> str:
    """At most a line's worth of ports (all of them are in --json)."""
    return ", ".join(map(str, ports[:8])) + (f" (+{len(ports) - 8} more)" if len(ports) > 8 else "")


def hold_until_interrupt(announce) -> None:
    """Announce, then block until SIGINT, SIGTERM or SIGHUP, which end the wait normally. The
    announcement happens inside the guarded region: a signal right after it still ends cleanly."""
    try:
        announce()
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass


@cli.command()
@click.argument("port", type=PortType(allow_zero=False))
@host_option
@clients_option()
@click.option("--hold", is_flag=True, help="Keep the connections open until Ctrl-C (then the client closes first).")
@public_option
@json_option
def connect(port, host, clients, hold, allow_public, as_json):
    """Open real client connections to the server on PORT.

    By default each sends a line, waits for the server's close (if it closes first) and closes.

    \b
    Example:
      addrinuse connect 8080 -n 23
    """
    from addrinuse.client import close_all, converse, open_connections
    from addrinuse.sockets import require_loopback

    require_loopback(host, allow_public)
    if hold:
        socks = open_connections(host, port, clients)
        ports = [s.getsockname()[1] for s in socks]

        def announce():
            if as_json:
                emit({"host": host, "port": port, "clients": clients, "local_ports": ports, "holding": True})
            if not as_json:
                from addrinuse.render import wrap

                click.echo(wrap(f"local ports {ports_text(ports)}", "", "  "))
            click.echo(f"holding {clients} connections to {host}:{port}. Ctrl-C to end.", err=as_json)

        try:
            hold_until_interrupt(announce)
        finally:
            close_all(socks)
        click.echo(f"closed {clients} connections (the client closed first)", err=as_json)
        return
    result = converse(host, port, clients)
    if as_json:
        emit(result.to_dict())
        return
    from addrinuse.render import wrap

    click.echo(wrap(f"{clients} connections to {host}:{port}, local ports {ports_text(result.local_ports)}", "", "  "))
    if result.policy == "server-first":
        click.echo(f"the server closed {result.server_closed_first} of {clients} first: TIME_WAIT lands on port {port}")
    elif result.policy:
        click.echo(f"the server's policy is close={result.policy}: the client closed first")
    elif result.server_closed_first:
        click.echo(wrap(f"the server (not an addrinuse server) closed {result.server_closed_first} of {clients} "
                        f"first after answering: TIME_WAIT lands on port {port}", "", "  "))
    else:
        click.echo("the server is not an addrinuse server; the client closed first, after its answer")


@cli.command()
@host_option
@clients_option(default=5)
@click.option("--report", "report_dir", type=click.Path(file_okay=False),
              help="Also write report.html and one SVG per figure into this directory (created if missing): "
                   "the count of the demo port's entries over time, expected vs observed.")
@json_option
@click.pass_context
def demo(ctx, host, clients, report_dir, as_json):
    """The canonical reproduction: server closes first, is killed, and the restart fails.

    Every line comes from what happened on this machine's kernel. Loopback only.

    \b
    Example:
      addrinuse demo
      addrinuse demo --report out/
    """
    import time

    from addrinuse.demo import run_demo
    from addrinuse.sockets import require_loopback

    require_loopback(host, False, hint="demo runs on loopback only: use 127.0.0.1 or ::1")
    counts = None
    if report_dir:
        from addrinuse.experiments.report import check_report_dir
        from addrinuse.figures import CountRecorder

        check_report_dir(report_dir)  # a bad path is refused before anything runs (exit 2)
        counts = CountRecorder()

    def show(step):
        if not as_json:
            from addrinuse.render import wrap

            click.echo(f"{step.title}\n" + "\n".join(f"   {line}" if len(line) <= 77 else wrap(line, "   ", "     ")
                                                   for line in step.lines))

    from addrinuse.registry import MemoryRegistry

    # In memory: the demo's servers are tied to this process (they die with it, SIGKILL included)
    # and nothing touches the disk; the with-block ends any that a failure left running.
    began = time.monotonic()
    with MemoryRegistry() as reg:
        result = run_demo(reg, host, clients, show, counts=counts)
    duration = time.monotonic() - began
    if report_dir:
        _demo_report(report_dir, result, counts, duration)
    if as_json:
        emit(result.to_dict())
    elif result.reproduced:
        click.echo("reproduced: EADDRINUSE with the old socket closed, caused by TIME_WAIT entries")
    else:
        click.echo("NOT reproduced: see the steps above for what this kernel did instead")
    if not result.reproduced:
        ctx.exit(EXIT_FAILED)


def _demo_report(report_dir: str, result, counts, duration_s: float) -> None:
    from addrinuse.figures import demo_report, write_report

    counts.port = result.port
    counts.title = (f"demo: {result.clients} connections to port {result.port}, the server closes first; "
                    f"TIME_WAIT holds the port")
    figure = {"kind": "counts", **counts.to_dict()}
    files = write_report(report_dir, [demo_report(result.to_dict(), duration_s, figures=[figure])],
                         title="addrinuse demo")
    from addrinuse.render import fit

    # The path on a line of its own when the whole does not fit: a path is never broken.
    click.echo(fit(f"report ({len(files.figures)} figures, {files.total_bytes / 1024:.0f} kB):", str(files.report),
                   indent=2), err=True)
