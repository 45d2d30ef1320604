"""Shared by the plugin's tests: run a real inner pytest, read its "addrinuse diagnosis" section
as fields, and check a verdict blames only what is in the way."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

SECTION = "addrinuse diagnosis"
CAN_NETNS = os.geteuid() == 0 and bool(shutil.which("unshare")) and bool(shutil.which("ip"))
# Where a test needs a table that holds only its own sockets (an exact count of TIME_WAIT entries,
# a narrowed ip_local_port_range), its inner run gets a network namespace of its own; elsewhere
# the busy machine's listeners and connections on 127.0.0.2-5 share the port numbers under test.
needs_netns = pytest.mark.skipif(not CAN_NETNS, reason="a network namespace of its own needs root, unshare and ip")
# The busy-machine process (tests/busy.py; None when ADDRINUSE_TEST_BUSY=0): it may listen on
# 127.0.0.2:PORT for any PORT a test listens on at 127.0.0.1, so a verdict must never blame it.
BUSY_PID = os.environ.get("ADDRINUSE_TEST_BUSY_PID")
NOT_IN_THE_WAY = "Also on this port, does not conflict:"


def inner(pytester, source: str, *args: str, netns: bool = False):
    """Run SOURCE as a test file in a real pytest subprocess; with netns, in a network namespace of
    its own (lo brought up there), which ends with the process."""
    path = pytester.makepyfile(source)
    if not netns:
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)
    return pytester.run("unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$0" -m pytest "$@"',
                        sys.executable, "-p", "no:cacheprovider", f"--basetemp={pytester.path / 'tmp'}", *args,
                        str(path), timeout=120)


def section(result) -> dict[str, str]:
    """The diagnosis section as fields: "head" (its first line), then one field per unindented
    "label: text" line with its indented continuation lines ("found from", "frees", "verdict",
    "listeners", ...); each field's text wrapped lines joined, spaces collapsed."""
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if SECTION in line and line.startswith("-"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:3] in ("___", "---", "===")), len(lines))
    fields = {"head": lines[start + 1]}
    label = None
    for line in lines[start + 2:end]:
        if not line.startswith(" "):
            label, _, line = line.partition(":")
            fields[label] = ""
        fields[label] = " ".join((fields[label] + " " + line).split())
    return fields


def blamed(verdict: str) -> str:
    """The part of a verdict that says what is in the way (before the listeners it clears)."""
    return verdict.partition(NOT_IN_THE_WAY)[0]


def assert_busy_not_blamed(verdict: str) -> None:
    if BUSY_PID:
        assert f"pid {BUSY_PID}" not in blamed(verdict), verdict


# The failing test writes the facts to check (its pid, the port) before it fails.


def facts(pytester) -> tuple[int, int]:
    pid, port = (pytester.path / "facts").read_text().split()
    return int(pid), int(port)
