"""Commands that start and stop this tool's servers: start, kill, servers."""

from __future__ import annotations

import signal

import click

from addrinuse.cli.app import cli, emit
from addrinuse.cli.options import PortType, Seconds, host_option, json_option, public_option
from addrinuse.errors import EXIT_FAILED, BadInput

STOP_SIGNALS = ["TERM", "INT", "HUP", "QUIT", "KILL"]  # registry.STOP_SIGNALS, without importing it at start-up


def registry(ctx: click.Context):
    from addrinuse.registry import Registry

    return Registry(ctx.find_root().obj.get("state_dir"))


def report_problems(problems) -> None:
    for problem in problems:
        click.echo(f"addrinuse: warning: {problem.reason}", err=True)


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
