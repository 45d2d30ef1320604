"""One end of a lab: a process alone in a fresh network namespace, driven over a socketpair.

The agent is forked (not exec'd: a fresh interpreter costs 70-150 ms here, a fork ~2 ms) and then,
before anything else:
  1. prctl(PR_SET_PDEATHSIG, SIGKILL), then getppid() == the parent that forked it, else exit:
     the check closes the race of a parent that died before the prctl. So even a SIGKILL of the
     tool kills the agent, and with it the last holder of its namespace.
  2. closes every inherited fd but its two control sockets (another lab's control socket, a tracefs
     trace_pipe or a janitor's pipe held here would outlive the owner) and points 0-2 at /dev/null;
     gc.freeze() so no inherited object is ever finalized here (its fd number may be reused).
  3. unshare(CLONE_NEWNET) through ctypes (os.unshare and os.setns arrive in Python 3.12): an
     anonymous namespace, held only by this process and the sockets it creates, gone when they are;
     nothing under /run/netns to survive a crash. `ip netns exec` is avoided on purpose: it remounts
     /sys, which hides tracefs.
Requests are JSON over SOCK_SEQPACKET ({"op", "args"} -> {"ok", "t"} or {"errno", "error"}); two
channels, each served by its own thread, so a poller can read the namespace's table while the
other channel waits in accept() or connect(). "t" is time.monotonic() right after the call
(CLOCK_MONOTONIC is one clock for every process and for the tracepoint's trace_clock=mono)."""

from __future__ import annotations

import ctypes
import errno
import gc
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import threading
import time

from addrinuse.conntable import KERNEL_STATES, Entry
from addrinuse.conntable.netlink import NetlinkBackend

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
SO_NETNS_COOKIE = 71  # include/uapi/asm-generic/socket.h
TOOLS = ("ip", "nft", "tc")  # the only programs an agent runs, found on a fixed path
TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SYSCTL = re.compile(r"^(ipv4|ipv6|core)/[a-z0-9_/.-]+$")
TCP_INFO_STATE = 1  # struct tcp_info: tcpi_state is byte 0 (same numbering as tcp_states.h)
_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare_net() -> None:
    _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def spawn(name: str) -> tuple[int, socket.socket, socket.socket]:
    """Fork an agent; returns (pid, control channel, observation channel). The child never returns."""
    parent = os.getpid()
    ctl, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    obs, obs_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid:
        ctl_child.close()
        obs_child.close()
        return pid, ctl, obs
    status = 1
    try:
        gc.freeze()
        set_pdeathsig()
        if os.getppid() != parent:
            os._exit(1)
        keep = sorted((ctl_child.fileno(), obs_child.fileno()))
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, 1 << 20)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # the owner ends the agent; Ctrl-C reaches the owner
        agent = Agent(name)
        try:
            t = time.monotonic()
            unshare_net()
            agent.unshare_ms = (time.monotonic() - t) * 1000
        except OSError as err:
            agent.failed = err
        threading.Thread(target=agent.serve, args=(obs_child,), daemon=True).start()
        agent.serve(ctl_child)
        status = 0
    finally:
        os._exit(status)


