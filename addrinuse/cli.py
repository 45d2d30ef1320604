"""The command line: parse, call the library, render, and map errors to exit codes.
The only module that imports click. Library modules are imported inside commands so that a
command pays only for what it uses (psutil is not needed to probe a bind).

Exit codes: 0 ok; 1 failure (a command could not do its job); 2 bad input; 3 address in use;
4 timed out; 130 interrupted (after cleaning up)."""

from __future__ import annotations

import signal
import sys
import time

import click

from addrinuse import __version__
from addrinuse.errors import AddrinuseError, AddressInUse, BadInput, WaitTimeout

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_IN_USE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
STATE_NAMES = ("LISTEN", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2",
               "CLOSE_WAIT", "CLOSING", "LAST_ACK", "TIME_WAIT", "CLOSED")


def exit_code_for(err: AddrinuseError) -> int:
    if isinstance(err, BadInput):
        return EXIT_BAD_INPUT
    if isinstance(err, AddressInUse):
        return EXIT_IN_USE
    if isinstance(err, WaitTimeout):
        return EXIT_TIMEOUT
    return EXIT_FAILED


class AddrinuseGroup(click.Group):
    """Every error ends as one line on stderr with a documented exit code, never a traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except AddrinuseError as err:
            _fail(str(err), exit_code_for(err))
        except click.UsageError as err:
            hint = f" (see '{err.ctx.command_path} --help')" if err.ctx else ""
            _fail(err.format_message() + hint, EXIT_BAD_INPUT)
        except click.ClickException as err:
            _fail(err.format_message(), err.exit_code)
        except (click.Abort, KeyboardInterrupt):
            _fail("interrupted; everything this command started was stopped", EXIT_INTERRUPTED)
        except OSError as err:
            # Last resort for an OS error no layer translated: still one line, never a traceback.
            where = f": {err.filename}" if err.filename else ""
            _fail(f"{err.strerror or err}{where}", EXIT_FAILED)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


def _fail(message: str, code: int):
    click.echo(f"addrinuse: error: {message}", err=True)
    sys.exit(code)


def emit(data) -> None:
    import json

    click.echo(json.dumps(data))


class PortType(click.ParamType):
    name = "PORT"

    def __init__(self, allow_zero: bool = True):
        self.low = 0 if allow_zero else 1

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            port = value
        else:
            try:
                port = int(str(value), 10)
            except ValueError:
                self.fail(f"{value!r} is not a port number: use {self.low}-65535", param, ctx)
        if not self.low <= port <= 65535:
            extra = " (0 lets the kernel pick)" if self.low == 0 else ""
            self.fail(f"{port} is out of range: use {self.low}-65535{extra}", param, ctx)
        return port


class StateType(click.ParamType):
    name = "STATE"

    def convert(self, value, param, ctx):
        from addrinuse.conntable import normalize_states

        try:
            (state,) = normalize_states([value])
        except ValueError:
            self.fail(f"unknown state {value!r}: use one of {', '.join(STATE_NAMES)}", param, ctx)
        return state


def positive(what: str):
    def check(ctx, param, value):
        if value is not None and value <= 0:
            raise click.BadParameter(f"{value} is not positive: give {what} greater than 0", ctx, param)
        return value

    return check


def registry(ctx: click.Context):
    from addrinuse.registry import Registry

    return Registry(ctx.find_root().obj.get("state_dir"))


def report_problems(problems) -> None:
    for problem in problems:
        click.echo(f"addrinuse: warning: {problem.reason}", err=True)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
host_option = click.option("--host", default="127.0.0.1", show_default=True, help="Address to use.")
backend_option = click.option("--backend", type=click.Choice(["auto", "netlink", "psutil"]), default="auto",
                              show_default=True,
                              help="Connection-table source: netlink (Linux sock_diag, kernel timers) or psutil.")
def timeout_option(help_text: str):
    return click.option("--timeout", default=90.0, show_default=True, type=float, callback=positive("seconds"),
                        help=help_text)


def interval_option(help_text: str):
    return click.option("--interval", default=0.1, show_default=True, type=float, callback=positive("seconds"),
                        help=help_text)


public_option = click.option("--allow-public", is_flag=True,
                             help="Allow a non-loopback host (traffic then leaves loopback).")


@click.group(cls=AddrinuseGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="addrinuse")
@click.option("--state-dir", envvar="ADDRINUSE_STATE_DIR", type=click.Path(file_okay=False),
              help="Where server records live (default: $XDG_RUNTIME_DIR/addrinuse or /tmp/addrinuse-UID).")
@click.pass_context
def cli(ctx, state_dir):
    """Reproduce, observe and explain TCP "Address already in use" with real sockets.

    \b
    Example:
      addrinuse demo
    """
    ctx.obj = {"state_dir": state_dir}


@cli.command()
@host_option
@click.option("--port", type=PortType(), default=0, show_default=True, help="Port to listen on; 0 lets the kernel pick.")
@click.option("--reuseaddr/--no-reuseaddr", default=False, show_default=True, help="Set SO_REUSEADDR before bind().")
@click.option("--reuseport", is_flag=True, help="Set SO_REUSEPORT before bind().")
@click.option("--close", "close_policy", type=click.Choice(["server-first", "client-first", "never"]),
              default="server-first", show_default=True, help="Who closes each accepted connection first.")
@click.option("--linger0", is_flag=True, help="SO_LINGER {on, 0} on accepted sockets: close() sends RST, no TIME_WAIT.")
@click.option("--name", help="Name for the server record (default srv-PORT).")
@click.option("--foreground", is_flag=True, help="Serve in this process until Ctrl-C.")
@public_option
@json_option
@click.pass_context
def start(ctx, host, port, reuseaddr, reuseport, close_policy, linger0, name, foreground, allow_public, as_json):
    """Start a real server process that listens, accepts and follows a close policy.

    Returns once the server listens. Default: no SO_REUSEADDR, server closes first.

    \b
    Example:
      addrinuse start --port 8080 --close server-first
    """
    from addrinuse.control import run_foreground, start_server
    from addrinuse.server import ServerConfig
    from addrinuse.sockets import require_loopback

    require_loopback(host, allow_public)
    config = ServerConfig(host=host, port=port, close=close_policy, reuseaddr=reuseaddr,
                          reuseport=reuseport, linger0=linger0)
    reg = registry(ctx)

    def announce(record):
        if as_json:
            emit(record.to_dict())
        else:
            opts = (f"SO_REUSEADDR {'on' if record.reuseaddr else 'off'}, SO_REUSEPORT {'on' if record.reuseport else 'off'}"
                    + (", SO_LINGER 0" if record.linger0 else ""))
            click.echo(f"started {record.name} pid {record.pid} on {host}:{record.port} ({opts}, close={record.close})")
        if foreground:
            click.echo("serving in the foreground. Ctrl-C to end.", err=as_json)

    if foreground:
        run_foreground(reg, config, name, announce)
        click.echo("stopped; sockets closed", err=as_json)
    else:
        announce(start_server(reg, config, name))


@cli.command()
@host_option
@click.option("--port", type=PortType(allow_zero=False), required=True, help="Port the server listens on.")
@click.option("-n", "--count", default=1, show_default=True, type=int, callback=positive("a count"),
              help="How many connections to open.")
@click.option("--hold", is_flag=True, help="Keep the connections open until Ctrl-C (then the client closes first).")
@public_option
@json_option
def connect(host, port, count, hold, allow_public, as_json):
    """Open COUNT real client connections to a server.

    By default each sends a line, waits for the server's close (if it closes first) and closes.

    \b
    Example:
      addrinuse connect --port 8080 -n 23
    """
    from addrinuse.client import close_all, converse, open_connections
    from addrinuse.sockets import require_loopback

    require_loopback(host, allow_public)
    if hold:
        socks = open_connections(host, port, count)
        ports = [s.getsockname()[1] for s in socks]

        def announce():
            if as_json:
                emit({"host": host, "port": port, "count": count, "local_ports": ports, "holding": True})
            click.echo(f"holding {count} connections to {host}:{port} from ports {_ports(ports)}. Ctrl-C to end.",
                       err=as_json)

        try:
            _hold_until_interrupt(announce)
        finally:
            close_all(socks)
        click.echo(f"closed {count} connections (the client closed first)", err=as_json)
        return
    result = converse(host, port, count)
    if as_json:
        emit(result.to_dict())
        return
    click.echo(f"{count} connections to {host}:{port} from ports {_ports(result.local_ports)}")
    if result.policy == "server-first":
        click.echo(f"the server closed {result.server_closed_first} of {count} first: TIME_WAIT lands on port {port}")
    elif result.policy:
        click.echo(f"the server's policy is close={result.policy}: the client closed first")
    else:
        click.echo("the server is not an addrinuse server; the client closed after its answer")


def _ports(ports: list[int]) -> str:
    return ", ".join(map(str, ports[:10])) + (f" (+{len(ports) - 10} more)" if len(ports) > 10 else "")


def _hold_until_interrupt(announce) -> None:
    """Announce, then block until SIGINT/SIGTERM; both end the wait the same way. The announcement
    happens inside the guarded region: a Ctrl-C that follows it at once still ends cleanly."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        announce()
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


