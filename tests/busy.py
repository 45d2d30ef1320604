"""A busy machine for the whole test run (started by conftest, `python -m tests.busy`).

Real machines hold other programs' connections, and those reuse the very port numbers a test uses,
as local and as remote port, between other addresses. A test that attributes entries by port number
alone miscounts then; this process makes sure it does, every run:

- thousands of TIME_WAIT entries on other ports (127.0.0.4 <-> 127.0.0.5, both sides closing first,
  renewed before they expire), so every table walk is a real one;
- for every port a test listens on at 127.0.0.1 (seen in two successive polls, so a bind probe that
  lives microseconds is never copied), the same port number on other loopback addresses: a listener
  on 127.0.0.2:P, an established connection 127.0.0.3:P <-> 127.0.0.2:P (P as local and remote port)
  and TIME_WAIT entries on 127.0.0.2:P.

It never connects to a test's own sockets and binds no address a test uses. Cheap on 2 cores: one
sock_diag dump of IPv4 listeners every POLL_S (the listening hash only, no /proc walk). It exits when
stdin closes (its parent, the pytest controller, went away) or on SIGTERM."""

from __future__ import annotations

import os
import resource
import select
import signal
import socket
import struct
import sys
import time
from collections import OrderedDict

WATCHED = "127.0.0.1"
MIRROR_SERVER, MIRROR_CLIENT = "127.0.0.2", "127.0.0.3"
TW_SERVER, TW_CLIENT = "127.0.0.4", "127.0.0.5"
TIME_WAIT_BATCH = 1500  # per renewal; two batches overlap, so 1500-3000 entries at any time
RENEW_S = 40.0  # < 60 s, the TIME_WAIT length: the count never drops to zero
POLL_S = 0.05
MAX_MIRRORED = 1500  # ports mirrored at once (each holds 3 sockets); the oldest is dropped first
TW_PER_PORT = 2

SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, NLM_F_DUMP, NLMSG_DONE, NLMSG_ERROR = 20, 1, 0x300, 3, 2
TCP_LISTEN = 10


def listening_ports(nl: socket.socket) -> set[int]:
    """IPv4 TCP listeners on WATCHED, from one inet_diag dump restricted to LISTEN in the kernel."""
    req = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN) + bytes(48)
    nl.send(struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)
    want = socket.inet_aton(WATCHED)
    ports = set()
    while True:
        data = nl.recv(65536)
        offset = 0
        while offset < len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if kind in (NLMSG_DONE, NLMSG_ERROR):
                return ports
            sport = struct.unpack_from("!H", data, offset + 16 + 4)[0]
            src = data[offset + 16 + 8:offset + 16 + 12]
            if src == want:
                ports.add(sport)
            offset += (length + 3) & ~3


def pair(server_addr, client_addr, client_port: int = 0, listener=None):
    """A connected (client, server) pair; the listener given or a throwaway one."""
    own = listener is None
    if own:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((server_addr, 0))
        listener.listen(64)
    try:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        client.bind((client_addr, client_port))
        client.connect(listener.getsockname())
        server, _ = listener.accept()
        return client, server
    finally:
        if own:
            listener.close()


def to_time_wait(first: socket.socket, second: socket.socket) -> None:
    """`first` closes first, so the TIME_WAIT entry lands on its side once `second` closes too."""
    first.close()
    second.settimeout(1.0)
    try:
        second.recv(1)  # the FIN
    except OSError:
        pass
    second.close()


def time_wait_batch(count: int) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((TW_SERVER, 0))
    listener.listen(128)
    try:
        for i in range(count):
            try:
                client, server = pair(TW_SERVER, TW_CLIENT, listener=listener)
            except OSError:
                continue  # out of ports or buffers: a busy machine has fewer, no error
            to_time_wait(*((server, client) if i % 2 else (client, server)))
    finally:
        listener.close()


class Mirror:
    def __init__(self, port: int):
        self.sockets = []
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((MIRROR_SERVER, port))  # refused if the port's owner bound a wildcard: skip it
        listener.listen(16)
        self.sockets.append(listener)
        try:
            self.sockets += pair(MIRROR_SERVER, MIRROR_CLIENT, client_port=port, listener=listener)
        except OSError:
            pass
        for _ in range(TW_PER_PORT):
            try:
                client, server = pair(MIRROR_SERVER, MIRROR_CLIENT, listener=listener)
                to_time_wait(server, client)  # TIME_WAIT on 127.0.0.2:P, local port P
            except OSError:
                break

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 3 * MAX_MIRRORED + 256)), hard))
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4)  # NETLINK_SOCK_DIAG
    time_wait_batch(TIME_WAIT_BATCH)
    print("ready", flush=True)
    renewed = time.monotonic()
    mirrored: OrderedDict[int, Mirror | None] = OrderedDict()
    seen_once: set[int] = set()
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready and not os.read(sys.stdin.fileno(), 1):
            return 0  # the parent is gone
        now = listening_ports(nl)
        for port in now & seen_once:
            if port in mirrored:
                continue
            try:
                mirrored[port] = Mirror(port)
            except OSError:
                mirrored[port] = None
            while len(mirrored) > MAX_MIRRORED:
                _, old = mirrored.popitem(last=False)
                if old:
                    old.close()
        seen_once = now - set(mirrored)
        if time.monotonic() - renewed > RENEW_S:
            time_wait_batch(TIME_WAIT_BATCH)
            renewed = time.monotonic()


if __name__ == "__main__":
    sys.exit(main())
