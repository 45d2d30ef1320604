"""Steps the lab experiments share: open a connection, firewall rules, waits, the handshake's and
the close's segments drawn from the tracepoint's events."""

from __future__ import annotations


from addrinuse.errors import LabError
from addrinuse.lab.observe import Conn, Sequence

PURE_ACK = "tcp flags & (fin | syn | rst | ack) == ack"
SYN_ACK = "tcp flags & (syn | ack) == syn | ack"
FIN = "tcp flags & fin == fin"
# How long a step waits for a state change that follows within milliseconds on a quiet machine: the
# deadline only bounds a loaded one (measured: 2 s was too short with the suite's 4 workers on 2 cores).
SETTLE_S = 10.0


def wait(predicate, timeout: float, what: str, interval: float = 0.002):
    """Poll predicate until truthy; LabError naming `what` at the deadline."""
    from addrinuse.polling import until

    value = until(predicate, timeout, interval)
    if value is None:
        raise LabError(f"lab: timed out after {timeout} s waiting for {what}")
    return value


def event(lab, predicate, what: str, timeout: float = 5.0):
    found = lab.tracer.wait_for(predicate, timeout)
    if found is None:
        raise LabError(f"lab: no tracepoint event for {what} within {timeout} s")
    return found


def states_of(end, key: tuple, port: int = 0) -> list[str]:
    """The states of the entries with this 4-tuple in an end's table."""
    return [r["state"] for r in end.table(port or key[1]) if (r["laddr"], r["lport"], r["raddr"], r["rport"]) == key]


def in_table(end, key: tuple, state: str, port: int = 0) -> bool:
    return state in states_of(end, key, port)


def listen(lab):
    listener = lab.b.socket()
    listener.bind()
    listener.listen()
    return listener


def open_connection(lab, listener=None):
    """A connects to a listener on B; returns (conn, a_sock, b_sock, listener)."""
    listener = listener or listen(lab)
    a_sock = lab.a.socket()
    a_sock.connect(lab.b.addr, listener.sockname[1])
    b_sock = listener.accept()
    conn = Conn(lab.a.addr, a_sock.sockname[1], lab.b.addr, listener.sockname[1])
    return conn, a_sock, b_sock, listener


def drop_once(name: str, chain: str, match: str) -> str:
    """nft commands: drop the first packet matching `match`, once per sender (address . port) -
    a dynamic set remembers who was dropped - and count it in counter `name`."""
    return (f"add set inet lab {name}_set {{ type ipv4_addr . inet_service; flags dynamic; }}\n"
            f"add counter inet lab {name}\n"
            f"add rule inet lab {chain} {match} ip saddr . tcp sport != @{name}_set "
            f"add @{name}_set {{ ip saddr . tcp sport }} counter name {name} drop\n")


def count(name: str, chain: str, match: str) -> str:
    return f"add counter inet lab {name}\nadd rule inet lab {chain} {match} counter name {name}\n"


def to_b(conn: Conn) -> str:
    """Match A -> B segments of this connection (in B's input or A's output)."""
    return f"ip saddr {conn.a_addr} tcp sport {conn.a_port} ip daddr {conn.b_addr} tcp dport {conn.b_port}"


def to_a(conn: Conn) -> str:
    return f"ip saddr {conn.b_addr} tcp sport {conn.b_port} ip daddr {conn.a_addr} tcp dport {conn.a_port}"


def new_sequence(title: str, lab, conn: Conn) -> Sequence:
    seq = Sequence(title, lab.t0)
    seq.end("a", f"A {conn.a_addr}:{conn.a_port}")
    seq.end("b", f"B {conn.b_addr}:{conn.b_port}")
    return seq


def listen_event(lab, conn: Conn):
    return next((e for e in lab.tracer.history if e.kind == "state" and e.new_state == "LISTEN"
                 and (e.laddr, e.lport) == (conn.b_addr, conn.b_port)), None)


def lanes(seq: Sequence, lab, conn: Conn, a_timewait: bool = True, b_timewait: bool = True,
          until: float | None = None, a_timewait_gone: float | None = None) -> tuple[dict, dict]:
    """Both ends' traced states into seq; returns ({state: step} of a, of b)."""
    history = lab.tracer.snapshot()
    a_ev, b_ev = conn.events(history, "a", "state", until), conn.events(history, "b", "state", until)
    a = seq.trace_lane("a", a_ev, b_ev, timewait=a_timewait, timewait_gone=a_timewait_gone)
    b = seq.trace_lane("b", b_ev, a_ev, listen=listen_event(lab, conn), timewait=b_timewait)
    return a, b


def mono(steps: dict, state: str) -> float | None:
    step = steps.get(state)
    return None if step is None else step["mono"]


def handshake_segments(seq: Sequence, a: dict, b: dict) -> None:
    """SYN when A entered SYN_SENT; the SYN-ACK arrived when A became ESTABLISHED, whose ACK made
    B's new socket (LISTEN -> SYN_RECV -> ESTABLISHED, all at its arrival)."""
    seq.segment("a", "b", "SYN", mono(a, "SYN_SENT"))
    seq.segment("b", "a", "SYN-ACK", mono(a, "ESTABLISHED"), mono(a, "ESTABLISHED"))
    seq.segment("a", "b", "ACK", mono(a, "ESTABLISHED"), mono(b, "ESTABLISHED"))


def active_close_segments(seq: Sequence, a: dict, b: dict) -> None:
    """A's FIN (A: FIN_WAIT1, B: CLOSE_WAIT at its arrival) and B's ACK of it (A: FIN_WAIT2)."""
    seq.segment("a", "b", "FIN", mono(a, "FIN_WAIT1"), mono(b, "CLOSE_WAIT"))
    seq.segment("b", "a", "ACK", mono(b, "CLOSE_WAIT"), mono(a, "FIN_WAIT2"))


def lost_ack_segments(seq: Sequence, a: dict, b: dict, retx) -> float | None:
    """The whole connection up to B's resent FIN, A's ACK of B's first FIN drawn lost. Returns the
    time of B's FIN (B: CLOSE_WAIT -> LAST_ACK; on a veth pair it arrives in the same instant)."""
    handshake_segments(seq, a, b)
    active_close_segments(seq, a, b)
    fin = mono(b, "LAST_ACK")
    seq.segment("b", "a", "FIN", fin, fin)
    seq.segment("a", "b", "ACK", fin, None, "lost")
    seq.segment("b", "a", "FIN", retx.mono, retx.mono, "retransmit")
    return fin


def ms(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else round((later - earlier) * 1000, 3)


def netstat_delta(before: dict, after: dict, names: tuple) -> dict:
    """TcpExt counters that changed (and the named ones, changed or not)."""
    b, a = before["TcpExt"], after["TcpExt"]
    return {k: a[k] - b.get(k, 0) for k in a if k in names or a[k] != b.get(k, 0)}


def lab_info(lab) -> dict:
    return {"a": lab.a.addr, "b": lab.b.addr, "cost_ms": dict(lab.cost_ms),
            "sysctls": {"a": dict(lab.a.sysctl_log), "b": dict(lab.b.sysctl_log)}}