@cli.command()
@click.argument("name", required=False)
@click.option("--port", type=PortType(allow_zero=False), help="Stop the servers of this tool on this port.")
@click.option("--all", "everything", is_flag=True, help="Stop every server this tool started.")
@click.option("--signal", "sig", type=click.Choice(["TERM", "KILL", "INT"]), default="TERM", show_default=True)
@click.option("--timeout", default=5.0, show_default=True, type=float, callback=positive("seconds"),
              help="How long to wait for each server to exit.")
@json_option
@click.pass_context
def kill(ctx, name, port, everything, sig, timeout, as_json):
    """Stop servers this tool started (only those), then show the table for their ports.

    A record whose pid now belongs to another process is refused and removed, never signalled.

    \b
    Example:
      addrinuse kill srv-8080
    """
    from addrinuse.conntable import get_backend
    from addrinuse.control import stop_servers
    from addrinuse.render import table

    if sum(x is not None and x is not False for x in (name, port, everything)) > 1:
        raise BadInput("give only one of NAME, --port N or --all")
    report = stop_servers(registry(ctx), name, port, everything, getattr(signal, f"SIG{sig}"), timeout)
    report_problems(report.problems)
    source = get_backend("auto")
    try:
        tables = {p: source.snapshot(port=p) for p in report.ports}
    finally:
        source.close()
    if as_json:
        emit({"stopped": [o.to_dict() for o in report.stopped], "problems": [p.reason for p in report.problems],
              "table": {str(p): [e.to_dict() for e in es] for p, es in tables.items()}})
    else:
        for o in report.stopped:
            if o.exited:
                click.echo(f"stopped {o.record.name} (pid {o.record.pid}, SIG{sig}) in {o.waited_s * 1000:.0f} ms")
            else:
                click.echo(f"{o.record.name} (pid {o.record.pid}) still runs {timeout:g} s after SIG{sig}: try --signal KILL")
        if not report.stopped and not report.problems:
            click.echo("no servers to stop")
        for p, entries in tables.items():
            click.echo(f"\nport {p} now: " + ("nothing in the table" if not entries else f"{len(entries)} entries"))
            if entries:
                click.echo(table(entries, timers=source.has_timers))
    if any(not o.exited for o in report.stopped):
        ctx.exit(EXIT_FAILED)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def servers(ctx, as_json):
    """List the servers this tool started and that still run (stale records are cleaned).

    \b
    Example:
      addrinuse servers
    """
    records, problems = registry(ctx).load()
    report_problems(problems)
    if as_json:
        emit({"servers": [r.to_dict() for r in records]})
        return
    click.echo(f"{'NAME':<20} {'PID':>7}  {'ADDRESS':<22} {'REUSEADDR':<9} {'CLOSE':<12}")
    for r in records:
        click.echo(f"{r.name:<20} {r.pid:>7}  {r.host + ':' + str(r.port):<22} {'on' if r.reuseaddr else 'off':<9} {r.close:<12}")


