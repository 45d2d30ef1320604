"""Where experiments come from: the catalogue that ships inside the package, a directory of the
user's own files (--dir), or single .toml paths.

The top-level experiments/ folder of the source tree is installed as the package data
`addrinuse.catalogue` (setup.py maps it), read with importlib.resources, so a wheel lists and runs
every experiment. In a source checkout (an editable install has no such package) the folder itself
is read."""

from __future__ import annotations

import os
from pathlib import Path

from addrinuse.errors import AddrinuseError, BadInput
from addrinuse.experiments.scenario import Scenario, ScenarioError, load

ENV_DIR = "ADDRINUSE_EXPERIMENTS_DIR"  # the CLI's default for --dir
PACKAGE = "addrinuse.catalogue"


class NoExperiments(AddrinuseError):
    """A selection that holds no experiment (exit 1): a run that checks nothing must not pass."""

    def __init__(self, where: str, fix: str):
        self.path = where
        super().__init__(f"no experiments found in {where}: {fix}")


def builtin():
    """The shipped catalogue: a Traversable (importlib.resources) or, in a checkout, a Path."""
    from importlib.resources import files

    try:
        return files(PACKAGE)
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "experiments"


def _toml_files(root) -> list:
    try:
        # By experiment name: "lost-final-ack" before "lost-final-ack-without-time-wait" ('.' > '-')
        return sorted((f for f in root.iterdir() if f.name.endswith(".toml") and f.is_file()), key=lambda f: f.name[:-5])
    except FileNotFoundError:
        return []
    except OSError as err:
        raise BadInput(f"cannot read {root} ({err.strerror}): pass --dir with a readable folder") from err


def catalogue(directory: str | Path | None = None, require: bool = True) -> list[Scenario]:
    """Every scenario in `directory` (default: the shipped catalogue), sorted by file name. With
    `require`, finding none is NoExperiments."""
    root = builtin() if directory is None else _directory(directory)
    found = [load(f) for f in _toml_files(root)]
    if require and not found:
        raise NoExperiments(str(root), "no *.toml files there" + (" (the package was installed without its "
                            "catalogue: reinstall it)" if directory is None else "; pass --dir with your scenario files"))
    return found


def _directory(directory) -> Path:
    path = Path(directory)
    if not path.is_dir():
        raise BadInput(f"{directory} is not a directory: pass --dir with a folder of .toml scenario files")
    return path


def find(name_or_path: str, directory: str | Path | None = None) -> Scenario:
    """A scenario by name (from `directory` or the shipped catalogue), or by its .toml path."""
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        return load(Path(name_or_path))
    root = builtin() if directory is None else _directory(directory)
    for f in _toml_files(root):
        if f.name == f"{name_or_path}.toml":
            return load(f)
    names = ", ".join(f.name[:-5] for f in _toml_files(root)) or "none"
    raise ScenarioError(name_or_path, "name", f"no such experiment in {root}",
                        f"use one of: {names}; or give a .toml path")
