"""TCP state changes as they happen, from the kernel tracepoint, named as the connection lives them
(`watch --source trace`).

The tracepoint sock:inet_sock_set_state reports the full socket's states, and two of its raw
changes are not what the connection does (net/ipv4/tcp_minisocks.c tcp_time_wait(),
net/ipv4/tcp_input.c; addrinuse.tracelane.lane makes the same corrections for a finished run):
- X -> CLOSE from FIN_WAIT2 or CLOSING is the hand-off to a timewait socket. From CLOSING, and from
  FIN_WAIT2 once the peer's FIN has arrived, it is the start of TIME_WAIT (reported here as
  X -> TIME_WAIT). From FIN_WAIT2 before the peer's FIN (an orphaned socket whose FIN was ACKed) it
  is no change of state at all: the timewait socket stays in FIN_WAIT2 (reported as a "handoff").
- TIME_WAIT after such a hand-off begins when the peer's FIN arrives, which emits nothing for this
  end. When the peer is on this host its own change (CLOSE_WAIT -> LAST_ACK: it sent that FIN) is
  seen, and the start of TIME_WAIT is reported then, with source "inferred". A peer elsewhere is
  not seen: the end stays a handed-off FIN_WAIT2 here (`addrinuse table` shows its TIME_WAIT).
TIME_WAIT's end emits no event either: only polling sees an entry vanish. If the kernel could not
make a timewait socket (tcp_max_tw_buckets reached, TcpExtTCPTimeWaitOverflow) the hand-off was
really CLOSED; the tracepoint does not say so, and neither can this.

The peer is matched by the reversed 4-tuple, an IPv4-mapped address (::ffff:a.b.c.d, the side of a
dual-stack socket) being its IPv4 address. A listener's remote end is "*" and port 0, as in the
table; a connect()ing socket's first change (CLOSED -> SYN_SENT) comes before the kernel picks its
local port, so its lport is 0. Memory is bounded: a FIN never followed up is forgotten
after MAX_PENDING others."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

MAX_PENDING = 16384  # ~3 MB at most
FIN_SENT = {("CLOSE_WAIT", "LAST_ACK"), ("ESTABLISHED", "CLOSING"), ("ESTABLISHED", "FIN_WAIT1")}


def _v4(addr: str) -> str:
    return addr[7:] if addr.startswith("::ffff:") and "." in addr else addr


@dataclass(frozen=True)
class Transition:
    t_s: float  # seconds since the watch began (the kernel's CLOCK_MONOTONIC timestamp)
    family: int
    laddr: str
    lport: int
    raddr: str
    rport: int
    previous: str
    state: str
    source: str = "trace"  # "trace": the tracepoint's event; "inferred": from the peer's event
    event: str = "changed"  # "changed", or "handoff": the full socket became a timewait socket, same state

    def to_dict(self) -> dict:
        return {"t_s": round(self.t_s, 6), "event": self.event, "source": self.source, "family": self.family,
                "laddr": self.laddr, "lport": self.lport, "raddr": self.raddr, "rport": self.rport,
                "previous": self.previous, "state": self.state}


class Transitions:
    """feed(TraceEvent) -> the Transitions it means, in order."""

    def __init__(self):
        self._handed_off: OrderedDict = OrderedDict()  # key -> its handoff Transition, awaiting the peer's FIN
        self._peer_fin: OrderedDict = OrderedDict()  # key -> t_s when its peer sent a FIN

    @staticmethod
    def _key(laddr: str, lport: int, raddr: str, rport: int) -> tuple:
        return (_v4(laddr), lport, _v4(raddr), rport)

    def _remember(self, table: OrderedDict, key: tuple, value) -> None:
        table[key] = value
        if len(table) > MAX_PENDING:
            table.popitem(last=False)

    def feed(self, e) -> list[Transition]:
        if e.kind != "state" or e.old_state is None or e.new_state is None:
            return []
        key = self._key(e.laddr, e.lport, e.raddr, e.rport)
        # A listener has no peer: "*" and port 0, as in the connection table (docs/json.md, entry).
        raddr = "*" if e.rport == 0 and e.raddr in ("0.0.0.0", "::") else e.raddr
        base = dict(t_s=e.t_s, family=e.family, laddr=e.laddr, lport=e.lport, raddr=raddr, rport=e.rport)
        out = []
        old, new = e.old_state, e.new_state
        if new == "CLOSED" and old == "CLOSING":
            new = "TIME_WAIT"
        elif new == "CLOSED" and old == "FIN_WAIT2":
            if self._peer_fin.pop(key, None) is not None:
                new = "TIME_WAIT"
            else:
                handoff = Transition(**base, previous=old, state=old, event="handoff")
                self._remember(self._handed_off, key, handoff)
                return [handoff]
        if (old, new) in FIN_SENT:  # this end sent its FIN: its peer, if handed off, enters TIME_WAIT now
            peer = (key[2], key[3], key[0], key[1])
            waiting = self._handed_off.pop(peer, None)
            if waiting is not None:
                out.append(Transition(e.t_s, waiting.family, waiting.laddr, waiting.lport, waiting.raddr,
                                      waiting.rport, "FIN_WAIT2", "TIME_WAIT", source="inferred"))
            else:
                self._remember(self._peer_fin, peer, e.t_s)
        if new == "CLOSED":
            self._peer_fin.pop(key, None)
            self._handed_off.pop(key, None)
        # The end's own change first: the peer's TIME_WAIT follows from it.
        return [Transition(**base, previous=old, state=new)] + out



def wanted(t: Transition, states) -> bool:
    """--state: a transition into or out of one of the states (none given: every one)."""
    return not states or t.state in states or t.previous in states