@cli.command()
@host_option
@click.option("--port", type=PortType(allow_zero=False), required=True, help="Port to bind as a new server would.")
@click.option("--reuseaddr/--no-reuseaddr", default=False, show_default=True, help="Set SO_REUSEADDR first.")
@click.option("--reuseport", is_flag=True, help="Set SO_REUSEPORT first.")
@click.option("--wait", is_flag=True, help="Retry until the address can be bound; show an ETA from the kernel's timers.")
@timeout_option("With --wait: give up after this long (exit 4).")
@interval_option("With --wait: time between attempts.")
@backend_option
@json_option
@click.pass_context
def rebind(ctx, host, port, reuseaddr, reuseport, wait, timeout, interval, backend, as_json):
    """Bind AND listen as a new server would, then release at once.

    Exit 0 bound, 3 address in use, 4 timed out waiting.

    \b
    Example:
      addrinuse rebind --port 8080 --reuseaddr --wait --timeout 70
    """
    from addrinuse.render import probe as render_probe
    from addrinuse.sockets import SocketOptions, probe, resolve

    resolve(host)
    opts = SocketOptions(reuseaddr, reuseport)
    if wait:
        result, waited, eta = _wait_with_eta(host, port, opts, timeout, interval, backend, as_json)
    else:
        result, waited, eta = probe(host, port, opts), 0.0, None
    if as_json:
        emit({**result.to_dict(), "waited_s": round(waited, 3), "eta_s": None if eta is None else round(eta, 3)})
    else:
        click.echo(render_probe(result))
        if wait and result.ok and waited:
            click.echo(f"free after waiting {waited:.2f} s" + (f" (the kernel's timers said {eta:.1f} s)" if eta else ""))
        elif wait and not result.ok:
            click.echo(f"still in use after {waited:.1f} s (timeout)")
    if not result.ok:
        ctx.exit(EXIT_TIMEOUT if wait else EXIT_IN_USE if result.error == "EADDRINUSE" else EXIT_FAILED)


