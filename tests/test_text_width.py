"""Text for people fits 80 columns, for every command, on real output (as ss and bcc's tools do)."""

from __future__ import annotations

WIDTH = 80


def assert_fits(out, what: str) -> None:
    for stream in (out.stdout, out.stderr):
        for line in stream.splitlines():
            assert len(line) <= WIDTH, f"{what}: {len(line)} columns: {line!r}"


def test_every_command_fits_80_columns(run):
    started = run("start", "--name", "a-fairly-long-server-name-for-the-width-test", "--reuseaddr")
    assert started.exit_code == 0, started.stderr
    assert_fits(started, "start")
    port = run("servers", "--json").json()["servers"][0]["port"]
    for args in (("connect", port, "-n", 12), ("servers",), ("table", "--port", port), ("why", port),
                 ("rebind", port), ("wait", port, "--timeout", "0"), ("states",), ("experiment", "list"),
                 ("experiment", "show", "reuseaddr-matrix"), ("kill", "--all"), ("why", port, "--as", "reuseaddr"),
                 ("watch", "--port", port, "--duration", "0.2"), ("demo",), ("--help",), ("why", "--help")):
        assert_fits(run(*args), " ".join(map(str, args)))
