"""The package as a user installs it: a wheel built from this tree, installed into a fresh venv outside
the checkout, lists and runs the experiment catalogue it ships (issue 13: an installed wheel used
to list nothing and pass every run while checking nothing).

The build copies the tree first (no build/ or egg-info left in the checkout, and two workers do not
build in one folder). Dependencies come from the package indexes pip is configured with. Measured on
the project's 2-core machine, busy with other test runs: 10-15 s (build ~4 s, install ~5-8 s from
the configured indexes, the runs ~3 s)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                ".hypothesis", "*.whl")


def _pip(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode:
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if "No matching distribution" in proc.stderr or "Could not find a version" in proc.stderr:
            pytest.skip(f"a build or runtime dependency is not in the configured package indexes: {reason}")
        pytest.fail(f"pip {' '.join(args[:2])} failed: {proc.stderr[-2000:]}")
    return proc


def _setuptools_builds_wheels() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return tuple(int(x) for x in setuptools.__version__.split(".")[:2] if x.isdigit()) >= (70, 1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the venv's addrinuse script, seconds taken to build and install)."""
    began = time.monotonic()
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)
    # Without build isolation when this environment can build a wheel itself (setuptools >= 70.1 has
    # bdist_wheel; the test extra installs it): pip then resolves nothing over the network (~4 s
    # instead of 5-17 s measured with isolation).
    _pip("wheel", str(src), "--no-deps", *(["--no-build-isolation"] if _setuptools_builds_wheels() else []),
         "-w", str(work / "dist"), "-q")
    (wheel,) = (work / "dist").glob("addrinuse-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    _pip("--python", str(venv / "bin" / "python"), "install", "-q", str(wheel))
    shutil.rmtree(src)  # nothing of the source tree remains to import from
    return venv / "bin" / "addrinuse", time.monotonic() - began


def _run(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "ADDRINUSE_EXPERIMENTS"))}
    env["ADDRINUSE_STATE_DIR"] = str(cwd / "state")
    return subprocess.run([str(script), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_the_wheel_ships_and_runs_its_catalogue(installed, tmp_path):
    script, took = installed
    shipped = sorted(p.stem for p in (ROOT / "experiments").glob("*.toml"))
    listed = _run(script, "experiment", "list", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    experiments = json.loads(listed.stdout)["experiments"]
    assert sorted(e["name"] for e in experiments) == shipped
    venv = script.parent.parent
    assert all(Path(e["path"]).is_relative_to(venv) for e in experiments), experiments[0]["path"]  # not the checkout

    report = tmp_path / "junit.xml"
    ran = _run(script, "experiment", "run", "restart-after-server-close", "http-server-restart",
               "--junit-xml", str(report), cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr
    assert "PASSED: restart-after-server-close" in ran.stdout and "PASSED: http-server-restart" in ran.stdout
    assert ET.parse(report).getroot().get("tests") == "2"
    print(f"wheel built and installed in {took:.1f} s")  # shown with -s; the docstring keeps the figure


def test_an_empty_dir_fails_from_the_wheel_too(installed, tmp_path):
    script, _ = installed
    empty = tmp_path / "none"
    empty.mkdir()
    out = _run(script, "experiment", "run", "--all", "--dir", str(empty), "--json", cwd=tmp_path)
    assert out.returncode == 1 and json.loads(out.stdout)["error"]["code"] == 1
    assert f"no experiments found in {empty}" in out.stderr
