"""Scenario files: one experiment as data (TOML), validated into typed steps and expectations.

    name = "restart-after-server-close"
    purpose = "one line"
    explain = "what it shows, printed after the run"
    states = ["LISTEN", "TIME_WAIT"]  # the TCP states the run observes in the connection table
    slow = false                 # true: runs only when named or with --slow
    requires = ["ipv6"]          # skipped with a reason where missing: ipv6, root, tracefs

    [[step]]
    id = "srv"                   # unique; later steps refer to it as "@srv" (or "@srv.pid")
    do = "server"                # an action from the action table, with its parameters
    close = "server-first"

    [[expect]]
    step = "restart"             # the step whose result is checked
    what = "a plain restart fails"
    ok = false                   # see checks.EXPECT_KEYS
    error = "EADDRINUSE"

Everything is checked here, before anything runs: unknown keys, types, every number's range, and
every "@step" reference. Every error names the file, the key and the fix (exit 2)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field

from addrinuse.errors import BadInput
from addrinuse.experiments.params import REQUIRED, Earlier, Flag, Invalid, States, Text

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
MAX_STEPS, MAX_EXPECT = 200, 500
TOP_KEYS = ("name", "purpose", "explain", "states", "slow", "requires", "step", "expect")


CONTROL = {c: f"\\x{c:02x}" for c in (*range(32), 127)}


class ScenarioError(BadInput):
    """An invalid scenario file (exit 2): '<file>: <key>: <problem>: <fix>'."""

    def __init__(self, path, key: str, problem: str, fix: str):
        self.path, self.key = str(path), key
        # Values from the file are quoted into the message: a control character there (a newline in
        # a string) must not break the one-line error, so it is shown escaped.
        text = f"{path}: {key}: {problem}: {fix}"
        super().__init__(text.translate(CONTROL))


@dataclass
class Step:
    id: str
    do: str
    params: dict


@dataclass
class Expect:
    step: str
    what: str
    checks: dict
    end: str | None = None
    source: str = "poll"


@dataclass
class Scenario:
    path: str
    name: str
    purpose: str
    explain: str
    states: list[str] = field(default_factory=list)
    slow: bool = False
    requires: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    expect: list[Expect] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"name": self.name, "purpose": self.purpose, "explain": " ".join(self.explain.split()),
                "states": self.states, "slow": self.slow, "requires": self.requires, "path": self.path,
                "steps": [{"id": s.id, "do": s.do, **s.params} for s in self.steps],
                "expect": [{"step": e.step, "what": e.what, **e.checks} for e in self.expect]}


def load(path) -> Scenario:
    """Read and validate one file (a Path, or an importlib.resources Traversable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ScenarioError(path, "file", "not found", "give an experiment name or an existing .toml path") from err
    except IsADirectoryError as err:
        raise ScenarioError(path, "file", "is a directory", "pass a directory with --dir") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ScenarioError(path, "file", f"unreadable ({err})", "check the path and its permissions") from err
    return loads(text, str(path))


def loads(text: str, source: str = "<scenario>") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(source, "toml", str(err), "fix the TOML syntax") from err
    return validate(data, source)


def _get(source, key, data, kind, default=None):
    if key not in data:
        if default is None:
            raise ScenarioError(source, key, "missing", f"add '{key}'")
        return default
    try:
        return kind.check(data[key])
    except Invalid as err:
        raise ScenarioError(source, key, err.problem, err.fix) from None


def validate(data: dict, source: str = "<scenario>") -> Scenario:
    """A parsed TOML document -> Scenario, or ScenarioError (never anything else)."""
    from addrinuse.experiments.actions import REQUIREMENTS, actions

    actions()  # registers the requirements too
    if not isinstance(data, dict):
        raise ScenarioError(source, "toml", "is not a table of keys", "write key = value lines")
    for key in data:
        if key not in TOP_KEYS:
            raise ScenarioError(source, str(key)[:40], "unknown key", f"use only {', '.join(TOP_KEYS)}")
    name = _get(source, "name", data, Text())
    if not NAME_RE.match(name):
        raise ScenarioError(source, "name", f"{name[:40]!r} is not a valid name",
                            "use lower-case letters, digits and '-' (at most 64)")
    requires = data.get("requires", [])
    if not isinstance(requires, list) or any(r not in REQUIREMENTS for r in requires if isinstance(r, str)) \
            or not all(isinstance(r, str) for r in requires):
        raise ScenarioError(source, "requires", f"{str(requires)[:40]} is not a list of requirements",
                            f"use a list of {', '.join(REQUIREMENTS)}")
    scenario = Scenario(
        source, name, _get(source, "purpose", data, Text(nonempty=True)),
        _get(source, "explain", data, Text(nonempty=True)), _get(source, "states", data, States(), []),
        _get(source, "slow", data, Flag(), False), list(dict.fromkeys(requires)))
    for key, limit in (("step", MAX_STEPS), ("expect", MAX_EXPECT)):
        if key not in data:
            raise ScenarioError(source, key, "missing", f"add at least one [[{key}]] table")
        if not isinstance(data[key], list) or not 1 <= len(data[key]) <= limit:
            raise ScenarioError(source, key, f"is not a list of 1 to {limit} tables", f"write each one as [[{key}]]")
    earlier = Earlier({}, {name: a.provides for name, a in actions().items()})
    for i, raw in enumerate(data["step"]):
        step = _step(source, f"step[{i}]", raw, earlier)
        earlier.steps[step.id] = step.do
        scenario.steps.append(step)
    for i, raw in enumerate(data["expect"]):
        scenario.expect.append(_expect(source, f"expect[{i}]", raw, earlier))
    return scenario


def _step(source, where, raw, earlier: Earlier) -> Step:
    from addrinuse.experiments.actions import actions

    if not isinstance(raw, dict):
        raise ScenarioError(source, where, "is not a table", "write it as [[step]]")
    for key in ("id", "do"):
        if key not in raw:
            raise ScenarioError(source, f"{where}.{key}", "missing", f"add '{key}'")
    sid, action = raw["id"], raw["do"]
    if not isinstance(sid, str) or not ID_RE.match(sid):
        raise ScenarioError(source, f"{where}.id", f"{str(sid)[:40]!r} is not a valid id",
                            "use letters, digits, '_' or '-' (at most 40)")
    if sid in earlier.steps:
        raise ScenarioError(source, f"{where}.id", f"{sid!r} is used twice", "give each step its own id")
    table = actions()
    if not isinstance(action, str) or action not in table:
        raise ScenarioError(source, f"{where}.do", f"unknown step {str(action)[:40]!r}", f"use one of {', '.join(table)}")
    spec, params = table[action].params, {}
    for key, value in raw.items():
        if key in ("id", "do"):
            continue
        if key not in spec:
            raise ScenarioError(source, f"{where}.{str(key)[:40]}", f"not a parameter of '{action}'",
                                f"use {', '.join(spec) or 'none'}")
        try:
            params[key] = spec[key].check(value, earlier)
        except Invalid as err:
            raise ScenarioError(source, f"{where}.{key}", err.problem, err.fix) from None
    for key, kind in spec.items():
        if key not in params:
            if kind.default is REQUIRED:
                raise ScenarioError(source, f"{where}.{key}", "missing", f"'{action}' needs '{key}'")
            params[key] = list(kind.default) if isinstance(kind.default, (list, tuple)) else kind.default
    if table[action].validate:
        try:
            table[action].validate(params)
        except Invalid as err:
            raise ScenarioError(source, where, err.problem, err.fix) from None
    return Step(sid, action, params)


def _expect(source, where, raw, earlier: Earlier) -> Expect:
    from addrinuse.experiments.checks import CHECKS, EXPECT_KEYS

    if not isinstance(raw, dict):
        raise ScenarioError(source, where, "is not a table", "write it as [[expect]]")
    values = {}
    for key, value in raw.items():
        if key not in EXPECT_KEYS:
            raise ScenarioError(source, f"{where}.{str(key)[:40]}", "unknown key", f"use {', '.join(EXPECT_KEYS)}")
        try:
            values[key] = EXPECT_KEYS[key].check(value, earlier)
        except Invalid as err:
            raise ScenarioError(source, f"{where}.{key}", err.problem, err.fix) from None
    if values.get("step") not in earlier.steps:
        raise ScenarioError(source, f"{where}.step", f"{str(raw.get('step'))[:40]!r} is not a step id",
                            "name one of the steps")
    if "order" in values and values.get("end") not in ("active", "passive"):
        raise ScenarioError(source, f"{where}.end", "missing", "say which end 'order' is about: active or passive")
    checks = {k: values[k] for k in CHECKS if k in values}
    if not checks:
        raise ScenarioError(source, where, "checks nothing", f"add one of {', '.join(CHECKS)}")
    return Expect(values["step"], values.get("what", values["step"]), checks, values.get("end"),
                  values.get("source", "poll"))

