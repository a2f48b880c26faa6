"""Maps the repository's top-level folders onto the `clipheads` import namespace.

`core/` -> `clipheads.core`, `tasks/` -> `clipheads.tasks`, `configs/` -> `clipheads.configs`,
so nothing named `core` or `tasks` lands at the top of site-packages; `core/_top/` is the
top-level `clipheads` package itself (`clipheads.load`). Metadata lives in pyproject.toml;
this file only computes the package list, which setuptools cannot do for renamed folders.
"""
from setuptools import find_namespace_packages, setup

_ROOTS = {"core": "clipheads.core", "tasks": "clipheads.tasks", "configs": "clipheads.configs"}


def _packages() -> list[str]:
    found = ["clipheads"]
    for folder, name in _ROOTS.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_namespace_packages(where=folder)
                  if "__pycache__" not in sub and not sub.startswith("_top")]
    return found


setup(packages=_packages())
