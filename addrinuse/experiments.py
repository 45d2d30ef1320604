"""Run scenario files (experiments/*.toml) against the real kernel and check expected against observed.

Each run has its own state dir and only kernel-picked ports, so runs in parallel do not disturb each
other; everything a run started is stopped in `finally`, whatever happened."""

from __future__ import annotations

import os
import platform
import shutil
import signal as _signal
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from addrinuse.errors import SocketCallError
from addrinuse.scenario import Scenario, ScenarioError, load
from addrinuse.sockets import SocketOptions, bind_listen, errno_name, has_ipv6_loopback, new_socket, probe, resolve

ENV_DIR = "ADDRINUSE_EXPERIMENTS_DIR"
SYSCTLS = {
    "tcp_fin_timeout": "/proc/sys/net/ipv4/tcp_fin_timeout",
    "tcp_tw_reuse": "/proc/sys/net/ipv4/tcp_tw_reuse",
    "ip_local_port_range": "/proc/sys/net/ipv4/ip_local_port_range",
    "bindv6only": "/proc/sys/net/ipv6/bindv6only",
}


def experiments_dir() -> Path:
    """experiments/ at the top of the source tree (the package is installed from it), or $ADDRINUSE_EXPERIMENTS_DIR."""
    return Path(os.environ.get(ENV_DIR) or Path(__file__).resolve().parent.parent / "experiments")


def catalogue() -> list[Scenario]:
    return [load(p) for p in sorted(experiments_dir().glob("*.toml"))]


def find(name_or_path: str) -> Scenario:
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or os.sep in name_or_path:
        return load(candidate)
    path = experiments_dir() / f"{name_or_path}.toml"
    if not path.exists():
        names = ", ".join(p.stem for p in sorted(experiments_dir().glob("*.toml")))
        raise ScenarioError(name_or_path, "name", "no such experiment", f"use one of: {names}, or a .toml path")
    return load(path)


def sysctls() -> dict[str, str | None]:
    out = {}
    for key, path in SYSCTLS.items():
        try:
            out[key] = " ".join(Path(path).read_text().split())
        except OSError:
            out[key] = None
    return out


def missing_requirement(scenario: Scenario) -> str | None:
    from addrinuse.tracepoint import unavailable_reason

    for need in scenario.requires:
        if need == "ipv6" and not has_ipv6_loopback():
            return "no IPv6 loopback on this machine"
        elif need == "root" and os.geteuid() != 0:
            return "needs root"
        elif need == "tracefs" and unavailable_reason():
            return unavailable_reason()
    return None


@dataclass
class Check:
    what: str
    expected: object
    observed: object
    ok: bool | None  # None: could not be observed here (the observed field says why)

    def to_dict(self) -> dict:
        return {"what": self.what, "expected": self.expected, "observed": self.observed, "ok": self.ok}


@dataclass
class Report:
    name: str
    purpose: str
    explain: str
    path: str
    steps: list[dict] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    duration_s: float = 0.0
    skipped: str | None = None
    results: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.skipped is None and all(c.ok is not False for c in self.checks)

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "skipped": self.skipped,
                "checks": [c.to_dict() for c in self.checks], "steps": self.steps, "ports": sorted(set(self.ports)),
                "duration_s": round(self.duration_s, 3), "kernel": platform.release(), "sysctls": sysctls(),
                "explain": self.explain}


