"""The lab: two fresh network namespaces joined by a veth pair, one agent process per end.

    with Lab() as lab:
        lab.a.sysctl("ipv4/tcp_fin_timeout", 1)       # written inside A's namespace only
        s = lab.b.socket(); s.bind(lab.b.addr); s.listen()
        ...
Addresses: A is 10.199.N.1, B 10.199.N.2 (/24 on veth0/veth1). N is claimed for the lab's life by
binding the abstract unix socket "@addrinuse-lab-10.199.N" in the owner's namespace: released by
the kernel when the owner dies, so two labs at once (pytest -n 2) never share addresses - which
matters because the tracepoint sees every namespace and is filtered on these addresses.

Nothing is created in the host's namespace: agent A makes the veth pair and moves one end straight
into B's namespace (ip link ... peer ... netns <pid of B>). Cleanup: close() kills and reaps the
agents; a dead owner's agents get SIGKILL from PR_SET_PDEATHSIG; the namespaces, their veth pair,
nft tables and sysctls go with their last process. The tracefs instance, if any, has its own
janitor (addrinuse.tracefs). Costs are in `cost_ms` (addrinuse.lab.bench.lab_costs for medians).
Agents are forked: create a lab from the thread that will close it (PR_SET_PDEATHSIG fires when
the forking *thread* exits)."""

from __future__ import annotations

import errno as _errno
import json
import os
import shutil
import signal
import socket
import threading
import time

from addrinuse.errors import LabError, LabUnavailable, SocketCallError

SUBNET = "10.199"
LOCK_PREFIX = b"\0addrinuse-lab-"
REQUIRED = {"ip": "iproute2", "nft": "nftables"}
TRACE_KINDS = ("state", "retransmit", "receive_reset", "send_reset", "retransmit_synack")


def unavailable_reason(trace: bool = True) -> str | None:
    """Why no lab can be made here (with the tracepoint, unless trace=False), or None."""
    if os.geteuid() != 0:
        return "the network-namespace lab needs root (unshare(CLONE_NEWNET), veth, nftables)"
    if not os.path.exists("/proc/self/ns/net"):
        return "this kernel has no network namespaces (/proc/self/ns/net is missing)"
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    for tool, package in REQUIRED.items():
        if shutil.which(tool, path=path) is None:
            return f"'{tool}' is not installed (apt-get install -y --no-install-recommends {package})"
    if trace:
        from addrinuse.tracefs import unavailable_reason as tracefs_reason

        return tracefs_reason()
    return None


def _claim_subnet() -> tuple[socket.socket, int]:
    start = os.getpid() % 250
    for i in range(250):
        n = (start + i) % 250
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lock.bind(LOCK_PREFIX + f"{SUBNET}.{n}".encode())
            return lock, n
        except OSError:
            lock.close()
    raise LabUnavailable(f"all 250 lab subnets {SUBNET}.0-249.0/24 are in use by other labs")


class Channel:
    """One request at a time over one socketpair end (a lock lets threads share it)."""

    def __init__(self, sock: socket.socket, end: str):
        self.sock, self.end = sock, end
        self.lock = threading.Lock()

    def call(self, op: str, **args):
        with self.lock:
            try:
                self.sock.send(json.dumps({"op": op, "args": args}).encode())
                raw = self.sock.recv(1 << 22)
            except OSError as err:
                raise LabError(f"lab end {self.end}: agent unreachable during {op} ({err})") from err
        if not raw:
            raise LabError(f"lab end {self.end}: agent exited during {op}")
        reply = json.loads(raw)
        if "ok" in reply:
            return reply["ok"], reply.get("t")
        if reply["errno"] is None:
            raise LabError(f"lab end {self.end}: {op} failed: {reply['error']}")
        raise OSError(reply["errno"], reply["error"])


