"""The network-namespace lab: two namespaces, a veth pair, nftables and the tracepoint, for the
experiments loopback cannot show (a lost segment, per-namespace sysctls). See pair.py."""

from addrinuse.lab.pair import Lab, End, RemoteSocket, unavailable_reason

__all__ = ["Lab", "End", "RemoteSocket", "unavailable_reason"]
