"""Every command's real --json output, on success and on failure, against docs/json-schema.json:
exactly one document on stdout (NDJSON for watch), the documented shape, and an error document
with the text mode's exit code when the command fails."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a test dependency (pip install -e '.[test]')")

SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "json-schema.json").read_text())
ROOT_TWO = __import__("os").geteuid() == 0


def validate(document, name: str) -> None:
    schema = {**SCHEMA, "$ref": f"#/$defs/commands/{name}"} if name != "error" else {**SCHEMA, "$ref": "#/$defs/error"}
    jsonschema.Draft202012Validator(schema).validate(document)


def one_document(out) -> dict:
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON document on stdout, got {len(lines)} lines: {out.stdout[:300]}"
    return json.loads(lines[0])


def check_error(out, code: int) -> None:
    assert out.exit_code == code, out.stderr
    document = one_document(out)
    validate(document, "error")
    assert document["error"]["code"] == code


@pytest.fixture
def served(run):
    """A server this test started, two server-first connections, then killed: TIME_WAIT on its port."""
    record = one_document(run("start", "--json"))
    validate(record, "start")
    talk = one_document(run("connect", record["port"], "-n", 2, "--json"))
    validate(talk, "connect")
    return record


def test_server_commands(run, served):
    listed = one_document(run("servers", "--json"))
    validate(listed, "servers")
    assert [s["name"] for s in listed["servers"]] == [served["name"]]
    stopped = one_document(run("kill", served["name"], "--json"))
    validate(stopped, "kill")
    check_error(run("kill", "nosuch", "--json"), 2)
    check_error(run("start", "--port", served["port"], "--json"), 3)  # its TIME_WAIT entries block a plain bind


def test_port_commands(run, served):
    run("kill", served["name"])
    port = served["port"]
    for args, name, code in [(("rebind", port), "rebind", 3), (("why", port), "why", 3),
                             (("wait", port, "--timeout", "0"), "wait", 4),
                             (("table", "--port", port), "table", 0), (("table", "--port", port, "--backend", "psutil"), "table", 0)]:
        out = run(*args, "--json")
        assert out.exit_code == code, out.stderr
        validate(one_document(out), name)
    check_error(run("why", "0", "--json"), 2)
    check_error(run("wait", port, "--timeout", "nan", "--json"), 2)
    check_error(run("rebind", port, "--host", "no-such-host.invalid", "--json"), 2)


@pytest.mark.skipif(not ROOT_TWO, reason="clear needs root (CAP_NET_ADMIN) for SOCK_DESTROY")
def test_clear(run, served):
    run("kill", served["name"])
    out = run("clear", served["port"], "--yes", "--json")
    assert out.exit_code == 0, out.stderr
    validate(one_document(out), "clear")


def test_watch_is_ndjson_ending_in_a_summary(run, served):
    out = run("watch", "--port", served["port"], "--duration", "0.3", "--interval", "0.05", "--json")
    assert out.exit_code == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert events and events[-1]["event"] == "summary"
    for event in events:
        validate(event, "watch")
    check_error(run("watch", "--interval", "inf", "--json"), 2)


@pytest.mark.skipif(__import__("addrinuse.tracepoint", fromlist=["x"]).unavailable_reason() is not None,
                    reason="the kernel tracepoint needs root and tracefs")
def test_watch_source_trace_events(run, served):
    """Transitions of real connections streamed from the tracepoint, then the trace summary."""
    import signal
    import subprocess
    import sys
    import threading

    from tests.helpers import wait_for

    watcher = subprocess.Popen([sys.executable, "-m", "addrinuse", "watch", "--source", "trace", "--port",
                                str(served["port"]), "--host", "127.0.0.1", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(watcher.stdout.readline, "")), daemon=True)
    try:
        assert "Ctrl-C to end." in watcher.stderr.readline()  # armed: every change from here is seen
        reader.start()
        run("connect", served["port"], "-n", 2)
        wait_for(lambda: any('"TIME_WAIT"' in line for line in list(lines)), 10, what="a streamed TIME_WAIT")
        watcher.send_signal(signal.SIGINT)
        watcher.wait(timeout=30)
        reader.join(timeout=10)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    events = [json.loads(line) for line in lines]
    assert events[-1]["event"] == "summary" and events[-1]["source"] == "trace"
    for event in events:
        validate(event, "watch")


def test_reference_commands(run):
    validate(one_document(run("states", "--json")), "states")
    validate(one_document(run("experiment", "list", "--json")), "experiment list")
    validate(one_document(run("experiment", "show", "reuseport", "--json")), "experiment show")
    check_error(run("experiment", "show", "no-such-experiment", "--json"), 2)


def test_experiment_run_has_one_shape_for_one_and_for_many(run, tmp_path):
    for args in (("no-connections",), ("no-connections", "client-closes-first")):
        out = run("experiment", "run", *args, "--json")
        assert out.exit_code == 0, out.stderr
        document = one_document(out)
        validate(document, "experiment run")
        assert len(document["experiments"]) == len(args)
    check_error(run("experiment", "run", "--dir", tmp_path, "--json"), 1)  # nothing selected: never a pass


def test_demo(run):
    out = run("demo", "--json")
    assert out.exit_code == 0, out.stderr
    validate(one_document(out), "demo")


def test_a_usage_error_is_a_document_too(run):
    check_error(run("nosuchcommand", "--json"), 2)
    held = socket.create_server(("127.0.0.1", 0))
    try:
        check_error(run("start", "--port", held.getsockname()[1], "--json"), 3)
    finally:
        held.close()
