"""The peers addrinuse is checked and measured against: /proc/net/tcp{,6} parsing and `ss`.

/proc/net/tcp (net/ipv4/tcp_ipv4.c, get_tcp4_sock/get_timewait4_sock): addresses are hex in host
byte order per 32-bit word, ports hex; `tr:tm->when` is the timer kind and the time left in clock
ticks (USER_HZ, 1/100 s on Linux); TIME_WAIT rows have timer 3 and inode 0."""

from __future__ import annotations

import socket
import struct
import subprocess

from addrinuse.conntable import KERNEL_STATES

USER_HZ = 100


def _addr(hexaddr: str) -> tuple[str, int]:
    host, port = hexaddr.split(":")
    raw = bytes.fromhex(host)
    # Each 32-bit word is printed in host byte order (little-endian here).
    raw = b"".join(struct.pack("<I", int.from_bytes(raw[i:i + 4], "big")) for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port, 16)


def proc_rows(port: int | None = None, local: bool = True) -> list[dict]:
    """Rows of /proc/net/tcp and tcp6, optionally for one (local) port, with timers in seconds."""
    rows = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(path).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            laddr, lport = _addr(f[1])
            raddr, rport = _addr(f[2])
            if port is not None and lport != port and (local or rport != port):
                continue
            timer, when = f[5].split(":")
            rows.append({"laddr": laddr, "lport": lport, "raddr": raddr, "rport": rport,
                         "state": KERNEL_STATES[int(f[3], 16)], "timer": int(timer, 16),
                         "expires_in_s": int(when, 16) / USER_HZ, "inode": int(f[9])})
    return rows


def ss_time_wait(port: int) -> str:
    """What `ss -tanHo state time-wait sport = :P` prints (the command the benchmark times)."""
    return subprocess.run(["ss", "-tanHo", "state", "time-wait", f"sport = :{port}"], capture_output=True,
                          text=True, check=True).stdout


def ss_timers(port: int) -> dict[int, float]:
    """remote port -> seconds left, from `ss -tanHo` timer:(timewait,59sec,0) or (timewait,450ms,0)."""
    out = {}
    for line in ss_time_wait(port).splitlines():
        fields = line.split()
        rport = int(fields[3].rsplit(":", 1)[1])
        timer = line.split("timer:(")[1].split(",")[1]
        out[rport] = parse_ss_duration(timer)
    return out


def parse_ss_duration(text: str) -> float:
    total, number = 0.0, ""
    units = {"min": 60.0, "sec": 1.0, "ms": 0.001}
    i = 0
    while i < len(text):
        if text[i].isdigit() or text[i] == ".":
            number += text[i]
            i += 1
            continue
        for unit, scale in units.items():
            if text.startswith(unit, i):
                total += float(number) * scale
                number = ""
                i += len(unit)
                break
        else:
            i += 1
    return total


def raw_dump_count(port: int, states_mask: int) -> int:
    """The floor under any sock_diag tool: one TCPDIAG_GETSOCK dump (both families, one walk of the
    established hash) with the kernel's own local-port filter (id.idiag_sport), the answers counted
    and nothing decoded. Written here from inet_diag.h, independent of addrinuse's backend."""
    request = (struct.pack("=BBBB", 0, 0, 0, 0) + struct.pack(">HH", port, 0) + bytes(32) + struct.pack("=I", 0)
               + b"\xff" * 8 + struct.pack("=II", states_mask, 0))
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4) as sock:
        sock.send(struct.pack("=IHHII", 16 + len(request), 18, 0x301, 1, 0) + request)
        count = 0
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind in (2, 3):  # NLMSG_ERROR, NLMSG_DONE
                    return count
                count += 1
                offset += (length + 3) & ~3
