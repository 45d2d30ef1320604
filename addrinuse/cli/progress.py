"""Live progress on a terminal: a countdown rewritten in place on stderr.

Drawn only when stderr is a TTY and the output is text: a CI log or a --json consumer gets no
carriage returns. A wait shorter than a second draws nothing."""

from __future__ import annotations

import sys
import time

import click

SHOW_AFTER_S = 1.0
REDRAW_S = 0.25


class Countdown:
    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.began = time.monotonic()
        self.drawn = 0.0
        self.width = 0

    def __call__(self, text: str) -> None:
        """Show `text` (e.g. 'waited 3.2 s; free in 56.8-58.9 s') once the wait passed a second."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.began < SHOW_AFTER_S or now - self.drawn < REDRAW_S:
            return
        self.drawn = now
        line = f"  {text}"[:79]
        click.echo("\r" + line.ljust(self.width), nl=False, err=True)
        self.width = len(line)

    def close(self) -> None:
        if self.enabled and self.width:
            click.echo("\r" + " " * self.width + "\r", nl=False, err=True)
            self.width = 0

    def __enter__(self) -> "Countdown":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