class _Countdown:
    """The ETA of a --wait: one line up front, and on a TTY a countdown rewritten in place."""

    def __init__(self, source, port: int, tty: bool):
        self.source, self.port, self.tty, self.shown = source, port, tty, 0.0

    def eta(self) -> float | None:
        from addrinuse.conntable import last_expiry

        return last_expiry(self.source.snapshot(self.port, ["TIME_WAIT", "FIN_WAIT2"], local=True))

    def __call__(self, result, waited: float) -> None:
        if not self.tty or result.ok or waited - self.shown < 0.25:
            return
        self.shown = waited
        left = self.eta()
        text = f"free in {left:.1f} s (kernel timer)" if left is not None else "no timer: waiting"
        click.echo(f"\r  waiting {waited:5.1f} s; {text}   ", nl=False, err=True)

    def close(self) -> None:
        if self.tty and self.shown:
            click.echo(err=True)
        self.source.close()


def _wait_with_eta(host, port, opts, timeout, interval, backend, as_json):
    """Wait until the address binds with these options, showing the kernel's ETA meanwhile.
    Returns (last probe, seconds waited, ETA or None). A free address costs one probe and no
    connection-table backend."""
    from addrinuse.sockets import probe, wait_until_bindable

    first = probe(host, port, opts)
    if first.ok:
        return first, 0.0, None
    eta, countdown = _eta_display(port, backend, as_json)
    try:
        result, waited = wait_until_bindable(host, port, opts, timeout, interval, countdown)
    finally:
        countdown.close()
    return result, waited, eta


def _eta_display(port: int, backend: str, as_json: bool):
    from addrinuse.conntable import get_backend

    countdown = _Countdown(get_backend(backend), port, sys.stderr.isatty() and not as_json)
    eta = countdown.eta()
    if not as_json:
        if eta is not None:
            click.echo(f"waiting for port {port}: its TIME_WAIT entries expire in {eta:.1f} s by the kernel's timers "
                       f"(the timer wheel may add up to ~2 s)", err=True)
        else:
            click.echo(f"waiting for port {port}: no kernel timer to go by (backend {countdown.source.name} or "
                       f"no TIME_WAIT entry)", err=True)
    return eta, countdown


