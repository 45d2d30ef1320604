"""The action table: every `do = "..."` a scenario step may name, with its parameter spec.

Adding an action is one decorator in a module listed in ACTION_MODULES:

    from addrinuse.experiments.actions import action
    from addrinuse.experiments.params import Count, Port, Text

    @action("my_step", {"port": Port(), "count": Count(default=1, high=100)},
            provides=("port",), doc="one line for `experiment show` and the README")
    def my_step(ctx, p: dict) -> dict:
        port = ctx.port(p["port"])          # "new" -> 0, 8080 -> 8080, "@srv" -> that step's port
        ctx.defer(lambda: undo_it())        # run after the experiment, whatever happened (LIFO)
        return {"port": port, "ok": True}   # the step's result: what expectations check

- `params` maps each parameter to a kind from addrinuse.experiments.params; the loader checks every
  value before anything runs, fills in defaults, and rejects unknown keys, so `p` is always complete.
- `provides` lists the result keys later steps may refer to ("@id" needs "port"; "@id.pid" needs
  "pid"); the loader refuses a reference to a key the step does not give.
- The function gets the runner (`ctx`: port(ref), value(ref), result(ref), entries(...), defer(fn),
  progress(text), backend, registry, sockets; see runner.Runner) and returns a JSON-safe dict.
  A result with "ok": false that no expectation checks ends the experiment as failed.
  Raise errors.CannotRun for a missing privilege or feature: the experiment is reported "could
  not run" (exit 6), not failed.
- `describe(result) -> str` (optional) is the one-line text of the step's result; `validate(params)`
  (optional) checks combinations of parameters at load time, raising params.Invalid(problem, fix).

Requirements (`requires = [...]` in a scenario) are registered the same way with `requirement(name)`:
a function returning None when the machine has it, else the reason it is skipped."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from addrinuse.experiments.params import Param

# Modules whose import registers actions. Another package adds its module here (e.g. the lab's
# network-namespace actions), so that loading a scenario knows every action before it validates.
ACTION_MODULES = [
    "addrinuse.experiments.actions.sockets",
    "addrinuse.experiments.actions.servers",
    "addrinuse.experiments.actions.observe",
    "addrinuse.lab.actions",
]


@dataclass(frozen=True)
class Action:
    name: str
    params: dict[str, Param]
    run: Callable[..., dict]
    provides: tuple[str, ...] = ()
    doc: str = ""
    describe: Callable[[dict], str] | None = None
    validate: Callable[[dict], None] | None = None


ACTIONS: dict[str, Action] = {}
REQUIREMENTS: dict[str, Callable[[], str | None]] = {}
_loaded = False


def action(name: str, params: dict[str, Param], provides: tuple[str, ...] = (), doc: str = "",
           describe: Callable[[dict], str] | None = None, validate: Callable[[dict], None] | None = None):
    """Register `function(ctx, params) -> dict` as the step `do = name`."""
    if not name.isidentifier():
        raise ValueError(f"action name {name!r} is not an identifier")

    def register(function):
        if name in ACTIONS and ACTIONS[name].run is not function:
            raise ValueError(f"action {name!r} is registered twice")
        ACTIONS[name] = Action(name, dict(params), function, tuple(provides), doc, describe, validate)
        return function

    return register


def requirement(name: str):
    """Register `function() -> None | reason` as the requirement `requires = [name]`."""

    def register(function):
        REQUIREMENTS[name] = function
        return function

    return register


def actions() -> dict[str, Action]:
    """Every registered action, importing ACTION_MODULES once."""
    global _loaded
    if not _loaded:
        for module in ACTION_MODULES:
            importlib.import_module(module)
        _loaded = True
    return ACTIONS


def provides() -> dict[str, tuple[str, ...]]:
    return {name: a.provides for name, a in actions().items()}


def missing(requires: list[str]) -> str | None:
    """The first requirement this machine lacks, as a reason; None when it has them all."""
    actions()
    for need in requires:
        reason = REQUIREMENTS[need]()
        if reason:
            return reason
    return None


@requirement("ipv6")
def _ipv6() -> str | None:
    from addrinuse.sockets import has_ipv6_loopback

    return None if has_ipv6_loopback() else "no IPv6 loopback on this machine"


@requirement("root")
def _root() -> str | None:
    import os

    return None if os.geteuid() == 0 else "needs root"


@requirement("tracefs")
def _tracefs() -> str | None:
    from addrinuse.tracepoint import unavailable_reason

    return unavailable_reason()
