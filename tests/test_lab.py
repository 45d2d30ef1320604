"""The network-namespace lab and its experiments, against the real kernel (root, nft, ip, tracefs).

Every test that builds a lab checks afterwards that the host's network sysctls and nft ruleset did
not change, and that no namespace, agent or tracefs instance of it is left."""

from __future__ import annotations

import ctypes
import glob
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading

import psutil
import pytest

from addrinuse import tracepoint
from addrinuse.lab import Lab, unavailable_reason
from addrinuse.lab import scenarios
from addrinuse.lab.observe import ALL_STATES
from tests.helpers import wait_for

REASON = unavailable_reason()
CLONE_NEWNET = 0x40000000
SO_NETNS_COOKIE = 71
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))


def host_sysctls() -> dict[str, str]:
    out = {}
    for path in glob.glob("/proc/sys/net/ipv4/*") + glob.glob("/proc/sys/net/core/*"):
        try:
            with open(path) as f:
                out[path] = f.read()
        except OSError:
            pass  # write-only entries (e.g. route/flush)
    return out


def host_ruleset() -> str:
    return subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout


def reachable_netns() -> dict[int, str]:
    """Every network namespace a process holds, as its own or through an open fd: inode -> a path
    that opens it."""
    found = {}
    for ns in glob.glob("/proc/[0-9]*/ns/net"):
        try:
            found.setdefault(os.stat(ns).st_ino, ns)
        except OSError:
            pass
    for fd in glob.glob("/proc/[0-9]*/fd/*"):
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("net:["):
            found.setdefault(int(link[5:-1]), fd)
    return found


def cookie_of(path: str) -> int | None:
    """SO_NETNS_COOKIE of the namespace at path, read by a thread that enters it (setns is per
    thread) and ends there."""
    out = {}

    def enter() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return  # gone meanwhile
        try:
            if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) == 0:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    out["cookie"] = struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
        finally:
            os.close(fd)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    return out.get("cookie")


def still_reachable(netns: dict[int, int]) -> set[int]:
    """Which of our namespaces ({inode: cookie}) a process still holds. Inodes are reused as soon
    as a namespace is freed (another lab, e.g. the other pytest worker, may get the same number),
    so an inode that is reachable again is compared by cookie, which is never reused."""
    reachable = reachable_netns()
    return {ino for ino, cookie in netns.items() if ino in reachable and cookie_of(reachable[ino]) == cookie}


def dead(pid: int) -> bool:
    """Gone or a zombie (a zombie is dead; its parent has not reaped it yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def instances() -> set[str]:
    return set(os.listdir(os.path.join(tracepoint.tracefs_root(), "instances")))


@pytest.fixture(autouse=True)
def leaves_nothing(monkeypatch):
    """Records every lab built during the test; afterwards: same host sysctls and ruleset, no agent
    alive, no namespace of the lab reachable, no tracefs instance of it."""
    built = []
    enter = Lab.__enter__

    def recording_enter(self):
        lab = enter(self)
        built.append({"pids": lab.pids, "netns": {lab.a.netns: lab.a.netns_cookie, lab.b.netns: lab.b.netns_cookie},
                      "instance": lab.tracer.name if lab.tracer else None})
        return lab

    monkeypatch.setattr(Lab, "__enter__", recording_enter)
    sysctls, ruleset = host_sysctls(), host_ruleset()
    yield built
    assert host_sysctls() == sysctls
    assert host_ruleset() == ruleset
    for lab in built:
        assert all(dead(pid) for pid in lab["pids"])
        assert not still_reachable(lab["netns"])
        assert lab["instance"] not in instances()


def test_lab_two_namespaces_joined_by_veth(leaves_nothing):
    with Lab(trace=()) as lab:
        host = os.stat("/proc/self/ns/net").st_ino
        assert len({lab.a.netns, lab.b.netns, host}) == 3
        assert lab.a.addr.rsplit(".", 1)[0] == lab.b.addr.rsplit(".", 1)[0]
        listener = lab.b.socket()
        listener.bind()
        listener.listen()
        client = lab.a.socket()
        client.connect(lab.b.addr, listener.sockname[1])
        assert listener.accept().peer == client.sockname
        # a sysctl set in A's namespace is A's alone
        host_fin = open("/proc/sys/net/ipv4/tcp_fin_timeout").read().strip()
        lab.a.sysctl("ipv4/tcp_fin_timeout", 7)
        assert lab.a.sysctl("ipv4/tcp_fin_timeout") == "7"
        assert lab.b.sysctl("ipv4/tcp_fin_timeout") == "60"
        assert open("/proc/sys/net/ipv4/tcp_fin_timeout").read().strip() == host_fin
        assert lab.cost_ms["namespaces"] > 0 and lab.cost_ms["veth"] > 0
    assert len(leaves_nothing) == 1


def test_two_labs_at_once_get_different_subnets():
    with Lab(trace=()) as one, Lab(trace=()) as two:
        assert one.a.addr != two.a.addr


def test_not_root_gets_the_skip_reason():
    """A forked child drops to nobody (the modules are already imported, so it needs no file of the
    project) and tries to build a lab: the typed error, whose message is the skip reason."""
    from tests.helpers import as_nobody

    def build():
        Lab(trace=()).__enter__()
        return "built a lab"

    out = as_nobody(build)
    assert out["error"].startswith("LabUnavailable: ") and "needs root" in out["error"]


HOLDER = textwrap.dedent("""
    import json, time
    from addrinuse.lab import Lab
    with Lab() as lab:
        print(json.dumps({"pids": lab.pids, "netns": {lab.a.netns: lab.a.netns_cookie, lab.b.netns: lab.b.netns_cookie},
                          "instance": lab.tracer.name, "janitor": lab.tracer._janitor[0]}), flush=True)
        time.sleep(60)
