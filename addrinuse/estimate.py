"""When a port frees, and what kind of answer that is.

Every estimate says its kind, because the kernel gives different certainty per state:
  now          nothing holds the port's local side
  exact        only TIME_WAIT entries: each has a kernel timer (TCP_TIMEWAIT_LEN = 60 s), which the
               timer wheel fires up to one wheel granule late, so the end is an interval
  upper_bound  entries that can still turn into a fresh TIME_WAIT (an orphaned FIN_WAIT2 whose peer
               has not closed: its FIN starts a new 60 s TIME_WAIT), or entries without timers (psutil)
  unknown      a live process holds an entry (LISTEN, ESTABLISHED, CLOSE_WAIT...): it ends when that
               process closes the socket or exits
A port's estimate is the latest of its entries' bounds: it is free once the last one has gone."""

from __future__ import annotations

import functools
from typing import Iterable, NamedTuple

from addrinuse.conntable import TCP_TIMEWAIT_LEN_S, Entry

KINDS = ("now", "exact", "upper_bound", "unknown")
# States only a live socket can be in: close() moves ESTABLISHED to FIN_WAIT1 and CLOSE_WAIT to
# LAST_ACK, and a connection still in the accept queue (no file descriptor yet) is held by its listener.
LIVE_STATES = frozenset({"LISTEN", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "CLOSE_WAIT"})
TCP_RTO_MIN_S, TCP_RTO_MAX_S = 0.2, 120.0  # include/net/tcp.h
# kernel/time/timer.c: 64 buckets per level, each level 8 times coarser (LVL_BITS 6, LVL_CLK_SHIFT 3).
_LVL_START = [63 << (3 * n) for n in range(9)]  # LVL_START(n + 1)
LATENCY_S = 0.25  # softirq and polls run late on a busy machine: 2 of 600 entries outlived 0.1 (see tracker.py)


class Estimate(NamedTuple):
    kind: str
    min_s: float | None  # earliest moment it can be free, seconds from now (None: unknown)
    max_s: float | None  # latest moment (None: unknown)
    reason: str

    def to_dict(self) -> dict:
        r = lambda v: None if v is None else round(v, 3)  # noqa: E731
        return {"kind": self.kind, "min_s": r(self.min_s), "max_s": r(self.max_s), "reason": self.reason}


def ipv4_sysctl(name: str, default: float) -> float:
    """A net sysctl of the *current* network namespace: /proc/sys/net resolves per opener."""
    try:
        with open(f"/proc/sys/net/ipv4/{name}") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def fin_timeout_s() -> float:
    """net.ipv4.tcp_fin_timeout: how long an orphaned FIN_WAIT2 waits for the peer's FIN."""
    return ipv4_sysctl("tcp_fin_timeout", 60.0)


@functools.lru_cache(maxsize=1)
def kernel_hz() -> int | None:
    """CONFIG_HZ of the running kernel, from its build config (None when it is not readable)."""
    import gzip
    import os

    for path, opener in ((f"/boot/config-{os.uname().release}", open), ("/proc/config.gz", gzip.open)):
        try:
            with opener(path, "rt") as f:
                for line in f:
                    if line.startswith("CONFIG_HZ="):
                        return int(line.split("=")[1])
        except (OSError, ValueError):
            continue
    return None


def wheel_slack_s(timeout_s: float) -> float:
    """How late a timer of this length can fire: the wheel puts it in the level whose range holds
    it and rounds the expiry up to that level's granule (calc_wheel_index(): 8**level jiffies), then
    the softirq runs on the next tick. 60 s at HZ=250 is level 3: 512 jiffies = 2.048 s. Unknown HZ:
    the worst of the usual values (100 gives 5.12 s)."""
    hz_values = [kernel_hz()] if kernel_hz() else [100, 250, 300, 1000]
    worst = 0.0
    for hz in hz_values:
        delta = max(1, int(timeout_s * hz))
        level = next(n for n, start in enumerate(_LVL_START) if delta < start)
        worst = max(worst, ((8 ** level) + 1) / hz)
    return worst + LATENCY_S