@cli.command("table")
@click.option("--port", type=PortType(allow_zero=False), help="Only entries with this local or remote port.")
@click.option("--state", "states", type=StateType(), multiple=True, help="Only these states (repeatable).")
@backend_option
@json_option
def table_cmd(port, states, backend, as_json):
    """One snapshot of the TCP connection table, filtered.

    \b
    Example:
      addrinuse table --port 8080 --state TIME_WAIT
    """
    from addrinuse.conntable import get_backend
    from addrinuse.render import table

    source = get_backend(backend)
    try:
        entries = source.snapshot(port, states or None)
    finally:
        source.close()
    frees = _frees(entries, port)
    if as_json:
        emit({"port": port, "states": list(states) or None, "backend": source.name, "count": len(entries),
              "entries": [e.to_dict() for e in entries], **frees})
        return
    click.echo(table(entries, timers=source.has_timers))
    click.echo(f"{len(entries)} entries" + (f" on port {port}" if port else "") + f" ({source.name})")
    if frees.get("time_wait"):
        if frees["frees_in_s"] is None:
            click.echo(f"{frees['time_wait']} TIME_WAIT entries hold local port {port}; time left unknown with "
                       f"{source.name} (try --backend netlink)")
        else:
            click.echo(f"{frees['time_wait']} TIME_WAIT entries hold local port {port}: it frees in "
                       f"{frees['frees_in_s']:.1f} s, at {frees['frees_at']} (the timer wheel may add ~2 s)")


def _frees(entries, port) -> dict:
    """When a port's local TIME_WAIT entries let it go, by the kernel's timers."""
    from addrinuse.conntable import last_expiry

    if port is None:
        return {}
    held = [e for e in entries if e.lport == port and e.state == "TIME_WAIT"]
    left = last_expiry(held)
    at = None if left is None else time.strftime("%H:%M:%S", time.localtime(time.time() + left))
    return {"time_wait": len(held), "frees_in_s": None if left is None else round(left, 3), "frees_at": at}


@cli.command()
@click.option("--port", type=PortType(allow_zero=False), help="Only entries with this local or remote port.")
@click.option("--state", "states", type=StateType(), multiple=True, help="Only these states (repeatable).")
@click.option("--interval", default=0.1, show_default=True, type=float, callback=positive("seconds"),
              help="Seconds between polls.")
@click.option("--duration", type=float, callback=positive("seconds"), help="Stop after this many seconds.")
@click.option("--until-empty", is_flag=True, help="Stop once no matching entry is left.")
@backend_option
@json_option
def watch(port, states, interval, duration, until_empty, backend, as_json):
    """Poll the table and print entries as they appear, change state and vanish.

    Ends with a summary: entries per state and min/median/max lifetime. Ctrl-C ends it (exit 0).

    \b
    Example:
      addrinuse watch --port 8080 --state TIME_WAIT --until-empty
    """
    from addrinuse.conntable import get_backend
    from addrinuse.render import event as render_event, summary as render_summary
    from addrinuse.tracker import Tracker

    source = get_backend(backend)
    what = f"port {port}" if port else "all ports"
    tracker = Tracker()
    began = time.monotonic()
    try:
        # The start line follows the first snapshot: from then on, every change is seen.
        entries = source.snapshot(port, states or None)
        click.echo(f"Watching TCP entries on {what} (states: {', '.join(states) or 'all'}) every {interval:g} s "
                   f"with {source.name}. Ctrl-C to end.", err=as_json)
        while True:
            now = time.monotonic() - began
            for ev in tracker.update(entries, now):
                emit(ev.to_dict()) if as_json else click.echo(render_event(ev.to_dict()))
            if (until_empty and tracker.live == 0) or (duration and now >= duration):
                break
            time.sleep(interval)
            entries = source.snapshot(port, states or None)
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
    from addrinuse.tcpstates import TCP_STATES

    if as_json:
        emit({"states": [s._asdict() for s in TCP_STATES]})
        return
    for s in TCP_STATES:
        click.echo(f"{s.state} ({s.side})\n  entered: {s.entered_on}\n  left:    {s.left_by}")


@cli.command()
@host_option
@click.option("--clients", default=5, show_default=True, type=int, callback=positive("a count"),
              help="Client connections to make.")
