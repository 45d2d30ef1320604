"""The client-port-exhaustion lab experiment (exported by addrinuse.lab.scenarios)."""

from __future__ import annotations

import errno
import time

from addrinuse.errors import LabError, SocketCallError
from addrinuse.lab.pair import Lab
from addrinuse.lab.steps import (SETTLE_S, active_close_segments, handshake_segments, in_table, lab_info, lanes,
                                 listen, new_sequence, open_connection, states_of, wait)


def client_port_exhaustion(ports: int = 10, reuse_delays_ms: tuple = (None, 100)) -> dict:
    """ip_local_port_range of `ports` ports in A's namespace; `ports` connections closed by A first
    leave as many TIME_WAIT entries (each blocks its port toward this server); the next connect()
    fails EADDRNOTAVAIL (__inet_hash_connect finds no port) and bind-before-connect to port 0
    EADDRINUSE (inet_csk_find_open_port: every port conflicts with a TIME_WAIT bind entry). Then
    tcp_tw_reuse = 1 (TCP timestamps are on): connect() takes over a TIME_WAIT entry once it is
    older than tcp_tw_reuse_delay ms (6.x; whole seconds before), counted from the start of its
    TIME_WAIT: reused_entry_age_s. late_s: how long after the oldest entry became reusable the
    first connect() succeeded (retried every 5 ms).
    Each delay in reuse_delays_ms is one round toward a fresh listener (None: the kernel's default;
    a delay where the sysctl does not exist is reported as skipped)."""
    with Lab() as lab:
        a = lab.a
        low = 40000
        a.sysctl("ipv4/ip_local_port_range", f"{low} {low + ports - 1}")
        # The count needs every TIME_WAIT entry to live. On a loaded machine A's final ACK can reach B
        # after B's loss probe resent its FIN; B then closes, A's TIME_WAIT ACKs the resent FIN, B
        # (no socket) answers RST, and the RST kills A's entry (tcp_timewait_state_process with
        # tcp_rfc1337 = 0: RFC 1337's "TIME-WAIT assassination"). Seen 4 times in ~45 runs with the
        # test suite and a loop of experiment runs sharing 2 cores, never on a quiet machine.
        # tcp_rfc1337 = 1 in A's namespace (private to it) makes TIME_WAIT ignore such an RST.
        a.sysctl("ipv4/tcp_rfc1337", 1)
        has_delay = _sysctl_exists(a, "ipv4/tcp_tw_reuse_delay")
        rounds, seq = [], None
        for delay in reuse_delays_ms:
            if delay is not None and not has_delay:
                rounds.append({"reuse_delay_ms": delay, "skipped": "no tcp_tw_reuse_delay on this kernel"})
                continue
            a.sysctl("ipv4/tcp_tw_reuse", 0)
            if has_delay:
                a.sysctl("ipv4/tcp_tw_reuse_delay", 1000 if delay is None else delay)
            listener = listen(lab)
            conns, polled = [], []
            for _ in range(ports):
                conn, a_sock, b_sock, _ = open_connection(lab, listener)
                a_sock.close()
                wait(lambda: in_table(lab.b, conn.b_key, "CLOSE_WAIT"), SETTLE_S, "B in CLOSE_WAIT")
                b_sock.close()
                before = time.monotonic()
                try:
                    wait(lambda: in_table(a, conn.a_key, "TIME_WAIT"), SETTLE_S, "A in TIME_WAIT")
                except LabError as err:
                    raise LabError(f"{err} ({_evidence(lab, conn)})") from None
                polled.append((before, time.monotonic()))
                conns.append(conn)
            port = listener.sockname[1]
            if seq is None:
                seq = new_sequence(f"Client port exhaustion: {ports} ports, {ports} TIME_WAIT", lab, conns[0])
                first, last, until = conns[0], conns[-1], time.monotonic()
                seq.state("a", "TIME_WAIT", polled[0][0], "poll", polled[0][1])
            tw = sum(1 for r in a.table(port) if r["state"] == "TIME_WAIT" and r["raddr"] == lab.b.addr)
            connect_error = _attempt(a, lambda s: s.connect(lab.b.addr, port))
            bind_error = _attempt(a, lambda s: s.bind(a.addr, 0))
            t_on = time.monotonic()
            a.sysctl("ipv4/tcp_tw_reuse", 1)
            attempts = 0
            while True:
                attempts += 1
                s = a.socket()
                try:
                    s.connect(lab.b.addr, port)
                    break
                except SocketCallError as err:
                    s.close()
                    if err.errno != errno.EADDRNOTAVAIL or time.monotonic() - t_on > 5:
                        raise
                    time.sleep(0.005)
            recovered = s.t
            # TIME_WAIT began at B's FIN (B: CLOSE_WAIT -> LAST_ACK); the reuse delay counts from
            # there, not from the FIN_WAIT2 hand-off (measured: a hand-off 0.85 s before the FIN
            # did not shorten it).
            fins = {c.a_port: next(e.mono for e in lab.tracer.history if e.key == c.b_key and e.new_state == "LAST_ACK")
                    for c in conns}
            delay_s = (1000 if delay is None else delay) / 1000
            expected = max(t_on, min(fins.values()) + delay_s)  # the oldest entry becomes reusable
            rounds.append({"reuse_delay_ms": round(delay_s * 1000), "delay_sysctl": has_delay, "timewait_entries": tw,
                           "connect_error": connect_error, "bind_error": bind_error,
                           "recovered_after_enable_s": round(recovered - t_on, 4), "attempts": attempts,
                           "oldest_entry_age_at_enable_s": round(t_on - min(fins.values()), 4),
                           "reused_port": s.sockname[1], "reused_entry_age_s": round(recovered - fins[s.sockname[1]], 4),
                           "late_s": round(recovered - expected, 4)})
            s.close()
        a_steps, b_steps = lanes(seq, lab, first, until=until)
        handshake_segments(seq, a_steps, b_steps)
        active_close_segments(seq, a_steps, b_steps)
        return {"experiment": "client-port-exhaustion", "lab": lab_info(lab), "ports": ports,
                "port_range": [low, low + ports - 1], "rounds": rounds,
                "first_connection": list(first.a_key), "last_connection": list(last.a_key), **seq.result()}


