"""One connection closed step by step, observed on both ends (experiment close-sequence).

The steps are held long enough for a poller to see each state it can:
  1. the server's side (the active closer) queues data the client does not read yet, then close():
     the FIN waits behind the data, so FIN_WAIT1 lasts until the client reads (a zero window);
  2. the client (the passive closer) drains: its ACKs take the server to FIN_WAIT2, the FIN takes the
     client to CLOSE_WAIT, where it stays until the application closes;
  3. the client closes: LAST_ACK until the server's ACK arrives (microseconds on loopback: only the
     kernel tracepoint sees it), and the server's side enters TIME_WAIT.
The server's side is orphaned (closed by the application) when its FIN is ACKed in step 2, so the
kernel hands it to a timewait socket right then (FIN_WAIT2 -> CLOSE in the tracepoint), still in
substate FIN_WAIT2; its TIME_WAIT begins only at the client's FIN in step 3, `hold` seconds later
(addrinuse.tracelane.lane builds the lanes; sock_diag shows the substate as FIN_WAIT2).
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
    tracer = StateTracer(port, addrs=(host,)) if reason is None else None
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
        trace = tracer.snapshot() if tracer else None
        if tracer:
            tracer.__exit__()
    result = {
        "port": port, "client_port": client_port, "hold_s": hold, "interval_s": interval,
        "bytes_queued": queued, "bytes_received": received, "marks": {k: round(v, 4) for k, v in marks.items()},
        "poll": {"active": poller.lane(port, client_port), "passive": poller.lane(client_port, port)},
        "trace": None, "trace_unavailable": reason,
    }
    if trace is not None:
        from addrinuse.tracelane import lane

        active = [e for e in trace if (e.lport, e.rport) == (port, client_port)]
        passive = [e for e in trace if (e.lport, e.rport) == (client_port, port)]
        result["trace"] = {"active": _steps(lane(active, passive), t0), "passive": _steps(lane(passive, active), t0)}
    return result


def _steps(states: list[dict], t0: float) -> list[dict]:
    """Lane states -> steps {old, new, t_s, source}; a FIN_WAIT2 handed off to a timewait socket
    carries handoff_s (when its full socket closed: not the start of TIME_WAIT)."""
    steps = []
    for before, after in zip(states, states[1:]):
        step = {"old": before["state"], "new": after["state"], "t_s": round(after["mono"] - t0, 6),
                "source": after["source"]}
        if "handoff_mono" in after:
            step["handoff_s"] = round(after["handoff_mono"] - t0, 6)
        steps.append(step)
    return steps


def lane_order(result: dict, end: str, source: str) -> list[str]:
    """The states one end went through, in order, by the poller or the tracepoint. A poller lane
    ends with 'gone' when its entry vanished; in the trace, a socket that closed for good
    (CLOSED) is 'gone' too. TIME_WAIT in the trace starts at the peer's FIN (tracelane.lane)."""
    if source == "poll":
        return [s["state"] for s in result["poll"][end]]
    steps = (result["trace"] or {}).get(end, [])
    order = [steps[0]["old"]] if steps else []
    order += ["gone" if step["new"] == "CLOSED" else step["new"] for step in steps]
    return order
