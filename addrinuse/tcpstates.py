"""The TCP states: who enters each, on which segment or call, and what takes it out.
RFC 9293 section 3.3.2 and Linux net/ipv4/tcp.c, tcp_input.c, tcp_minisocks.c."""

from __future__ import annotations

from typing import NamedTuple


class TcpState(NamedTuple):
    state: str
    side: str
    entered_on: str
    left_by: str


TCP_STATES = (
    TcpState("LISTEN", "server", "listen() on a bound socket",
             "close() of the listener (its accepted sockets live on)"),
    TcpState("SYN_SENT", "client", "connect() sends SYN",
             "SYN+ACK arrives -> ESTABLISHED; RST or tcp_syn_retries exhausted -> CLOSED"),
    TcpState("SYN_RECV", "server", "SYN arrives at a listener; it answers SYN+ACK (a request socket)",
             "the client's ACK -> ESTABLISHED in the accept queue; tcp_synack_retries exhausted -> dropped"),
    TcpState("ESTABLISHED", "both", "the three-way handshake completes",
             "own close()/shutdown(SHUT_WR) sends FIN -> FIN_WAIT1; peer's FIN arrives -> CLOSE_WAIT"),
    TcpState("FIN_WAIT1", "active closer", "close() sends the first FIN",
             "ACK of that FIN -> FIN_WAIT2; peer's FIN first -> CLOSING; FIN+ACK together -> TIME_WAIT"),
    TcpState("FIN_WAIT2", "active closer", "the peer ACKs our FIN",
             "peer's FIN -> TIME_WAIT; if orphaned (no fd left), tcp_fin_timeout (60 s) -> CLOSED"),
    TcpState("CLOSE_WAIT", "passive closer", "the peer's FIN arrives (and is ACKed)",
             "only the application's close(), which sends FIN -> LAST_ACK; a forgotten socket stays forever"),
    TcpState("CLOSING", "both (simultaneous close)", "a FIN arrives while in FIN_WAIT1",
             "ACK of our FIN -> TIME_WAIT"),
    TcpState("LAST_ACK", "passive closer", "close() in CLOSE_WAIT sends FIN",
             "ACK of that FIN -> CLOSED; retransmissions exhausted -> CLOSED"),
    TcpState("TIME_WAIT", "active closer", "the peer's FIN in FIN_WAIT2 (or the last ACK in CLOSING)",
             "2*MSL = TCP_TIMEWAIT_LEN, 60 s on Linux (not tunable) -> CLOSED; an RST or SOCK_DESTROY ends it early"),
    TcpState("CLOSED", "both", "LAST_ACK's ACK, TIME_WAIT expiry, an RST, or a failed connect",
             "not an entry: the table has nothing left for the connection"),
)
