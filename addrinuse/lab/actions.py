"""The network-namespace lab's experiments as scenario steps (`do = "lost_final_ack"`, ...), and the
requirement `requires = ["lab"]`. Each step runs one function of addrinuse.lab.scenarios in a lab
of its own and returns its result as is (the values the [[expect]] tables check with equals,
within and includes; "sequence", drawn in report.html; "states_seen"). Where no lab can be made
(not root, no nft or ip, no namespaces, no tracefs) a scenario that requires "lab" is skipped with
the reason; one that does not is reported "could not run" (LabUnavailable), never passed."""

from __future__ import annotations

from addrinuse.experiments.actions import action, requirement
from addrinuse.experiments.params import Count, Optional, Text


@requirement("lab")
def _lab() -> str | None:
    from addrinuse.lab import unavailable_reason

    return unavailable_reason()


def _run(ctx, name: str, **params) -> dict:
    from addrinuse.lab.scenarios import EXPERIMENTS

    result = EXPERIMENTS[name](**params)
    ctx.report.states_seen.update(result.get("states_seen", ()))
    return result


def _v(value, unit: str = "") -> str:
    return "none" if value is None else f"{value}{unit}"


def _with_diagram(first: str, r: dict) -> str:
    from addrinuse.render.sequence import two_lanes

    return first + "\n" + two_lanes(r["sequence"])


def _describe_lost(r: dict) -> str:
    return _with_diagram(
        f"B's FIN was resent in {r['fin_retransmit_state']} after {_v(r['fin_retransmit_delay_ms'], ' ms')}; "
        f"A's TIME_WAIT ACKed it again and restarted its timer ({_v(r['timewait_restarted_to_s'], ' s')} "
        f"from then); B {r['b_state']}, error {_v(r['b_error'])}", r)


def _describe_without(r: dict) -> str:
    how = "tcp_max_tw_buckets = 0" if r["method"] == "tw_buckets" else "SOCK_DESTROY"
    return _with_diagram(
        f"A kept no TIME_WAIT ({how}); B's FIN resent after {_v(r['fin_retransmit_delay_ms'], ' ms')} "
        f"met RST ({_v(r['rst_reason'])}); B {r['b_state']}, error {_v(r['b_error'])}", r)


def _describe_ports(r: dict) -> str:
    parts = []
    for rnd in r["rounds"]:
        if "skipped" in rnd:
            parts.append(f"delay {rnd['reuse_delay_ms']} ms: skipped ({rnd['skipped']})")
            continue
        errors = [f"{e['syscall']}() {e['errname']}" if e else "ok" for e in (rnd["connect_error"], rnd["bind_error"])]
        parts.append(f"{rnd['timewait_entries']} TIME_WAIT: {errors[0]}, {errors[1]}; tcp_tw_reuse = 1 "
                     f"(delay {rnd['reuse_delay_ms']} ms): connected after {rnd['recovered_after_enable_s']} s, "
                     f"to an entry {rnd['reused_entry_age_s']} s old")
    return _with_diagram(f"{r['ports']} ports: " + "; again: ".join(parts) + "; the first connection:", r)


def _describe_simultaneous(r: dict) -> str:
    return _with_diagram(
        f"FINs crossed: {str(r['fins_crossed']).lower()}; CLOSING {r['closing_ms']['a']} ms (A), "
        f"{r['closing_ms']['b']} ms (B); TIME_WAIT entries: A {r['timewait_entries']['a']}, "
        f"B {r['timewait_entries']['b']}", r)


def _describe_overflow(r: dict) -> str:
    return _with_diagram(
        f"TcpExtTCPTimeWaitOverflow +{r['timewait_overflow']}; A's entry polled in "
        f"{', '.join(r['a_states_polled']) or 'no state'} after its close; B's FIN met RST "
        f"({_v(r['rst_reason'])}); B {r['b_state']}, error {_v(r['b_error'])}", r)


def _describe_fin_wait_2(r: dict) -> str:
    return _with_diagram(
        f"A's orphaned FIN_WAIT2 timer set to {_v(r['timer_set_to_s'], ' s')} (tcp_fin_timeout = "
        f"{r['fin_timeout_s']}); gone after {r['fin_wait2_lifetime_min_s']}-{r['fin_wait2_lifetime_s']} s; "
        f"B's late FIN met RST ({_v(r['rst_reason'])}), error {_v(r['b_error'])}", r)


