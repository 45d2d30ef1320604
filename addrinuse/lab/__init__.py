"""The network-namespace lab: two namespaces, a veth pair, nftables and the tracepoint, for the
experiments loopback cannot show (a lost segment, per-namespace sysctls). See pair.py.

The names below are imported on first use (PEP 562): the experiment engine imports
addrinuse.lab.actions for every command, and pair.py (socket, json, threading: ~8 ms) is only
needed once a lab experiment runs or asks whether a lab can be made here."""

_HOME = {"Lab": "pair", "End": "pair", "RemoteSocket": "pair", "unavailable_reason": "pair"}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    # An unknown name raises AttributeError, so `from addrinuse.lab import scenarios` still finds
    # the submodule (the import system tries the attribute first, then the submodule).
    if name not in _HOME:
        raise AttributeError(f"module 'addrinuse.lab' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"addrinuse.lab.{_HOME[name]}"), name)
