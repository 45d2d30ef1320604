"""Experiments: scenario files (TOML) run against the real kernel, expected checked against observed.

One module per job:
  scenario    load and validate a file into typed steps and expectations (every number checked)
  params      the parameter kinds the loader checks values with
  actions/    the action table (`do = "..."`): register an action with actions.action(...)
  command     the user's own server (a command with {port}) started and stopped for a step
  runner      run the steps in order, then the checks; undo everything on every path
  checks      the expectations and how each is checked
  report      a Report per experiment, a run's verdict (exit code) and summary
  catalogue   find experiments: the shipped catalogue, --dir, or a .toml path
  junit       JUnit XML for CI systems"""

from addrinuse.experiments.catalogue import NoExperiments, builtin, catalogue, find
from addrinuse.experiments.report import Report, summary, verdict
from addrinuse.experiments.runner import Runner, run
from addrinuse.experiments.scenario import Scenario, ScenarioError, load, loads, validate

__all__ = ["NoExperiments", "Report", "Runner", "Scenario", "ScenarioError", "builtin", "catalogue", "find",
           "load", "loads", "run", "summary", "validate", "verdict"]
