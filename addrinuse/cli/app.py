"""The click group, and the one place where errors become exit codes and one line (or one JSON
document) of output. Every command module registers on `cli`."""

from __future__ import annotations

import sys

import click

from addrinuse import __version__
from addrinuse.errors import EXIT_BAD_INPUT, EXIT_CODES, EXIT_FAILED, AddrinuseError, exit_code_for


def wants_json(args: list[str]) -> bool:
    """--json anywhere before a `--` (after which words belong to the user's own command)."""
    head = args[:args.index("--")] if "--" in args else args
    return "--json" in head


def emit(data) -> None:
    """One JSON document (or one NDJSON line) on stdout."""
    import json

    click.echo(json.dumps(data, allow_nan=False))


def fail(message: str, code: int, as_json: bool, extra: dict | None = None) -> int:
    if as_json:
        emit({"error": {"code": code, "type": EXIT_CODES.get(code, ("failed",))[0], "message": message,
                        **(extra or {})}})
    click.echo(f"addrinuse: error: {message}", err=True)
    return code


class AddrinuseGroup(click.Group):
    """Bare `addrinuse` shows help and exits 0, as git does."""

    def parse_args(self, ctx, args):
        if not args:
            click.echo(ctx.get_help())
            ctx.exit(0)
        return super().parse_args(ctx, args)


def run(args: list[str] | None = None) -> int:
    """Run the CLI; return the exit code. Every error ends as one line on stderr (and, with --json,
    one error document on stdout) with a documented exit code, never a traceback."""
    from addrinuse.cli import cli

    import os

    args = sys.argv[1:] if args is None else list(args)
    if os.environ.get("_ADDRINUSE_COMPLETE"):
        # click's own shell completion (documented in the README) lives in Command.main.
        return cli.main(args, prog_name="addrinuse")
    as_json = wants_json(args)
    try:
        # Not cli.main(): it turns KeyboardInterrupt into Abort, losing which signal arrived.
        with cli.make_context("addrinuse", args) as ctx:
            code = cli.invoke(ctx)
    except AddrinuseError as err:
        return fail(str(err), err.exit_code, as_json, err.to_dict())
    except click.exceptions.Exit as err:
        return err.exit_code
    except click.UsageError as err:
        hint = f" (see '{err.ctx.command_path} --help')" if err.ctx else ""
        return fail(err.format_message() + hint, EXIT_BAD_INPUT, as_json)
    except click.Abort as err:
        code = exit_code_for(err.__cause__) if isinstance(err.__cause__, KeyboardInterrupt) else 130
        return fail(f"{EXIT_CODES[code][0]}; everything this command started was stopped", code, as_json)
    except click.ClickException as err:
        return fail(err.format_message(), err.exit_code, as_json)
    except KeyboardInterrupt as err:
        code = exit_code_for(err)
        word = EXIT_CODES[code][0] if code in EXIT_CODES else "interrupted"
        return fail(f"{word}; everything this command started was stopped", code, as_json)
    except BrokenPipeError:
        return EXIT_FAILED  # stdout closed by its reader (`| head`): nothing left to say
    except OSError as err:
        # Last resort for an OS error no layer translated: still one line, never a traceback.
        where = f": {err.filename}" if err.filename else ""
        return fail(f"{err.strerror or err}{where}", EXIT_FAILED, as_json)
    except Exception as err:  # a bug: still one line; ADDRINUSE_DEBUG=1 shows the traceback
        interrupt = _interrupt_inside(err)
        if interrupt is not None:
            # Python wrapped the interrupt (a signal during class creation becomes "RuntimeError:
            # Error calling __set_name__"): it is still the user's Ctrl-C, not a bug.
            code = exit_code_for(interrupt)
            return fail(f"{EXIT_CODES.get(code, ('interrupted',))[0]}; everything this command started was stopped",
                        code, as_json)
        if os.environ.get("ADDRINUSE_DEBUG"):
            raise
        return fail(f"internal error ({type(err).__name__}: {err}); rerun with ADDRINUSE_DEBUG=1 and report it",
                    EXIT_FAILED, as_json)
    return code if isinstance(code, int) else 0


def _interrupt_inside(err: BaseException) -> KeyboardInterrupt | None:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


@click.group(cls=AddrinuseGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="addrinuse")
@click.option("--state-dir", envvar="ADDRINUSE_STATE_DIR", type=click.Path(file_okay=False),
              help="Where server records live (default: $XDG_RUNTIME_DIR/addrinuse, else "
                   "/tmp/addrinuse-UID); must be yours and private (0700).")
@click.pass_context
def cli(ctx, state_dir):
    """Reproduce, observe and explain TCP "Address already in use" with real sockets.

    \b
    Example:
      addrinuse demo
    """
    ctx.obj = {"state_dir": state_dir}