def orphan_retries_s() -> float:
    """How long an orphan keeps retransmitting its FIN before the kernel gives up: tcp_orphan_retries
    (0 means 8, tcp_orphan_retries()) modelled as tcp_model_timeout() does, plus the last RTO."""
    retries = int(ipv4_sysctl("tcp_orphan_retries", 0)) or 8
    thresh = 9  # ilog2(TCP_RTO_MAX / TCP_RTO_MIN)
    if retries <= thresh:
        total = ((2 << retries) - 1) * TCP_RTO_MIN_S
    else:
        total = ((2 << thresh) - 1) * TCP_RTO_MIN_S + (retries - thresh) * TCP_RTO_MAX_S
    return total + TCP_RTO_MAX_S


def fin_wait2_left_s(entry: Entry, fin_timeout: float) -> float:
    """Longest time an orphaned FIN_WAIT2 can still wait for the peer's FIN (net/ipv4/tcp.c
    __tcp_close(), tcp_timer.c tcp_keepalive_timer(), tcp_minisocks.c tcp_time_wait()):
    - tcp_fin_timeout <= 60 s: close() hands the socket to a timewait socket in substate FIN_WAIT2
      whose timer is tcp_fin_time() (timer "timewait"): what is left is its timer;
    - tcp_fin_timeout > 60 s: the full socket stays, with the keepalive timer set to fin_timeout - 60;
      when that fires it becomes a timewait FIN_WAIT2 for fin_timeout - 60 more (at least 3.5 RTO).
      So the orphan lives 2 * (fin_timeout - 60) in all, not fin_timeout (90 gives 60 s).
    A socket's own TCP_LINGER2 replaces the sysctl and is not visible from here."""
    if entry.timer == "timewait" and entry.expires_in_s is not None:
        return entry.expires_in_s
    second = max(fin_timeout - TCP_TIMEWAIT_LEN_S, 3.5 * TCP_RTO_MIN_S) if fin_timeout > TCP_TIMEWAIT_LEN_S else 0.0
    if entry.timer == "keepalive" and entry.expires_in_s is not None:
        return entry.expires_in_s + second
    return max(fin_timeout, 2 * second)  # no timer known (psutil): the whole span


def _who(owners) -> tuple[str, bool]:
    """('pid 10 (nginx)' or 'pids 10, 11 (nginx)', plural?) for a socket's holders."""
    if not owners:
        return "a process not visible here", False
    names = "/".join(sorted({o.name or "?" for o in owners}))
    pids = ", ".join(str(o.pid) for o in owners)
    return f"{'pids' if len(owners) > 1 else 'pid'} {pids} ({names})", len(owners) > 1


def plain_addr(addr: str) -> str:
    """An IPv4 peer of a dual-stack socket (::ffff:a.b.c.d) as the IPv4 side names it."""
    return addr[7:] if addr.startswith("::ffff:") and "." in addr else addr


def peer_index(entries: Iterable[Entry]) -> dict:
    return {(plain_addr(e.laddr), e.lport, plain_addr(e.raddr), e.rport): e for e in entries if e.raddr != "*"}


def peer_of(entry: Entry, index: dict) -> Entry | None:
    """The other end of the connection, when it is a socket of this host (same network namespace)."""
    return index.get((plain_addr(entry.raddr), entry.rport, plain_addr(entry.laddr), entry.lport))


