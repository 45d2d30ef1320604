"""The experiment command group: list, show, run."""

from __future__ import annotations

import click

from addrinuse.cli.app import cli, emit
from addrinuse.cli.options import backend_option, json_option
from addrinuse.errors import BadInput

dir_option = click.option(
    "--dir", "directory", envvar="ADDRINUSE_EXPERIMENTS_DIR", type=click.Path(file_okay=False),
    help="A folder of your own .toml scenarios, instead of the catalogue that ships with addrinuse "
         "(env ADDRINUSE_EXPERIMENTS_DIR).")


@cli.group()
def experiment():
    """Scenario files that reproduce each cause of "Address already in use".

    \b
    Example:
      addrinuse experiment run --all
    """


@experiment.command("list")
@dir_option
@json_option
def experiment_list(directory, as_json):
    """List the experiments: name, the TCP states each observes, purpose.

    Exit 1 when there is none (an empty catalogue is an error, never a pass).

    \b
    Example:
      addrinuse experiment list --dir ci/experiments
    """
    from addrinuse.experiments import catalogue
    from addrinuse.render.experiments import catalogue_list

    found = catalogue(directory)
    if as_json:
        emit({"experiments": [{k: v for k, v in s.to_dict().items() if k not in ("steps", "expect", "explain")}
                              for s in found]})
    else:
        click.echo(catalogue_list(found))


@experiment.command("show")
@click.argument("name")
@dir_option
@json_option
def experiment_show(name, directory, as_json):
    """Show an experiment's steps and expectations, explained.

    \b
    Example:
      addrinuse experiment show reuseaddr-matrix
    """
    import shlex

    from addrinuse.experiments import find
    from addrinuse.experiments.actions import actions
    from addrinuse.render import wrap
    from addrinuse.render.experiments import value

    s = find(name, directory)
    if as_json:
        emit(s.to_dict())
        return
    click.echo(wrap(f"{s.name}: {s.purpose}") + "\n" + wrap(s.path, "file: ", "      ")
               + "\n" + wrap(" ".join(s.states) or "-", "states: ", "        ") + "\n\nsteps:")
    table = actions()
    for step in s.steps:
        spec = table[step.do].params  # parameters left at their default are not shown
        params = ", ".join(f"{k}={shlex.join(v) if k == 'command' else value(v)}" for k, v in step.params.items()
                           if v is not None and v != spec[k].default)
        click.echo(wrap(params or "-", f"  {step.id:<18} {step.do:<14} ", " " * 36))
    click.echo("expectations:")
    for e in s.expect:
        # equals/within/includes/excludes hold {key: value}: shown as the TOML's dotted keys
        text = ", ".join(", ".join(f"{k}.{key} = {value(x)}" for key, x in v.items()) if isinstance(v, dict)
                         else f"{k} = {value(v)}" for k, v in e.checks.items())
        click.echo(wrap(text, f"  {e.step:<18} {e.what}: ", " " * 6))
    click.echo("\n" + wrap(s.explain, "why: ", "     "))


@experiment.command("run")
@click.argument("targets", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Run every experiment of the catalogue (or of --dir).")
@dir_option
@click.option("--slow", is_flag=True, help="With --all or --dir: include the slow ones (time-wait-lifetime, ~62 s).")
@click.option("--junit-xml", "junit_xml", type=click.Path(dir_okay=False),
              help="Also write a JUnit XML report there (one test case per experiment), for CI.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False),
              help="Also write report.html and one SVG per figure into this directory (created if missing): "
                   "sequence diagrams, TIME_WAIT counts, expected vs observed.")
@backend_option
@json_option
@click.pass_context
def experiment_run(ctx, targets, everything, directory, slow, junit_xml, report_dir, backend, as_json):
    """Run experiments by name or .toml path (or all of them); check expected against observed.

    Exit 0 when every experiment that ran passed, 1 when any expectation differed (or nothing was
    found to run), 2 for an invalid file, 6 when an experiment could not run here or every one
    selected was skipped (a missing requirement: ipv6, root, tracefs). --dir alone runs its folder.

    \b
    Example:
      addrinuse experiment run restart-after-server-close my-incident.toml
      addrinuse experiment run --all --junit-xml experiments.xml
      addrinuse experiment run lost-final-ack --report out/
    """
    from datetime import datetime, timezone

    from addrinuse.cli.progress import Countdown
    from addrinuse.experiments import catalogue, find, run, summary, verdict
    from addrinuse.experiments import junit
    from addrinuse.render.experiments import experiment_report, experiment_step, header

    if targets and everything:
        raise BadInput("name experiments (or .toml paths), or pass --all, not both")
    from click.core import ParameterSource

    dir_given = directory is not None and ctx.get_parameter_source("directory") == ParameterSource.COMMANDLINE
    if not targets and not everything and not dir_given:  # the env var alone does not mean "run them all"
        raise BadInput("name experiments (or .toml paths), or pass --all (or --dir DIR)")
    if junit_xml:
        junit.check_writable(junit_xml)
    if report_dir:
        from addrinuse.experiments.report import check_report_dir

        check_report_dir(report_dir)
    began = datetime.now(timezone.utc)
    if targets:
        scenarios = [find(t, directory) for t in targets]
    else:
        scenarios = [s for s in catalogue(directory) if slow or not s.slow]
        if not scenarios:
            from addrinuse.experiments import NoExperiments

            raise NoExperiments(directory or "the catalogue", "every one there is slow: add --slow")
    reports = []
    for s in scenarios:
        countdown = [Countdown(enabled=False if as_json else None)]

        def on_step(row, countdown=countdown):
            countdown[0].close()
            click.echo(experiment_step(row))
            countdown[0] = Countdown(enabled=countdown[0].enabled)

        if not as_json:
            click.echo(header(s.name, s.purpose))
        try:
            report = run(s, backend, None if as_json else on_step, lambda text, c=countdown: c[0](text)).to_dict()
        finally:
            countdown[0].close()
        reports.append(report)
        if not as_json:
            click.echo(experiment_report(report) + "\n")
    code = verdict(reports)
    if junit_xml:
        junit.write(junit_xml, reports, began)
    if report_dir:
        from addrinuse.figures import write_report

        files = write_report(report_dir, reports)
        click.echo(f"report: {files.report} and {len(files.figures)} figure{'' if len(files.figures) == 1 else 's'} "
                   f"({files.total_bytes / 1024:.0f} kB)", err=True)
    if as_json:
        emit({"passed": code == 0, "experiments": reports})
    elif len(reports) > 1 or code:
        click.echo(summary(reports))
    if code:
        ctx.exit(code)
