"""Lab experiments, one function each: run it in a fresh lab, return a plain dict of observations.

Every result has "experiment", "lab" (addresses, set-up cost, the sysctls set in each namespace),
the measured values, "sequence" (two lanes: states with times and sources, segments with kinds)
and "states_seen". A is 10.199.N.1 (the client; it closes first), B 10.199.N.2 (the server).
Times: t_s is seconds since the lab was built (CLOCK_MONOTONIC, the tracepoint's clock).
Each raises LabUnavailable (its message is the skip reason) where no lab can be made."""

from __future__ import annotations

import time

from addrinuse.lab.observe import Poller
from addrinuse.lab.pair import Lab
from addrinuse.lab.steps import (FIN, PURE_ACK, SETTLE_S, active_close_segments, count, drop_once, event,
                                 handshake_segments, in_table, lab_info, lanes, lost_ack_segments, mono, ms,
                                 netstat_delta, new_sequence, open_connection, to_a, to_b, wait)


def lost_final_ack() -> dict:
    """A closes first; B's firewall drops A's final ACK once. B, in LAST_ACK, resends its FIN (a tail
    loss probe, ~200 ms: 2*srtt floored at TCP_DELACK_MAX with one packet out, tcp_schedule_loss_probe);
    A's TIME_WAIT ACKs it again and restarts its 60 s timer (tcp_timewait_state_process ->
    inet_twsk_reschedule); B closes cleanly. B shuts down its sending side instead of close() so
    its socket (and any error on it) stays readable; the FIN it sends is the same."""
    with Lab() as lab:
        conn, a_sock, b_sock, _ = open_connection(lab)
        poll_a = Poller(lab.a, conn.b_port, 0.01)
        poll_a.start()
        a_sock.close()
        event(lab, lambda e: e.key == conn.a_key and e.new_state == "FIN_WAIT2", "A in FIN_WAIT2")
        wait(lambda: in_table(lab.b, conn.b_key, "CLOSE_WAIT"), SETTLE_S, "B in CLOSE_WAIT")
        lab.b.nft(drop_once("final_ack_dropped", "input", f"{to_b(conn)} {PURE_ACK}")
                  + count("ack_in", "input", f"{to_b(conn)} {PURE_ACK}")
                  + count("fin_out", "output", f"{to_a(conn)} {FIN}"))
        before = lab.b.netstat()
        b_sock.shutdown()
        retx = event(lab, lambda e: e.kind == "retransmit" and e.key == conn.b_key, "B's FIN resent", 3)
        closed = event(lab, lambda e: e.key == conn.b_key and e.new_state == "CLOSED", "B closed", 3)
        poll_a.stop()
        # A's timer right after: time left + time since A answered = 60 s if it restarted then
        # (not 60 - fin_retransmit_delay). The read happened between t1 and t2.
        t1 = time.monotonic()
        row = next((r for r in lab.a.table(conn.b_port) if (r["laddr"], r["lport"], r["raddr"], r["rport"])
                    == conn.a_key and r["state"] == "TIME_WAIT"), None)
        t2 = time.monotonic()
        status = b_sock.status()
        counters = lab.b.counters()
        stats = netstat_delta(before, lab.b.netstat(), ("TCPLossProbes",))

        seq = new_sequence("Lost final ACK: B resends its FIN, A's TIME_WAIT answers it", lab, conn)
        a, b = lanes(seq, lab, conn)
        fin = lost_ack_segments(seq, a, b, retx)
        seq.segment("a", "b", "ACK", retx.mono, closed.mono)
        for state in ("FIN_WAIT2", "TIME_WAIT"):
            seq.poll_phase("a", poll_a.phase(conn.a_key, state))
        tw = poll_a.phase(conn.a_key, "TIME_WAIT")
        pre = [(end, x) for _, end, x in (tw.expires if tw else []) if end < retx.mono]  # polled before the resent FIN
        left = row["expires_in_s"] if row else None
        return {
            "experiment": "lost-final-ack", "lab": lab_info(lab),
            "fin_retransmit_delay_ms": ms(retx.mono, fin), "fin_retransmit_state": retx.new_state,
            "fin_retransmits": sum(1 for e in lab.tracer.history if e.kind == "retransmit" and e.key == conn.b_key),
            "counters": counters, "netstat_b": stats, "tcp_loss_probes": stats.get("TCPLossProbes", 0),
            "timewait_started_s": seq.t(fin), "handoff_s": seq.t(a["FIN_WAIT2"].get("handoff_mono")),
            # A's TIME_WAIT timer: time left at the last poll before B's resent FIN, and right after
            "timewait_expires_in_s": {"before": pre[-1][1] if pre else None, "after": left},
            "timewait_restarted_to_s": round(left + (t1 + t2) / 2 - closed.mono, 3) if row else None,
            # half the read's span, plus a jiffy each for the timer and its report (HZ=250)
            "timewait_restarted_to_error_s": round((t2 - t1) / 2 + 0.008, 3),
            "b_closed_after_ms": ms(closed.mono, fin), "b_state": status["state"], "b_error": status["errname"],
            "b_reset": any(e.kind == "receive_reset" and e.key == conn.b_key for e in lab.tracer.history),
            **seq.result(),
        }


