"""One end's state sequence from the tracepoint's events (addrinuse.tracepoint) of both ends.

The raw events need corrections (include/trace/events/sock.h, net/ipv4/tcp_minisocks.c): a full
socket's X -> CLOSE from FIN_WAIT2 or CLOSING is its hand-off to a timewait socket, and TIME_WAIT's
start (the peer's FIN) emits no event of its own."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from addrinuse.tracepoint import TraceEvent


def lane(own: list[TraceEvent], peer: list[TraceEvent], timewait: bool = True,
         timewait_gone: float | None = None) -> list[dict]:
    """One end's states in order, [{"state", "mono", "source"}], from its own state events and the
    peer's (same connection, seen from the other side). The corrections the raw events need:
    - X -> CLOSE is CLOSED, except when the full socket hands off to a timewait socket: from
      FIN_WAIT2 (tcp_time_wait(sk, TCP_FIN_WAIT2 or TCP_TIME_WAIT)) and from CLOSING
      (tcp_time_wait(sk, TCP_TIME_WAIT) when the last ACK arrives). timewait=False says the
      hand-off failed (tcp_max_tw_buckets reached: TcpExtTCPTimeWaitOverflow), so it is CLOSED.
    - The hand-off from FIN_WAIT2 before the peer's FIN keeps the end in FIN_WAIT2 (now a timewait
      socket; the entry gets "handoff_mono"); TIME_WAIT begins when the peer's FIN arrives, which on
      loopback or a veth pair is the instant the peer leaves CLOSE_WAIT for LAST_ACK (source
      "inferred": no event marks it). timewait_gone: when the timewait socket was seen to vanish
      (an orphaned FIN_WAIT2 whose tcp_fin_timeout ran out); a peer FIN after that starts nothing."""
    own = sorted((e for e in own if e.kind == "state"), key=lambda e: e.mono)
    start = own[0].mono if own else 0.0
    peer_fin = next((e.mono for e in sorted(peer, key=lambda e: e.mono)
                     if e.kind == "state" and e.mono >= start and e.new_state in ("LAST_ACK", "CLOSING", "FIN_WAIT1")
                     and e.old_state in ("CLOSE_WAIT", "ESTABLISHED")), None)
    out: list[dict] = []
    if own:
        out.append({"state": own[0].old_state, "mono": None, "source": "trace"})
    for e in own:
        state = e.new_state
        if state == "CLOSED" and e.old_state in ("FIN_WAIT2", "CLOSING") and timewait:
            if e.old_state == "FIN_WAIT2" and (peer_fin is None or peer_fin > e.mono):
                out[-1]["handoff_mono"] = e.mono
                if peer_fin is not None and (timewait_gone is None or peer_fin < timewait_gone):
                    out.append({"state": "TIME_WAIT", "mono": peer_fin, "source": "inferred"})
                continue
            state = "TIME_WAIT"
        out.append({"state": state, "mono": e.mono, "source": "trace"})
    return out
