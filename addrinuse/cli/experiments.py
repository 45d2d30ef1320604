"""The experiment command group: list, show, run."""

from __future__ import annotations

import click

from addrinuse.cli.app import cli, emit
from addrinuse.cli.options import backend_option, json_option
from addrinuse.errors import EXIT_FAILED, BadInput


@cli.group()
def experiment():
    """Scenario files that reproduce each cause of "Address already in use".

    \b
    Example:
      addrinuse experiment run --all
    """


@experiment.command("list")
@json_option
def experiment_list(as_json):
    """List the experiments with their purpose.

    \b
    Example:
      addrinuse experiment list
    """
    from addrinuse.experiments import catalogue

    found = catalogue()
    if as_json:
        emit({"experiments": [{"name": s.name, "purpose": s.purpose, "slow": s.slow, "path": str(s.path)}
                              for s in found]})
        return
    for s in found:
        click.echo(f"{s.name:<28} " + (s.purpose if len(s.purpose) <= 51 else s.purpose[:48] + "...")
                   + (" (slow)" if s.slow else ""))


@experiment.command("show")
@click.argument("name")
@json_option
def experiment_show(name, as_json):
    """Show an experiment's steps and expectations, explained.

    \b
    Example:
      addrinuse experiment show reuseaddr-matrix
    """
    from addrinuse.experiments import find
    from addrinuse.render import wrap

    s = find(name)
    if as_json:
        emit({"name": s.name, "purpose": s.purpose, "explain": " ".join(s.explain.split()), "slow": s.slow,
              "path": str(s.path), "steps": [{"id": st.id, "do": st.do, **st.params} for st in s.steps],
              "expect": [{"step": e.step, "what": e.what, **e.checks} for e in s.expect]})
        return
    click.echo(wrap(f"{s.name}: {s.purpose}") + f"\nfile: {s.path}\n\nsteps:")
    for step in s.steps:
        params = ", ".join(f"{k}={v}" for k, v in step.params.items() if v not in (None, False, [], ""))
        click.echo(wrap(params, f"  {step.id:<18} {step.do:<14} ", " " * 36))
    click.echo("expectations:")
    for e in s.expect:
        click.echo(wrap(", ".join(f"{k} = {v}" for k, v in e.checks.items()), f"  {e.step:<18} {e.what}: ", " " * 6))
    click.echo("\n" + wrap(s.explain, "why: "))


@experiment.command("run")
@click.argument("targets", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Run every experiment in the catalogue.")
@click.option("--slow", is_flag=True, help="With --all: include the slow ones (time-wait-lifetime, ~62 s).")
@backend_option
@json_option
@click.pass_context
def experiment_run(ctx, targets, everything, slow, backend, as_json):
    """Run experiments by name or path; check expected against observed.

    Exit 0 when every expectation held, 1 when any differed, 2 for an invalid file.

    \b
    Example:
      addrinuse experiment run restart-after-server-close my-incident.toml
    """
    from addrinuse.experiments import catalogue, find, run
    from addrinuse.render.experiments import experiment_report, experiment_step

    if everything == bool(targets):
        raise BadInput("name experiments (or .toml paths), or pass --all")
    scenarios = [s for s in catalogue() if slow or not s.slow] if everything else [find(t) for t in targets]
    reports = []
    for s in scenarios:
        if not as_json:
            click.echo(f"== {s.name}: {s.purpose}")
        report = run(s, backend, None if as_json else lambda row: click.echo(experiment_step(row))).to_dict()
        reports.append(report)
        if not as_json:
            click.echo(experiment_report(report) + "\n")
    passed = all(r["passed"] or r["skipped"] for r in reports)
    if as_json:
        emit({"passed": passed, "experiments": reports})
    elif len(reports) > 1:
        done = sum(r["passed"] for r in reports)
        skipped = [r["name"] for r in reports if r["skipped"]]
        click.echo(f"{done} passed, {len(reports) - done - len(skipped)} failed"
                   + (f", {len(skipped)} skipped" if skipped else ""))
    if not passed:
        ctx.exit(EXIT_FAILED)