def lost_final_ack_without_time_wait(method: str = "tw_buckets") -> dict:
    """The counterfactual: the same loss, but A keeps no TIME_WAIT entry. method "tw_buckets":
    tcp_max_tw_buckets = 0 in A's namespace (the hand-off to a timewait socket fails,
    TcpExtTCPTimeWaitOverflow +1); A shuts down instead of closing, so its full socket lives until
    B's FIN and the overflow hits TIME_WAIT, not the FIN_WAIT2 hand-off. method "destroy": A
    closes normally and its TIME_WAIT entry is destroyed with SOCK_DESTROY (what `addrinuse clear`
    does) before B resends. Either way B's resent FIN meets no socket: A's kernel answers RST
    (reason NO_SOCKET) and B's socket error is ECONNRESET (tcp_reset: any state but SYN_SENT,
    CLOSE_WAIT, CLOSE)."""
    if method not in ("tw_buckets", "destroy"):
        raise ValueError(f"method must be tw_buckets or destroy, not {method!r}")
    with Lab() as lab:
        if method == "tw_buckets":
            lab.a.sysctl("ipv4/tcp_max_tw_buckets", 0)
        conn, a_sock, b_sock, _ = open_connection(lab)
        a_before = lab.a.netstat()
        if method == "tw_buckets":
            a_sock.shutdown()
        else:
            a_sock.close()
        event(lab, lambda e: e.key == conn.a_key and e.new_state == "FIN_WAIT2", "A in FIN_WAIT2")
        wait(lambda: in_table(lab.b, conn.b_key, "CLOSE_WAIT"), SETTLE_S, "B in CLOSE_WAIT")
        lab.b.nft(drop_once("final_ack_dropped", "input", f"{to_b(conn)} {PURE_ACK}")
                  + count("fin_out", "output", f"{to_a(conn)} {FIN}"))
        b_sock.shutdown()
        destroyed = None
        if method == "destroy":
            row = wait(lambda: next((r for r in lab.a.table(conn.b_port) if r["state"] == "TIME_WAIT"), None),
                       SETTLE_S, "A's TIME_WAIT entry")
            destroyed, t_destroy = lab.a.destroy(row), time.monotonic()
        retx = event(lab, lambda e: e.kind == "retransmit" and e.key == conn.b_key, "B's FIN resent", 3)
        rst_in = event(lab, lambda e: e.kind == "receive_reset" and e.key == conn.b_key, "B receives RST", 3)
        rst_out = lab.tracer.wait_for(lambda e: e.kind == "send_reset" and e.laddr == conn.a_addr
                                      and e.rport == conn.b_port, 1)
        a_rows = [r for r in lab.a.table(conn.b_port) if r["state"] in ("TIME_WAIT", "FIN_WAIT2")]
        status = b_sock.status()
        if method == "tw_buckets":
            a_sock.close()
        stats = netstat_delta(a_before, lab.a.netstat(), ("TCPTimeWaitOverflow",))

        seq = new_sequence("Lost final ACK without TIME_WAIT: B's resent FIN meets RST", lab, conn)
        a, b = lanes(seq, lab, conn, a_timewait=method == "destroy")
        if destroyed is not None:
            seq.state("a", "CLOSED", t_destroy, "inferred", cause="SOCK_DESTROY")
        fin = lost_ack_segments(seq, a, b, retx)
        seq.segment("a", "b", "RST", rst_out.mono if rst_out else retx.mono, rst_in.mono, "rst")
        return {
            "experiment": "lost-final-ack-without-time-wait", "lab": lab_info(lab), "method": method,
            "destroy_errno": destroyed, "a_timewait_entries": len(a_rows),
            "a_timewait_overflow": stats.get("TCPTimeWaitOverflow", 0), "netstat_a": stats,
            "fin_retransmit_delay_ms": ms(retx.mono, fin), "fin_retransmit_state": retx.new_state,
            "rst_after_retransmit_ms": ms(rst_in.mono, retx.mono),
            "rst_reason": rst_out.reason if rst_out else None, "counters": lab.b.counters(),
            "b_state": status["state"], "b_errno": status["errno"], "b_error": status["errname"],
            **seq.result(),
        }


