"""Run one scenario's steps against the real kernel; the runner is the `ctx` every action gets.

Each run has its own server registry and only kernel-picked ports (unless a file names one), so
runs in parallel do not disturb each other. Everything a run started is undone in `finally`,
whatever happened: sockets closed, servers stopped, deferred clean-ups run, the temp dir removed."""

from __future__ import annotations

import shutil
import socket
import time
from typing import Callable

from addrinuse.errors import AddrinuseError, CannotRun
from addrinuse.experiments import checks
from addrinuse.experiments.actions import actions, missing
from addrinuse.experiments.report import Report
from addrinuse.experiments.scenario import Scenario

PROGRESS_AFTER_S = 1.0  # a wait shorter than this reports no progress


class StepFailed(Exception):
    """A step returned ok = false and no expectation checks that step: nothing after it means anything."""


TEMP_PREFIX = "addrinuse-experiment-"


def _registry():
    """(registry, temp dir or None). registry.MemoryRegistry, where it exists, keeps records in memory
    and makes its servers die with this process; until then a private temp dir holds them, named
    after this pid so that a later run can remove it if this one is SIGKILLed (sweep_stale)."""
    from addrinuse import registry

    if hasattr(registry, "MemoryRegistry"):
        return registry.MemoryRegistry(), None
    import os
    import tempfile

    path = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-")
    return registry.Registry(path), path


