"""The command tree, walked: every command and option has help, every command an example and a
README entry, every option a place in the README's command reference, and one idea has one name."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from addrinuse.cli import cli
from addrinuse.errors import EXIT_CODES

README = (Path(__file__).parent.parent / "README.md").read_text()


def walk(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        yield path + (name,), command
        if isinstance(command, click.Group):
            yield from walk(command, path + (name,))


COMMANDS = list(walk(cli))
LEAVES = [(p, c) for p, c in COMMANDS if not isinstance(c, click.Group)]


def _id(item) -> str:
    return " ".join(item[0])


@pytest.mark.parametrize("item", COMMANDS, ids=_id)
def test_every_command_has_help_with_an_example_and_a_readme_entry(item):
    path, command = item
    words = "addrinuse " + " ".join(path)
    assert command.help and "Example:" in command.help, f"{words}: no example in its help"
    assert words in command.help.split("Example:")[1], f"{words}: the example does not run {words}"
    assert f"`{words}" in README, f"README has no entry for `{words}`"


@pytest.mark.parametrize("item", LEAVES, ids=_id)
def test_every_option_has_help_and_a_place_in_the_readme_reference(item):
    path, command = item
    words = "addrinuse " + " ".join(path)
    section = readme_section(words)
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        assert param.help, f"{words} {param.opts[0]}: no help text"
        if param.name in ("help",):
            continue
        assert any(opt in section for opt in param.opts), f"README's reference for {words} lacks {param.opts[-1]}"


def readme_section(words: str) -> str:
    """The README's reference entry for a command: from its `### `words`` heading to the next heading."""
    match = re.search(rf"^### `{re.escape(words)}[^`]*`\n(.*?)(?=^#{{2,3}} )", README, re.S | re.M)
    assert match, f"README has no '### `{words}`' reference heading"
    return match.group(1)


def test_one_idea_has_one_name_and_one_name_one_idea():
    """An option's Python name is its idea. The same idea must be spelled the same way in every
    command, and a spelling must not stand for two ideas."""
    spellings: dict[str, set] = {}
    ideas: dict[str, set] = {}
    for path, command in LEAVES:
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                spellings.setdefault(param.name, set()).add(tuple(sorted(param.opts + param.secondary_opts)))
                for opt in param.opts:
                    ideas.setdefault(opt, set()).add(param.name)
    assert {k: v for k, v in spellings.items() if len(v) > 1} == {}
    assert {k: v for k, v in ideas.items() if len(v) > 1} == {}


def test_bare_addrinuse_shows_help_and_exits_0(sub):
    out = sub()
    assert out.exit_code == 0 and "Usage: addrinuse" in out.stdout and out.stderr == ""


def test_the_readme_exit_code_table_is_the_code_table():
    rows = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", README, re.M))
    assert {int(k) for k in rows} == set(EXIT_CODES), "README's exit codes differ from errors.EXIT_CODES"
    for code, (_, meaning) in EXIT_CODES.items():
        assert rows[str(code)] == meaning, f"exit {code}: README says {rows[str(code)]!r}, the code {meaning!r}"


def test_shell_completion_is_documented_and_works(tmp_path):
    import os
    import subprocess
    import sys

    assert "_ADDRINUSE_COMPLETE=bash_source" in README
    env = {**os.environ, "_ADDRINUSE_COMPLETE": "bash_complete", "COMP_WORDS": "addrinuse wh", "COMP_CWORD": "1"}
    out = subprocess.run([sys.executable, "-m", "addrinuse"], env=env, capture_output=True, text=True, timeout=30)
    assert "why" in out.stdout
