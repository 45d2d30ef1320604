"""The netlink sock_diag backend against psutil, /proc and ss, on real TIME_WAIT entries."""

from __future__ import annotations

import json
import os
import socket
import sys
import time

import pytest

from addrinuse.conntable import get_backend
from addrinuse.sockets import has_ipv6_loopback
from bench.peers import proc_rows, ss_timers
from tests.helpers import has_ss, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sock_diag is Linux only")


def plain_listener(host: str = "127.0.0.1", family: int = socket.AF_INET, v6only: bool | None = None) -> socket.socket:
    """A plain listener, without the SO_REUSEADDR that socket.create_server() sets: the kernel then
    never picks a port that still holds someone else's TIME_WAIT entries."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    if v6only is not None:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def server_first_cycles(listener: socket.socket, count: int, family=socket.AF_INET, host="127.0.0.1") -> list[int]:
    """`count` connections the server closes first; returns the client ports (TIME_WAIT lands on the server)."""
    port = listener.getsockname()[1]
    ports = []
    for _ in range(count):
        client = socket.socket(family, socket.SOCK_STREAM)
        client.connect((host, port))
        ports.append(client.getsockname()[1])
        conn, _ = listener.accept()
        conn.close()
        client.recv(1)  # the server's FIN
        client.close()
    return ports


@pytest.fixture
def netlink():
    backend = get_backend("netlink")
    yield backend
    backend.close()


# The loopback addresses these tests use. Other programs on a busy machine reuse the same port
# numbers between other addresses (127.0.0.2, ...): what is ours is matched by address, never by port.
OURS = {"127.0.0.1", "::1", "::ffff:127.0.0.1", "0.0.0.0", "::", "*"}


def ours(entries):
    return [e for e in entries if e.laddr in OURS and e.raddr in OURS]


def settled(backend, port, count):
    """Wait until exactly `count` of our TIME_WAIT entries hold the local port."""
    return wait_for(lambda: (lambda es: es if len(es) == count else None)(
        [e for e in ours(backend.snapshot(port, local=True)) if e.state == "TIME_WAIT"]), what=f"{count} TIME_WAIT")


def test_netlink_and_psutil_agree_on_a_known_workload(netlink):
    listener = plain_listener()
    port = listener.getsockname()[1]
    try:
        server_first_cycles(listener, 7)
        held = socket.create_connection(("127.0.0.1", port))
        conn, _ = listener.accept()
        settled(netlink, port, 7)
        psutil_backend = get_backend("psutil")
        mine = {(e.key, e.state, e.pid) for e in ours(netlink.snapshot(port))}
        theirs = {(e.key, e.state, e.pid) for e in ours(psutil_backend.snapshot(port))}
        assert mine == theirs
        states = sorted(e.state for e in ours(netlink.snapshot(port, local=True)))
        assert states == ["ESTABLISHED", "LISTEN"] + ["TIME_WAIT"] * 7
        listen = [e for e in ours(netlink.snapshot(port)) if e.state == "LISTEN"][0]
        assert (listen.pid, listen.process is not None, listen.uid) == (os.getpid(), True, os.geteuid())
        assert listen.inode
        conn.close()
        held.close()
    finally:
        listener.close()


def test_timers_agree_with_proc_and_ss(netlink):
    listener = plain_listener()
    port = listener.getsockname()[1]
    try:
        server_first_cycles(listener, 5)
    finally:
        listener.close()
    settled(netlink, port, 5)
    # /proc, sock_diag, /proc again. /proc truncates the time left to 10 ms ticks; sock_diag gives
    # jiffies (4 ms at HZ=250) in ms. So each netlink timer must lie between the later /proc reading
    # and the earlier one + 10 ms, and within 20 ms of the earlier one (plus the time between reads).
    began = time.monotonic()
    before = {r["rport"]: r for r in proc_rows(port) if r["state"] == "TIME_WAIT" and r["laddr"] == r["raddr"] == "127.0.0.1"}
    mine = {e.rport: e for e in ours(netlink.snapshot(port, ["TIME_WAIT"], local=True))}
    after = {r["rport"]: r for r in proc_rows(port) if r["state"] == "TIME_WAIT" and r["laddr"] == r["raddr"] == "127.0.0.1"}
    between = time.monotonic() - began
    assert mine.keys() == before.keys() == after.keys()
    for rport, entry in mine.items():
        assert entry.timer == "timewait" and before[rport]["timer"] == 3 and before[rport]["inode"] == 0
        assert 0 < entry.expires_in_s <= 60.0
        assert after[rport]["expires_in_s"] - 0.0005 <= entry.expires_in_s <= before[rport]["expires_in_s"] + 0.0105
        assert abs(entry.expires_in_s - before[rport]["expires_in_s"]) <= 0.020 + between
    if has_ss():
        for rport, left in ss_timers(port).items():
            if rport not in mine:
                continue  # another program's entry on the same port number, between other addresses
            assert abs(mine[rport].expires_in_s - left) <= 1.0  # ss prints whole seconds above 1 s



@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_dual_stack_listener_keeps_ipv4_time_wait_in_the_ipv6_table(netlink):
    dual = plain_listener("::", socket.AF_INET6, v6only=False)
    port = dual.getsockname()[1]
    try:
        clients = server_first_cycles(dual, 3)  # IPv4 clients to 127.0.0.1
    finally:
        dual.close()
    entries = settled(netlink, port, 3)
    assert {(e.family, e.laddr, e.raddr) for e in entries} == {(6, "::ffff:127.0.0.1", "::ffff:127.0.0.1")}
    assert sorted(e.rport for e in entries) == sorted(clients)


def test_a_dump_larger_than_one_message_buffer_loses_nothing(netlink):
    """~1200 entries x 88 bytes is several netlink buffers (the kernel fills at most ~32 KiB each)."""
    listener = plain_listener()
    port = listener.getsockname()[1]
    try:
        clients = server_first_cycles(listener, 1200)
    finally:
        listener.close()
    entries = settled(netlink, port, 1200)
    assert sorted(e.rport for e in entries) == sorted(clients)
    # /proc cross-check, ours by 4-tuple: another connection may use the same local port number.
    # A set: /proc/net/tcp is read in pieces, and a row can come twice when the table changes between them.
    found = {(r["laddr"], r["lport"], r["raddr"], r["rport"]) for r in proc_rows(port)
             if r["laddr"] == "127.0.0.1" and r["rport"] in set(clients)}
    assert len(found) == 1200


def test_state_filter_is_applied_in_the_kernel_request(netlink):
    listener = plain_listener()
    port = listener.getsockname()[1]
    try:
        server_first_cycles(listener, 2)
        settled(netlink, port, 2)
        assert [e.state for e in ours(netlink.snapshot(port, ["LISTEN"]))] == ["LISTEN"]
        assert {e.state for e in netlink.snapshot(port, ["TIME_WAIT"])} == {"TIME_WAIT"}
    finally:
        listener.close()


def test_cli_backends_selectable_and_table_shows_when_the_port_frees(run):
    listener = plain_listener()
    port = listener.getsockname()[1]
    server_first_cycles(listener, 2)
    listener.close()
    netlink = run("table", "--port", port, "--backend", "netlink", "--json").json()
    estimate = netlink["free_in"]
    assert netlink["backend"] == "netlink" and estimate["kind"] == "exact" and 0 < estimate["min_s"] <= 60
    assert estimate["max_s"] > estimate["min_s"]
    assert all(e["timer"] == "timewait" for e in netlink["entries"] if e["lport"] == port)
    plain = run("table", "--port", port, "--backend", "psutil", "--json").json()
    assert plain["backend"] == "psutil" and plain["free_in"]["kind"] == "upper_bound"
    text = run("table", "--port", port).stdout
    assert "LEFT" in text.splitlines()[0] and "frees in" in text and "exact" in text
    assert run("table", "--backend", "carrier-pigeon").exit_code == 2


def test_wait_json_carries_the_kernel_estimate(run):
    listener = plain_listener()
    port = listener.getsockname()[1]
    server_first_cycles(listener, 2)
    listener.close()
    out = run("wait", port, "--timeout", "0.2", "--json")
    assert out.exit_code == 4
    assert out.json()["free_in"]["kind"] == "exact" and 55 < out.json()["free_in"]["min_s"] <= 60


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_one_walk_request_and_per_family_requests_return_the_same_entries(netlink):
    """Snapshots use TCPDIAG_GETSOCK (both families in one walk); SOCK_DIAG_BY_FAMILY per family is the
    fallback. Both are real kernel requests: compare them on IPv4, IPv6 and dual-stack entries."""
    v4 = plain_listener()
    port = v4.getsockname()[1]
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    v6.bind(("::1", port))
    v6.listen()
    try:
        server_first_cycles(v4, 2)
        server_first_cycles(v6, 2, socket.AF_INET6, "::1")
        settled(netlink, port, 4)
        per_family = get_backend("netlink")
        per_family.compat = False
        try:
            # Timers tick between the two requests: compare what the entries are, not their time left.
            one_walk = {(e.key, e.state, e.pid) for e in ours(netlink.snapshot(port))}
            assert {(e.key, e.state, e.pid) for e in ours(per_family.snapshot(port))} == one_walk
        finally:
            per_family.close()
        assert {key[0] for key, _, _ in one_walk} == {4, 6} and len(one_walk) == 6
    finally:
        v4.close()
        v6.close()


def test_watch_gives_a_time_wait_lifetime_as_soon_as_the_entry_appears(run):
    """age (bounded by the polls) + the kernel's time left: about 60 s, without waiting 60 s."""
    import json
    import subprocess

    srv = plain_listener()
    port = srv.getsockname()[1]
    watcher = subprocess.Popen([sys.executable, "-m", "addrinuse", "watch", "--port", str(port), "--host", "127.0.0.1",
                                "--state", "TIME_WAIT", "--interval", "0.02", "--duration", "30", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "Ctrl-C to end." in watcher.stderr.readline()
        (client,) = server_first_cycles(srv, 1)
        # Ours by 4-tuple: another program's entry may use the same port numbers (the watch ends
        # after 30 s at the latest, so readline cannot block for ever).
        first = {}
        while (first.get("laddr"), first.get("raddr"), first.get("rport")) != ("127.0.0.1", "127.0.0.1", client):
            first = json.loads(watcher.stdout.readline())
    finally:
        srv.close()
        watcher.terminate()
        watcher.communicate(timeout=10)
    assert (first["event"], first["state"], first["rport"]) == ("appeared", "TIME_WAIT", client)
    assert first["age_from"] == "watch" and 0 <= first["age_s"] <= 1.0
    assert 59.0 <= first["lifetime_expected_min_s"] <= 61.0 and first["expires_in_s"] <= 60.0


def test_bound_only_sockets_appear_only_when_asked_for_and_only_on_their_port(netlink, run):
    """TCP_BOUND_INACTIVE: the kernel walks its bind hash only when asked, reports the sockets as
    CLOSE, and that walk ignores the request's port fields: only the bytecode filter keeps another
    port's bound socket out (before it, every bound socket of the machine matched any port)."""
    from addrinuse.conntable.netlink import TCP_BOUND_INACTIVE, state_mask

    mine, other = socket.socket(), socket.socket()
    mine.bind(("127.0.0.1", 0))
    other.bind(("127.0.0.1", 0))
    port, other_port = mine.getsockname()[1], other.getsockname()[1]
    try:
        assert not state_mask(None) & (1 << TCP_BOUND_INACTIVE)
        assert state_mask(frozenset({"CLOSED"})) & (1 << TCP_BOUND_INACTIVE)
        assert ours(netlink.snapshot(port)) == [] and ours(netlink.snapshot(port, local=True)) == []
        assert not [e for e in ours(netlink.snapshot()) if e.lport in (port, other_port)]
        for spelling in ("CLOSED", "bound", "unconn"):
            (entry,) = ours(netlink.snapshot(port, [spelling]))
            assert (entry.laddr, entry.lport, entry.state, entry.pid) == ("127.0.0.1", port, "CLOSED", os.getpid())
        assert {e.lport for e in netlink.snapshot(port, ["CLOSED"], local=True)} == {port}
        assert {e.lport for e in netlink.snapshot(None, ["CLOSED"])} >= {port, other_port}
        table = run("table", "--port", port, "--state", "bound", "--json").json()
        assert [(e["lport"], e["state"]) for e in table["entries"] if e["laddr"] in OURS] == [(port, "CLOSED")]
    finally:
        mine.close()
        other.close()


def test_one_dump_answers_both_sides_of_a_port(netlink):
    """`(sport = P or dport = P)` as kernel bytecode: one request, one walk; the same 4-tuples as
    ss with the same filter and as /proc/net/tcp."""
    listener = plain_listener()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = listener.accept()
    try:
        server_first_cycles(listener, 3)
        settled(netlink, port, 3)
        calls = []
        real = netlink._dump_once
        netlink._dump_once = lambda *a: calls.append(1) or real(*a)
        entries = netlink.snapshot(port)
        del netlink._dump_once
        assert len(calls) == 1
        assert all(port in (e.lport, e.rport) for e in entries)
        mine = {(e.laddr, e.lport, e.raddr, e.rport, e.state) for e in ours(entries)}
        client_port = client.getsockname()[1]
        assert {("127.0.0.1", port, "*", 0, "LISTEN"), ("127.0.0.1", port, "127.0.0.1", client_port, "ESTABLISHED"),
                ("127.0.0.1", client_port, "127.0.0.1", port, "ESTABLISHED")} <= mine
        proc = {(r["laddr"], r["lport"], r["raddr"] if r["state"] != "LISTEN" else "*",
                 r["rport"] if r["state"] != "LISTEN" else 0, r["state"]) for r in proc_rows(port, local=False)}
        assert mine == {row for row in proc if row[0] in OURS and row[2] in OURS}
        if has_ss():
            assert mine == ss_ours(port)
    finally:
        for sock in (conn, client, listener):
            sock.close()


def ss_ours(port: int) -> set[tuple]:
    """(laddr, lport, raddr, rport, state) of our entries as `ss -tanH '( sport = :P or dport = :P )'` lists them."""
    import subprocess

    names = {"ESTAB": "ESTABLISHED", "TIME-WAIT": "TIME_WAIT", "LISTEN": "LISTEN"}
    out = subprocess.run(["ss", "-tanH", f"( sport = :{port} or dport = :{port} )"], capture_output=True, text=True,
                         check=True).stdout
    rows = set()
    for line in out.splitlines():
        state, _, _, local_ep, peer_ep = line.split()[:5]
        (laddr, lport), (raddr, rport) = local_ep.rsplit(":", 1), peer_ep.rsplit(":", 1)
        row = (laddr.strip("[]"), int(lport), "*" if rport == "*" else raddr.strip("[]"), 0 if rport == "*" else int(rport),
               names.get(state, state))
        if row[0] in OURS and row[2] in OURS:
            rows.add(row)
    return rows


def test_host_filter_in_the_kernel_agrees_with_same_address(netlink):
    """--host as bytecode (src = H or dst = H), IPv4-mapped peers of a dual-stack listener included."""
    from addrinuse.conntable.match import same_address

    one = plain_listener("127.0.0.1")
    port = one.getsockname()[1]
    two = socket.socket()
    two.bind(("127.0.0.2", port))
    two.listen()
    opened = [one, two]
    try:
        server_first_cycles(one, 2)
        server_first_cycles(two, 1, host="127.0.0.2")
        if has_ipv6_loopback():
            dual = plain_listener("::", socket.AF_INET6, v6only=False)
            opened.append(dual)
            server_first_cycles(dual, 2)
        ports, mine = {s.getsockname()[1] for s in opened}, OURS | {"127.0.0.2"}
        everything = netlink.snapshot()
        for host in ("127.0.0.1", "127.0.0.2", "0.0.0.0", "::", "::1", "::ffff:127.0.0.1"):
            want = {e.key for e in everything
                    if same_address(host, e.laddr) or (e.raddr != "*" and same_address(host, e.raddr))}
            got = {e.key for e in netlink.snapshot(host=host)}
            # Entries come and go between the two reads on a busy machine: compare ours only, by
            # address and port (the busy machine's TIME_WAIT between 127.0.0.4 and .5 reuses port numbers).
            ours = {k for k in want | got if k[1] in mine and k[3] in mine and ports & {k[2], k[4]}}
            assert got & ours == want & ours, host
        assert {e.laddr for e in netlink.snapshot(port, local=True, host="127.0.0.2")} == {"127.0.0.2"}
    finally:
        for sock in opened:
            sock.close()


def test_cached_owners_follow_a_socket_handed_to_a_child(tmp_path):
    """watch's backend keeps owners between polls, checked by one readlink per holder: when this
    process closes its copy of a listener a child inherited, the child is the owner at once."""
    import subprocess

    backend = get_backend("netlink", cache_owners=True)
    listener = plain_listener()
    port = listener.getsockname()[1]
    child = None
    try:
        (first,) = ours(backend.snapshot(port, ["LISTEN"]))
        assert [o.pid for o in first.owners] == [os.getpid()]
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                                 pass_fds=[listener.fileno()])
        listener.close()
        (second,) = ours(backend.snapshot(port, ["LISTEN"]))
        assert [o.pid for o in second.owners] == [child.pid]
        (third,) = ours(backend.snapshot(port, ["LISTEN"]))  # from the cache, still checked
        assert third.owners == second.owners
    finally:
        listener.close()
        if child:
            child.stdin.close()
            child.wait(timeout=10)
        backend.close()


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_wildcards_of_both_families_keep_their_own_text(netlink):
    """0.0.0.0 and :: are the same 16 bytes in inet_diag_msg: the address memo is per family."""
    v4, v6 = plain_listener("0.0.0.0"), plain_listener("::", socket.AF_INET6, v6only=True)
    try:
        for _ in range(2):  # the second time from the memo
            for dump in (netlink.snapshot(None, ["LISTEN"]), list(netlink.table(None, ["LISTEN"]))):
                seen = {(e.family, e.laddr, e.lport) for e in dump}
                assert {(4, "0.0.0.0", v4.getsockname()[1]), (6, "::", v6.getsockname()[1])} <= seen
            items = [json.loads(t) for t in netlink.table(None, ["LISTEN"]).json_items()]
            seen = {(e["family"], e["laddr"], e["lport"]) for e in items}
            assert {(4, "0.0.0.0", v4.getsockname()[1]), (6, "::", v6.getsockname()[1])} <= seen
    finally:
        v4.close()
        v6.close()
