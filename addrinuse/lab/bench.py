"""For `make bench`: the streamed tracepoint against polling sock_diag, on loopback.

trace_vs_poll() returns
- latency: from the kernel's timestamp of a LISTEN transition to userspace. The trace's consumer
  gets the event from Tracer.events(); the poller (NetlinkBackend, the `watch` backend) notices the
  listener at its next poll, measured against the same kernel timestamp.
- CPU per event: the trace reader thread's CPU (parse + filter) / events it delivered, against the
  poll thread's CPU / listeners it detected. The tracepoint's own cost in the kernel is paid by the
  process whose socket changes state and is not counted (nor is sock_diag's walk of the hash
  tables in polls: both are kernel time of the measured thread only where it runs in that thread).
- burst: `burst` listen/close cycles from another process as fast as it can (2 events each):
  events received, and lost (ring-buffer overruns; per-CPU buffers of 1410 KiB by default).
Needs root (tracefs)."""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import threading
import time

from addrinuse.tracepoint import Tracer

HOST = "127.0.0.1"
GENERATOR = """
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
made = 0
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port)); s.listen(1); made += 1
    except OSError:
        pass
    s.close()
print(made)
"""


def _port() -> int:
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _listen(port: int) -> socket.socket | None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((HOST, port))
        s.listen(1)
        return s
    except OSError:  # someone took the port between two cycles: that cycle is skipped
        s.close()
        return None


def _summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    values = sorted(values)
    return {"n": len(values), "median_ms": round(statistics.median(values) * 1000, 3),
            "p90_ms": round(values[int(0.9 * (len(values) - 1))] * 1000, 3), "max_ms": round(values[-1] * 1000, 3)}


def _spaced(port: int, cycles: int, hold_s: float, interval_s: float) -> dict:
    from addrinuse.conntable.netlink import NetlinkBackend

    trace_lat, detections, polls = [], [], [0]
    stop = threading.Event()
    cpu = {}

    def poll() -> None:
        backend = NetlinkBackend()
        present = False
        while not stop.is_set():
            # by address too: another program may listen on the same port number elsewhere
            found = any(e.laddr == HOST for e in backend.snapshot(port, ["LISTEN"], local=True))
            polls[0] += 1
            if found and not present:
                detections.append(time.monotonic())
            present = found
            stop.wait(interval_s)
        backend.close()
        cpu["poll"] = time.thread_time()

    with Tracer(("state",), ports=(port,), addrs=(HOST,), guard=False) as tracer:
        def consume() -> None:
            for e in tracer.events(timeout=None):
                trace_lat.append(time.monotonic() - e.mono)

        threads = [threading.Thread(target=poll, daemon=True), threading.Thread(target=consume, daemon=True)]
        for t in threads:
            t.start()
        for _ in range(cycles):
            s = _listen(port)
            time.sleep(hold_s)
            if s:
                s.close()
            time.sleep(hold_s)
        stop.set()
        threads[0].join()
        tracer.sync()
        listens = [e.mono for e in tracer.history if e.new_state == "LISTEN"]
        delivered = len(tracer.history)
    threads[1].join(timeout=5)
    poll_lat = [d - max(m for m in listens if m <= d) for d in detections if any(m <= d for m in listens)]
    trace_cpu = tracer.reader_cpu_s / delivered if delivered else None
    poll_cpu = cpu["poll"] / len(detections) if detections else None
    return {
        "cycles": cycles, "interval_s": interval_s, "events": delivered, "polls": polls[0],
        "poll_missed": cycles - len(detections),
        "trace_latency": _summary(trace_lat), "poll_latency": _summary(poll_lat),
        "trace_cpu_us_per_event": round(trace_cpu * 1e6, 2) if trace_cpu else None,
        "poll_cpu_us_per_event": round(poll_cpu * 1e6, 2) if poll_cpu else None,
        "poll_over_trace_cpu": round(poll_cpu / trace_cpu, 1) if trace_cpu and poll_cpu else None,
    }


def _burst(port: int, cycles: int) -> dict:
    with Tracer(("state",), ports=(port,), addrs=(HOST,), keep=False, guard=False) as tracer:
        consumer = threading.Thread(target=lambda: sum(1 for _ in tracer.events(timeout=None)), daemon=True)
        consumer.start()
        t = time.monotonic()
        made = int(subprocess.run([sys.executable, "-c", GENERATOR, str(port), str(cycles)], capture_output=True,
                                  text=True, check=True).stdout)
        elapsed = time.monotonic() - t
        tracer.sync(timeout=10)
        lost = tracer.lost()
    consumer.join(timeout=5)
    cpu = tracer.reader_cpu_s
    return {"cycles": cycles, "expected": 2 * made, "received": tracer.parsed, "lost": lost,
            "generator_s": round(elapsed, 3),
            "trace_cpu_us_per_event": round(cpu / tracer.parsed * 1e6, 2) if tracer.parsed else None}


def lab_costs(labs: int = 10) -> dict:
    """Medians over `labs` labs (no tracer) of: unshare(CLONE_NEWNET) in the agent, both agents
    forked and ready, the veth pair made, addressed and up (two `ip -batch` runs), the whole
    build, and the teardown."""
    from addrinuse.lab import Lab

    rows = []
    for _ in range(labs):
        t = time.monotonic()
        lab = Lab(trace=()).__enter__()
        built = time.monotonic()
        lab.close()
        rows.append({**lab.cost_ms, "build": (built - t) * 1000, "teardown": (time.monotonic() - built) * 1000})
    keys = ("unshare_a", "unshare_b", "namespaces", "veth", "build", "teardown")
    return {"labs": labs, **{f"{k}_ms": round(statistics.median(r[k] for r in rows), 2) for k in keys}}


def trace_vs_poll(cycles: int = 25, hold_s: float = 0.1, interval_s: float = 0.05, burst: int = 10_000) -> dict:
    """hold_s > interval_s, so the poller can see every listener (it reports the ones it missed)."""
    port = _port()
    return {"spaced": _spaced(port, cycles, hold_s, interval_s), "burst": _burst(port, burst)}


if __name__ == "__main__":
    import json

    print(json.dumps({"lab": lab_costs(), "tracepoint": trace_vs_poll()}, indent=2))
