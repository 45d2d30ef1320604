"""Why a port cannot be bound, which end left what, when it frees, and the fix.

The pieces, one job each:
  conflict    the kernel's bind-conflict rules: which sockets on the port are in the way of the bind
              asked for, and probes (bind as the user's server would; bind as another uid)
  holders     who holds a socket: every process, with name, command line and user
  ends        which end of a connection an entry is (client, server, or just "closed first here"),
              and the ephemeral port range facts
  exhaustion  why connect() fails with EADDRNOTAVAIL: no local port left toward a destination
  report      `diagnose()`: probes + connection table -> a typed Diagnosis
  verdict     the Diagnosis in a few sentences, both answers (plain, SO_REUSEADDR) first
The probe is the arbiter: what the rules predict explains the probe's answer, never overrides it.
This module stays light (the `rebind` command imports MODES at every start)."""

from __future__ import annotations

from addrinuse.sockets import SocketOptions

MODES = {"plain": SocketOptions(), "reuseaddr": SocketOptions(reuseaddr=True), "reuseport": SocketOptions(reuseport=True)}
MODE_WORDS = {"plain": "a plain server (no SO_REUSEADDR)", "reuseaddr": "a server that sets SO_REUSEADDR",
              "reuseport": "a server that sets SO_REUSEPORT"}

_LAZY = {"diagnose": "report", "Diagnosis": "report", "port_estimate": "report", "Holder": "holders",
         "Lingering": "holders", "explain_exhaustion": "exhaustion", "Exhaustion": "exhaustion"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"addrinuse.diagnose.{_LAZY[name]}"), name)
    raise AttributeError(name)