def simultaneous_close(rate_bytes_s: int = 1000, burst_bytes: int = 200) -> dict:
    """Both ends close before either's FIN arrives, so each receives the other's FIN in FIN_WAIT1 and
    enters CLOSING (tcp_fin), then TIME_WAIT when its own FIN is ACKed - both ends keep a TIME_WAIT
    entry. On a veth pair a segment arrives within microseconds, so the FINs must be made to cross:
    a token bucket (tc tbf) on each end's veth, emptied by one UDP datagram, holds each FIN
    ~(66 - tokens left)/rate s and then each ACK 66/rate s - the time both ends spend in CLOSING.
    (This kernel has no netem; tbf is what delays a packet without dropping it.)"""
    with Lab() as lab:
        conn, a_sock, b_sock, _ = open_connection(lab)
        udp = {}
        for end, dev in ((lab.a, "veth0"), (lab.b, "veth1")):
            end.run("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{rate_bytes_s * 8}bit",
                    "burst", str(burst_bytes), "limit", "10000")
            udp[end.name] = end.socket("udp")
            udp[end.name].bind()
        polls = [Poller(lab.a, conn.b_port, 0.01), Poller(lab.b, conn.b_port, 0.01)]
        for p in polls:
            p.start()
        filler = burst_bytes - 50  # + UDP, IP and Ethernet headers (42 bytes): the bucket is ~empty
        udp["a"].send(filler, lab.b.addr, udp["b"].sockname[1])
        udp["b"].send(filler, lab.a.addr, udp["a"].sockname[1])
        a_sock.shutdown()
        b_sock.shutdown()
        for key, side in ((conn.a_key, "A"), (conn.b_key, "B")):
            event(lab, lambda e: e.key == key and e.old_state == "CLOSING", f"{side} leaves CLOSING", 3)
        wait(lambda: all(p.phase(k, "TIME_WAIT") for p, k in zip(polls, (conn.a_key, conn.b_key))), SETTLE_S,
             "both TIME_WAIT entries polled")
        for p in polls:
            p.stop()
        seq = new_sequence("Simultaneous close: both ends in CLOSING, then both in TIME_WAIT", lab, conn)
        a, b = lanes(seq, lab, conn)
        handshake_segments(seq, a, b)
        for p, key, end in zip(polls, (conn.a_key, conn.b_key), "ab"):
            for state in ("CLOSING", "TIME_WAIT"):
                seq.poll_phase(end, p.phase(key, state))
        seq.segment("a", "b", "FIN", mono(a, "FIN_WAIT1"), mono(b, "CLOSING"))
        seq.segment("b", "a", "FIN", mono(b, "FIN_WAIT1"), mono(a, "CLOSING"))
        seq.segment("a", "b", "ACK", mono(a, "CLOSING"), mono(b, "TIME_WAIT"))
        seq.segment("b", "a", "ACK", mono(b, "CLOSING"), mono(a, "TIME_WAIT"))
        return {
            "experiment": "simultaneous-close", "lab": lab_info(lab),
            "link": {"qdisc": "tbf", "rate_bytes_s": rate_bytes_s, "burst_bytes": burst_bytes},
            "fins_crossed": (mono(a, "FIN_WAIT1") < mono(b, "CLOSING") and mono(b, "FIN_WAIT1") < mono(a, "CLOSING")),
            "closing_ms": {"a": ms(mono(a, "TIME_WAIT"), mono(a, "CLOSING")),
                           "b": ms(mono(b, "TIME_WAIT"), mono(b, "CLOSING"))},
            "fin_delay_ms": {"a": ms(mono(b, "CLOSING"), mono(a, "FIN_WAIT1")),
                             "b": ms(mono(a, "CLOSING"), mono(b, "FIN_WAIT1"))},
            "timewait_entries": {"a": len([1 for r in lab.a.table(conn.b_port) if r["state"] == "TIME_WAIT"]),
                                 "b": len([1 for r in lab.b.table(conn.b_port) if r["state"] == "TIME_WAIT"])},
            **seq.result(),
        }