def sweep_stale() -> list[str]:
    """Remove the temp dirs of runs whose process is gone (SIGKILL leaves no chance to clean up), and
    stop the built-in servers recorded in them: only private directories (0700, not symlinks) owned
    by this user, named after a pid that no longer runs."""
    import os
    import stat
    import tempfile

    import psutil

    removed, root = [], tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(root) if n.startswith(TEMP_PREFIX)]
    except OSError:
        return removed
    for name in names:
        pid = name[len(TEMP_PREFIX):].split("-")[0]
        path = os.path.join(root, name)
        try:
            info = os.lstat(path)
            alive = pid.isdigit() and psutil.pid_exists(int(pid)) and \
                psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
        except (OSError, psutil.Error):
            continue
        if not alive and pid.isdigit() and stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() \
                and not stat.S_IMODE(info.st_mode) & 0o077:
            # Servers the dead run recorded there are stopped first: records carry pid + create time,
            # so a reused pid is never signalled (registry.process_state).
            from addrinuse.control import stop_servers
            from addrinuse.registry import Registry

            try:
                stop_servers(Registry(path), everything=True, sig=9, timeout=2.0)
            except AddrinuseError:
                pass
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class Runner:
    """What an action may use (the `ctx` of actions.action):

    backend       the connection-table backend name ("auto", "netlink", "psutil")
    registry      where servers started by the run are recorded
    sockets       {key: socket} opened by socket steps; closed at the end
    servers       {step id: handle} of servers (stop(sig, timeout) -> dict); stopped at the end
    results       {step id: result dict} of the steps so far; `ended[step id]` its monotonic end
    step          the id of the step running now
    port(ref), value(ref), result(ref), entries(...), defer(fn), progress(text)
    """

    def __init__(self, scenario: Scenario, backend: str = "auto", on_step: Callable | None = None,
                 on_progress: Callable[[str], None] | None = None):
        self.scenario, self.backend = scenario, backend
        self.on_step = on_step or (lambda row: None)
        self.on_progress = on_progress or (lambda text: None)
        self._registry, self._temp_dir = None, None
        self.sockets: dict[str, socket.socket] = {}
        self.servers: dict = {}
        self.results: dict[str, dict] = {}
        self.ended: dict[str, float] = {}
        self.step = ""
        self._deferred: list[Callable[[], None]] = []
        self._wait_began = 0.0
        self.report = Report(scenario.name, scenario.purpose, scenario.explain, scenario.path, list(scenario.states))

    # -- what actions use -------------------------------------------------------------------
    @property
    def registry(self):
        """Created on first use: a run that starts no built-in server makes no temp dir."""
        if self._registry is None:
            self._registry, self._temp_dir = _registry()
        return self._registry

    def port(self, ref) -> int:
        """A port parameter as a number: "new" -> 0 (the kernel picks), "@step" -> that step's port."""
        if ref == "new":
            return 0
        if isinstance(ref, int):
            return ref
        return int(self.value(ref if "." in ref else ref + ".port"))

    def result(self, ref: str) -> dict:
        return self.results[ref[1:].partition(".")[0]]

    def value(self, ref: str):
        sid, _, key = ref[1:].partition(".")
        return self.results[sid].get(key or "port")

    def entries(self, port: int, states=(), side: str = "local", host: str = "127.0.0.1") -> list:
        """Connection-table entries of ours on `port`: side "local" = bound to host:port (a server's
        side), "remote" = connected to host:port (its clients' side), "any" = both. Matched by
        address and port, never by port number alone (issue 9). Their states count as observed."""
        from addrinuse.conntable import snapshot
        from addrinuse.conntable.match import bound_here, same_address

        found = []
        for e in snapshot(port, list(states) or None, self.backend, local=(side == "local")):
            here = bound_here(e, host, port)
            there = e.rport == port and same_address(host, e.raddr) if e.raddr != "*" else False
            if (side == "local" and here) or (side == "remote" and there) or (side == "any" and (here or there)):
                found.append(e)
        self.report.states_seen.update(e.state for e in found)
        return found

    def defer(self, function: Callable[[], None]) -> None:
        """Run `function` when the experiment ends, whatever happened (last deferred runs first)."""
        self._deferred.append(function)

    def progress(self, text: str) -> None:
        """Report a wait in progress; passed on once the current wait has lasted a second."""
        if time.monotonic() - self._wait_began >= PROGRESS_AFTER_S:
            self.on_progress(text)

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> Report:
        began = time.monotonic()
        checked = {e.step for e in self.scenario.expect}
        table = actions()
        sweep_stale()
        try:
            for step in self.scenario.steps:
                self.step, self._wait_began = step.id, time.monotonic()
                result = table[step.do].run(self, step.params)
                self.results[step.id] = result
                self.ended[step.id] = time.monotonic()
                if isinstance(result.get("port"), int) and result["port"]:
                    self.report.ports.append(result["port"])
                row = {"id": step.id, "do": step.do, "t_s": round(self.ended[step.id] - began, 3), "result": result}
                self.report.steps.append(row)
                self.on_step(row)
                if result.get("ok") is False and step.id not in checked:
                    raise StepFailed(f"step {step.id} ({step.do}) failed and nothing expects it to: "
                                     + _failure_text(result))
            for expect in self.scenario.expect:
                self.report.checks += checks.check(expect, self.results[expect.step], self.value)
        except StepFailed as err:
            self.report.message = str(err)
        except CannotRun as err:
            self.report.message, self.report.cannot_run = f"step {self.step}: {err}", True
        except AddrinuseError as err:  # e.g. a host that does not resolve: this experiment fails, the run goes on
            self.report.message = f"step {self.step}: {err}"
        finally:
            try:
                self.cleanup()
            finally:
                if self._temp_dir:
                    shutil.rmtree(self._temp_dir, ignore_errors=True)
                self.report.duration_s = time.monotonic() - began
        self.report.results = self.results
        return self.report

    def cleanup(self) -> None:
        """Undo everything, each part even if another part fails."""
        errors = []
        for undo in [*reversed(self._deferred), *(h.kill for h in reversed(list(self.servers.values()))),
                     *(s.close for s in self.sockets.values())]:
            try:
                undo()
            except Exception as err:  # noqa: BLE001 - every undo runs; the first error is raised after
                errors.append(err)
        self._deferred.clear()
        self.servers.clear()
        self.sockets.clear()
        if self._registry is not None:
            from addrinuse.control import stop_servers

            stop_servers(self._registry, everything=True, sig=9)
        if errors:
            raise errors[0]


def _failure_text(result: dict) -> str:
    if result.get("message"):
        return result["message"]
    return f"{result.get('syscall') or 'the call'}() failed with {result.get('error')}"


def run(scenario: Scenario, backend: str = "auto", on_step=None, on_progress=None) -> Report:
    """Run one scenario, or report it skipped when this machine lacks a requirement it declares."""
    reason = missing(scenario.requires)
    if reason:
        return Report(scenario.name, scenario.purpose, scenario.explain, scenario.path, list(scenario.states),
                      skipped=reason)
    return Runner(scenario, backend, on_step, on_progress).run()
