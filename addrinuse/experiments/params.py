"""Parameter kinds for scenario files: each checks one value at load time and says the fix.

Every number is checked here, once, before anything runs (issue 9): a port is 1-65535, "new" or
"@step"; seconds are finite and positive within a sane maximum (TOML can spell `nan` and `inf`, and
a NaN deadline never passes); counts are whole numbers within bounds. A kind raises `Invalid(problem,
fix)`; the loader turns it into a ScenarioError naming the file and the key."""

from __future__ import annotations

import errno as _errno
import math
import re
from dataclasses import dataclass

REQUIRED = object()
REF_RE = re.compile(r"^@([A-Za-z0-9_-]{1,40})(?:\.([a-z_]{1,30}))?$")
SIGNALS = ("TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2")
ERRNO_NAMES = frozenset(_errno.errorcode.values())
MAX_TEXT = 4000


class Invalid(Exception):
    def __init__(self, problem: str, fix: str):
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}: {fix}")


@dataclass(frozen=True)
class Earlier:
    """What the loader knows of the steps before the one being checked: id -> action name, and
    action name -> the result keys that action provides."""

    steps: dict
    provides: dict


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


class Param:
    """Base: `default` (REQUIRED when the key must be given) and `check(value, earlier) -> value`."""

    default = REQUIRED
    doc = ""

    def check(self, value, earlier: Earlier):
        raise NotImplementedError

    def describe(self) -> str:
        return self.doc


class Text(Param):
    def __init__(self, default=REQUIRED, choices: tuple[str, ...] = (), doc: str = "", nonempty: bool = False):
        self.default, self.choices, self.doc, self.nonempty = default, choices, doc, nonempty

    def check(self, value, earlier=None):
        if not isinstance(value, str):
            raise Invalid(f"{_show(value)} is {_kind(value)}", "give a string in quotes")
        if "\0" in value or len(value) > MAX_TEXT:
            raise Invalid("has a NUL byte or is too long", f"give a plain string under {MAX_TEXT} characters")
        if self.nonempty and not value.strip():
            raise Invalid("is empty", "write something")
        if self.choices and value not in self.choices:
            raise Invalid(f"{_show(value)} is not allowed", f"use one of {', '.join(self.choices)}")
        return value


class Flag(Param):
    def __init__(self, default=False, doc: str = ""):
        self.default, self.doc = default, doc

    def check(self, value, earlier=None):
        if not isinstance(value, bool):
            raise Invalid(f"{_show(value)} is {_kind(value)}", "give true or false")
        return value


class Optional(Param):
    """A kind that may also be left out: its default is None, meaning 'not given'."""

    def __init__(self, inner: Param, doc: str = ""):
        self.inner, self.default, self.doc = inner, None, doc or inner.doc

    def check(self, value, earlier=None):
        return self.inner.check(value, earlier)


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(f"{_show(value)} is {_kind(value)}", "give a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid(f"{value} is not a finite number", "give a finite number (nan and inf are refused)")
    return value


class Seconds(Param):
    """Finite seconds, low < x <= high (low = 0: strictly positive)."""

    def __init__(self, default=REQUIRED, high: float = 3600.0, low: float = 0.0, doc: str = ""):
        self.default, self.low, self.high, self.doc = default, low, high, doc

    def check(self, value, earlier=None):
        number = _number(value)
        if not self.low < number <= self.high:
            raise Invalid(f"{number} is out of range", f"give seconds > {self.low:g} and <= {self.high:g}")
        return float(number)


class Count(Param):
    """A whole number within [low, high]."""

    def __init__(self, default=REQUIRED, low: int = 1, high: int = 10000, doc: str = ""):
        self.default, self.low, self.high, self.doc = default, low, high, doc

    def check(self, value, earlier=None):
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"{_show(value)} is {_kind(value)}", f"give a whole number from {self.low} to {self.high}")
        if not self.low <= value <= self.high:
            raise Invalid(f"{value} is out of range", f"give a whole number from {self.low} to {self.high}")
        return value


