"""Text for people: 80 columns, a header line per table, no click (the CLI echoes what these return).

Submodules by subject: tables (connection table, watch events), experiments (step lines, reports,
the text sequence diagram), diagnosis (`why`). The helpers here are shared by all of them."""

from __future__ import annotations

WIDTH = 80


def endpoint(addr: str, port: int) -> str:
    if port == 0 and addr == "*":
        return "*:*"
    if addr.startswith("::ffff:") and "." in addr:
        addr = addr[7:]  # an IPv4 peer of a dual-stack socket: ss prints it the same way
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def outcome(r, ok_text: str = "ok") -> str:
    """A probe's or a socket step's result (ProbeResult or its dict): ok, or the call and errno."""
    r = r if isinstance(r, dict) else r._asdict()
    return ok_text if r.get("ok") else f"{r.get('syscall')}() failed: {r.get('error')} ({r.get('errno')})"


def fit(head: str, tail: str, indent: int = 10) -> str:
    """head + tail on one line when it fits WIDTH, else tail on a continuation line."""
    if len(head) + 1 + len(tail) <= WIDTH:
        return f"{head} {tail}".rstrip()
    return f"{head.rstrip()}\n{'':<{indent}}{tail}"


def wrap(text: str, first: str = "", rest: str | None = None) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(" ".join(text.split()), WIDTH, initial_indent=first,
                                   subsequent_indent=" " * len(first) if rest is None else rest))