""")


def test_sigkill_of_the_owner_leaves_nothing():
    owner = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    info = json.loads(owner.stdout.readline())
    netns = {int(ino): cookie for ino, cookie in info["netns"].items()}
    assert still_reachable(netns) == set(netns) and info["instance"] in instances()
    owner.kill()
    owner.wait(timeout=10)
    owner.stdout.close()
    for pid in info["pids"] + [info["janitor"]]:  # PR_SET_PDEATHSIG killed the agents
        wait_for(lambda: dead(pid), 5, what=f"process {pid} to die")
    wait_for(lambda: not still_reachable(netns), 5, what="the namespaces to go")
    wait_for(lambda: info["instance"] not in instances(), 5, what="the tracefs instance to go")


# -- the experiments --------------------------------------------------------------------------

def check_shape(r: dict, name: str) -> None:
    seq = r["sequence"]
    assert r["experiment"] == name and {e["id"] for e in seq["ends"]} == {"a", "b"}
    assert all(s["source"] in ("trace", "poll", "inferred") for s in seq["states"])
    assert all(s["kind"] in ("normal", "retransmit", "lost", "rst") for s in seq["segments"])
    assert set(scenarios.STATES[name]) <= set(r["states_seen"]), (scenarios.STATES[name], r["states_seen"])
    json.dumps(r)


def first(r: dict, end: str, state: str, source: str | None = None) -> dict:
    return next(s for s in r["sequence"]["states"]
                if s["end"] == end and s["state"] == state and source in (None, s["source"]))


def test_lost_final_ack():
    r = scenarios.lost_final_ack()
    check_shape(r, "lost-final-ack")
    seen = {k: v for k, v in r.items() if k != "sequence"}  # shown when an assertion fails
    assert r["fin_retransmit_state"] == "LAST_ACK" and r["fin_retransmits"] == 1, seen
    assert 195 <= r["fin_retransmit_delay_ms"] <= 1000, seen  # a tail loss probe: >= TCP_DELACK_MAX
    assert r["counters"] == {"final_ack_dropped": 1, "ack_in": 1, "fin_out": 2}, seen
    assert r["tcp_loss_probes"] == 1, seen
    # the timer restarted at the resent FIN: 60 s from then, not 60 s from B's first FIN
    error = r["timewait_restarted_to_error_s"]
    assert abs(r["timewait_restarted_to_s"] - 60) <= error + 0.01, seen
    if error < r["fin_retransmit_delay_ms"] / 2000:  # the read was precise enough to tell them apart
        assert abs(r["timewait_restarted_to_s"] - (60 - r["fin_retransmit_delay_ms"] / 1000)) > error, seen
    assert (r["b_state"], r["b_error"], r["b_reset"]) == ("CLOSED", None, False), seen
    # TIME_WAIT begins at B's FIN, after the hand-off; the ACK of B's FIN is drawn lost
    assert first(r, "a", "TIME_WAIT", "inferred")["t_s"] == first(r, "b", "LAST_ACK")["t_s"] > r["handoff_s"], seen
    assert [s["kind"] for s in r["sequence"]["segments"]][-3:] == ["lost", "retransmit", "normal"], seen


@pytest.mark.parametrize("method", ["tw_buckets", "destroy"])
def test_lost_final_ack_without_time_wait(method):
    r = scenarios.lost_final_ack_without_time_wait(method)
    check_shape(r, "lost-final-ack-without-time-wait")
    assert r["fin_retransmit_state"] == "LAST_ACK" and r["a_timewait_entries"] == 0
    assert r["rst_reason"] == "NO_SOCKET" and (r["b_state"], r["b_error"]) == ("CLOSED", "ECONNRESET")
    assert r["counters"] == {"final_ack_dropped": 1, "fin_out": 2}
    if method == "tw_buckets":
        assert r["a_timewait_overflow"] == 1
    else:
        assert r["destroy_errno"] == 0
    assert r["sequence"]["segments"][-1]["kind"] == "rst"


def test_client_port_exhaustion():
    r = scenarios.client_port_exhaustion()
    check_shape(r, "client-port-exhaustion")
    default, short = r["rounds"]
    for rnd in (default, short):
        if "skipped" in rnd:
            continue
        assert rnd["timewait_entries"] == 10
        assert rnd["connect_error"]["errname"] == "EADDRNOTAVAIL" and rnd["bind_error"]["errname"] == "EADDRINUSE"
    for rnd in (default, short):
        if "skipped" in rnd:
            continue
        # never reused before tcp_tw_reuse_delay; soon after the oldest entry reached it
        assert rnd["reused_entry_age_s"] >= rnd["reuse_delay_ms"] / 1000 - 0.005
        assert rnd["late_s"] < (0.5 if rnd["delay_sysctl"] else 1.5)  # whole seconds without the sysctl


def test_simultaneous_close():
    r = scenarios.simultaneous_close()
    check_shape(r, "simultaneous-close")
    assert r["fins_crossed"] and r["timewait_entries"] == {"a": 1, "b": 1}
    assert all(20 <= v <= 1000 for v in r["closing_ms"].values())


def test_time_wait_bucket_overflow():
    r = scenarios.time_wait_bucket_overflow()
    check_shape(r, "time-wait-bucket-overflow")
    assert r["timewait_overflow"] == 1
    assert not {"FIN_WAIT2", "TIME_WAIT"} & set(r["a_states_polled"])
    assert r["rst_reason"] == "NO_SOCKET" and r["b_error"] == "ECONNRESET"


def test_fin_wait_2_timeout():
    r = scenarios.fin_wait_2_timeout(1)
    check_shape(r, "fin-wait-2-timeout")
    assert r["timer"] == "timewait" and 0.9 <= r["timer_set_to_s"] <= 1.1
    # it vanished between the last poll that saw it and the first that did not: the timer fired in
    # that bracket (1 s, plus the timer wheel's rounding at that level: 32 ms at HZ=250)
    assert r["fin_wait2_lifetime_min_s"] <= 1.1 and 0.99 <= r["fin_wait2_lifetime_s"] <= 3.0
    assert r["rst_reason"] == "NO_SOCKET" and r["b_error"] == "ECONNRESET"
    assert not [s for s in r["sequence"]["states"] if s["end"] == "a" and s["state"] == "TIME_WAIT"]


def test_syn_sent():
    r = scenarios.syn_sent()
    check_shape(r, "syn-sent")
    assert r["counters"] == {"synack_dropped": 1} and r["first_retransmit"] in ("retransmit", "retransmit_synack")
    assert 900 <= r["syn_sent_ms"] <= 3500  # TCP_TIMEOUT_INIT
    assert "SYN_SENT" in r["a_states_polled"] and "SYN_RECV" in r["b_states_polled"]


def test_syn_received():
    r = scenarios.syn_received()
    check_shape(r, "syn-received")
    assert r["counters"] == {"handshake_ack_dropped": 1}
    assert 900 <= r["synack_retransmit_after_ms"] <= 3500
    assert r["b_states_polled"][:2] == ["SYN_RECV", "ESTABLISHED"], r["b_states_polled"]


def test_experiments_together_observe_every_state():
    assert set(scenarios.EXPERIMENTS) == set(scenarios.STATES)
    assert set().union(*scenarios.STATES.values()) == set(ALL_STATES)
