"""The streamed tracepoint reader against the real kernel (root + tracefs; skips otherwise)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from addrinuse import tracepoint
from addrinuse.closeseq import run_close_sequence
from addrinuse.tracefs import remove_stale, start_time
from addrinuse.tracelane import lane
from addrinuse.tracepoint import Tracer
from tests.helpers import wait_for

pytestmark = pytest.mark.skipif(tracepoint.unavailable_reason() is not None,
                                reason=str(tracepoint.unavailable_reason()))
HOST = "127.0.0.1"


def instances() -> set[str]:
    return set(os.listdir(os.path.join(tracepoint.tracefs_root(), "instances")))


def pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    return client, server


def test_events_stream_in_order_on_the_monotonic_clock():
    listener = socket.create_server((HOST, 0))
    port = listener.getsockname()[1]
    with Tracer(("state",), ports=(port,), addrs=(HOST,)) as tracer:
        before = time.monotonic()
        client, server = pair(listener)
        cport = client.getsockname()[1]
        client.close()
        server.close()
        got = []
        for event in tracer.events(timeout=2):
            got.append(event)
            if event.key == (HOST, port, HOST, cport) and event.new_state == "CLOSED":
                break
        after = time.monotonic()
    listener.close()
    mine = [e for e in got if {e.lport, e.rport} == {port, cport} or (e.lport == 0 and e.rport == port)]
    assert all(before <= e.mono <= after for e in mine)  # trace_clock=mono is time.monotonic()'s clock
    assert [e.mono for e in mine] == sorted(e.mono for e in mine)
    client_side = [(e.old_state, e.new_state) for e in mine if e.laddr == HOST and e.rport == port]
    assert client_side[:2] == [("CLOSED", "SYN_SENT"), ("SYN_SENT", "ESTABLISHED")]
    assert ("ESTABLISHED", "FIN_WAIT1") in client_side
    assert mine[0].to_dict()["t_s"] >= 0 and {"laddr", "lport", "raddr", "rport", "family"} <= mine[0].to_dict().keys()


def test_kernel_filter_on_address_drops_other_addresses():
    """u8[4] address fields compare as a native-endian u32 in the kernel's filter: an address we do
    not use lets no line through at all (parsed counts lines before our own filter)."""
    listener = socket.create_server((HOST, 0))
    port = listener.getsockname()[1]
    with Tracer(("state",), ports=(port,), addrs=("127.99.0.1",)) as other, \
            Tracer(("state",), ports=(port,), addrs=(HOST,)) as ours:
        client, server = pair(listener)
        client.close()
        server.close()
        ours.sync()
        other.sync()
        assert ours.parsed >= 4
        assert other.parsed == 0
    listener.close()


def test_instance_is_named_after_pid_and_start_time_and_removed():
    with Tracer(("state", "retransmit")) as tracer:
        assert tracer.name.startswith(f"addrinuse-{os.getpid()}-{start_time(os.getpid())}-")
        assert tracer.name in instances()
    assert tracer.name not in instances()


def test_stale_instances_of_gone_processes_are_removed_and_others_kept():
    root = os.path.join(tracepoint.tracefs_root(), "instances")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    me, mine_start = os.getpid(), start_time(os.getpid())
    names = {
        "dead": f"addrinuse-{gone.pid}-{start_time(me)}-0",
        "reused": f"addrinuse-{me}-{mine_start + 1}-0",  # our pid, another start time: another process
        "live": f"addrinuse-{me}-{mine_start}-999",
        "foreign": f"not-addrinuse-{gone.pid}-1-0",
    }
    for name in names.values():
        os.mkdir(os.path.join(root, name))
    try:
        remove_stale()  # (another worker's Tracer may have removed them first: same outcome)
        assert names["dead"] not in instances() and names["reused"] not in instances()
        assert names["live"] in instances() and names["foreign"] in instances()
    finally:
        for name in names.values():
            if name in instances():
                os.rmdir(os.path.join(root, name))


OWNER = textwrap.dedent("""
    import json, signal, sys, time
    from addrinuse.tracepoint import Tracer
    def stop(*_):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, stop)
    with Tracer(("state",)) as tracer:
        print(json.dumps({"name": tracer.name, "janitor": tracer._janitor[0]}), flush=True)
        time.sleep(60)
