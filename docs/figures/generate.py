"""Regenerate the example figures in this folder from real runs on this machine's kernel.

    .venv/bin/python docs/figures/generate.py [OUTDIR]     # new real runs (about 65 s)
    .venv/bin/python docs/figures/generate.py --render      # redraw from the kept JSON inputs

Each figure's input is kept beside it as JSON (the test suite renders these real inputs too).

close-sequence.svg: one run of the close-sequence experiment's code (addrinuse.closeseq; the kernel
tracepoint needs root and tracefs, otherwise the figure shows polled states only).
time-wait-count.svg: five real connections on a kernel-picked loopback port, closed by the server
first, polled every 100 ms until their TIME_WAIT entries vanish (about 62 s)."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

from addrinuse.conntable import get_backend
from addrinuse.figures import CountRecorder, closeseq_to_sequence, counts_svg, sequence_svg, write_svg


def close_sequence(out: Path) -> None:
    from addrinuse.closeseq import run_close_sequence

    result = run_close_sequence()
    (out / "close-sequence.json").write_text(json.dumps(result, indent=1) + "\n")
    write_svg(out / "close-sequence.svg", sequence_svg(closeseq_to_sequence(result)))


def time_wait_count(out: Path, clients: int = 5, interval: float = 0.1) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(clients)
    port = listener.getsockname()[1]
    source, ours = get_backend(), set()
    recorder = CountRecorder(port, f"{clients} connections to port {port}: the server closes first, "
                                   f"TIME_WAIT holds the port for 60 s")
    began = time.monotonic()
    conns = []

    def poll() -> int:
        # Only our own connections: the listener's port AND one of our client ports (4-tuples).
        entries = [e for e in source.snapshot(port) if e.lport == port and (e.rport in ours or e.state == "LISTEN")
                   or e.rport == port and e.lport in ours]
        recorder.add(time.monotonic() - began, entries)
        return len(entries)

    def hold(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            poll()
            time.sleep(interval)

    try:
        hold(0.5)
        for _ in range(clients):
            client = socket.create_connection(("127.0.0.1", port))
            ours.add(client.getsockname()[1])
            conns.append((client, listener.accept()[0]))
        hold(1.5)
        for _, server_side in conns:
            server_side.close()  # the server's side sends the first FIN: it will hold TIME_WAIT
        hold(1.5)
        for client, _ in conns:
            client.close()
        hold(1.0)
        listener.close()
        deadline = time.monotonic() + 70
        while poll() and time.monotonic() < deadline:
            time.sleep(interval)
        poll()
    finally:
        for client, server_side in conns:
            client.close()
            server_side.close()
        listener.close()
        source.close()
    data = recorder.to_dict()
    (out / "time-wait-count.json").write_text(json.dumps(data, indent=1) + "\n")
    write_svg(out / "time-wait-count.svg", counts_svg(data))


def render(out: Path) -> None:
    """The figures again from the real inputs kept as JSON (after a change to the drawing code)."""
    result = json.loads((out / "close-sequence.json").read_text())
    write_svg(out / "close-sequence.svg", sequence_svg(closeseq_to_sequence(result)))
    write_svg(out / "time-wait-count.svg", counts_svg(json.loads((out / "time-wait-count.json").read_text())))


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    if sys.argv[1:] == ["--render"]:
        render(here)
    else:
        target = Path(sys.argv[1]) if len(sys.argv) > 1 else here
        close_sequence(target)
        time_wait_count(target)
    print("wrote close-sequence.svg and time-wait-count.svg")