class RemoteSocket:
    """A socket living in an agent's namespace. Calls raise SocketCallError (syscall, errno) like
    addrinuse.sockets; `t` is the monotonic time each call returned (or started: close, shutdown)."""

    def __init__(self, end: "End", h: int):
        self.end, self.h = end, h
        self.sockname: tuple[str, int] | None = None
        self.peer: tuple[str, int] | None = None
        self.t = None

    def _call(self, op: str, where: tuple = ("", 0), **args):
        try:
            value, self.t = self.end.ctl.call(op, h=self.h, **args)
        except OSError as err:
            raise SocketCallError(op, err.errno, where[0] or self.end.addr, where[1]) from err
        return value

    def setsockopt(self, level: int, name: int, value: int) -> None:
        self._call("setsockopt", level=level, name=name, value=value)

    def bind(self, addr: str | None = None, port: int = 0) -> tuple[str, int]:
        addr = addr or self.end.addr
        self.sockname = tuple(self._call("bind", (addr, port), addr=addr, port=port))
        return self.sockname

    def listen(self, backlog: int = 16) -> None:
        self._call("listen", backlog=backlog)

    def connect(self, addr: str, port: int, timeout: float | None = 5.0) -> dict:
        out = self._call("connect", (addr, port), addr=addr, port=port, timeout=timeout)
        self.sockname, self.peer = tuple(out["sockname"]), (addr, port)
        return out

    def accept(self, timeout: float = 5.0) -> "RemoteSocket":
        out = self._call("accept", timeout=timeout)
        conn = RemoteSocket(self.end, out["h"])
        conn.sockname, conn.peer, conn.t = tuple(out["sockname"]), tuple(out["peer"]), self.t
        return conn

    def send(self, size: int, addr: str | None = None, port: int = 0) -> int:
        return self._call("send", size=size, addr=addr, port=port)

    def recv(self, timeout: float = 5.0, until_eof: bool = False) -> int:
        return self._call("recv", timeout=timeout, until_eof=until_eof)

    def shutdown(self, how: int = socket.SHUT_WR) -> float:
        return self._call("shutdown", how=how)

    def close(self, linger0: bool = False) -> float:
        return self._call("close", linger0=linger0)

    def status(self) -> dict:
        return self._call("status")


class End:
    """One side of the lab: its agent, its address, its namespace's sysctls, table and firewall."""

    def __init__(self, name: str, pid: int, ctl: socket.socket, obs: socket.socket):
        self.name, self.pid = name, pid
        self.ctl, self.obs = Channel(ctl, name), Channel(obs, name)
        self.addr = ""
        self.netns: int | None = None  # inode of the namespace (reused after it is gone)
        self.netns_cookie: int | None = None  # SO_NETNS_COOKIE: unique for the system's uptime
        self.sysctl_log: dict[str, str] = {}
        self.has_table = False

    def run(self, *argv: str, stdin: str = "") -> str:
        out, _ = self.ctl.call("run", argv=list(argv), stdin=stdin)
        if out["rc"] != 0:
            raise LabError(f"lab end {self.name}: {' '.join(argv)} failed: {out['err'].strip() or out['rc']}")
        return out["out"]

    def sysctl(self, key: str, value=None) -> str:
        """Read a network sysctl of this end's namespace (key relative to /proc/sys/net, e.g.
        'ipv4/tcp_fin_timeout'); with value, set it there. Returns the value before."""
        try:
            old, _ = self.ctl.call("sysctl", key=key, value=None if value is None else str(value))
        except OSError as err:
            raise LabError(f"lab end {self.name}: sysctl net/{key}: {err.strerror}") from err
        if value is not None:
            self.sysctl_log[key] = str(value)
        return old

    def socket(self, kind: str = "tcp") -> RemoteSocket:
        h, _ = self.ctl.call("socket", kind=kind)
        return RemoteSocket(self, h)

    def table(self, port: int = 0) -> list[dict]:
        """This namespace's TCP table (sock_diag), entries as dicts (addrinuse.conntable.Entry)."""
        rows, _ = self.obs.call("table", port=port)
        return rows

    def netstat(self) -> dict:
        """{"TcpExt": {...}, "Tcp": {...}} of this namespace."""
        return self.obs.call("netstat")[0]

    def nft(self, ruleset: str) -> None:
        """Apply nft commands in this namespace; the first call also creates table inet lab."""
        if not self.has_table:
            ruleset = BASE_RULESET + ruleset
        self.run("nft", "-f", "-", stdin=ruleset)
        self.has_table = True

    def counters(self, table: str = "lab") -> dict[str, int]:
        """Packets of each named counter in table inet <table>."""
        if not self.has_table:
            return {}
        data = json.loads(self.run("nft", "-j", "list", "counters", "table", "inet", table))
        return {c["counter"]["name"]: c["counter"]["packets"] for c in data["nftables"] if "counter" in c}

    def destroy(self, entry: dict) -> int:
        return self.obs.call("destroy", entry=entry)[0]