def time_wait_bucket_overflow() -> dict:
    """tcp_max_tw_buckets = 0 in A's namespace: every hand-off to a timewait socket fails
    (inet_twsk_alloc returns NULL; tcp_time_wait counts TcpExtTCPTimeWaitOverflow and just closes).
    A program that close()s first loses its socket already at the FIN_WAIT2 hand-off, before the
    peer's FIN: no FIN_WAIT2 entry, no TIME_WAIT entry, and the peer's FIN is answered by RST."""
    with Lab() as lab:
        lab.a.sysctl("ipv4/tcp_max_tw_buckets", 0)
        conn, a_sock, b_sock, _ = open_connection(lab)
        before = lab.a.netstat()
        poll_a = Poller(lab.a, conn.b_port, 0.005)
        poll_a.start()
        a_sock.close()
        gone = event(lab, lambda e: e.key == conn.a_key and e.old_state == "FIN_WAIT2", "A's hand-off")
        wait(lambda: in_table(lab.b, conn.b_key, "CLOSE_WAIT"), SETTLE_S, "B in CLOSE_WAIT")
        b_sock.shutdown()
        rst = event(lab, lambda e: e.kind == "receive_reset" and e.key == conn.b_key, "B receives RST", 3)
        sent = lab.tracer.wait_for(lambda e: e.kind == "send_reset" and e.laddr == conn.a_addr
                                   and e.rport == conn.b_port, 1)
        poll_a.stop()
        status = b_sock.status()
        stats = netstat_delta(before, lab.a.netstat(), ("TCPTimeWaitOverflow",))
        seq = new_sequence("TIME_WAIT bucket overflow: no timewait socket, the peer's FIN meets RST", lab, conn)
        a, b = lanes(seq, lab, conn, a_timewait=False)
        handshake_segments(seq, a, b)
        active_close_segments(seq, a, b)
        seq.segment("b", "a", "FIN", mono(b, "LAST_ACK"), mono(b, "LAST_ACK"))
        seq.segment("a", "b", "RST", sent.mono if sent else None, rst.mono, "rst")
        return {
            "experiment": "time-wait-bucket-overflow", "lab": lab_info(lab),
            "timewait_overflow": stats.get("TCPTimeWaitOverflow", 0), "netstat_a": stats,
            "a_states_polled": poll_a.states(conn.a_key), "a_closed_s": seq.t(gone.mono),
            "rst_reason": sent.reason if sent else None, "b_state": status["state"], "b_error": status["errname"],
            **seq.result(),
        }


