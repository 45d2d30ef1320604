"""Commands about one port that will not bind: rebind, why, wait, clear."""

from __future__ import annotations

import sys

import click

from addrinuse.cli.app import cli, emit
from addrinuse.cli.options import PortType, as_option, backend_option, host_option, interval_option, json_option, timeout_option
from addrinuse.errors import EXIT_FAILED, EXIT_IN_USE, EXIT_TIMEOUT, BadInput

port_argument = click.argument("port", type=PortType(allow_zero=False))
v6only_option = click.option("--v6only/--dual-stack", "v6only", default=None,
                             help="For an IPv6 --host: the server sets IPV6_V6ONLY, or not "
                                  "(default: the kernel's, net.ipv6.bindv6only).")


def records(ctx: click.Context):
    """The servers this tool started (from the state dir), to name them in a verdict."""
    from addrinuse.registry import Registry

    return Registry(ctx.find_root().obj.get("state_dir")).load()[0]


@cli.command()
@port_argument
@host_option
@as_option
@json_option
@click.pass_context
def rebind(ctx, port, host, bind_as, as_json):
    """Bind AND listen on PORT as a new server would, then release at once.

    Exit 0 bound, 3 address in use, 1 another error. To wait until it binds: addrinuse wait.

    \b
    Example:
      addrinuse rebind 8080 --as reuseaddr
    """
    from addrinuse.diagnose import MODES
    from addrinuse.render.tables import probe as render_probe
    from addrinuse.sockets import probe, resolve

    resolve(host)
    result = probe(host, port, MODES[bind_as])
    if as_json:
        emit({"host": host, "port": port, "as": bind_as, "free": result.ok, "probe": result.to_dict()})
    else:
        click.echo(render_probe(result))
    if not result.ok:
        ctx.exit(EXIT_IN_USE if result.error == "EADDRINUSE" else EXIT_FAILED)


@cli.command()
@port_argument
@host_option
@as_option
@v6only_option
@backend_option
@json_option
@click.pass_context
def why(ctx, port, host, bind_as, v6only, backend, as_json):
    """Why PORT cannot be bound, when it frees, and the fix (exit 0 free, 3 blocked).

    The verdict's first sentence gives both answers, a plain bind and one with SO_REUSEADDR; the exit
    code is for --as (plain by default). Lists the listeners in the way and those that are not
    (every pid, name, command line, user), which end left each kernel-held entry and when the port
    frees (exact, upper bound or unknown), any dual-stack overlap, whether the port lies in
    ip_local_port_range, and whether connect() to it has run out of local ports.

    \b
    Example:
      addrinuse why 8080 --as reuseaddr
    """
    from addrinuse.diagnose import diagnose
    from addrinuse.render.diagnosis import diagnosis

    d = diagnose(port, host, bind_as, backend, records=records(ctx), v6only=v6only)
    if as_json:
        emit(d.to_dict())
    else:
        click.echo(diagnosis(d))
    if not d.free:
        ctx.exit(EXIT_IN_USE)


@cli.command()
@port_argument
@host_option
@as_option
@timeout_option("Give up after this long (exit 4).")
@interval_option("Seconds between bind attempts.")
@backend_option
@json_option
@click.pass_context
def wait(ctx, port, host, bind_as, timeout, interval, backend, as_json):
    """Block until PORT can be bound the way your server binds it (exit 0 free, 4 timed out).

    For CI scripts before a restart; on a terminal a countdown from the kernel's timers.

    \b
    Example:
      addrinuse wait 8080 --as plain --timeout 70 && ./start-server
    """
    from addrinuse.cli.progress import Countdown
    from addrinuse.diagnose import MODES, diagnose, port_estimate
    from addrinuse.render import wrap
    from addrinuse.render.tables import estimate_text
    from addrinuse.sockets import probe, resolve, wait_until_bindable

    resolve(host)
    opts = MODES[bind_as]
    first = probe(host, port, opts)
    estimate = None
    waited = 0.0
    result = first
    if not first.ok:
        estimate = port_estimate(port, host, backend, bind_as)
        if not as_json:
            click.echo(wrap(f"waiting for port {port}: frees {estimate_text(estimate)}", "", "  "), err=True)
        with Countdown(None if not as_json else False) as countdown:
            result, waited = wait_until_bindable(
                host, port, opts, timeout, interval,
                lambda r, w: countdown(f"waited {w:.1f} s of {timeout:g}; {_left(estimate, w)}"))
    blocking = None if result.ok else diagnose(port, host, bind_as, backend, records=records(ctx))
    if as_json:
        emit({"host": host, "port": port, "as": bind_as, "free": result.ok, "waited_s": round(waited, 3),
              "free_in": estimate.to_dict() if estimate else None,
              "blocking": blocking.verdict if blocking else None})
    elif result.ok:
        click.echo(f"port {port} is free for {bind_as} after {waited:.2f} s")
    else:
        click.echo(wrap(f"port {port} still blocked after {waited:.1f} s: {blocking.verdict}", "", "  "))
    if not result.ok:
        ctx.exit(EXIT_TIMEOUT)