@json_option
@click.pass_context
def demo(ctx, host, clients, as_json):
    """The canonical reproduction: server closes first, is killed, and the restart fails.

    Every line comes from what happened on this machine's kernel.

    \b
    Example:
      addrinuse demo
    """
    from addrinuse.demo import run_demo
    from addrinuse.sockets import require_loopback

    require_loopback(host, False)

    def show(step):
        if not as_json:
            click.echo(f"{step.title}\n" + "\n".join(f"   {line}" for line in step.lines))

    result = run_demo(registry(ctx), host, clients, show)
    if as_json:
        emit(result.to_dict())
    elif result.reproduced:
        click.echo("reproduced: EADDRINUSE with the old socket closed, caused by its TIME_WAIT entries")
    else:
        click.echo("NOT reproduced: see the steps above for what this kernel did instead")
    if not result.reproduced:
        ctx.exit(EXIT_FAILED)


as_option = click.option("--as", "mode", type=click.Choice(["plain", "reuseaddr", "reuseport"]), default="plain",
                         show_default=True, help="How your server binds: plain, with SO_REUSEADDR, or SO_REUSEPORT.")


@cli.command()
@click.argument("port", type=PortType(allow_zero=False))
@host_option
@as_option
@backend_option
@json_option
@click.pass_context
def why(ctx, port, host, mode, backend, as_json):
    """Why PORT cannot be bound, and the fix (exit 0 free, 3 blocked).

    Probes bind+listen plain, with SO_REUSEADDR and with SO_REUSEPORT; lists the listeners (pid,
    name, command line, user), the entries the kernel still holds and when they expire, any
    dual-stack overlap, and whether the port lies in ip_local_port_range.

    \b
    Example:
      addrinuse why 8080 --as reuseaddr
    """
    from addrinuse.diagnose import diagnose
    from addrinuse.render import diagnosis

    d = diagnose(port, host, mode, backend)
    if as_json:
        emit(d.to_dict())
    else:
        click.echo(diagnosis(d))
    if not d.free:
        ctx.exit(EXIT_IN_USE)


@cli.command()
@click.argument("port", type=PortType(allow_zero=False))
@host_option
@as_option
@timeout_option("Give up after this long (exit 4).")
@interval_option("Time between attempts.")
@backend_option
@json_option
@click.pass_context
def wait(ctx, port, host, mode, timeout, interval, backend, as_json):
    """Block until PORT can be bound the way your server binds it (exit 0 free, 4 timed out).

    For CI scripts before a restart; a countdown from the kernel's timers shows on a TTY.

    \b
    Example:
      addrinuse wait 8080 --as plain --timeout 70 && ./start-server
    """
    from addrinuse.diagnose import MODES, diagnose
    from addrinuse.sockets import resolve

    resolve(host)
    result, waited, eta = _wait_with_eta(host, port, MODES[mode], timeout, interval, backend, as_json)
    blocking = None if result.ok else diagnose(port, host, mode, backend).verdict
    if as_json:
        emit({"port": port, "host": host, "as": mode, "free": result.ok, "waited_s": round(waited, 3),
              "eta_s": eta, "blocking": blocking})
    elif result.ok:
        click.echo(f"port {port} is free for {mode} after {waited:.2f} s")
    else:
        click.echo(f"port {port} still blocked after {waited:.1f} s: {blocking}")
    if not result.ok:
        ctx.exit(EXIT_TIMEOUT)


@cli.command()
@click.argument("port", type=PortType(allow_zero=False))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def clear(port, yes, as_json):
    """Destroy PORT's TIME_WAIT (and orphaned FIN_WAIT2) entries with SOCK_DESTROY, as ss -K does.

    Touches no other state and no other port. Needs root and CONFIG_INET_DIAG_DESTROY; a refusal
    by the kernel is an error (exit 1), never silent.

    \b
    Example:
      addrinuse clear 8080 --yes
    """
    from addrinuse.conntable import get_backend
    from addrinuse.destroy import clear as destroy_entries, clearable

    backend = get_backend("netlink")
    try:
        targets = clearable(backend.snapshot(port, ["TIME_WAIT", "FIN_WAIT2"], local=True), port)
        if targets and not yes:
            if not sys.stdin.isatty():
                raise BadInput(f"{len(targets)} entries would be destroyed but stdin is not a terminal: pass --yes")
            states = ", ".join(f"{sum(e.state == s for e in targets)} {s}" for s in ("TIME_WAIT", "FIN_WAIT2")
                               if any(e.state == s for e in targets))
            click.confirm(f"destroy {states} entries of local port {port}?", abort=True)
        report = destroy_entries(backend, targets, port)
        left = clearable(backend.snapshot(port, ["TIME_WAIT", "FIN_WAIT2"], local=True), port)
    finally:
        backend.close()
    if as_json:
        emit({"port": port, "destroyed": report.destroyed, "total": report.total,
              "already_gone": report.already_gone, "left": len(left)})
        return
    if not targets:
        click.echo(f"nothing to clear: no TIME_WAIT or orphaned FIN_WAIT2 entry holds local port {port}")
        return
    detail = ", ".join(f"{n} {s}" for s, n in report.destroyed.items()) or "none"
    gone = f"; {report.already_gone} had expired meanwhile" if report.already_gone else ""
    click.echo(f"destroyed {report.total} entries of local port {port} ({detail}){gone}; {len(left)} left")


