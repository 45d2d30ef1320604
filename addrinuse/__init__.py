"""Reproduce, observe and explain TCP "Address already in use" with real sockets."""

__version__ = "0.1.0"