def _left(estimate, waited: float) -> str:
    """The countdown's short form of the estimate, counted from now."""
    kind = estimate.kind.replace("_", " ")
    if estimate.max_s is None:
        return f"frees when released ({kind})"
    low = max(0.0, (estimate.min_s or 0.0) - waited)
    return f"frees in {low:.1f}-{max(0.0, estimate.max_s - waited):.1f} s ({kind})"


def conflicts_with_bind(address: str, v6only: bool):
    """Whether an entry's local address is in the way of a bind to `address` (the kernel's rule,
    inet_rcv_saddr_equal(); measured on 6.18): the same address (::ffff:a.b.c.d is a.b.c.d);
    0.0.0.0 covers every IPv4 address, IPv4-mapped included; :: covers every IPv6 address and,
    unless the server sets IPV6_V6ONLY, every IPv4 one too (plain or mapped)."""
    from addrinuse.conntable.match import same_address

    v6_only_wildcard = v6only and address == "::"

    def test(entry) -> bool:
        if v6_only_wildcard and (entry.family == 4 or entry.laddr.lower().startswith("::ffff:")):
            return False
        return same_address(address, entry.laddr)

    return test


@cli.command()
@port_argument
@host_option
@v6only_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_context
def clear(ctx, port, host, v6only, yes, as_json):
    """Destroy the TIME_WAIT entries in the way of your server's bind to --host:PORT.

    Uses SOCK_DESTROY, as ss -K does, on TIME_WAIT and orphaned FIN_WAIT2 entries. --host is the
    address your server binds: only entries in the way of that bind are destroyed (the same address; for 0.0.0.0 every IPv4 address, for :: every IPv6 address and, unless
    --v6only, every IPv4 one). Touches no other state, address or port. Needs root and
    CONFIG_INET_DIAG_DESTROY; a refusal by the kernel is an error (exit 1), never silent.
    Answering no clears nothing (exit 1).

    \b
    Example:
      addrinuse clear 8080 --host 0.0.0.0 --yes
    """
    import socket

    from addrinuse.conntable import get_backend
    from addrinuse.diagnose.conflict import default_v6only
    from addrinuse.destroy import clear as destroy_entries, clearable
    from addrinuse.sockets import resolve

    family, address = resolve(host)
    if v6only is None:  # as the server's socket gets it: the kernel's net.ipv6.bindv6only
        v6only = family == socket.AF_INET6 and default_v6only()
    in_the_way = conflicts_with_bind(address, v6only)
    where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"

    def targets_now():
        found = clearable(backend.snapshot(port, ["TIME_WAIT", "FIN_WAIT2"], local=True), port)
        return [e for e in found if in_the_way(e)]

    backend = get_backend("netlink")
    try:
        targets = targets_now()
        if targets and not yes:
            if not sys.stdin.isatty():
                raise BadInput(f"{len(targets)} entries would be destroyed but stdin is not a terminal: pass --yes")
            states = ", ".join(f"{sum(e.state == s for e in targets)} {s}" for s in ("TIME_WAIT", "FIN_WAIT2")
                               if any(e.state == s for e in targets))
            if not click.confirm(f"destroy {states} entries in the way of a bind to {where}?"):
                if as_json:
                    emit({"port": port, "host": host, "destroyed": {}, "count": 0, "already_gone": 0,
                          "left": len(targets), "refused_by_user": True})
                else:
                    click.echo("nothing cleared")
                ctx.exit(EXIT_FAILED)
        report = destroy_entries(backend, targets, port)
        left = targets_now()
    finally:
        backend.close()
    if as_json:
        emit({"port": port, "host": host, "destroyed": report.destroyed, "count": report.total,
              "already_gone": report.already_gone, "left": len(left), "refused_by_user": False})
        return
    from addrinuse.render import wrap

    if not targets:
        click.echo(wrap(f"nothing to clear: no TIME_WAIT or orphaned FIN_WAIT2 entry is in the way of "
                        f"a bind to {where}", "", "  "))
        return
    detail = ", ".join(f"{n} {s}" for s, n in report.destroyed.items()) or "none"
    gone = f"; {report.already_gone} had expired meanwhile" if report.already_gone else ""
    click.echo(wrap(f"destroyed {report.total} entries in the way of a bind to {where} ({detail}){gone}; "
                    f"{len(left)} left", "", "  "))
