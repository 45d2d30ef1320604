"""One connection closed step by step, observed on both ends (experiment close-sequence).

The steps are held long enough for a poller to see each state it can:
  1. the server's side (the active closer) queues data the client does not read yet, then close():
     the FIN waits behind the data, so FIN_WAIT1 lasts until the client reads (a zero window);
  2. the client (the passive closer) drains: its ACKs take the server to FIN_WAIT2, the FIN takes the
     client to CLOSE_WAIT, where it stays until the application closes;
  3. the client closes: LAST_ACK until the server's ACK arrives (microseconds on loopback: only the
     kernel tracepoint sees it), and the server's side enters TIME_WAIT.
"""

from __future__ import annotations

import socket
import threading
import time

from addrinuse.conntable import get_backend


def _drain(sock: socket.socket) -> int:
    total = 0
    sock.settimeout(5)
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return total
        total += len(chunk)


class _Poller(threading.Thread):
    """Records, for each end of one connection, every state with the first and last time seen."""

    def __init__(self, port: int, interval: float, backend: str, t0: float):
        super().__init__(daemon=True)
        self.port, self.interval, self.t0 = port, interval, t0
        self.source = get_backend(backend)
        self.seen: dict[tuple, dict] = {}  # (lport, rport) -> {state: [first, last]}
        self.gone: dict[tuple, float] = {}  # (lport, rport) -> first poll that no longer had it
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                now = time.monotonic() - self.t0
                present = set()
                for e in self.source.snapshot(self.port):
                    if e.state != "LISTEN":
                        present.add((e.lport, e.rport))
                        states = self.seen.setdefault((e.lport, e.rport), {})
                        states.setdefault(e.state, [now, now])[1] = now
                for key in self.seen.keys() - present - self.gone.keys():
                    self.gone[key] = now
                self.stop.wait(self.interval)
        finally:
            self.source.close()

    def lane(self, lport: int, rport: int) -> list[dict]:
        states = self.seen.get((lport, rport), {})
        lane = [{"state": s, "first_s": round(a, 4), "last_s": round(b, 4)}
                for s, (a, b) in sorted(states.items(), key=lambda kv: kv[1][0])]
        if (lport, rport) in self.gone:
            gone = round(self.gone[(lport, rport)], 4)
            lane.append({"state": "gone", "first_s": gone, "last_s": gone})
        return lane


def run_close_sequence(hold: float = 0.3, interval: float = 0.005, backend: str = "auto",
                       host: str = "127.0.0.1") -> dict:
    from addrinuse.tracepoint import StateTracer, unavailable_reason

    listener = socket.socket()
    listener.bind((host, 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    reason = unavailable_reason()
    tracer = StateTracer(port) if reason is None else None
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills quickly
    t0 = time.monotonic()
    poller = _Poller(port, interval, backend, t0)
    marks = {}
    try:
        if tracer:
            tracer.__enter__()
        poller.start()
        client.connect((host, port))
        server_side, _ = listener.accept()
        listener.close()
        client_port = client.getsockname()[1]
        time.sleep(hold)  # ESTABLISHED, held so the poller sees it

        server_side.setblocking(False)
        queued = 0
        try:
            while True:
                queued += server_side.send(b"x" * 65536)
        except BlockingIOError:
            pass
        marks["active_close"] = time.monotonic() - t0
        server_side.close()
        time.sleep(hold)  # FIN_WAIT1: the FIN sits behind data the client has not read

        marks["passive_drain"] = time.monotonic() - t0
        received = _drain(client)
        time.sleep(hold)  # FIN_WAIT2 on the server's side, CLOSE_WAIT on the client's

        marks["passive_close"] = time.monotonic() - t0
        client.close()
        time.sleep(hold)  # TIME_WAIT on the server's side; the client's side is gone
    finally:
        poller.stop.set()
        poller.join(timeout=5)
        client.close()
        listener.close()
        trace = tracer.transitions() if tracer else None
        if tracer:
            tracer.__exit__()
    result = {
        "port": port, "client_port": client_port, "hold_s": hold, "interval_s": interval,
        "bytes_queued": queued, "bytes_received": received, "marks": {k: round(v, 4) for k, v in marks.items()},
        "poll": {"active": poller.lane(port, client_port), "passive": poller.lane(client_port, port)},
        "trace": None, "trace_unavailable": reason,
    }
    if trace is not None:
        result["trace"] = {
            "active": [_step(t, t0) for t in trace if (t.sport, t.dport) == (port, client_port)],
            "passive": [_step(t, t0) for t in trace if (t.sport, t.dport) == (client_port, port)],
        }
    return result


def _step(t, t0: float) -> dict:
    return {"old": t.old, "new": t.new, "t_s": round(t.t - t0, 6)}


def lane_order(result: dict, end: str, source: str) -> list[str]:
    """The states one end went through, in order, by the poller or the tracepoint. A poller lane
    ends with 'gone' when its entry vanished; TIME_WAIT's start shows in the trace as FIN_WAIT2 ->
    CLOSED of the full socket and is named TIME_WAIT here."""
    if source == "poll":
        return [s["state"] for s in result["poll"][end]]
    steps = (result["trace"] or {}).get(end, [])
    order = [steps[0]["old"]] if steps else []
    for step in steps:
        new = "TIME_WAIT" if (step["old"], step["new"]) == ("FIN_WAIT2", "CLOSED") and end == "active" else step["new"]
        order.append("gone" if new == "CLOSED" else new)
    return order
