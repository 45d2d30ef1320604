"""The core loop on real sockets: start, connect, kill, rebind, table."""

from __future__ import annotations

import errno
import json
import socket

import pytest

from tests.helpers import has_ss, local, ss_rows, wait_client_side, wait_for, wait_local


def start(run, *args):
    result = run("start", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return result.json()


def test_start_listens_and_kill_stops(run):
    rec = start(run)
    assert rec["port"] > 0 and not rec["reuseaddr"] and rec["close"] == "server-first"
    listeners = local(rec["port"], "LISTEN")
    assert [(e.pid, e.laddr) for e in listeners] == [(rec["pid"], "127.0.0.1")]
    out = run("kill", rec["name"])
    assert out.exit_code == 0 and f"stopped {rec['name']}" in out.stdout
    assert local(rec["port"], "LISTEN") == []
    assert run("servers", "--json").json()["servers"] == []


def test_known_workload_23_server_first_connections_give_23_time_wait(run):
    rec = start(run)
    port = rec["port"]
    out = run("connect", port, "-n", 23, "--json").json()
    assert out["server_closed_first"] == 23 and len(set(out["local_ports"])) == 23
    entries = wait_local(port, "TIME_WAIT", 23)
    assert {e.rport for e in entries} == set(out["local_ports"])
    assert all(e.pid is None for e in entries)  # a TIME_WAIT entry belongs to no process
    run("kill", rec["name"])


def test_client_first_puts_time_wait_on_client_ports(run):
    rec = start(run, "--close", "client-first")
    out = run("connect", rec["port"], "-n", 3, "--json").json()
    assert out["policy"] == "client-first" and out["server_closed_first"] == 0
    wait_client_side(rec["port"], out["local_ports"], "TIME_WAIT")
    assert local(rec["port"], "TIME_WAIT") == []
    run("kill", rec["name"])
    assert run("rebind", rec["port"]).exit_code == 0


def test_close_never_leaves_close_wait_and_fin_wait2(run):
    rec = start(run, "--close", "never")
    out = run("connect", rec["port"], "--json").json()
    (client_port,) = out["local_ports"]
    (server_side,) = wait_local(rec["port"], "CLOSE_WAIT", 1)
    assert server_side.pid == rec["pid"] and server_side.rport == client_port
    wait_client_side(rec["port"], [client_port], "FIN_WAIT2")
    run("kill", rec["name"])


def test_restart_after_kill_fails_with_eaddrinuse_and_json_keys(run):
    rec = start(run)
    run("connect", rec["port"], "-n", 2)
    run("kill", rec["name"])
    wait_local(rec["port"], "TIME_WAIT", 2)
    result = run("rebind", rec["port"], "--json")
    assert result.exit_code == 3
    data = result.json()
    assert {"host", "port", "as", "free", "probe"} <= data.keys() and data["free"] is False
    probe = data["probe"]
    assert {"ok", "errno", "error", "syscall", "host", "port", "reuseaddr", "reuseport"} <= probe.keys()
    assert (probe["ok"], probe["errno"], probe["error"], probe["syscall"]) == (False, errno.EADDRINUSE, "EADDRINUSE", "bind")
    # Linux: SO_REUSEADDR on the new socket alone does not pass TIME_WAIT entries of a server without it.
    assert run("rebind", rec["port"], "--as", "reuseaddr").exit_code == 3
    start_again = run("start", "--port", rec["port"])
    assert start_again.exit_code == 3 and "EADDRINUSE" in start_again.stderr


def test_reuseaddr_on_both_old_and_new_server_rebinds(run):
    rec = start(run, "--reuseaddr")
    clients = run("connect", rec["port"], "-n", 2, "--json").json()["local_ports"]
    run("kill", rec["name"])
    # With SO_REUSEADDR the kernel may pick a port that still holds others' reusable TIME_WAIT
    # entries: wait for ours, by client port.
    wait_for(lambda: {e.rport for e in local(rec["port"], "TIME_WAIT")} >= set(clients), what="our TIME_WAIT")
    assert run("rebind", rec["port"]).exit_code == 3
    ok = run("rebind", rec["port"], "--as", "reuseaddr", "--json")
    assert ok.exit_code == 0 and ok.json()["free"] is True
    again = start(run, "--port", rec["port"], "--reuseaddr")
    run("kill", again["name"])


def test_two_reuseaddr_binders_conflict_at_listen_not_bind():
    """Both SO_REUSEADDR sockets bind while neither listens; the kernel refuses the second at
    listen() (inet_csk_listen_start() re-runs get_port). Against a socket already listening,
    bind() itself fails, so the probe reports bind."""
    from addrinuse.sockets import SocketOptions, probe

    first, second = socket.socket(), socket.socket()
    try:
        for s in (first, second):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        first.bind(("127.0.0.1", 0))
        port = first.getsockname()[1]
        second.bind(("127.0.0.1", port))
        first.listen()
        with pytest.raises(OSError) as err:
            second.listen()
        assert err.value.errno == errno.EADDRINUSE
        result = probe("127.0.0.1", port, SocketOptions(reuseaddr=True))
        assert (result.syscall, result.error) == ("bind", "EADDRINUSE")
    finally:
        first.close()
        second.close()


def test_wait_times_out_with_exit_4(run):
    holder = socket.create_server(("127.0.0.1", 0))
    try:
        result = run("wait", holder.getsockname()[1], "--timeout", "0.3", "--json")
    finally:
        holder.close()
    assert result.exit_code == 4
    assert result.json()["waited_s"] >= 0.3


def test_wait_succeeds_once_the_listener_goes(run, sub, tmp_path):
    import subprocess
    import sys

    rec = start(run)
    waiter = subprocess.Popen([sys.executable, "-m", "addrinuse", "wait", str(rec["port"]),
                               "--timeout", "20", "--json"], stdout=subprocess.PIPE, text=True)
    try:
        run("kill", rec["name"])
        out, _ = waiter.communicate(timeout=25)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert waiter.returncode == 0 and json.loads(out)["free"] is True


def test_kill_shows_the_table_for_the_port(run):
    rec = start(run)
    run("connect", rec["port"], "-n", 2)
    out = run("kill", "--port", rec["port"], "--json").json()
    assert [s["name"] for s in out["stopped"]] == [rec["name"]]
    # kill reports only what the server left: entries whose local address:port was the server's.
    entries = out["stopped"][0]["entries"]
    assert all((e["laddr"], e["lport"]) == ("127.0.0.1", rec["port"]) for e in entries)
    assert [e["state"] for e in entries].count("TIME_WAIT") == 2


def test_kill_all_ends_every_server(run):
    names = [start(run)["name"] for _ in range(3)]
    out = run("kill", "--all", "--json").json()
    assert sorted(s["name"] for s in out["stopped"]) == sorted(names)
    assert all(s["exited"] for s in out["stopped"])


def test_start_with_given_port_and_name_and_duplicate_name_refused(run):
    probe_sock = socket.create_server(("127.0.0.1", 0))
    port = probe_sock.getsockname()[1]
    probe_sock.close()
    rec = start(run, "--port", port, "--name", "web")
    assert (rec["port"], rec["name"]) == (port, "web")
    dup = run("start", "--name", "web")
    assert dup.exit_code == 2 and "name web is taken" in dup.stderr
    run("kill", "web")


def test_start_in_use_exit_3_names_the_syscall(run):
    holder = socket.create_server(("127.0.0.1", 0))
    try:
        result = run("start", "--port", holder.getsockname()[1])
    finally:
        holder.close()
    assert result.exit_code == 3
    assert "bind() on 127.0.0.1" in result.stderr and "EADDRINUSE" in result.stderr


def test_table_json_and_state_filter(run):
    rec = start(run, "--close", "never")
    run("connect", rec["port"])
    wait_local(rec["port"], "CLOSE_WAIT", 1)
    data = run("table", "--port", rec["port"], "--json").json()
    # The server's side only (its address and port): other addresses reuse the port number.
    by_state = {e["state"]: e for e in data["entries"] if (e["laddr"], e["lport"]) == ("127.0.0.1", rec["port"])}
    assert {"LISTEN", "CLOSE_WAIT"} <= by_state.keys()
    assert [o["pid"] for o in by_state["LISTEN"]["owners"]] == [rec["pid"]]
    assert {"laddr", "lport", "raddr", "rport", "state", "owners", "expires_in_s"} <= by_state["LISTEN"].keys()
    only = run("table", "--port", rec["port"], "--host", "127.0.0.1", "--state", "close-wait", "--json").json()
    assert [e["state"] for e in only["entries"]] == ["CLOSE_WAIT"]
    text = run("table", "--port", rec["port"]).stdout
    assert text.splitlines()[0].startswith("PROTO") and "CLOSE_WAIT" in text
    run("kill", rec["name"])


def table_rows(run, port: int) -> set[tuple]:
    """(laddr, lport, raddr, rport, state) of our address only: other programs' connections between
    other addresses use the same port numbers and change under us while the two tools look."""
    entries = run("table", "--port", port, "--host", "127.0.0.1", "--json").json()["entries"]
    return {(e["laddr"], e["lport"], e["raddr"], e["rport"], e["state"]) for e in entries}


@pytest.mark.skipif(not has_ss(), reason="ss (iproute2) is not installed")
def test_table_agrees_with_ss(run):
    rec = start(run, "--close", "never")
    clients = run("connect", rec["port"], "-n", 3, "--json").json()["local_ports"]
    wait_local(rec["port"], "CLOSE_WAIT", 3)
    clients += run("connect", rec["port"], "-n", 2, "--json").json()["local_ports"]
    wait_local(rec["port"], "CLOSE_WAIT", 5)
    # The server's ACK of each client FIN may be a delayed ACK (tens of ms): until it lands, the client
    # is in FIN_WAIT1. Compare a settled table, or the two tools see two different instants.
    wait_client_side(rec["port"], clients, "FIN_WAIT2")
    mine = table_rows(run, rec["port"])
    assert mine == ss_rows(rec["port"], "127.0.0.1")
    # Ours by address and port: the server's 127.0.0.1:P side, and our clients' 127.0.0.1:C -> P.
    ours = {row for row in mine if row[:2] == ("127.0.0.1", rec["port"]) or (row[1] in clients and row[3] == rec["port"])}
    assert len(ours) == 1 + 5 + 5  # listener, 5 CLOSE_WAIT server sides, 5 FIN_WAIT2 client sides
    run("kill", rec["name"])
    # The server was the passive closer (CLOSE_WAIT -> LAST_ACK): TIME_WAIT lands on the clients' side.
    wait_client_side(rec["port"], clients, "TIME_WAIT")
    wait_for(lambda: not local(rec["port"], "LAST_ACK"), what="the server's LAST_ACK entries to go")
    assert table_rows(run, rec["port"]) == ss_rows(rec["port"], "127.0.0.1")


def test_servers_lists_running_records(run):
    rec = start(run, "--name", "one")
    listed = run("servers", "--json").json()["servers"]
    assert [(s["name"], s["pid"]) for s in listed] == [("one", rec["pid"])]
    run("kill", "one")
