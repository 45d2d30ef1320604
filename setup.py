"""Only what pyproject.toml cannot say: the top-level experiments/ folder ships inside the package
as `addrinuse.catalogue` (package data read with importlib.resources), while every addrinuse*
package is still found automatically. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["addrinuse*"]), "addrinuse.catalogue"],
    package_dir={"addrinuse.catalogue": "experiments"},
    package_data={"addrinuse.catalogue": ["*.toml", "README.md"]},
)