class Runner:
    def __init__(self, scenario: Scenario, backend: str = "auto", on_step=None):
        from addrinuse.registry import Registry

        self.scenario, self.backend, self.on_step = scenario, backend, on_step or (lambda row: None)
        self.state_dir = Path(tempfile.mkdtemp(prefix=f"addrinuse-{scenario.name}-"))
        self.registry = Registry(self.state_dir)
        self.sockets: dict[str, socket.socket] = {}
        self.results: dict[str, dict] = {}
        self.ended: dict[str, float] = {}
        self.report = Report(scenario.name, scenario.purpose, scenario.explain, str(scenario.path))

    # -- references -------------------------------------------------------------------------
    def port(self, ref: str) -> int:
        if ref == "new":
            return 0
        if not ref.startswith("@"):
            try:
                return int(ref)
            except ValueError:
                raise ScenarioError(self.scenario.path, "port", f"{ref!r} is not a port", "use 'new' or '@step'") from None
        return self.results[ref[1:]]["port"]

    def value(self, ref: str):
        sid, _, attr = ref[1:].partition(".")
        return self.results[sid].get(attr or "port")

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> Report:
        began = time.monotonic()
        try:
            for step in self.scenario.steps:
                result = getattr(self, f"do_{step.do}")(step.params)
                self.results[step.id] = result
                self.ended[step.id] = time.monotonic()
                if "port" in result and result["port"]:
                    self.report.ports.append(result["port"])
                row = {"id": step.id, "do": step.do, "result": result}
                self.report.steps.append(row)
                self.on_step(row)
            for expect in self.scenario.expect:
                self.report.checks += self.check(expect)
        finally:
            self.cleanup()
            self.report.duration_s = time.monotonic() - began
        self.report.results = self.results
        return self.report

    def cleanup(self) -> None:
        from addrinuse.control import stop_servers

        for sock in self.sockets.values():
            sock.close()
        stop_servers(self.registry, everything=True, sig=_signal.SIGKILL)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    # -- actions ------------------------------------------------------------------------------
    def do_server(self, p: dict) -> dict:
        from addrinuse.control import start_server
        from addrinuse.server import ServerConfig

        config = ServerConfig(host=p["host"], port=self.port(p["port"]), close=p["close"], reuseaddr=p["reuseaddr"],
                              reuseport=p["reuseport"], linger0=p["linger0"], spawn_child=p["spawn_child"])
        record = start_server(self.registry, config)
        child_pid = self.registry_pid(record.child) if record.child else None
        return {"name": record.name, "pid": record.pid, "host": record.host, "port": record.port,
                "child_pid": child_pid, "reuseaddr": record.reuseaddr}

    def registry_pid(self, name: str) -> int | None:
        records, _ = self.registry.load()
        return next((r.pid for r in records if r.name == name), None)

    def do_connect(self, p: dict) -> dict:
        from addrinuse.client import converse

        target = self.results[p["to"][1:]]
        talk = converse(target["host"], target["port"], p["count"])
        return {"count": talk.count, "server_closed_first": talk.server_closed_first,
                "local_ports": talk.local_ports, "policy": talk.policy}

    def do_kill(self, p: dict) -> dict:
        from addrinuse.control import stop_servers

        name = self.results[p["server"][1:]]["name"]
        report = stop_servers(self.registry, name=name, sig=getattr(_signal, f"SIG{p['signal']}"))
        return {"stopped": name, "exited": all(o.exited for o in report.stopped)}

    def _socket(self, p: dict, listen: bool) -> dict:
        opts = SocketOptions(p["reuseaddr"], p["reuseport"], False, p["v6only"])
        port = self.port(p["port"])
        try:
            if listen:
                sock = bind_listen(p["host"], port, opts)
            else:
                family, address = resolve(p["host"])
                sock = new_socket(family, opts)
                try:
                    sock.bind((address, port))
                except OSError as err:
                    sock.close()
                    raise SocketCallError("bind", err.errno or 0, p["host"], port) from err
        except SocketCallError as err:
            return {"ok": False, "error": err.errname, "errno": err.errno, "syscall": err.syscall, "port": port}
        key = f"sock{len(self.sockets)}"
        self.sockets[key] = sock
        return {"ok": True, "error": None, "syscall": None, "port": sock.getsockname()[1], "socket": key}

    def do_listen(self, p: dict) -> dict:
        return self._socket(p, listen=True)

    def do_bind(self, p: dict) -> dict:
        return self._socket(p, listen=False)

    def do_listen_bound(self, p: dict) -> dict:
        bound = self.results[p["socket"][1:]]
        sock = self.sockets[bound["socket"]]
        try:
            sock.listen(16)
        except OSError as err:
            return {"ok": False, "error": errno_name(err.errno), "errno": err.errno, "syscall": "listen",
                    "port": bound["port"]}
        return {"ok": True, "error": None, "syscall": None, "port": bound["port"]}

    def do_close(self, p: dict) -> dict:
        key = self.results[p["socket"][1:]]["socket"]
        self.sockets.pop(key).close()
        return {"closed": p["socket"]}

    def do_probe(self, p: dict) -> dict:
        result = probe(p["host"], self.port(p["port"]), SocketOptions(p["reuseaddr"], p["reuseport"], False, p["v6only"]))
        return result.to_dict()

    def _entries(self, port: int, states: list[str], side: str):
        from addrinuse.conntable import snapshot

        entries = snapshot(port, states or None, self.backend, local=(side == "local"))
        if side == "remote":
            return [e for e in entries if e.rport == port]
        return entries

    def do_table(self, p: dict) -> dict:
        port = self.port(p["port"])
        deadline = time.monotonic() + p["timeout"]
        entries = self._entries(port, p["states"], p["side"])
        while len(entries) < p["wait_for"] and time.monotonic() < deadline:
            time.sleep(0.01)
            entries = self._entries(port, p["states"], p["side"])
        return {"port": port, "count": len(entries), "pids": sorted({e.pid for e in entries if e.pid}),
                "entries": [e.to_dict() for e in entries]}

    def do_wait_gone(self, p: dict) -> dict:
        port = self.port(p["port"])
        start = self.ended[p["since"][1:]] if p["since"] else time.monotonic()
        deadline = time.monotonic() + p["timeout"]
        while self._entries(port, p["states"], "local"):
            if time.monotonic() > deadline:
                return {"port": port, "gone": False, "lifetime_s": None}
            time.sleep(p["interval"])
        vanished = time.monotonic()
        out = {"port": port, "gone": True, "lifetime_s": round(vanished - start, 3)}
        if p["then_probe"]:
            result = probe("127.0.0.1", port, SocketOptions())
            out.update(ok=result.ok, error=result.error, syscall=result.syscall,
                       gap_s=round(time.monotonic() - vanished, 4))
        return out

    def do_close_sequence(self, p: dict) -> dict:
        from addrinuse.closeseq import run_close_sequence

        return run_close_sequence(hold=p["hold"], interval=p["interval"], backend=self.backend)

    # -- checks -------------------------------------------------------------------------------
    def check(self, expect) -> list[Check]:
        from addrinuse.closeseq import lane_order

        result = self.results[expect.step]
        checks = []
        for key, want in expect.checks.items():
            if key == "holder":
                pid = self.value(want)
                checks.append(Check(f"{expect.what}: pid holding the port", pid, result.get("pids"),
                                    pid is not None and pid in result.get("pids", [])))
            elif key == "between":
                got = result.get("lifetime_s")
                checks.append(Check(f"{expect.what}: lifetime (s)", want, got,
                                    got is not None and want[0] <= got <= want[1]))
            elif key == "order":
                if expect.source == "trace" and result.get("trace") is None:
                    checks.append(Check(f"{expect.what} (kernel tracepoint)", want,
                                        f"skipped: {result.get('trace_unavailable')}", None))
                    continue
                got = lane_order(result, expect.end, expect.source)
                checks.append(Check(f"{expect.what} ({expect.source})", want, got, _subsequence(want, got)))
            else:
                got = result.get(key)
                checks.append(Check(f"{expect.what}: {key}", want, got, got == want))
        return checks


def _subsequence(want: list, got: list) -> bool:
    it = iter(got)
    return all(any(g == w for g in it) for w in want)


def run(scenario: Scenario, backend: str = "auto", on_step=None) -> Report:
    reason = missing_requirement(scenario)
    if reason:
        return Report(scenario.name, scenario.purpose, scenario.explain, str(scenario.path), skipped=reason)
    return Runner(scenario, backend, on_step).run()
