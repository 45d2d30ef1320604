"""Commands that start and stop real processes: start, connect, kill, servers, demo."""

from __future__ import annotations

import signal

import click

from addrinuse.cli.app import cli, emit
from addrinuse.cli.options import PortType, Seconds, clients_option, host_option, json_option, public_option
from addrinuse.errors import EXIT_FAILED, BadInput

STOP_SIGNALS = ["TERM", "INT", "HUP", "QUIT", "KILL"]  # registry.STOP_SIGNALS, without importing it at start-up


def registry(ctx: click.Context):
    from addrinuse.registry import Registry

    return Registry(ctx.find_root().obj.get("state_dir"))


def report_problems(problems) -> None:
    for problem in problems:
        click.echo(f"addrinuse: warning: {problem.reason}", err=True)


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


BUILTIN_ONLY = ("reuseaddr", "reuseport", "close_policy", "linger0", "foreground")


@cli.command(context_settings={"allow_interspersed_args": False})
@host_option
@click.option("--port", type=PortType(), default=0, show_default=True,
              help="Port to listen on; 0 lets the kernel pick (for a command: a free port fills {port}).")
@click.option("--reuseaddr/--no-reuseaddr", default=False, show_default=True, help="Set SO_REUSEADDR before bind().")
@click.option("--reuseport", is_flag=True, help="Set SO_REUSEPORT before bind().")
@click.option("--close", "close_policy", type=click.Choice(["server-first", "client-first", "never"]),
              default="server-first", show_default=True, help="Who closes each accepted connection first.")
@click.option("--linger0", is_flag=True, help="SO_LINGER {on, 0} on accepted sockets: close() sends RST, no TIME_WAIT.")
@click.option("--name", help="Name for the server record (default srv-PORT): letters, digits, '.', '_', '-'.")
@click.option("--foreground", is_flag=True, help="Serve in this process until Ctrl-C.")
@click.option("--stop-signal", type=click.Choice(STOP_SIGNALS), default="TERM", show_default=True,
              help="The signal 'addrinuse kill' sends this server unless told otherwise.")
