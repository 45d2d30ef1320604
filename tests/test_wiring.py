"""The wiring of issues 11, 12 and 15 into the CLI, for real: `watch --source trace` as a real process
reading the real tracepoint (root and tracefs; skipped with the reason elsewhere), its fallback to
polling as an unprivileged user, `watch --svg` written on Ctrl-C, `demo --report`, and a lazy
addrinuse.lab. Connections are ours by address and 4-tuple: the busy machine mirrors every port
we listen on at 127.0.0.2/3, and those must not show up."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from addrinuse.tracefs import tracefs_root, unavailable_reason

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
NS = {"s": "http://www.w3.org/2000/svg"}
needs_tracepoint = pytest.mark.skipif(unavailable_reason() is not None,
                                      reason=f"the kernel tracepoint is unavailable here: {unavailable_reason()}")


class Watch:
    """`python -m addrinuse watch ...` as a real process; its output read line by line as it comes."""

    def __init__(self, *args, env=None, prefix=()):
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "addrinuse", "watch", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        self.out, self.err = [], []
        self._out_fd = self.proc.stdout.fileno()
        self._buf = {self._out_fd: b"", self.proc.stderr.fileno(): b""}

    def _pump(self, timeout: float) -> None:
        ready, _, _ = select.select(list(self._buf), [], [], timeout)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                continue
            data = self._buf[fd] + chunk
            *lines, self._buf[fd] = data.split(b"\n")
            (self.out if fd == self._out_fd else self.err).extend(x.decode() for x in lines)

    def wait_line(self, predicate, stream: str = "out", timeout: float = 15.0) -> str:
        lines = self.out if stream == "out" else self.err
        deadline = time.monotonic() + timeout
        while True:
            found = next((line for line in lines if predicate(line)), None)
            if found is not None:
                return found
            if time.monotonic() > deadline or self.proc.poll() is not None and not self._pending():
                raise AssertionError(f"no such line on {stream}; out={self.out[-5:]} err={self.err[-5:]}")
            self._pump(0.05)

    def _pending(self) -> bool:
        ready, _, _ = select.select(list(self._buf), [], [], 0)
        return bool(ready)

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.out if line.startswith("{")]

    def stop(self, sig=signal.SIGINT, timeout: float = 15.0) -> int:
        """Send sig (None: let it end by itself, e.g. --duration), then collect the rest of its output."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)  # our own child, by its pid
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        for fd, rest in self._buf.items():
            (self.out if fd == self._out_fd else self.err).extend(
                x.decode() for x in (rest + (out if fd == self._out_fd else err)).split(b"\n") if x)
        return self.proc.returncode


def instances(pid: int) -> list[str]:
    base = os.path.join(tracefs_root(), "instances")
    return [n for n in os.listdir(base) if n.startswith(f"addrinuse-{pid}-")]


def free_port() -> int:
    """A port no socket of any address or family is on (a dual-stack [::] bind conflicts with all)."""
    with socket.socket(socket.AF_INET6) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 0))
        return s.getsockname()[1]


def listener(family=socket.AF_INET, addr: str = "127.0.0.1") -> socket.socket:
    """A listener on a port the kernel picks, made before the watch starts (a port picked and
    released first could meanwhile become someone's ephemeral port)."""
    lsn = socket.socket(family)
    if family == socket.AF_INET6:
        lsn.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    lsn.bind((addr, 0))
    lsn.listen()
    return lsn


def server_closes_first(lsn: socket.socket) -> int:
    """One connection to 127.0.0.1 on the listener's port that the server's side closes first; the
    client closes after its FIN was ACKed (after the hand-off), then the listener closes. Returns
    the client's port."""
    port = lsn.getsockname()[1]
    try:
        with socket.create_connection(("127.0.0.1", port)) as client:
            server_side, _ = lsn.accept()
            server_side.close()
            assert client.recv(1) == b""  # the server's FIN
            client_port = client.getsockname()[1]
            wait_for(lambda: _handed_off(port, client_port), what="the server's side handed to a timewait socket")
    finally:
        lsn.close()
    return client_port


def _handed_off(port: int, client_port: int) -> bool:
    from addrinuse.conntable import snapshot

    return any(e.rport == client_port and e.state == "FIN_WAIT2" and not e.inode for e in snapshot(port, local=True))


def mine(events: list[dict], port: int, client_port: int) -> list[tuple]:
    """(previous, state, source, event) of the server's side of our connection, in order."""
    return [(e["previous"], e["state"], e["source"], e["event"]) for e in events
            if e.get("lport") == port and e.get("rport") == client_port]


# -- watch --source trace ---------------------------------------------------------------------------

