"""The handshake lab experiments: SYN_SENT and SYN_RECV held by one dropped segment (exported by
addrinuse.lab.scenarios). Both wait for the kernel's first retransmission: TCP_TIMEOUT_INIT, 1 s."""

from __future__ import annotations

from addrinuse.lab.observe import Conn, Poller
from addrinuse.lab.pair import Lab
from addrinuse.lab.steps import (PURE_ACK, SETTLE_S, SYN_ACK, drop_once, event, handshake_segments, lab_info, lanes,
                                 listen, mono, ms, new_sequence, wait)


def syn_sent() -> dict:
    """A's firewall drops B's SYN-ACK once: A stays in SYN_SENT and B holds a request socket in
    SYN_RECV (NEW_SYN_RECV: no state event; sock_diag shows it) until a retransmission gets
    through, ~1 s later: A's SYN (tcp_retransmit_skb in SYN_SENT), answered by a resent SYN-ACK, or
    B's own SYN-ACK timer (tcp_retransmit_synack) - both run on TCP_TIMEOUT_INIT, whichever fires
    first wins."""
    with Lab() as lab:
        listener = listen(lab)
        port = listener.sockname[1]
        lab.a.nft(drop_once("synack_dropped", "input", f"ip saddr {lab.b.addr} tcp sport {port} {SYN_ACK}"))
        polls = [Poller(lab.a, port, 0.02), Poller(lab.b, port, 0.02)]
        for p in polls:
            p.start()
        sock = lab.a.socket()
        sock.connect(lab.b.addr, port, timeout=None)
        conn = Conn(lab.a.addr, sock.sockname[1], lab.b.addr, port)
        est = event(lab, lambda e: e.key == conn.a_key and e.new_state == "ESTABLISHED", "A established", 4)
        b_sock = listener.accept()
        wait(lambda: all(p.polled_after(est.mono) for p in polls), SETTLE_S, "polls after the handshake")
        for p in polls:
            p.stop()
        history = lab.tracer.snapshot()
        resent = [e for e in history if (e.kind == "retransmit" and e.key == conn.a_key)
                  or (e.kind == "retransmit_synack" and e.key == conn.b_key)]
        seq = new_sequence("SYN_SENT: the SYN-ACK is lost, the handshake completes on a retransmission", lab, conn)
        a, b = lanes(seq, lab, conn)
        seq.poll_phase("a", polls[0].phase(conn.a_key, "SYN_SENT"))
        seq.poll_phase("b", polls[1].phase(conn.b_key, "SYN_RECV"))
        syn = mono(a, "SYN_SENT")
        seq.segment("a", "b", "SYN", syn)
        seq.segment("b", "a", "SYN-ACK", syn, None, "lost")
        for e in resent:
            label = "SYN" if e.kind == "retransmit" else "SYN-ACK"
            seq.segment("a" if label == "SYN" else "b", "b" if label == "SYN" else "a", label, e.mono, None, "retransmit")
        seq.segment("b", "a", "SYN-ACK", mono(a, "ESTABLISHED"), mono(a, "ESTABLISHED"))
        seq.segment("a", "b", "ACK", mono(a, "ESTABLISHED"), mono(b, "ESTABLISHED"))
        b_sock.close()
        return {
            "experiment": "syn-sent", "lab": lab_info(lab), "counters": lab.a.counters(),
            "first_retransmit": resent[0].kind if resent else None,
            "retransmit_after_ms": ms(resent[0].mono, syn) if resent else None,
            "syn_sent_ms": ms(mono(a, "ESTABLISHED"), syn),
            "a_states_polled": polls[0].states(conn.a_key), "b_states_polled": polls[1].states(conn.b_key),
            **seq.result(),
        }


def syn_received() -> dict:
    """B's firewall drops the handshake's final ACK once: A is ESTABLISHED at once, while B's
    request socket stays in SYN_RECV until its SYN-ACK timer (TCP_TIMEOUT_INIT, 1 s) resends the
    SYN-ACK; A's ACK of that one completes B's side (the child socket: LISTEN -> SYN_RECV ->
    ESTABLISHED, all in that instant)."""
    with Lab() as lab:
        listener = listen(lab)
        port = listener.sockname[1]
        lab.b.nft(drop_once("handshake_ack_dropped", "input",
                            f"ip saddr {lab.a.addr} ip daddr {lab.b.addr} tcp dport {port} {PURE_ACK}"))
        poll_b = Poller(lab.b, port, 0.02)
        poll_b.start()
        sock = lab.a.socket()
        sock.connect(lab.b.addr, port)
        conn = Conn(lab.a.addr, sock.sockname[1], lab.b.addr, port)
        synack = event(lab, lambda e: e.kind == "retransmit_synack" and e.key == conn.b_key, "B resends SYN-ACK", 4)
        est = event(lab, lambda e: e.key == conn.b_key and e.new_state == "ESTABLISHED", "B established", 2)
        b_sock = listener.accept()
        wait(lambda: poll_b.polled_after(est.mono), SETTLE_S, "a poll after the handshake")
        poll_b.stop()
        seq = new_sequence("SYN_RECV: the final ACK is lost, B resends its SYN-ACK", lab, conn)
        a, b = lanes(seq, lab, conn)
        seq.poll_phase("b", poll_b.phase(conn.b_key, "SYN_RECV"))
        handshake_segments(seq, a, b)
        seq.segments[-1].update(t_arrive_s=None, kind="lost")
        seq.segment("b", "a", "SYN-ACK", synack.mono, synack.mono, "retransmit")
        seq.segment("a", "b", "ACK", synack.mono, est.mono)
        b_sock.close()
        return {
            "experiment": "syn-received", "lab": lab_info(lab), "counters": lab.b.counters(),
            "synack_retransmit_after_ms": ms(synack.mono, mono(a, "ESTABLISHED")),
            "b_established_after_ms": ms(est.mono, mono(a, "ESTABLISHED")),
            "b_states_polled": poll_b.states(conn.b_key),
            **seq.result(),
        }