@cli.group()
def experiment():
    """Scenario files that reproduce each cause of "Address already in use".

    \b
    Example:
      addrinuse experiment run --all
    """


@experiment.command("list")
@json_option
def experiment_list(as_json):
    """List the experiments with their purpose.

    \b
    Example:
      addrinuse experiment list
    """
    from addrinuse.experiments import catalogue

    found = catalogue()
    if as_json:
        emit({"experiments": [{"name": s.name, "purpose": s.purpose, "slow": s.slow, "path": str(s.path)} for s in found]})
        return
    for s in found:
        click.echo(f"{s.name:<28} {s.purpose}" + (" (slow)" if s.slow else ""))


@experiment.command("show")
@click.argument("name")
def experiment_show(name):
    """Show an experiment's steps and expectations, explained.

    \b
    Example:
      addrinuse experiment show reuseaddr-matrix
    """
    from addrinuse.experiments import find

    s = find(name)
    click.echo(f"{s.name}: {s.purpose}\nfile: {s.path}\n\nsteps:")
    for step in s.steps:
        params = ", ".join(f"{k}={v}" for k, v in step.params.items() if v not in (None, False, [], ""))
        click.echo(f"  {step.id:<18} {step.do:<14} {params}")
    click.echo("expectations:")
    for e in s.expect:
        click.echo(f"  {e.step:<18} {e.what}: " + ", ".join(f"{k} = {v}" for k, v in e.checks.items()))
    import textwrap

    click.echo("\n" + "\n".join(textwrap.wrap(" ".join(s.explain.split()), 78, initial_indent="why: ",
                                             subsequent_indent="     ")))


@experiment.command("run")
@click.argument("targets", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Run every experiment in the catalogue.")
@click.option("--slow", is_flag=True, help="With --all: include the slow ones (time-wait-lifetime, ~62 s).")
@backend_option
@json_option
@click.pass_context
def experiment_run(ctx, targets, everything, slow, backend, as_json):
    """Run experiments by name or path; check expected against observed.

    Exit 0 when every expectation held, 1 when any differed, 2 for an invalid file.

    \b
    Example:
      addrinuse experiment run restart-after-server-close my-incident.toml
    """
    from addrinuse.experiments import catalogue, find, run
    from addrinuse.render import experiment_report, experiment_step

    if everything == bool(targets):
        raise BadInput("name experiments (or .toml paths), or pass --all")
    scenarios = [s for s in catalogue() if slow or not s.slow] if everything else [find(t) for t in targets]
    reports = []
    for s in scenarios:
        if not as_json:
            click.echo(f"== {s.name}: {s.purpose}")
        report = run(s, backend, None if as_json else lambda row: click.echo(experiment_step(row))).to_dict()
        reports.append(report)
        if not as_json:
            click.echo(experiment_report(report) + "\n")
    passed = all(r["passed"] or r["skipped"] for r in reports)
    if as_json:
        emit(reports[0] if len(reports) == 1 else {"passed": passed, "experiments": reports})
    elif len(reports) > 1:
        done = sum(r["passed"] for r in reports)
        skipped = [r["name"] for r in reports if r["skipped"]]
        click.echo(f"{done} passed, {len(reports) - done - len(skipped)} failed" + (f", {len(skipped)} skipped" if skipped else ""))
    if not passed:
        ctx.exit(EXIT_FAILED)


def main() -> None:
    cli(prog_name="addrinuse")
