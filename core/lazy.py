"""Lazy package exports (PEP 562), so importing a package does not import torch.

The CLI must answer `--help` and usage errors without loading torch or open_clip, yet
`from clipheads.core.engine import TrainConfig` should keep working; a package lists
what it exports and from which submodule, and the submodule loads on first use.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for `package`, resolving `name` from `package.<exports[name]>`."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
