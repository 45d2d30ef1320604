"""pytest plugin (entry point pytest11 `addrinuse`; disable with `-p no:addrinuse`).

Fixtures:
  addrinuse_server      factory: a real server process with chosen socket options, or the user's own
                        command; all are stopped at teardown, and the test fails if anything they
                        started survives. Call it from the test's main thread.
  addrinuse_time_wait   factory: leave a port with N TIME_WAIT entries from the server or client side
  wait_port_free        wait_port_free(port, as_="plain", timeout=63.0, host="127.0.0.1") -> seconds
  assert_bind_fails     assert_bind_fails(port, errno=EADDRINUSE, as_="plain", host="127.0.0.1")
And for every failing test whose exception chain holds EADDRINUSE or EADDRNOTAVAIL, an
"addrinuse diagnosis" report section, computed at failure time while the sockets are still open.

Imported at every pytest start: this module imports nothing but pytest; the rest of addrinuse
(psutil, netlink) loads when a fixture is used or a test fails.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def addrinuse_server():
    """Start real servers: addrinuse_server(reuseaddr=True, close="server-first", linger0=False, ...)
    or addrinuse_server(command=["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"],
    stop_signal="INT")
    returns a handle with .host, .port, .pid, .connect(n), .stop(). Set .stop_timeout to change how
    long teardown waits (5 s) for each server to exit after its stop signal. The servers are
    recorded in memory only and die with this process (PR_SET_PDEATHSIG) whatever ends it."""
    from addrinuse.testing.servers import ServerFactory

    factory = ServerFactory()
    yield factory
    survivors = factory.finish()
    if survivors:
        pytest.fail("processes started by addrinuse_server survived the stop (killed now):\n  "
                    + "\n  ".join(survivors), pytrace=False)


@pytest.fixture
def addrinuse_time_wait():
    """addrinuse_time_wait(n=1, side="server"|"client", host="127.0.0.1", reuseaddr=False)
    -> TimeWaitPort(.host, .port, .entries, .expires_in_s), once the table shows all n entries."""
    from addrinuse.testing.timewait import leave_time_wait

    return leave_time_wait


@pytest.fixture
def wait_port_free():
    from addrinuse.testing.ports import wait_port_free

    return wait_port_free


@pytest.fixture
def assert_bind_fails():
    from addrinuse.testing.ports import assert_bind_fails

    return assert_bind_fails


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and call.excinfo is not None:
        for name, text in diagnosis_sections(call.excinfo.value, getattr(item, "funcargs", None) or {}):
            # A section of the failure itself (printed after the traceback, as report.sections are)
            # also reaches the <failure> text of --junit-xml, which report.sections never do.
            if hasattr(report.longrepr, "addsection"):
                report.longrepr.addsection(name, text)
            else:
                report.sections.append((name, text))
    return report


def diagnosis_sections(exc: BaseException, funcargs: dict) -> list[tuple[str, str]]:
    from addrinuse.testing.culprit import find, watched
    from addrinuse.testing.report import SECTION, section

    if watched(exc) is None:
        return []
    try:
        culprit = find(exc, funcargs)
        if culprit is None:
            return [(SECTION, "EADDRINUSE/EADDRNOTAVAIL, but its port was not found: no SocketCallError, no "
                              "address or bound socket in the failing frames or the fixtures")]
        factory = funcargs.get("addrinuse_server")
        return [(SECTION, section(culprit, getattr(factory, "handles", ())))]
    except Exception as err:  # noqa: BLE001 - a broken diagnosis must not hide the test's own failure
        return [(SECTION, f"addrinuse could not diagnose it: {type(err).__name__}: {err}")]
