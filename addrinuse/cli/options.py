"""Shared options: one name and one help text per idea, used by every command that has the idea."""

from __future__ import annotations

import math

import click

STATE_NAMES = ("LISTEN", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2",
               "CLOSE_WAIT", "CLOSING", "LAST_ACK", "TIME_WAIT", "CLOSED")
BIND_STYLES = ("plain", "reuseaddr", "reuseport")


class PortType(click.ParamType):
    name = "PORT"

    def __init__(self, allow_zero: bool = True):
        self.low = 0 if allow_zero else 1

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
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


class Seconds(click.ParamType):
    """A finite number of seconds within [low, high]; NaN and infinities are refused, since a NaN
    deadline never passes and an infinite interval never polls."""

    name = "SECONDS"

    def __init__(self, low: float, high: float, low_inclusive: bool = True):
        self.low, self.high, self.low_inclusive = low, high, low_inclusive

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        too_low = number < self.low or (number == self.low and not self.low_inclusive)
        if math.isnan(number) or math.isinf(number) or too_low or number > self.high:
            bound = ">=" if self.low_inclusive else ">"
            self.fail(f"{value} is out of range: give seconds {bound} {self.low:g} and <= {self.high:g}", param, ctx)
        return number


class StateType(click.ParamType):
    name = "STATE"

    def convert(self, value, param, ctx):
        from addrinuse.conntable import normalize_states

        try:
            (state,) = normalize_states([value])
        except ValueError:
            self.fail(f"unknown state {value!r}: use one of {', '.join(STATE_NAMES)}", param, ctx)
        return state


class Count(click.IntRange):
    name = "N"


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON document on stdout (NDJSON for streams); see docs/json.md.")
host_option = click.option("--host", default="127.0.0.1", show_default=True,
                           help="The address to bind or connect to (an IP literal or a name).")
public_option = click.option("--allow-public", is_flag=True,
                             help="Allow a non-loopback --host (traffic then leaves loopback).")
backend_option = click.option("--backend", type=click.Choice(["auto", "netlink", "psutil"]), default="auto",
                              show_default=True,
                              help="Connection-table source: netlink (Linux sock_diag, kernel timers) or psutil.")
as_option = click.option("--as", "bind_as", type=click.Choice(BIND_STYLES), default="plain", show_default=True,
                         help="How your server binds: plain, with SO_REUSEADDR, or with SO_REUSEPORT.")


def clients_option(default: int = 1):
    return click.option("-n", "--clients", type=Count(1, 10_000), default=default, show_default=True,
                        help="How many client connections to open.")

port_filter_option = click.option("--port", type=PortType(allow_zero=False),
                                  help="Only entries with this local or remote port.")
states_option = click.option("--state", "states", type=StateType(), multiple=True,
                             help="Only entries in this state (repeatable; TIME_WAIT or time-wait).")


def timeout_option(help_text: str, default: float = 90.0):
    return click.option("--timeout", type=Seconds(0, 86_400), default=default, show_default=True,
                        help=help_text + " 0 checks once.")


def interval_option(help_text: str = "Seconds between polls.", default: float = 0.1):
    return click.option("--interval", type=Seconds(0, 3600, low_inclusive=False), default=default,
                        show_default=True, help=help_text)


def server_port_option(help_text: str):
    return click.option("--port", type=PortType(allow_zero=False), required=True, help=help_text)