""")


def dead(pid: int) -> bool:
    """Gone or a zombie (a zombie is dead; its parent has not reaped it yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_owner_killed_or_terminated_leaves_no_instance(sig):
    """SIGTERM: the owner's handler unwinds the with-block. SIGKILL: nothing runs in the owner; its
    janitor sees its pipe close and removes the instance, then exits."""
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    info = json.loads(owner.stdout.readline())
    assert info["name"] in instances()
    owner.send_signal(sig)
    owner.wait(timeout=10)
    owner.stdout.close()
    wait_for(lambda: info["name"] not in instances(), 5, what="the instance to be removed")
    wait_for(lambda: dead(info["janitor"]), 5, what="the janitor to exit")


def test_close_sequence_time_wait_starts_at_the_peers_fin():
    """The peer closes `hold` s after the active closer's FIN is ACKed. The orphaned active side is
    handed to a timewait socket at that ACK (FIN_WAIT2 -> CLOSE in the tracepoint), but stays in
    FIN_WAIT2 - sock_diag shows it so for the whole hold - and enters TIME_WAIT at the peer's FIN."""
    hold = 0.3
    r = run_close_sequence(hold=hold, interval=0.01)
    if r["trace"] is None:
        pytest.skip(r["trace_unavailable"])
    active = {s["new"]: s for s in r["trace"]["active"]}
    passive = {s["new"]: s for s in r["trace"]["passive"]}
    handoff = active["FIN_WAIT2"]["handoff_s"]
    assert active["TIME_WAIT"]["source"] == "inferred"
    assert active["TIME_WAIT"]["t_s"] == passive["LAST_ACK"]["t_s"]
    assert active["TIME_WAIT"]["t_s"] - handoff > hold * 0.8
    polled = {s["state"]: s for s in r["poll"]["active"]}
    assert polled["FIN_WAIT2"]["last_s"] > handoff  # sock_diag: the timewait socket's substate
    assert polled["TIME_WAIT"]["first_s"] > handoff + hold * 0.5


def test_shutdown_side_enters_time_wait_at_the_hand_off():
    """Not orphaned (shutdown, not close): the full socket stays in FIN_WAIT2 until the peer's FIN,
    and its FIN_WAIT2 -> CLOSE is then the start of TIME_WAIT (tcp_fin -> tcp_time_wait)."""
    listener = socket.create_server((HOST, 0))
    port = listener.getsockname()[1]
    with Tracer(("state",), ports=(port,), addrs=(HOST,)) as tracer:
        client, server = pair(listener)
        ckey = (HOST, client.getsockname()[1], HOST, port)
        client.shutdown(socket.SHUT_WR)
        tracer.wait_for(lambda e: e.key == ckey and e.new_state == "FIN_WAIT2", 2)
        server.close()
        tracer.wait_for(lambda e: e.key == ckey and e.new_state == "CLOSED", 2)
        events = tracer.snapshot()
    client.close()
    listener.close()
    own = [e for e in events if e.key == ckey]
    peer = [e for e in events if e.key == (HOST, port, ckey[0], ckey[1])]
    steps = lane(own, peer)
    assert [s["state"] for s in steps][-3:] == ["FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT"]
    assert steps[-1]["source"] == "trace" and "handoff_mono" not in steps[-2]


def test_events_end_at_the_deadline_or_after_the_idle_timeout():
    with Tracer(("state",), ports=(1,), addrs=("127.99.0.1",), keep=False) as tracer:
        start = time.monotonic()
        assert list(tracer.events(deadline=start + 0.2)) == []
        assert 0.2 <= time.monotonic() - start < 1.0
        start = time.monotonic()
        assert list(tracer.events(timeout=0.1, deadline=start + 5)) == []
        assert 0.1 <= time.monotonic() - start < 1.0