class Lab:
    """Context manager; see the module doc. trace: the tracepoint kinds to stream (filtered on the
    lab's two addresses), () for none. Timings of the set-up are in `cost_ms`."""

    def __init__(self, trace=TRACE_KINDS, t0: float | None = None):
        self.trace_kinds = tuple(trace)
        self.t0 = time.monotonic() if t0 is None else t0
        self.a = self.b = None
        self.tracer = None
        self.cost_ms: dict[str, float] = {}
        self._lock = None
        self._ends: list[End] = []

    def __enter__(self) -> "Lab":
        reason = unavailable_reason(trace=bool(self.trace_kinds))
        if reason:
            raise LabUnavailable(reason)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spawn(self, name: str) -> End:
        from addrinuse.lab.agent import spawn

        end = End(name, *spawn(name))
        self._ends.append(end)
        hello, _ = end.ctl.call("hello")
        end.netns, end.netns_cookie = hello["netns"], hello["netns_cookie"]
        self.cost_ms[f"unshare_{name}"] = round(hello["unshare_ms"], 3)
        return end

    def _build(self) -> None:
        self._lock, n = _claim_subnet()
        t = time.monotonic()
        try:
            self.a = self._spawn("a")
            self.b = self._spawn("b")
        except OSError as err:
            raise LabUnavailable(f"cannot create a network namespace: {err.strerror}") from err
        self.cost_ms["namespaces"] = round((time.monotonic() - t) * 1000, 3)
        self.a.addr, self.b.addr = f"{SUBNET}.{n}.1", f"{SUBNET}.{n}.2"
        t = time.monotonic()
        self.a.run("ip", "-batch", "-", stdin=(
            f"link add veth0 type veth peer name veth1 netns {self.b.pid}\n"
            f"addr add {self.a.addr}/24 dev veth0\nlink set veth0 up\nlink set lo up\n"))
        self.b.run("ip", "-batch", "-", stdin=f"addr add {self.b.addr}/24 dev veth1\nlink set veth1 up\nlink set lo up\n")
        self.cost_ms["veth"] = round((time.monotonic() - t) * 1000, 3)
        for end in (self.a, self.b):
            # No IPv6 on the link: its router solicitations and DAD would be stray packets in
            # the counters and the token buckets some experiments use.
            end.sysctl("ipv6/conf/all/disable_ipv6", 1)
            end.sysctl("ipv6/conf/default/disable_ipv6", 1)
        if self.trace_kinds:
            from addrinuse.tracepoint import Tracer

            t = time.monotonic()
            self.tracer = Tracer(self.trace_kinds, addrs=(self.a.addr, self.b.addr), t0=self.t0).__enter__()
            self.cost_ms["tracer"] = round((time.monotonic() - t) * 1000, 3)

    @property
    def pids(self) -> list[int]:
        return [e.pid for e in self._ends]

    def close(self) -> None:
        """Stop the tracer, then end the agents with SIGKILL: nothing in a namespace needs a
        graceful end (its sockets, veth, nft table and sysctls go with it), and an agent busy in
        a request (accept with a timeout) must not delay the exit. Each is our own unreaped child,
        so its pid cannot belong to anyone else yet."""
        if self.tracer is not None:
            self.tracer.close()
            self.tracer = None
        for end in self._ends:
            end.ctl.sock.close()
            end.obs.sock.close()
            try:
                os.kill(end.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(end.pid, 0)
        self._ends = []
        if self._lock is not None:
            self._lock.close()
            self._lock = None


# Every experiment's rules go into this table (inet: IPv4 and IPv6), one per namespace. Chains at
# priority 0 with policy accept: nothing is dropped unless a rule says so.
BASE_RULESET = """
table inet lab {
    chain input { type filter hook input priority 0; policy accept; }
    chain output { type filter hook output priority 0; policy accept; }
}
"""


def errno_name(err: int | None) -> str | None:
    return None if err is None else _errno.errorcode.get(err, str(err))