def _evidence(lab, conn) -> str:
    """What both ends' tables, the tracepoint and the counters say when A's TIME_WAIT never showed."""
    traced = [f"{e.kind}:{e.old_state}>{e.new_state}" if e.kind == "state" else e.kind
              for e in (lab.tracer.history if lab.tracer else ()) if e.key in (conn.a_key, conn.b_key)]
    a_ext, b_net = lab.a.netstat()["TcpExt"], lab.b.netstat()
    counters = {k: v for k, v in a_ext.items()
                if v and (k.startswith(("TW", "TCPTimeWait", "TCPAbort")) or k == "TCPMemoryPressures")}
    counters["B"] = {k: b_net["TcpExt"].get(k) for k in ("TCPLossProbes", "TCPLostRetransmit")}
    counters["B"].update(OutRsts=b_net["Tcp"].get("OutRsts"), RetransSegs=b_net["Tcp"].get("RetransSegs"))
    return (f"A's entry: {states_of(lab.a, conn.a_key) or 'none'}; B's: {states_of(lab.b, conn.b_key) or 'none'}; "
            f"traced: {' '.join(traced) or 'nothing'}; counters: {counters}")


def _attempt(end, action) -> dict | None:
    """The error of action(new socket), or None; the socket is closed either way."""
    sock = end.socket()
    try:
        action(sock)
    except SocketCallError as err:
        return {"syscall": err.syscall, "errno": err.errno, "errname": err.errname}
    finally:
        sock.close()
    return None


def _sysctl_exists(end, key: str) -> bool:
    try:
        end.sysctl(key)
        return True
    except LabError:
        return False