def entry_estimate(e: Entry, peers: dict | None = None, other_end: str = "peer") -> Estimate:
    """When this one entry stops holding its local port. `other_end` names the peer's role
    ("client", "server") when the caller knows which end this is."""
    tw = TCP_TIMEWAIT_LEN_S + wheel_slack_s(TCP_TIMEWAIT_LEN_S)
    if e.state in LIVE_STATES or e.owners or e.inode:
        # No file descriptor yet (inode 0, as sock_diag reports it; cookie: a backend that reads inodes):
        # the connection waits in its listener's accept queue.
        if e.state in ("ESTABLISHED", "CLOSE_WAIT", "SYN_RECV") and e.cookie is not None and not e.inode:
            return Estimate("unknown", None, None, f"an {e.state} connection waits in its listener's accept queue")
        who, plural = _who(e.owners)
        what = {"LISTEN": "listen on it" if plural else "listens on it",
                "CLOSE_WAIT": f"{'have' if plural else 'has'} not closed its end of a connection the peer "
                              f"closed (CLOSE_WAIT)"}.get(e.state, f"{'hold' if plural else 'holds'} {e.state} "
                                                                   f"socket on it")
        return Estimate("unknown", None, None, f"{who} {what}")
    if e.state == "TIME_WAIT":
        if e.expires_in_s is None:
            return Estimate("upper_bound", 0.0, tw, "TIME_WAIT: at most 60 s (no kernel timers with this backend)")
        return Estimate("exact", e.expires_in_s, e.expires_in_s + wheel_slack_s(TCP_TIMEWAIT_LEN_S), "TIME_WAIT timer")
    fin = fin_timeout_s()
    if e.state == "FIN_WAIT2":
        left = fin_wait2_left_s(e, fin)
        latest = left + wheel_slack_s(max(left, 1.0)) + tw
        peer = peer_of(e, peers or {})
        if peer is not None and peer.owners and peer.state == "CLOSE_WAIT":
            first = peer.owners[0]
            reason = (f"{other_end} pid {first.pid} ({first.name or '?'}) has not closed its end; when it does,"
                      f" a 60 s TIME_WAIT begins")
        else:
            reason = (f"orphaned FIN_WAIT2 waits up to {left:.0f} s more for the peer's FIN "
                      f"(tcp_fin_timeout {fin:g} s); the FIN starts a 60 s TIME_WAIT")
        earliest = 0.0 if e.expires_in_s is None else min(left, TCP_TIMEWAIT_LEN_S)  # never closed, or now
        return Estimate("upper_bound", earliest, latest, reason)
    # FIN_WAIT1, CLOSING, LAST_ACK orphans: still retransmitting their FIN (tcp_orphan_retries).
    retries = orphan_retries_s()
    after = {"LAST_ACK": 0.0, "CLOSING": tw}.get(e.state, fin_wait2_left_s(e, fin) + tw)
    return Estimate("upper_bound", 0.0, retries + after,
                    f"orphaned {e.state} retransmits its FIN until acknowledged (tcp_orphan_retries)")


def combine(estimates: list[Estimate]) -> Estimate:
    """The port frees when its last entry is gone: the latest of the entries' bounds."""
    if not estimates:
        return Estimate("now", 0.0, 0.0, "nothing holds the port")
    unknown = [x for x in estimates if x.kind == "unknown"]
    if unknown:
        more = f" (and {len(unknown) - 1} more held entries)" if len(unknown) > 1 else ""
        return Estimate("unknown", None, None, unknown[0].reason + more)
    latest = max(estimates, key=lambda x: x.max_s)
    kind = "exact" if all(x.kind == "exact" for x in estimates) else "upper_bound"
    reason = f"the last of {len(estimates)} TIME_WAIT timers" if kind == "exact" and len(estimates) > 1 else latest.reason
    return Estimate(kind, max(x.min_s for x in estimates), latest.max_s, reason)


def free_in(entries: Iterable[Entry], context: Iterable[Entry] = (), roles: dict | None = None) -> Estimate:
    """The estimate for the entries that hold a port's local side (callers filter them). `context`:
    other entries of the same snapshot, where the other ends of these connections may be found;
    `roles`: entry key -> the other end's role ("client"/"server"), when the caller knows it."""
    entries = list(entries)
    peers = peer_index([*entries, *context])
    roles = roles or {}
    return combine([entry_estimate(e, peers, roles.get(e.key, "peer")) for e in entries])