def _describe_syn_sent(r: dict) -> str:
    first = {"retransmit": "A's SYN", "retransmit_synack": "B's SYN-ACK"}.get(r["first_retransmit"], "none")
    return _with_diagram(
        f"the SYN-ACK dropped ({r['counters'].get('synack_dropped', 0)}); first retransmission: {first} after "
        f"{_v(r['retransmit_after_ms'], ' ms')}; A in SYN_SENT for {_v(r['syn_sent_ms'], ' ms')}", r)


def _describe_syn_received(r: dict) -> str:
    return _with_diagram(
        f"the handshake's ACK dropped ({r['counters'].get('handshake_ack_dropped', 0)}); B resent its SYN-ACK "
        f"after {_v(r['synack_retransmit_after_ms'], ' ms')}; B ESTABLISHED after "
        f"{_v(r['b_established_after_ms'], ' ms')}", r)


LAB = "in the network-namespace lab: "
PROVIDES = ()  # nothing a later step refers to: a lab is gone when its step ends


@action("lost_final_ack", {}, provides=PROVIDES, describe=_describe_lost,
        doc=LAB + "A's final ACK dropped once; B resends its FIN, A's TIME_WAIT answers it")
def lost_final_ack(ctx, p: dict) -> dict:
    return _run(ctx, "lost-final-ack")


@action("lost_final_ack_without_time_wait", {
    "method": Text(default="tw_buckets", choices=("tw_buckets", "destroy"),
                   doc="how A loses its TIME_WAIT entry: tcp_max_tw_buckets = 0, or SOCK_DESTROY"),
}, provides=PROVIDES, describe=_describe_without,
    doc=LAB + "the same loss, A without TIME_WAIT: B's resent FIN meets RST")
def lost_final_ack_without_time_wait(ctx, p: dict) -> dict:
    return _run(ctx, "lost-final-ack-without-time-wait", method=p["method"])


@action("client_port_exhaustion", {
    "ports": Count(default=10, low=2, high=100, doc="ports in A's ip_local_port_range"),
    "reuse_delay_ms": Optional(Count(low=1, high=60000), doc="a second round with this tcp_tw_reuse_delay "
                                                             "(skipped where the kernel has no such sysctl)"),
}, provides=PROVIDES, describe=_describe_ports,
    doc=LAB + "every client port in TIME_WAIT: connect() EADDRNOTAVAIL; then tcp_tw_reuse")
def client_port_exhaustion(ctx, p: dict) -> dict:
    delays = (None,) if p["reuse_delay_ms"] is None else (None, p["reuse_delay_ms"])
    return _run(ctx, "client-port-exhaustion", ports=p["ports"], reuse_delays_ms=delays)


@action("simultaneous_close", {
    "rate_bytes_s": Count(default=1000, low=100, high=100000, doc="each link's token-bucket rate"),
    "burst_bytes": Count(default=200, low=100, high=10000, doc="each token bucket's size"),
}, provides=PROVIDES, describe=_describe_simultaneous,
    doc=LAB + "both ends close at once: both in CLOSING, then both in TIME_WAIT")
def simultaneous_close(ctx, p: dict) -> dict:
    return _run(ctx, "simultaneous-close", rate_bytes_s=p["rate_bytes_s"], burst_bytes=p["burst_bytes"])


@action("time_wait_bucket_overflow", {}, provides=PROVIDES, describe=_describe_overflow,
        doc=LAB + "tcp_max_tw_buckets = 0: no TIME_WAIT entry, the overflow counter instead")
def time_wait_bucket_overflow(ctx, p: dict) -> dict:
    return _run(ctx, "time-wait-bucket-overflow")


@action("fin_wait_2_timeout", {
    "fin_timeout_s": Count(default=1, low=1, high=30, doc="tcp_fin_timeout in A's namespace"),
}, provides=PROVIDES, describe=_describe_fin_wait_2,
    doc=LAB + "an orphaned FIN_WAIT2 ends after tcp_fin_timeout; the late FIN meets RST")
def fin_wait_2_timeout(ctx, p: dict) -> dict:
    return _run(ctx, "fin-wait-2-timeout", fin_timeout_s=p["fin_timeout_s"])


@action("syn_sent", {}, provides=PROVIDES, describe=_describe_syn_sent,
        doc=LAB + "the SYN-ACK dropped once: A held in SYN_SENT until a retransmission")
def syn_sent(ctx, p: dict) -> dict:
    return _run(ctx, "syn-sent")


@action("syn_received", {}, provides=PROVIDES, describe=_describe_syn_received,
        doc=LAB + "the handshake's final ACK dropped once: B held in SYN_RECV")
def syn_received(ctx, p: dict) -> dict:
    return _run(ctx, "syn-received")
