"""Waiting for a condition by polling with a deadline: the one way this project waits (never a bare
sleep that hopes the condition holds by then)."""

from __future__ import annotations

import time


def until(predicate, timeout: float, interval: float = 0.01):
    """Call predicate() until it returns something truthy, and return that; None at the deadline.
    It is called once more at the deadline, so a timeout of 0 is one check."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value or None
        time.sleep(interval)
