"""The command line: the only package that imports click. It parses, calls the library, renders,
and maps errors to exit codes (errors.EXIT_CODES), one module per command group:

  app          the group, error handling, the JSON emitter
  options      the shared options (one name per idea)
  servers      start, kill, servers
  clients      connect, demo
  table        table, watch, states
  diagnosis    rebind, why, wait, clear
  experiments  experiment list / show / run

Library modules are imported inside commands so that a command pays only for what it uses."""

from addrinuse.cli.app import cli, run  # noqa: F401
from addrinuse.cli import clients, diagnosis, experiments, servers, table  # noqa: F401,E402  (register commands)


def main() -> None:
    from addrinuse.entry import main as entry_main

    entry_main()