class Ref(Param):
    """"@step" (or "@step.key"): an earlier step's result. `needs` names the result keys the step
    must provide (e.g. port), `actions` the actions it must be."""

    def __init__(self, default=REQUIRED, needs: tuple[str, ...] = (), actions: tuple[str, ...] = (),
                 attr: bool = False, doc: str = ""):
        self.default, self.needs, self.actions, self.attr, self.doc = default, needs, actions, attr, doc

    def check(self, value, earlier: Earlier):
        if not isinstance(value, str) or not REF_RE.match(value):
            raise Invalid(f"{_show(value)} is not a step reference", "write \"@id\" with the id of an earlier step")
        sid, key = REF_RE.match(value).groups()
        if key and not self.attr:
            raise Invalid(f"{value} names a key", f"write \"@{sid}\" alone")
        if sid not in earlier.steps:
            raise Invalid(f"{value} names no earlier step", "refer to the id of a step above this one")
        action = earlier.steps[sid]
        if self.actions and action not in self.actions:
            raise Invalid(f"{value} is a '{action}' step", f"refer to a step that does {' or '.join(self.actions)}")
        provided = earlier.provides.get(action, ())
        for need in (*self.needs, *([key] if key else [])):
            if need not in provided:
                raise Invalid(f"a '{action}' step gives no {need}", f"refer to a step that gives {need}"
                              + (f" ({', '.join(sorted(provided))})" if key else ""))
        return value


class Port(Param):
    """A port: 1-65535 (a TOML integer or digits), "new" (the kernel picks one) or "@step"."""

    def __init__(self, default="new", doc: str = "1-65535, \"new\" (the kernel picks) or \"@step\""):
        self.default, self.doc = default, doc

    def check(self, value, earlier: Earlier):
        if isinstance(value, str) and value.startswith("@"):
            return Ref(needs=("port",)).check(value, earlier)
        if value == "new":
            return value
        number = int(value) if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 5 \
            else value
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
            raise Invalid(f"{_show(value)} is not a port", "use 1-65535, \"new\" (the kernel picks) or \"@step\"")
        return number


class States(Param):
    """A list of TCP state names (ss or psutil spelling), normalised; `extra` allows more words."""

    def __init__(self, default=(), extra: tuple[str, ...] = (), ordered: bool = False, doc: str = ""):
        self.default, self.extra, self.ordered, self.doc = list(default), extra, ordered, doc

    def check(self, value, earlier=None):
        from addrinuse.conntable import STATES, normalize_states

        if not isinstance(value, list) or len(value) > 64:
            raise Invalid(f"{_show(value)} is {_kind(value)}", "give a list of state names, e.g. [\"TIME_WAIT\"]")
        out = []
        for item in value:
            if isinstance(item, str) and item in self.extra:
                out.append(item)
                continue
            try:
                (name,) = normalize_states([item]) if isinstance(item, str) else (None,)
            except (ValueError, AttributeError):
                name = None
            if name is None:
                raise Invalid(f"{_show(item)} is not a TCP state", f"use {', '.join(STATES + self.extra)}")
            out.append(name)
        return out if self.ordered else sorted(set(out), key=out.index)


class Argv(Param):
    """A command as a list of strings (no shell): "{port}" and "{host}" are replaced at run time."""

    def __init__(self, default=REQUIRED, doc: str = ""):
        self.default, self.doc = default, doc

    def check(self, value, earlier=None):
        if isinstance(value, list) and not value:
            raise Invalid("is empty", "give the command as a list, e.g. [\"python3\", \"-m\", \"http.server\", \"{port}\"]")
        if not isinstance(value, list) or len(value) > 256:
            raise Invalid(f"{_show(value)} is {_kind(value)}",
                          "give the command as a list, e.g. [\"python3\", \"-m\", \"http.server\", \"{port}\"]")
        for item in value:
            if not isinstance(item, str) or "\0" in item or len(item) > MAX_TEXT:
                raise Invalid(f"{_show(item)} is not a plain string", "give every word of the command as a string")
        if not value[0].strip():
            raise Invalid("the program name is empty", "start the list with the program to run")
        if not any("{port}" in item for item in value):
            raise Invalid("has no {port}", "put \"{port}\" where the server takes its port number")
        return list(value)


