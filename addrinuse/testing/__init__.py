"""Test helpers over real sockets and processes; the pytest plugin (addrinuse.pytest_plugin) is a
thin layer over them, and they work without pytest too:

    from addrinuse.testing import assert_bind_fails, leave_time_wait, wait_port_free, ServerFactory

Names load on first use, so importing this package costs nothing."""

_HOMES = {"assert_bind_fails": "ports", "wait_port_free": "ports", "PortAssertion": "ports",
          "leave_time_wait": "timewait", "TimeWaitPort": "timewait", "ServerFactory": "servers",
          "ServerHandle": "servers"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'addrinuse.testing' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"addrinuse.testing.{_HOMES[name]}"), name)
