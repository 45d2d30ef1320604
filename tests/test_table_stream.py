"""The streamed table: the same bytes as the plain document, on a real table of this machine."""

from __future__ import annotations

import io
import json
import math
import socket
import sys

import pytest

from addrinuse.conntable import Entry, Owner, get_backend
from addrinuse.jsonstream import DocumentWriter, entry_json
from addrinuse.render.tables import table_lines, table_row
from addrinuse.sockets import has_ipv6_loopback
from tests.test_netlink import plain_listener, server_first_cycles

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sock_diag is Linux only")


@pytest.fixture
def variety():
    """Listeners (one dual-stack), a held connection (owned by this process on both ends), TIME_WAIT
    entries and a bound-only socket: every kind of message the kernel sends for the table."""
    opened = []
    v4 = plain_listener()
    opened.append(v4)
    server_first_cycles(v4, 3)
    client = socket.create_connection(v4.getsockname())
    conn, _ = v4.accept()
    opened += [client, conn]
    bound = socket.socket()
    bound.bind(("127.0.0.1", 0))
    opened.append(bound)
    if has_ipv6_loopback():
        dual = plain_listener("::", socket.AF_INET6, v6only=False)
        only6 = plain_listener("::1", socket.AF_INET6, v6only=True)
        opened += [dual, only6]
        server_first_cycles(dual, 2)
        server_first_cycles(only6, 2, socket.AF_INET6, "::1")
    yield {"port": v4.getsockname()[1], "bound": bound.getsockname()[1]}
    for sock in opened:
        sock.close()


@linux
@pytest.mark.parametrize("states", [None, ["CLOSED", "LISTEN", "ESTABLISHED", "TIME_WAIT"]])
def test_streamed_json_is_byte_for_byte_the_plain_document(variety, states):
    backend = get_backend("netlink")
    try:
        dump = backend.table(None, states)
        entries = list(dump)  # decoded from the same bytes as the JSON below: same timers
        items = list(dump.json_items())
    finally:
        backend.close()
    assert len(entries) == len(items) == dump.count >= 8
    assert any(e.owners for e in entries) and any(e.expires_in_s for e in entries)
    if states:
        assert any(e.state == "CLOSED" and e.lport == variety["bound"] for e in entries)
    assert items == [json.dumps(e.to_dict(), allow_nan=False) for e in entries]
    assert items == [entry_json(e) for e in entries]
    head = {"port": None, "host": None, "states": states, "backend": "netlink"}
    out = io.StringIO()
    doc = DocumentWriter(out, head)
    count = doc.stream("entries", iter(items))
    doc.close({"count": count, "free_in": None})
    plain = {**head, "entries": [e.to_dict() for e in entries], "count": len(entries), "free_in": None}
    assert out.getvalue() == json.dumps(plain, allow_nan=False) + "\n"


@linux
def test_text_lines_from_the_bytes_are_table_rows(variety):
    entries = get_backend("netlink").snapshot()
    entries.append(Entry(6, "fe80::1:2:3:4%eth0", 65535, "2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff", 65535, "ESTABLISHED",
                         (Owner(1, "a very long process name"), Owner(2, None)), expires_in_s=7.25))
    assert list(table_lines(entries, True)) == [table_row(e, True) for e in entries]
    assert any(len(table_row(e, True).splitlines()) == 2 for e in entries)  # the wrapped row is there
    dump = get_backend("netlink").table()
    decoded = list(dump)  # the same bytes, decoded as entries: the same lines
    assert any(e.owners for e in decoded) and any(e.state == "LISTEN" for e in decoded)
    for timers in (False, True):
        lines = list(dump.text_lines(timers))
        assert lines == [table_row(e, timers) for e in decoded]


def test_entry_json_matches_json_dumps_on_odd_values():
    odd = [
        Entry(4, "127.0.0.1", 1, "*", 0, "LISTEN"),  # psutil: no timers, no uid, no cookie
        Entry(6, "::1", 2, "::1", 3, "CLOSE_WAIT", (Owner(7, 'qu"ote\\é☃'), Owner(8, None)), 5, 0, "keepalive",
              7199.996, False, 2 ** 64 - 1),
        Entry(6, "::", 4, "*", 0, "LISTEN", (), 9, 1000, None, None, True, 0),
        Entry(4, "10.0.0.1", 5, "10.0.0.2", 6, "TIME_WAIT", (), None, 0, "timewait", 0.004, None, 12),
    ]
    for e in odd:
        assert entry_json(e) == json.dumps(e.to_dict(), allow_nan=False) == e.to_json()
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError):
            entry_json(odd[3]._replace(expires_in_s=bad))


def test_document_writer_edges():
    for head, items, tail in [({}, [], {}), ({"a": [1, {"b": None}]}, ["1", '"x"'], {"n": 2}),
                              ({"s": "é"}, [str(i) for i in range(1100)], {"count": 1100})]:
        out = io.StringIO()
        doc = DocumentWriter(out, head)
        doc.stream("entries", iter(items))
        doc.close(tail)
        assert out.getvalue() == json.dumps({**head, "entries": [json.loads(i) for i in items], **tail}) + "\n"


@linux
def test_cli_table_json_streams_the_documented_document(run, variety):
    port = variety["port"]
    whole = run("table", "--json")
    assert whole.exit_code == 0, whole.stderr
    doc = whole.json()
    assert list(doc) == ["port", "host", "states", "backend", "entries", "count", "free_in"]
    assert doc["count"] == len(doc["entries"]) and doc["free_in"] is None
    assert {(e["lport"], e["state"]) for e in doc["entries"]} >= {(port, "LISTEN"), (port, "ESTABLISHED")}
    # bound-only sockets: only when asked for (ours by address: other programs reuse port numbers)
    assert not any(e["lport"] == variety["bound"] and e["laddr"] == "127.0.0.1" for e in doc["entries"])
    one = run("table", "--port", port, "--json").json()
    assert one["free_in"]["kind"] == "unknown" and {e["state"] for e in one["entries"] if e["laddr"] == "127.0.0.1"} == {
        "LISTEN", "ESTABLISHED", "TIME_WAIT"}
    text = run("table", "--port", port).stdout.splitlines()
    assert text[0].startswith("PROTO") and any(line.endswith(f" entries on port {port} (netlink)") for line in text)
