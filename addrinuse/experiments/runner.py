"""Run one scenario's steps against the real kernel; the runner is the `ctx` every action gets.

Each run has its own server registry and only kernel-picked ports (unless a file names one), so
runs in parallel do not disturb each other. Everything a run started is undone in `finally`,
whatever happened: sockets closed, servers stopped, deferred clean-ups run. Servers are recorded
in memory only (registry.MemoryRegistry) and tied to the runner's life (PR_SET_PDEATHSIG), so even
a SIGKILL of the runner leaves no process and no file behind."""

from __future__ import annotations

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


class Runner:
    """What an action may use (the `ctx` of actions.action):

    backend       the connection-table backend name ("auto", "netlink", "psutil")
    registry      where servers started by the run are recorded
    sockets       {key: socket} opened by socket steps; closed at the end
    servers       {step id: handle} of servers (stop(sig, timeout) -> dict); stopped at the end
    results       {step id: result dict} of the steps so far; `ended[step id]` its monotonic end
    step          the id of the step running now
    port(ref), value(ref), result(ref), entries(...), connected(port, local_ports), defer(fn), progress(text)
    """

    def __init__(self, scenario: Scenario, backend: str = "auto", on_step: Callable | None = None,
                 on_progress: Callable[[str], None] | None = None):
        self.scenario, self.backend = scenario, backend
        self.on_step = on_step or (lambda row: None)
        self.on_progress = on_progress or (lambda text: None)
        self._registry = None
        self.sockets: dict[str, socket.socket] = {}
        self.servers: dict = {}
        self.results: dict[str, dict] = {}
        self.ended: dict[str, float] = {}
        # server port -> the client ports of the connections this run opened to it (connect steps)
        self.clients: dict[int, set[int]] = {}
        self.step = ""
        self._deferred: list[Callable[[], None]] = []
        self._wait_began = 0.0
        self.report = Report(scenario.name, scenario.purpose, scenario.explain, scenario.path, list(scenario.states))

    # -- what actions use -------------------------------------------------------------------
    @property
    def registry(self):
        """Created on first use, in memory: its servers die with this process whatever ends it."""
        if self._registry is None:
            from addrinuse.registry import MemoryRegistry

            self._registry = MemoryRegistry()
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

    def connected(self, port: int, local_ports) -> None:
        """Connections this run opened to a server's port, by their client ports: entries() counts those."""
        self.clients.setdefault(port, set()).update(local_ports)

    def entries(self, port: int, states=(), side: str = "local", host: str = "127.0.0.1") -> list:
        """Connection-table entries of ours on `port`: side "local" = bound to host:port (a server's
        side), "remote" = connected to host:port (its clients' side), "any" = both. Matched by
        address and port, never by port number alone; a connected entry must also be one this run
        opened (connect steps), by its 4-tuple: the kernel may hand a new server a port whose
        earlier clients' TIME_WAIT entries still point at it (they sit on the clients' ports, so
        they never blocked the bind). Their states count as observed."""
        from addrinuse.conntable import snapshot
        from addrinuse.conntable.match import bound_here, same_address

        found, ours = [], self.clients.get(port, set())
        for e in snapshot(port, list(states) or None, self.backend, local=(side == "local")):
            here = bound_here(e, host, port)
            there = e.rport == port and same_address(host, e.raddr) if e.raddr != "*" else False
            if e.raddr != "*" and (e.rport if here else e.lport) not in ours:
                continue  # connected to host:port, but not by a connection of this run
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

            try:
                stop_servers(self._registry, everything=True, sig=9)
            finally:
                self._registry.close()
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