@public_option
@json_option
@click.argument("command", nargs=-1, metavar="[-- CMD ARGS...]")
@click.pass_context
def start(ctx, host, port, reuseaddr, reuseport, close_policy, linger0, name, foreground, stop_signal, allow_public,
          as_json, command):
    """Start a real server process that listens, accepts and follows a close policy.

    Returns once the server listens and is recorded. Default: no SO_REUSEADDR, server closes first.
    After `--`, your own server instead: its argv with {port} where the port goes; it is ready when
    the connection table shows it listening on --host and the port, and recorded like the built-in one.

    \b
    Example:
      addrinuse start --port 8080 --close server-first
      addrinuse start --name web -- python3 -m http.server {port} --bind 127.0.0.1
    """
    from addrinuse.control import run_foreground, start_server
    from addrinuse.server import ServerConfig
    from addrinuse.sockets import require_loopback

    require_loopback(host, allow_public)
    if command:
        given = [p for p in BUILTIN_ONLY if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise BadInput(f"--{given[0].replace('_policy', '').replace('_', '-')} applies to the built-in server only: "
                           f"set it in your command instead")
    config = ServerConfig(host=host, port=port, close=close_policy, reuseaddr=reuseaddr,
                          reuseport=reuseport, linger0=linger0, command=tuple(command) or None, stop_signal=stop_signal)
    reg = registry(ctx)

    def announce(record):
        if as_json:
            emit(record.to_dict())
        else:
            from addrinuse.render import fit, wrap

            if record.command:
                detail = f"({' '.join(record.command)}; stop signal {record.stop_signal})"
            else:
                detail = (f"(SO_REUSEADDR {'on' if record.reuseaddr else 'off'}, SO_REUSEPORT "
                          f"{'on' if record.reuseport else 'off'}" + (", SO_LINGER 0" if record.linger0 else "")
                          + f", close={record.close})")
            click.echo(fit(f"started {record.name}", f"pid {record.pid} on {host}:{record.port}", indent=2))
            click.echo(wrap(detail, "  "))
        if foreground:
            click.echo("serving in the foreground. Ctrl-C to end.", err=as_json)

    if foreground:
        run_foreground(reg, config, name, announce)
        click.echo("stopped; sockets closed", err=as_json)
    else:
        announce(start_server(reg, config, name))


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
    else:
        click.echo("the server is not an addrinuse server; the client closed after its answer")


@cli.command()
@click.argument("name", required=False)
@click.option("--port", type=PortType(allow_zero=False), help="Stop this tool's servers on this port.")
@click.option("--all", "everything", is_flag=True, help="Stop every server this tool started.")
@click.option("--signal", "sig", type=click.Choice(STOP_SIGNALS),
              help="The signal to send: TERM (graceful), INT, HUP, QUIT, or KILL (no cleanup by the server). "
                   "Default: the server's stop signal (TERM unless 'start --stop-signal' said otherwise).")
@click.option("--timeout", type=Seconds(0, 3600), default=5.0, show_default=True,
              help="How long to wait for each server to exit. 0 does not wait.")
@json_option
@click.pass_context
def kill(ctx, name, port, everything, sig, timeout, as_json):
    """Stop servers this tool started (only those), then show what they left in the table.

    A record whose pid now belongs to another process is refused and removed, never signalled.

    \b
    Example:
      addrinuse kill srv-8080
    """
    from addrinuse.conntable import get_backend
    from addrinuse.control import stop_servers
    from addrinuse.render.tables import table

    if sum(x is not None and x is not False for x in (name, port, everything)) > 1:
        raise BadInput("give only one of NAME, --port N or --all")
    report = stop_servers(registry(ctx), name, port, everything, getattr(signal, f"SIG{sig}") if sig else None, timeout)
    report_problems(report.problems)
    source = get_backend("auto")
    try:
        # Only what the stopped servers left: entries whose local address:port was theirs.
        left = {o.record.name: [e for e in source.snapshot(o.record.port, local=True) if o.owns(e)]
                for o in report.stopped}
    finally:
        source.close()
    if as_json:
        emit({"stopped": [{**o.to_dict(), "entries": [e.to_dict() for e in left[o.record.name]]}
                          for o in report.stopped],
              "problems": [p.reason for p in report.problems]})
    else:
        from addrinuse.render import wrap

        for o in report.stopped:
            if o.exited:
                click.echo(wrap(f"stopped {o.record.name} (pid {o.record.pid}, SIG{o.signal}) in "
                                f"{o.waited_s * 1000:.0f} ms", "", "  "))
            else:
                click.echo(wrap(f"{o.record.name} (pid {o.record.pid}) still runs {timeout:g} s after SIG{o.signal}: "
                                f"try --signal KILL", "", "  "))
            entries = left[o.record.name]
            click.echo(f"  it left {len(entries)} entries on {o.record.host}:{o.record.port}" + (":" if entries else ""))
            if entries:
                click.echo(table(entries, timers=source.has_timers))
        if not report.stopped and not report.problems:
            click.echo("no servers to stop")
    if any(not o.exited for o in report.stopped):
        ctx.exit(EXIT_FAILED)


@cli.command()
@click.option("--prune", is_flag=True, help="Remove corrupt and stale records (never a file this tool did not write).")
@json_option
@click.pass_context
def servers(ctx, prune, as_json):
    """List the servers this tool started that still run (stale records are reported and removed).

    A corrupt record is reported and kept until --prune; a file the tool did not write is left alone.

    \b
    Example:
      addrinuse servers
      addrinuse servers --prune
    """
    reg = registry(ctx)
    pruned = reg.prune() if prune else []
    for problem in pruned:
        click.echo(f"addrinuse: pruned {problem.path}", err=True)
    records, problems = reg.load()
    report_problems(problems)
    if as_json:
        emit({"servers": [r.to_dict() for r in records], "problems": [p.reason for p in problems],
              "pruned": [p.path for p in pruned]})
        return
    click.echo(f"{'NAME':<20} {'PID':>7}  {'ADDRESS':<24} {'REUSEADDR':<9} {'CLOSE':<12}")
    for r in records:
        address = f"[{r.host}]:{r.port}" if ":" in r.host else f"{r.host}:{r.port}"
        close = r.close or "(command)"
        click.echo(f"{r.name[:20]:<20} {r.pid:>7}  {address:<24} {'on' if r.reuseaddr else 'off':<9} {close:<12}")


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
