"""The verdict: a few sentences, most important first.

The first sentence always gives both answers, a plain bind and one with SO_REUSEADDR (most
servers set it: nginx, redis, node, uvicorn, gunicorn, lighttpd, Python's http.server, measured),
so whoever reads only that line knows what their own server will meet. Then the cause and its
fix: a conflicting listener beats a live connection beats entries the kernel will end by itself."""

from __future__ import annotations

from addrinuse.diagnose.ends import range_advice
from addrinuse.diagnose.holders import Holder, Lingering, parent_of, who
from addrinuse.diagnose.conflict import user_name
from addrinuse.render import endpoint


def _failed(r) -> str:
    return r.error or "error"


def answers(d) -> str:
    """Both answers in one sentence (and SO_REUSEPORT's when that is what was asked)."""
    plain, reuse = d.probes["plain"], d.probes["reuseaddr"]
    where = endpoint(d.host, d.port)
    if plain.ok and reuse.ok:
        text = f"{where} is free: a plain bind and one with SO_REUSEADDR both succeed"
    elif not plain.ok and reuse.ok:
        text = f"A plain bind of {where} fails ({_failed(plain)}); one with SO_REUSEADDR succeeds"
    elif not plain.ok and not reuse.ok:
        same = _failed(plain) == _failed(reuse)
        text = (f"A bind of {where} fails, plain and with SO_REUSEADDR ({_failed(plain)})" if same else
                f"A plain bind of {where} fails ({_failed(plain)}), and one with SO_REUSEADDR too "
                f"({_failed(reuse)})")
    else:
        text = f"A plain bind of {where} succeeds; one with SO_REUSEADDR fails ({_failed(reuse)})"
    if d.mode == "reuseport":
        r = d.probes["reuseport"]
        text += f"; with SO_REUSEPORT it {'succeeds' if r.ok else f'fails ({_failed(r)})'}"
    return text + "."


def _listener_where(h: Holder, port: int) -> str:
    return endpoint(h.laddr, port) + (" (IPv6-only)" if h.v6only else "")


def _stop(h: Holder) -> str:
    if h.record:
        return f"addrinuse kill {h.record}"
    if len(h.owners) > 1:
        parent = parent_of(h.owners)
        pids = " ".join(str(o.pid) for o in h.owners)
        first = f" (pid {parent.pid} is their parent: stopping it usually stops the rest)" if parent else ""
        return f"stop all {len(h.owners)} of them: {pids}{first}"
    return "stop it"


def _join(h: Holder, mode: str) -> str:
    """What SO_REUSEPORT can do about a listener: the kernel lets a new socket share it only when
    both set SO_REUSEPORT and the new socket's uid is the listener's (inet_bind_conflict())."""
    if h.joinable_by_uid is None or h.uid is None:
        if mode != "reuseport":
            return ""
        return (f" If it set SO_REUSEPORT, only a server running as uid {h.uid} can join it (the kernel "
                f"compares the uid that created the socket)." if h.uid is not None else "")
    name = user_name(h.uid)
    uid = f"uid {h.uid}" + (f" ({name})" if name else "")
    if h.joinable_by_uid:
        return f" It set SO_REUSEPORT: a server running as {uid} with SO_REUSEPORT can join it (probed)."
    return f" Its group cannot be joined: it did not set SO_REUSEPORT (probed as {uid})." if mode == "reuseport" else ""


def _ends(g: Lingering) -> str:
    if g.end == "client":
        to = ", ".join(g.peers)
        return f"outgoing connections from this port (the client end, to {to}: a listener here)"
    if g.end == "server":
        return "a server-side close (the server end of accepted connections)"
    return "connections this host closed first (which end, nothing here says)"


def _lingering(d, groups: list[Lingering]) -> str:
    counts = ", ".join(f"{g.count} {g.state} {'entry' if g.count == 1 else 'entries'}" for g in groups)
    text = f"{counts} left by {_ends(groups[0])}; free {_free(d)}."
    if d.mode == "plain":
        if d.probes["reuseaddr"].ok:
            text += (" A server that sets SO_REUSEADDR can bind now (the old socket set it too: on Linux "
                     "both must).")
        else:
            text += (" SO_REUSEADDR will not help: the old socket did not set it, and on Linux both must "
                     "(probed).")
    elif d.mode != "plain" and not d.free:
        text += " The old socket did not set the same option, so this bind must wait."
    return text


def _live(d, conns: list[Holder]) -> str:
    h = conns[0]
    kind = {"client": "outgoing connection(s) from this port", "server": "accepted connection(s) on it"}.get(
        h.end, "connection(s) from this port")
    states = sorted({c.state for c in conns})
    return (f"{who(h)} holds {len(conns)} {kind} ({', '.join(states)}, e.g. to "
            f"{endpoint(h.raddr, h.rport)}): the port is held until it closes them or exits; "
            f"free {_free(d)}.")


def _free(d) -> str:
    from addrinuse.render.tables import estimate_text

    return estimate_text(d.free_in)


def verdict(d) -> str:
    parts = [answers(d)]
    listeners = [h for h in d.listeners if h.conflicts]
    conns = [h for h in d.connections if h.conflicts]
    lingering = [g for g in d.lingering if g.conflicts]
    if listeners and d.free:  # only a SO_REUSEPORT server of the same uid gets past a live listener
        h = listeners[0]
        parts.append(f"{who(h)} listens on {_listener_where(h, d.port)} with SO_REUSEPORT, and this server "
                     f"joins its group (same uid, probed): the kernel then spreads connections over both.")
    elif listeners:
        h = listeners[0]
        text = f"{who(h)} listens on {_listener_where(h, d.port)}: {_stop(h)}"
        if d.dual_stack:
            text += f"; {d.dual_stack} (or have it set IPV6_V6ONLY)"
        if len(listeners) > 1:
            text += f" (and {len(listeners) - 1} more listener(s))"
        parts.append(text + "." + _join(h, d.mode))
    elif conns and not d.free:
        parts.append(_live(d, conns))
    elif lingering and not d.free:
        parts.append(_lingering(d, lingering))
    elif not d.free:
        r = d.probes[d.mode]
        parts.append(f"{r.syscall}() fails with {r.error}, but no socket visible here is in its way: look in "
                     f"other network namespaces or containers (ss -N), or at sockets of a BPF/sk_lookup program.")
    elif lingering or conns:
        from addrinuse.diagnose import MODE_WORDS

        counts: dict[str, int] = {}
        for state, n in [(g.state, g.count) for g in lingering] + [(h.state, 1) for h in conns]:
            counts[state] = counts.get(state, 0) + n
        held = ", ".join(f"{n} {state}" for state, n in counts.items())
        parts.append(f"The entries in the way of a plain bind ({held}) do not stop {MODE_WORDS[d.mode]}.")
    others = [h for h in d.listeners if not h.conflicts]
    if others:
        listed = "; ".join(f"{who(h)} on {endpoint(h.laddr, d.port)}: {h.reason}" for h in others)
        parts.append(f"Also on this port, does not conflict: {listed}.")
    blocked_by_clients = any(g.end == "client" for g in lingering) or any(h.end == "client" for h in conns)
    if d.ephemeral and not d.reserved and not d.free and not listeners and blocked_by_clients:
        advice = range_advice(d.port, d.port_range)
        parts.append(advice[0].upper() + advice[1:] + ".")
    if d.exhaustion and d.exhaustion.exhausted:
        parts.append(f"connect() to {endpoint(d.exhaustion.host, d.port)} fails with EADDRNOTAVAIL: "
                     f"{d.exhaustion.explanation()}.")
    return " ".join(parts)