def fin_wait_2_timeout(fin_timeout_s: int = 1) -> dict:
    """A closes, B never does: A's orphaned socket is handed to a timewait socket in substate
    FIN_WAIT2 whose timer is tcp_fin_time() = max(tcp_fin_timeout, 3.5 * RTO) (tcp.h), set here
    to `fin_timeout_s` in A's namespace; it vanishes when the timer fires. B's FIN, sent after
    that, finds no socket: RST (NO_SOCKET), and B's error is ECONNRESET."""
    with Lab() as lab:
        lab.a.sysctl("ipv4/tcp_fin_timeout", fin_timeout_s)
        conn, a_sock, b_sock, _ = open_connection(lab)
        poll_a = Poller(lab.a, conn.b_port, 0.02)
        poll_a.start()
        a_sock.close()
        handoff = event(lab, lambda e: e.key == conn.a_key and e.old_state == "FIN_WAIT2", "A's hand-off")
        wait(lambda: conn.a_key in poll_a.gone, fin_timeout_s + 5, "A's FIN_WAIT2 entry to vanish", 0.01)
        poll_a.stop()
        last_seen, missing = poll_a.gone[conn.a_key]
        b_sock.shutdown()
        rst = event(lab, lambda e: e.kind == "receive_reset" and e.key == conn.b_key, "B receives RST", 3)
        sent = lab.tracer.wait_for(lambda e: e.kind == "send_reset" and e.laddr == conn.a_addr
                                   and e.rport == conn.b_port, 1)
        status = b_sock.status()
        phase = poll_a.phase(conn.a_key, "FIN_WAIT2")
        seq = new_sequence(f"FIN_WAIT2 timeout: tcp_fin_timeout = {fin_timeout_s} s, then the late FIN meets RST",
                           lab, conn)
        a, b = lanes(seq, lab, conn, a_timewait_gone=last_seen)
        handshake_segments(seq, a, b)
        active_close_segments(seq, a, b)
        seq.poll_phase("a", phase)
        seq.state("a", "CLOSED", last_seen, "poll", missing)
        seq.segment("b", "a", "FIN", mono(b, "LAST_ACK"), mono(b, "LAST_ACK"))
        seq.segment("a", "b", "RST", sent.mono if sent else None, rst.mono, "rst")
        first = phase.expires[0][1:] if phase and phase.expires else None  # (poll end, time left)
        return {
            "experiment": "fin-wait-2-timeout", "lab": lab_info(lab), "fin_timeout_s": fin_timeout_s,
            "timer": phase.timer if phase else None,
            "timer_set_to_s": round(first[1] + first[0] - handoff.mono, 3) if first else None,
            "fin_wait2_lifetime_s": round(missing - mono(a, "FIN_WAIT2"), 3),
            "fin_wait2_lifetime_min_s": round(last_seen - mono(a, "FIN_WAIT2"), 3),
            "rst_reason": sent.reason if sent else None, "b_state": status["state"], "b_error": status["errname"],
            **seq.result(),
        }


from addrinuse.lab.handshake import syn_received, syn_sent  # noqa: E402  (one index of experiments)
from addrinuse.lab.ports import client_port_exhaustion  # noqa: E402

EXPERIMENTS = {
    "lost-final-ack": lost_final_ack,
    "lost-final-ack-without-time-wait": lost_final_ack_without_time_wait,
    "client-port-exhaustion": client_port_exhaustion,
    "simultaneous-close": simultaneous_close,
    "time-wait-bucket-overflow": time_wait_bucket_overflow,
    "fin-wait-2-timeout": fin_wait_2_timeout,
    "syn-sent": syn_sent,
    "syn-received": syn_received,
}

# The states each experiment observes live (tracepoint or poll), for `experiment list`; the tests
# check each against what a run saw, and that together they cover every state of RFC 9293.
_OPEN = ("LISTEN", "SYN_SENT", "SYN_RECV", "ESTABLISHED")
_ACTIVE_CLOSE = _OPEN + ("FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "LAST_ACK", "CLOSED")
STATES = {
    "lost-final-ack": _ACTIVE_CLOSE + ("TIME_WAIT",),
    "lost-final-ack-without-time-wait": _ACTIVE_CLOSE,
    "client-port-exhaustion": _ACTIVE_CLOSE + ("TIME_WAIT",),
    "simultaneous-close": _OPEN + ("FIN_WAIT1", "CLOSING", "TIME_WAIT"),
    "time-wait-bucket-overflow": _ACTIVE_CLOSE,
    "fin-wait-2-timeout": _ACTIVE_CLOSE,
    "syn-sent": _OPEN,
    "syn-received": _OPEN,
}
