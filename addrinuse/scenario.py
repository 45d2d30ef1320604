"""Scenario files: one experiment as data (TOML), validated into typed steps and expectations.

    name = "restart-after-server-close"
    purpose = "one line"
    explain = "what it shows, printed after the run"
    slow = false                 # true: runs only when named or with --slow
    requires = ["ipv6"]          # skipped with a reason where missing: ipv6, root, tracefs

    [[step]]
    id = "srv"                   # unique; later steps refer to it as "@srv"
    do = "server"                # an action from ACTIONS, with its parameters
    close = "server-first"

    [[expect]]
    step = "restart"             # the step whose result is checked
    what = "a plain restart fails"
    ok = false                   # any of: ok error syscall count holder between order (+ end, source)
    error = "EADDRINUSE"

Every error names the file, the key and the fix."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from addrinuse.conntable import STATES, normalize_states
from addrinuse.errors import BadInput

REQUIRED = object()
SOCKET_OPTS = {"host": (str, "127.0.0.1"), "reuseaddr": (bool, False), "reuseport": (bool, False),
               "v6only": (bool, None)}
# action -> {parameter: (type, default or REQUIRED)}
ACTIONS: dict[str, dict[str, tuple]] = {
    "server": {"host": (str, "127.0.0.1"), "port": (str, "new"), "close": (str, "server-first"),
               "reuseaddr": (bool, False), "reuseport": (bool, False), "linger0": (bool, False),
               "spawn_child": (bool, False)},
    "connect": {"to": (str, REQUIRED), "count": (int, 1)},
    "kill": {"server": (str, REQUIRED), "signal": (str, "TERM")},
    "listen": {"port": (str, "new"), **SOCKET_OPTS},
    "bind": {"port": (str, "new"), **SOCKET_OPTS},
    "listen_bound": {"socket": (str, REQUIRED)},
    "close": {"socket": (str, REQUIRED)},
    "probe": {"port": (str, REQUIRED), **SOCKET_OPTS},
    # wait_for: poll (up to timeout) until that many entries show, for states reached asynchronously
    # (a peer's delayed ACK, a server process's own close); the count is then checked exactly.
    "table": {"port": (str, REQUIRED), "states": (list, []), "side": (str, "local"), "wait_for": (int, 0),
              "timeout": (float, 5.0)},
    "wait_gone": {"port": (str, REQUIRED), "states": (list, ["TIME_WAIT"]), "since": (str, None),
                  "timeout": (float, 75.0), "interval": (float, 0.1), "then_probe": (bool, False)},
    "close_sequence": {"hold": (float, 0.3), "interval": (float, 0.005)},
}
CHOICES = {"close": ("server-first", "client-first", "never"), "signal": ("TERM", "KILL", "INT"),
           "side": ("local", "remote", "any")}
EXPECT_KEYS = {"step": str, "what": str, "ok": bool, "error": str, "syscall": str, "count": int,
               "holder": str, "between": list, "order": list, "end": str, "source": str}
CHECK_KEYS = ("ok", "error", "syscall", "count", "holder", "between", "order")
REQUIREMENTS = ("ipv6", "root", "tracefs")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class ScenarioError(BadInput):
    def __init__(self, path: Path | str, key: str, problem: str, fix: str):
        self.path, self.key = str(path), key
        super().__init__(f"{path}: {key}: {problem}: {fix}")


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
    path: Path
    name: str
    purpose: str
    explain: str
    slow: bool = False
    requires: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    expect: list[Expect] = field(default_factory=list)


def _typed(path, key, value, kind):
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ScenarioError(path, key, f"{value!r} is a {type(value).__name__}", f"give a {kind.__name__}")
    return value


def load(path: Path | str) -> Scenario:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as err:
        raise ScenarioError(path, "file", "not found", "give an experiment name or an existing .toml path") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ScenarioError(path, "file", f"unreadable ({err})", "check the path and its permissions") from err
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(path, "toml", str(err), "fix the TOML syntax") from err
    known = {"name", "purpose", "explain", "slow", "requires", "step", "expect"}
    for key in data:
        if key not in known:
            raise ScenarioError(path, key, "unknown key", f"use only {', '.join(sorted(known))}")
    for key in ("name", "purpose", "explain", "step", "expect"):
        if key not in data:
            raise ScenarioError(path, key, "missing", f"add '{key}'" + (" (an array of tables)" if key in ("step", "expect") else ""))
    name = _typed(path, "name", data["name"], str)
    if not NAME_RE.match(name):
        raise ScenarioError(path, "name", f"{name!r} is not a valid name", "use lower-case letters, digits and '-'")
    requires = _typed(path, "requires", data.get("requires", []), list)
    for item in requires:
        if item not in REQUIREMENTS:
            raise ScenarioError(path, "requires", f"unknown requirement {item!r}", f"use {', '.join(REQUIREMENTS)}")
    scenario = Scenario(path, name, _typed(path, "purpose", data["purpose"], str),
                        _typed(path, "explain", data["explain"], str), _typed(path, "slow", data.get("slow", False), bool),
                        requires)
    for i, raw in enumerate(_typed(path, "step", data["step"], list)):
        scenario.steps.append(_step(path, f"step[{i}]", raw, {s.id for s in scenario.steps}))
    ids = {s.id for s in scenario.steps}
    for i, raw in enumerate(_typed(path, "expect", data["expect"], list)):
        scenario.expect.append(_expect(path, f"expect[{i}]", raw, ids))
    return scenario


def _step(path, where, raw, earlier: set[str]) -> Step:
    if not isinstance(raw, dict):
        raise ScenarioError(path, where, "is not a table", "write it as [[step]]")
    for key in ("id", "do"):
        if key not in raw:
            raise ScenarioError(path, f"{where}.{key}", "missing", f"add '{key}'")
    sid, action = _typed(path, f"{where}.id", raw["id"], str), _typed(path, f"{where}.do", raw["do"], str)
    if sid in earlier:
        raise ScenarioError(path, f"{where}.id", f"{sid!r} is used twice", "give each step its own id")
    if action not in ACTIONS:
        raise ScenarioError(path, f"{where}.do", f"unknown step {action!r}", f"use one of {', '.join(ACTIONS)}")
    spec, params = ACTIONS[action], {}
    for key, value in raw.items():
        if key in ("id", "do"):
            continue
        if key not in spec:
            raise ScenarioError(path, f"{where}.{key}", f"not a parameter of '{action}'", f"use {', '.join(spec) or 'none'}")
        kind, _ = spec[key]
        params[key] = _typed(path, f"{where}.{key}", value, kind)
        if key in CHOICES and value not in CHOICES[key]:
            raise ScenarioError(path, f"{where}.{key}", f"{value!r} is not allowed", f"use one of {', '.join(CHOICES[key])}")
        if isinstance(value, str) and value.startswith("@") and value[1:].split(".")[0] not in earlier:
            raise ScenarioError(path, f"{where}.{key}", f"{value} names no earlier step", "refer to an earlier step's id")
        if key == "port" and not (value == "new" or value.startswith("@") or value.isdigit()):
            raise ScenarioError(path, f"{where}.port", f"{value!r} is not a port", "use \"new\", \"@step\" or a number")
        if key == "states":
            try:
                normalize_states([_typed(path, f"{where}.states[]", v, str) for v in value])
            except ValueError as err:
                raise ScenarioError(path, f"{where}.states", f"unknown state {err.args[0]!r}",
                                    f"use {', '.join(STATES)}") from None
    for key, (kind, default) in spec.items():
        if key not in params:
            if default is REQUIRED:
                raise ScenarioError(path, f"{where}.{key}", "missing", f"'{action}' needs '{key}'")
            params[key] = default
    return Step(sid, action, params)


def _expect(path, where, raw, ids: set[str]) -> Expect:
    if not isinstance(raw, dict):
        raise ScenarioError(path, where, "is not a table", "write it as [[expect]]")
    for key, value in raw.items():
        if key not in EXPECT_KEYS:
            raise ScenarioError(path, f"{where}.{key}", "unknown key", f"use {', '.join(EXPECT_KEYS)}")
        _typed(path, f"{where}.{key}", value, EXPECT_KEYS[key])
    if raw.get("step") not in ids:
        raise ScenarioError(path, f"{where}.step", f"{raw.get('step')!r} is not a step id", "name one of the steps")
    if "order" in raw and raw.get("end") not in ("active", "passive"):
        raise ScenarioError(path, f"{where}.end", "missing or not active/passive", "say which end 'order' is about")
    if raw.get("source", "poll") not in ("poll", "trace"):
        raise ScenarioError(path, f"{where}.source", f"{raw['source']!r} is not allowed", "use poll or trace")
    checks = {k: raw[k] for k in CHECK_KEYS if k in raw}
    if not checks:
        raise ScenarioError(path, where, "checks nothing", f"add one of {', '.join(CHECK_KEYS)}")
    return Expect(raw["step"], raw.get("what", raw["step"]), checks, raw.get("end"), raw.get("source", "poll"))