class Agent:
    def __init__(self, name: str):
        self.name = name
        self.socks: dict[int, socket.socket] = {}
        self.next = 1
        self.failed: OSError | None = None
        self.unshare_ms = None
        self.diag = None
        self.lock = threading.Lock()

    def serve(self, chan: socket.socket) -> None:
        while True:
            try:
                msg = chan.recv(1 << 20)
            except OSError:
                return
            if not msg:
                return  # the owner closed the lab or died
            req = json.loads(msg)
            try:
                if self.failed:
                    raise self.failed
                ok = getattr(self, "op_" + req["op"])(**req.get("args", {}))
                reply = {"ok": ok, "t": time.monotonic()}
            except OSError as err:
                reply = {"errno": err.errno, "error": str(err), "t": time.monotonic()}
            except Exception as err:  # a bug or a bad request: reported, never a dead agent
                reply = {"errno": None, "error": f"{type(err).__name__}: {err}", "t": time.monotonic()}
            chan.send(json.dumps(reply).encode())

    # -- the namespace ----------------------------------------------------------------------------
    def op_hello(self) -> dict:
        """The namespace's inode (reused by later namespaces once this one is gone) and its cookie
        (SO_NETNS_COOKIE, Linux 5.14: never reused while the system runs; None before 5.14)."""
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            cookie = struct.unpack("=Q", probe.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
        except OSError:
            cookie = None
        finally:
            probe.close()
        return {"pid": os.getpid(), "netns": os.stat("/proc/self/ns/net").st_ino, "netns_cookie": cookie,
                "unshare_ms": self.unshare_ms}

    def op_run(self, argv: list[str], stdin: str = "") -> dict:
        if argv[0] not in TOOLS:
            raise ValueError(f"not a lab tool: {argv[0]}")
        env = {"PATH": TOOL_PATH, "LC_ALL": "C"}
        # The tool dies with the agent too (set between fork and exec): nothing outlives a lab.
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, timeout=20,
                              preexec_fn=set_pdeathsig)
        return {"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr}

    def op_sysctl(self, key: str, value: str | None = None) -> str:
        """Read (and with value, write) /proc/sys/net/<key> - this namespace's copy: /proc/sys/net
        resolves against the net namespace of the process that opens it."""
        if not SYSCTL.match(key) or ".." in key:
            raise ValueError(f"not a network sysctl: {key}")
        path = f"/proc/sys/net/{key}"
        with open(path) as f:
            old = " ".join(f.read().split())
        if value is not None:
            with open(path, "w") as f:
                f.write(str(value))
        return old

    def op_netstat(self) -> dict:
        """TcpExt and Tcp counters of this namespace (/proc/net is /proc/self/net)."""
        out = {}
        for path in ("/proc/net/netstat", "/proc/net/snmp"):
            with open(path) as f:
                lines = f.read().splitlines()
            for names, values in zip(lines[::2], lines[1::2]):
                group, _, keys = names.partition(": ")
                if group in ("TcpExt", "Tcp"):
                    out[group] = dict(zip(keys.split(), map(int, values.partition(": ")[2].split())))
        return out

    def op_table(self, port: int = 0) -> list[dict]:
        """sock_diag in this namespace, every connection state, both sides of the port in one walk.
        Owners are cached between polls (one readlink per known holder): a scan of every process
        per poll would dominate the poll's cost."""
        with self.lock:
            if self.diag is None:
                self.diag = NetlinkBackend(cache_owners=True)
            return [e.to_dict() for e in self.diag.snapshot(port or None)]

    def op_destroy(self, entry: dict) -> int:
        with self.lock:
            if self.diag is None:
                self.diag = NetlinkBackend()
            return self.diag.destroy(Entry(**entry))

    # -- sockets ----------------------------------------------------------------------------------
    def _sock(self, h: int) -> socket.socket:
        return self.socks[h]

    def _add(self, sock: socket.socket) -> int:
        sock.setblocking(False)
        h, self.next = self.next, self.next + 1
        self.socks[h] = sock
        return h

    def op_socket(self, kind: str = "tcp") -> int:
        return self._add(socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM))

    def op_setsockopt(self, h: int, level: int, name: int, value: int) -> None:
        self._sock(h).setsockopt(level, name, value)

    def op_bind(self, h: int, addr: str, port: int = 0) -> list:
        s = self._sock(h)
        s.bind((addr, port))
        return list(s.getsockname())

    def op_listen(self, h: int, backlog: int = 16) -> None:
        self._sock(h).listen(backlog)

    def op_connect(self, h: int, addr: str, port: int, timeout: float | None = 5.0) -> dict:
        """timeout=None only starts the handshake (EINPROGRESS); else waits for its outcome."""
        s = self._sock(h)
        t0 = time.monotonic()
        err = s.connect_ex((addr, port))
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, f"connect: {os.strerror(err)}")
        if err == errno.EINPROGRESS and timeout is not None:
            if not select.select([], [s], [], timeout)[1]:
                raise OSError(errno.ETIMEDOUT, f"connect: no answer in {timeout} s")
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, f"connect: {os.strerror(err)}")
        return {"t0": t0, "sockname": list(s.getsockname()), "pending": err == errno.EINPROGRESS}

    def op_accept(self, h: int, timeout: float = 5.0) -> dict:
        s = self._sock(h)
        if not select.select([s], [], [], timeout)[0]:
            raise OSError(errno.ETIMEDOUT, f"accept: nothing in {timeout} s")
        conn, peer = s.accept()
        return {"h": self._add(conn), "peer": list(peer), "sockname": list(conn.getsockname())}

    def op_send(self, h: int, size: int, addr: str | None = None, port: int = 0) -> int:
        """Send up to size bytes without blocking (UDP: one datagram to addr:port)."""
        s = self._sock(h)
        if addr is not None:
            return s.sendto(b"x" * size, (addr, port))
        try:
            return s.send(b"x" * size)
        except BlockingIOError:
            return 0

    def op_recv(self, h: int, timeout: float = 5.0, until_eof: bool = False) -> int:
        """Bytes read (0: end of stream). until_eof: read until the peer's FIN."""
        s = self._sock(h)
        total = 0
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([s], [], [], left)[0]:
                if until_eof:
                    raise OSError(errno.ETIMEDOUT, f"recv: no end of stream in {timeout} s")
                return total
            chunk = s.recv(1 << 16)
            total += len(chunk)
            if not chunk or not until_eof:
                return total

    def op_shutdown(self, h: int, how: int = socket.SHUT_WR) -> float:
        t = time.monotonic()
        self._sock(h).shutdown(how)
        return t

    def op_close(self, h: int, linger0: bool = False) -> float:
        s = self.socks.pop(h)
        if linger0:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        t = time.monotonic()
        s.close()
        return t

    def op_status(self, h: int) -> dict:
        """SO_ERROR (errno pending on the socket, read and cleared) and tcpi_state of TCP_INFO."""
        s = self._sock(h)
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        state = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
        return {"errno": err or None, "errname": errno.errorcode.get(err) if err else None,
                "state": KERNEL_STATES[state] if state < len(KERNEL_STATES) else str(state)}