@needs_tracepoint
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_trace_streams_each_change_and_removes_its_instance(sig):
    lsn = listener()
    port = lsn.getsockname()[1]
    watch = Watch("--port", port, "--host", "127.0.0.1", "--source", "trace", "--json")
    try:
        start = watch.wait_line(lambda line: "Ctrl-C to end." in line, "err")
        assert start == f"Tracing 127.0.0.1:{port} at sock:inet_sock_set_state. Ctrl-C to end." == watch.err[0]
        assert instances(watch.proc.pid), "no tracefs instance while tracing"
        client_port = server_closes_first(lsn)
        # As it happens: the inferred start of TIME_WAIT arrives while the watch still runs.
        watch.wait_line(lambda line: f'"rport": {client_port}' in line and '"inferred"' in line)
        watch.wait_line(lambda line: f'"lport": {client_port}' in line and '"state": "CLOSED"' in line)
        watch.wait_line(lambda line: f'"lport": {port}, "raddr": "*"' in line and '"state": "CLOSED"' in line)
        assert watch.proc.poll() is None
    finally:
        code = watch.stop(sig)
    assert code == 0 and start
    events = watch.events()
    summary = events[-1]
    assert summary["event"] == "summary" and summary["source"] == "trace" and summary["lost"] == 0
    ours = mine(events, port, client_port)
    assert ours == [("LISTEN", "SYN_RECV", "trace", "changed"), ("SYN_RECV", "ESTABLISHED", "trace", "changed"),
                    ("ESTABLISHED", "FIN_WAIT1", "trace", "changed"), ("FIN_WAIT1", "FIN_WAIT2", "trace", "changed"),
                    ("FIN_WAIT2", "FIN_WAIT2", "trace", "handoff"), ("FIN_WAIT2", "TIME_WAIT", "inferred", "changed")]
    client = [(e["previous"], e["state"]) for e in events[:-1] if e["lport"] == client_port and e["rport"] == port]
    assert client == [("SYN_SENT", "ESTABLISHED"), ("ESTABLISHED", "CLOSE_WAIT"), ("CLOSE_WAIT", "LAST_ACK"),
                      ("LAST_ACK", "CLOSED")]
    # --host 127.0.0.1: the busy machine's mirror of this port (127.0.0.2/3) is not shown.
    assert all("127.0.0.1" in (e["laddr"], e["raddr"]) for e in events[:-1])
    changes = [e for e in events[:-1] if e["event"] == "changed"]
    assert summary["transitions"] == len(changes) and summary["handoffs"] == len(events) - 1 - len(changes)
    assert sum(row["entries"] for row in summary["states"].values()) == len(changes)
    assert all(set(e) == {"t_s", "event", "source", "family", "laddr", "lport", "raddr", "rport", "previous", "state"}
               for e in events[:-1])
    wait_for(lambda: not instances(watch.proc.pid), what="the tracefs instance to be removed")


@needs_tracepoint
def test_trace_instance_is_removed_when_the_watch_is_killed():
    """SIGKILL runs no cleanup in the process: the Tracer's janitor removes the instance."""
    watch = Watch("--source", "trace", "--port", free_port(), "--json")
    try:
        watch.wait_line(lambda line: "Ctrl-C to end." in line, "err")
        assert instances(watch.proc.pid)
    finally:
        code = watch.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL
    wait_for(lambda: not instances(watch.proc.pid), what="the janitor to remove the tracefs instance")


@needs_tracepoint
def test_trace_text_fits_80_columns_and_a_dual_stack_server_is_matched_to_its_ipv4_peer(tmp_path):
    """Text mode; the server listens on [::] (dual-stack), its side is ::ffff:127.0.0.1, its IPv4
    client's is 127.0.0.1: the peer's FIN is still matched, and --host 127.0.0.1 keeps both."""
    from addrinuse.sockets import has_ipv6_loopback

    if not has_ipv6_loopback():
        pytest.skip("no IPv6 on this machine: no dual-stack listener")
    lsn = listener(socket.AF_INET6, "::")
    port = lsn.getsockname()[1]
    watch = Watch("--port", port, "--host", "127.0.0.1", "--source", "trace", "--state", "TIME_WAIT",
                  "--svg", tmp_path / "c.svg")
    try:
        watch.wait_line(lambda line: "Ctrl-C to end." in line)
        client_port = server_closes_first(lsn)
        line = watch.wait_line(lambda line: f"127.0.0.1:{client_port}" in line and "TIME_WAIT" in line)
    finally:
        assert watch.stop() == 0
    assert line.split()[1:] == [f"127.0.0.1:{port}", f"127.0.0.1:{client_port}", "FIN_WAIT2>TIME_WAIT~"]
    assert max(map(len, watch.out)) <= 80 and max(map(len, watch.err)) <= 80
    assert watch.out[0] == f"Tracing 127.0.0.1:{port} (TIME_WAIT) at sock:inet_sock_set_state. Ctrl-C to end."
    assert "TIME_WAIT" in " ".join(watch.out) and "~ inferred from the peer's FIN" in " ".join(watch.out)
    # --state TIME_WAIT: changes into or out of it only.
    rows = [line for line in watch.out if line.startswith(" ") and "." in line.split()[0]]
    assert rows and all("TIME_WAIT" in line for line in rows)
    root = ET.parse(tmp_path / "c.svg").getroot()
    assert root.find("s:title", NS).text == f"Entries per state on port {port} of 127.0.0.1"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run watch as an unprivileged user")
