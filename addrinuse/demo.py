"""The canonical reproduction (`addrinuse demo`): every sentence is built from what happened.

Run it with a registry.MemoryRegistry: its servers are tied to the demo's process and nothing is
written to disk. It counts only its own connections (server address:port and its clients' ports)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from addrinuse.client import converse
from addrinuse.conntable import TCP_TIMEWAIT_LEN_S, TIMER_WHEEL_SLACK_S, get_backend, last_expiry
from addrinuse.control import start_server, stop_servers
from addrinuse.render import outcome
from addrinuse.server import ServerConfig
from addrinuse.sockets import ProbeResult, SocketOptions, probe, resolve


@dataclass
class DemoStep:
    title: str
    lines: list[str] = field(default_factory=list)


@dataclass
class DemoResult:
    host: str
    port: int = 0
    clients: int = 0
    time_wait: int = 0
    plain: ProbeResult | None = None
    reuseaddr: ProbeResult | None = None
    control_plain: ProbeResult | None = None
    control_reuseaddr: ProbeResult | None = None
    free_in: object = None  # estimate.Estimate: when the demo's port frees, and what kind of answer

    @property
    def reproduced(self) -> bool:
        return self.time_wait > 0 and self.plain is not None and self.plain.error == "EADDRINUSE"

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if not isinstance(v, ProbeResult)}
        out["free_in"] = self.free_in.to_dict() if self.free_in is not None else None
        for k in ("plain", "reuseaddr", "control_plain", "control_reuseaddr"):
            value = getattr(self, k)
            out[k] = value.to_dict() if value else None
        out["reproduced"] = self.reproduced
        return out


def describe(result: ProbeResult) -> str:
    return outcome(result, "bind() and listen() succeeded")


def ours(entries, address: str, port: int, client_ports) -> list:
    """The demo's own connections only: the server's side is its bound address:port, the other end
    one of the ports its clients connected from. Other programs' connections reuse the same port
    numbers between other addresses (as local or remote port) and must not be counted."""
    from addrinuse.conntable.match import bound_here

    clients = set(client_ports)
    return [e for e in entries if bound_here(e, address, port) and e.rport in clients]


class Recording:
    """The demo's own entries on its port, polled at each step into a figures.CountRecorder (for
    `demo --report`): the server's listener, its side of each connection and the clients' sides,
    by address and 4-tuple. One poll is one sock_diag walk of the port (~1 ms); without a
    recording the demo makes none of them."""

    def __init__(self, recorder, address: str, t0: float):
        self.recorder, self.address, self.t0 = recorder, address, t0
        self.port: int | None = None  # the demo's port: the first server's
        self.clients: set[int] = set()

    def mine(self, entries) -> list:
        from addrinuse.conntable.match import bound_here, same_address

        return [e for e in entries
                if bound_here(e, self.address, self.port) and (e.state == "LISTEN" or e.rport in self.clients)
                or e.rport == self.port and e.lport in self.clients and same_address(self.address, e.raddr)]

    def poll(self, source=None) -> None:
        own = source is None
        source = source or get_backend()
        try:
            self.recorder.add(time.monotonic() - self.t0, self.mine(source.snapshot(self.port)))
        finally:
            if own:
                source.close()


def wait_time_wait(address: str, port: int, client_ports, want: int, timeout: float = 2.0,
                   recording: Recording | None = None):
    """Poll until `want` TIME_WAIT entries of our connections hold address:port (or the deadline passes)."""
    deadline = time.monotonic() + timeout
    source = get_backend()  # one backend (one netlink socket) for the whole poll
    try:
        while True:
            if recording is not None:
                recording.poll(source)
            entries = ours(source.snapshot(port, ["TIME_WAIT"], local=True), address, port, client_ports)
            if len(entries) >= want or time.monotonic() >= deadline:
                return entries
            time.sleep(0.01)
    finally:
        source.close()


def _close_cycle(registry, host: str, clients: int, reuseaddr: bool, tag: str, recording: Recording | None = None):
    config = ServerConfig(host=host, port=0, close="server-first", reuseaddr=reuseaddr)
    record = start_server(registry, config, name=f"demo-{tag}")
    if recording is not None:
        recording.port = record.port
        recording.poll()  # the listener alone
    try:
        talk = converse(host, record.port, clients)
        if recording is not None:
            recording.clients = set(talk.local_ports)
            recording.poll()  # the server closed first: its side in TIME_WAIT, the listener still there
    finally:
        report = stop_servers(registry, name=record.name)
    return record, talk, report


def run_demo(registry, host: str = "127.0.0.1", clients: int = 5, show=lambda step: None,
             counts=None) -> DemoResult:
    """The demo; `counts` (a figures.CountRecorder) records the demo's port at every step."""
    result = DemoResult(host=host)
    address = resolve(host)[1]
    recording = Recording(counts, address, time.monotonic()) if counts is not None else None
    record, talk, report = _close_cycle(registry, host, clients, reuseaddr=False, tag="a", recording=recording)
    result.port, result.clients = record.port, talk.count
    outcome = report.stopped[0]
    show(DemoStep("1. start a server without SO_REUSEADDR on a free port", [
        f"server {record.name} pid {record.pid} listening on {host}:{record.port} (SO_REUSEADDR off, close=server-first)"]))
    show(DemoStep(f"2. connect {talk.count} clients", [
        f"{talk.count} connections from ports {', '.join(map(str, talk.local_ports))}",
        f"the server closed {talk.server_closed_first} of {talk.count} first (it sent the first FIN)"]))
    show(DemoStep("3. kill the server", [
        f"SIGTERM to pid {record.pid}: {'exited' if outcome.exited else 'STILL RUNNING'} after {outcome.waited_s * 1000:.0f} ms"]))

    entries = wait_time_wait(address, record.port, talk.local_ports, talk.server_closed_first, recording=recording)
    seen_at = time.time()
    result.time_wait = len(entries)
    lines = [f"{len(entries)} TIME_WAIT entries hold local port {record.port}:"]
    lines += [f"  {e.laddr}:{e.lport} -> {e.raddr}:{e.rport}  {e.state}  pid {e.pid or '-'}"
              + ("" if e.expires_in_s is None else f"  {e.expires_in_s:.1f} s left") for e in entries]
    show(DemoStep(f"4. the connection table for port {record.port}", lines))

    result.plain = probe(host, record.port, SocketOptions())
    result.reuseaddr = probe(host, record.port, SocketOptions(reuseaddr=True))
    show(DemoStep("5. restart: bind and listen again", [
        f"without SO_REUSEADDR: {describe(result.plain)}",
        f"with SO_REUSEADDR:    {describe(result.reuseaddr)}"]))

    if recording is not None:
        recording.poll()  # after the restart probes (each bound and closed at once)
    control, control_talk, _ = _close_cycle(registry, host, clients, reuseaddr=True, tag="b")
    wait_time_wait(address, control.port, control_talk.local_ports, control_talk.server_closed_first)
    result.control_plain = probe(host, control.port, SocketOptions())
    result.control_reuseaddr = probe(host, control.port, SocketOptions(reuseaddr=True))
    show(DemoStep("6. why: the same cycle with an old server that DID set SO_REUSEADDR", [
        f"port {control.port}, {control_talk.server_closed_first} server-side closes, then killed",
        f"without SO_REUSEADDR: {describe(result.control_plain)}",
        f"with SO_REUSEADDR:    {describe(result.control_reuseaddr)}",
        *_rule(result)]))

    left = last_expiry(entries) if entries else 0.0
    from addrinuse.estimate import Estimate

    if left is not None:  # the timers were read at seen_at; the steps since took some of it
        left, source = max(0.0, left - (time.time() - seen_at)), "by the kernel's TIME_WAIT timers (sock_diag)"
        result.free_in = Estimate("exact", left, left + TIMER_WHEEL_SLACK_S, "TIME_WAIT timers")
    else:  # psutil has no timers: count from the moment the entries were seen
        left, source = max(0.0, seen_at + TCP_TIMEWAIT_LEN_S - time.time()), "counting 60 s from when they were seen"
        result.free_in = Estimate("upper_bound", 0.0, left + TIMER_WHEEL_SLACK_S, "no kernel timers with this backend")
    if recording is not None:
        recording.poll()  # the end: the entries still there, their timers
    when = time.strftime("%H:%M:%S", time.localtime(time.time() + left))
    show(DemoStep("7. when will the port be free?", [
        f"in {left:.1f} s, at {when}, {source}; TIME_WAIT lasts TCP_TIMEWAIT_LEN = 60 s, and the kernel's "
        f"timer wheel may add up to {TIMER_WHEEL_SLACK_S:.1f} s", f"(`addrinuse wait {record.port}` blocks until then)"]))
    return result


def _rule(result: DemoResult) -> list[str]:
    alone, both = result.reuseaddr, result.control_reuseaddr
    if alone and both and not alone.ok and both.ok:
        return ["rule on this kernel: SO_REUSEADDR passes TIME_WAIT entries only when BOTH the old server and "
                "the new one set it; the entries inherit the old listener's setting (inet_bind_conflict)."]
    if alone and alone.ok:
        return ["rule on this kernel: SO_REUSEADDR on the new socket alone gets past TIME_WAIT entries."]
    return ["this kernel refused SO_REUSEADDR in both cases: see 'addrinuse table' for what else holds the port."]