class Errno(Text):
    def check(self, value, earlier=None):
        value = super().check(value)
        if value not in ERRNO_NAMES:
            raise Invalid(f"{_show(value)} is not an errno name", "use a name such as EADDRINUSE or EADDRNOTAVAIL")
        return value


class Range(Param):
    """[low, high] in seconds, both finite, 0 <= low <= high <= `high`."""

    def __init__(self, high: float = 86400.0, doc: str = ""):
        self.high, self.doc = high, doc

    def check(self, value, earlier=None):
        if not isinstance(value, list) or len(value) != 2:
            raise Invalid(f"{_show(value)} is not [low, high]", "give two numbers of seconds, e.g. [60.0, 62.5]")
        low, high = (_number(v) for v in value)
        if not 0 <= low <= high <= self.high:
            raise Invalid(f"[{low}, {high}] is not a range", f"give 0 <= low <= high <= {self.high:g}")
        return [float(low), float(high)]


PATH_RE = re.compile(r"^[A-Za-z0-9_]{1,40}$")
MAX_PATHS = 50


class Paths(Param):
    """A table {path: expected} naming values of a step's result: a path is a result key, with "."
    into nested tables and list items by index ("counters.fin_out", "rounds.0.late_s"). TOML's own
    dotted keys give the same table (`within.counters.fin_out = [2, 2]`): nested tables are
    flattened into paths, so each leaf is one check. `leaf(value) -> value` checks each expected
    value (raising Invalid)."""

    def __init__(self, leaf, doc: str = ""):
        self.leaf, self.doc = leaf, doc

    def check(self, value, earlier=None):
        if not isinstance(value, dict) or not value:
            raise Invalid(f"{_show(value)} is {_kind(value)}",
                          "give a table of result keys, e.g. within.delay_ms = [100, 300]")
        out: dict = {}
        self._flatten(value, (), out)
        if not out:
            raise Invalid("names no value (only empty tables)", "give a table of result keys, e.g. equals.b_error = \"ECONNRESET\"")
        return out

    def _flatten(self, table: dict, prefix: tuple, out: dict) -> None:
        for key, value in table.items():
            parts = (*prefix, *str(key).split("."))
            if not all(PATH_RE.match(p) for p in parts) or len(parts) > 8:
                raise Invalid(f"{_show('.'.join(parts))} is not a result key",
                              "use letters, digits and '_', with '.' between nested keys (at most 8)")
            if isinstance(value, dict):
                self._flatten(value, parts, out)
                continue
            if len(out) >= MAX_PATHS:
                raise Invalid(f"names more than {MAX_PATHS} values", "split it into several [[expect]] tables")
            try:
                out[".".join(parts)] = self.leaf(value)
            except Invalid as err:
                raise Invalid(f"{'.'.join(parts)}: {err.problem}", err.fix) from None


def _scalar(value):
    if isinstance(value, str):
        return Text().check(value)
    if isinstance(value, (bool, int)):
        return value
    return _number(value)


def any_value(value):
    """An expected value: a string, number or true/false, or a list of them."""
    if isinstance(value, list):
        if len(value) > 64:
            raise Invalid("is a list of more than 64 values", "give a shorter list")
        return [_scalar(v) for v in value]
    return _scalar(value)


def number_range(value):
    """[low, high], both finite numbers, low <= high (any unit: the key's name says which)."""
    if not isinstance(value, list) or len(value) != 2:
        raise Invalid(f"{_show(value)} is not [low, high]", "give two numbers, e.g. [195, 1000]")
    low, high = (_number(v) for v in value)
    if not low <= high:
        raise Invalid(f"[{low}, {high}] is not a range", "give low <= high")
    return [low, high]


def value_list(value):
    """A non-empty list of expected values (each a string, number or true/false)."""
    if not isinstance(value, list) or not value:
        raise Invalid(f"{_show(value)} is {_kind(value)}", "give a non-empty list, e.g. [\"TIME_WAIT\"]")
    return any_value(value)
