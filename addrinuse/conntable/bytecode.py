"""The kernel's filter language for sock_diag dumps (INET_DIAG_REQ_BYTECODE), as `ss` speaks it.

A dump request may carry a small program (include/uapi/linux/inet_diag.h, struct inet_diag_bc_op
{u8 code; u8 yes; u16 no;}) that net/ipv4/inet_diag.c runs on every socket the walk reaches
(inet_diag_bc_sk -> inet_diag_bc_run): after each op the program jumps `yes` or `no` bytes ahead;
a socket is dumped when the jumps end exactly at the program's end, and dropped when they pass it
(a jump of remaining length + 4). inet_diag_bc_audit() refuses a program where any jump is not
4-aligned, passes the end by more than 4, or lands anywhere but on an op reached by the chain of
`yes` jumps from the start (valid_cc); so every op's `yes` leads to the next op, and an `or` is a
JMP op (which always takes `no`) after each alternative, as iproute2's ss.c ssfilter_bytecode
builds it.

Why a program rather than the request's id.idiag_sport / idiag_dport fields: those fields can only
say `sport = P and dport = Q`, so "either side is port P" took two dumps, two walks of the whole
established hash; and the walk of the bind hash (bound-only sockets) ignores them entirely, so
every bound-only socket of the machine came back for any port. A program answers
`(sport = P or dport = P)` in one walk, and the kernel applies it in every walk.

Conditions used here are INET_DIAG_BC_S_COND / D_COND (struct inet_diag_hostcond {u8 family;
u8 prefix_len; int port; __be32 addr[];}): a port (-1: any) and an address prefix of a family
(AF_UNSPEC: any). An AF_INET condition also matches an AF_INET6 socket's ::ffff:a.b.c.d address
(a dual-stack listener's IPv4 peers), as the kernel's inet_diag_bc_run() does it."""

from __future__ import annotations

import socket
import struct

INET_DIAG_REQ_BYTECODE = 1
BC_JMP, BC_S_COND, BC_D_COND = 1, 7, 8
OP = struct.Struct("=BBH")  # code, yes, no
HOSTCOND = struct.Struct("=BBxxi")  # family, prefix_len, (pad), port; the address follows
ATTR = struct.Struct("=HH")  # struct nlattr: len, type


def condition(code: int, port: int = -1, address: str | None = None) -> bytes:
    """The body of one S_COND/D_COND op (without its op header): port -1 and address None are 'any';
    an unspecified address (0.0.0.0, ::) matches its whole family ('::' every family, as a
    dual-stack bind covers IPv4 too)."""
    if address is None or address == "::":
        return HOSTCOND.pack(socket.AF_UNSPEC, 0, port)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    raw = socket.inet_pton(family, address)
    if family == socket.AF_INET6 and raw[:12] == b"\0" * 10 + b"\xff\xff":
        family, raw = socket.AF_INET, raw[12:]  # ::ffff:a.b.c.d is the IPv4 address a.b.c.d
    prefix = 0 if raw == bytes(len(raw)) else 8 * len(raw)
    return HOSTCOND.pack(family, prefix, port) + raw


def compile_filter(clauses: list[list[tuple[int, bytes]]]) -> bytes:
    """A program for an AND of ORs: each clause is a list of (code, condition body); a socket passes
    when every clause has a condition it meets. Returns b"" for no clauses (no filter)."""
    sizes = [[OP.size + len(body) for _, body in clause] for clause in clauses]
    # Each alternative but the last is followed by a JMP op to the end of its clause.
    clause_len = [sum(s) + OP.size * (len(s) - 1) for s in sizes]
    total = sum(clause_len)
    out = bytearray()
    for clause, op_sizes, length in zip(clauses, sizes, clause_len):
        clause_end = len(out) + length
        for i, ((code, body), size) in enumerate(zip(clause, op_sizes)):
            here = len(out)
            last = i == len(clause) - 1
            # Met: on to the next op (the JMP, or the next clause). Not met: the next alternative,
            # or, for the last one, past the program's end: the socket is dropped.
            no = (total - here + 4) if last else size + OP.size
            out += OP.pack(code, size, no) + body
            if not last:
                out += OP.pack(BC_JMP, OP.size, clause_end - len(out))
    assert len(out) == total
    return bytes(out)


def port_and_host_filter(port: int | None, local: bool, host: str | None) -> bytes:
    """`(sport = P or dport = P) and (src = H or dst = H)`, either part optional; local=True keeps
    only `sport = P`. The result is the nlattr to append to a dump request (b"" for no filter)."""
    clauses = []
    if port is not None:
        clauses.append([(BC_S_COND, condition(BC_S_COND, port))] +
                       ([] if local else [(BC_D_COND, condition(BC_D_COND, port))]))
    if host is not None and host != "::":  # '::' (dual-stack wildcard) covers every address
        clauses.append([(BC_S_COND, condition(BC_S_COND, -1, host)), (BC_D_COND, condition(BC_D_COND, -1, host))])
    program = compile_filter(clauses)
    return ATTR.pack(ATTR.size + len(program), INET_DIAG_REQ_BYTECODE) + program if program else b""