def test_trace_falls_back_to_polling_and_says_so_where_there_is_no_tracepoint():
    """As uid 65534 tracefs is closed: the watch polls, and the start line and the summary say why."""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if subprocess.run([*nobody, sys.executable, "-c", "pass"], capture_output=True).returncode:
        pytest.skip(f"uid 65534 cannot run {sys.executable} here")
    for as_json in (False, True):
        watch = Watch("--port", free_port(), "--source", "trace", "--duration", "0.3",
                      *(["--json"] if as_json else []), prefix=nobody)
        assert watch.stop(None, timeout=30) == 0, watch.err
        start = " ".join(" ".join((watch.err if as_json else watch.out)[:2]).split())
        assert "the tracepoint is unavailable: the tracepoint needs root" in start
        assert start.endswith("(netlink; no tracepoint). Ctrl-C to end.") and start.startswith("the tracepoint")
        if as_json:
            summary = watch.events()[-1]
            assert summary["source"] == "poll" and "needs root" in summary["trace_unavailable"]
        else:
            assert any(line.startswith("summary after") for line in watch.out) and max(map(len, watch.out)) <= 80


def test_trace_refuses_until_empty_and_a_bad_svg_path_before_watching(run, tmp_path):
    out = run("watch", "--source", "trace", "--until-empty")
    assert out.exit_code == 2 and "use --source poll" in out.stderr and out.stdout == ""
    for bad, words in ((tmp_path / "missing" / "c.svg", "no such directory"), (tmp_path, "is a directory")):
        out = run("watch", "--svg", bad, "--json")
        assert out.exit_code == 2 and words in out.stderr and len(out.stderr.strip().splitlines()) == 1
        assert json.loads(out.stdout)["error"]["code"] == 2 and "Ctrl-C" not in out.stderr


# -- watch --svg ------------------------------------------------------------------------------------

def test_svg_is_written_on_ctrl_c(tmp_path):
    lsn = listener()
    port = lsn.getsockname()[1]
    target = tmp_path / "counts.svg"
    watch = Watch("--port", port, "--host", "127.0.0.1", "--svg", target, "--interval", "0.05")
    try:
        watch.wait_line(lambda line: "Ctrl-C to end." in line)
        client_port = server_closes_first(lsn)
        watch.wait_line(lambda line: "TIME_WAIT" in line)  # its endpoints may be on the line above
    finally:
        assert watch.stop(signal.SIGINT) == 0
    assert f"127.0.0.1:{client_port}" in " ".join(watch.out)
    assert any(line.startswith("chart (") for line in watch.err)
    assert any(line.startswith("summary after") for line in watch.out)
    root = ET.parse(target).getroot()
    lines = {e.get("data-state") for e in root.iter() if e.get("data-role") == "count-line"}
    assert "TIME_WAIT" in lines
    ends = [e for e in root.iter() if e.get("data-role") == "predicted-end"]
    assert len(ends) == 1 and f":{client_port}" in "".join(ends[0].itertext())  # ours only: --host


# -- demo --report ----------------------------------------------------------------------------------

def test_demo_report_draws_the_demo_port(run, tmp_path):
    out = run("demo", "--report", tmp_path / "r", "--json")
    assert out.exit_code == 0, out.stderr
    demo = out.json()
    names = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert names == ["demo-checks.svg", "demo-counts-1.svg", "report.html"]
    root = ET.parse(tmp_path / "r" / "demo-counts-1.svg").getroot()
    assert f"port {demo['port']}" in root.find("s:title", NS).text
    assert {e.get("data-state") for e in root.iter() if e.get("data-role") == "count-line"} >= {"LISTEN", "TIME_WAIT"}
    ends = [e for e in root.iter() if e.get("data-role") == "predicted-end"]
    assert len(ends) == demo["time_wait"] == demo["clients"]  # the demo's own entries, none of the busy machine's
    html = (tmp_path / "r" / "report.html").read_text()
    assert "<title>PASSED: addrinuse demo" in html and out.stderr.startswith("report (2 figures, ")
    bad = run("demo", "--report", tmp_path / "r" / "report.html")
    assert bad.exit_code == 2 and "Ctrl" not in bad.stdout and "1. start" not in bad.stdout


# -- start-up cost ----------------------------------------------------------------------------------

def test_the_lab_package_is_lazy():
    """The experiment engine imports addrinuse.lab.actions for every command: pair and agent stay out."""
    code = ("import sys, addrinuse.experiments.actions as a; a.actions(); "
            "print(sorted(m for m in sys.modules if m.startswith('addrinuse.lab')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["['addrinuse.lab',", "'addrinuse.lab.actions']"]
    from addrinuse import lab

    assert lab.Lab.__module__ == "addrinuse.lab.pair" and "unavailable_reason" in lab.__all__
    with pytest.raises(AttributeError):
        lab.nothing_here
