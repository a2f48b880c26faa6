"""Prompt templates and the cached text bank (the bank, which needs torch, loads on first use)."""
from __future__ import annotations

from clipheads.core.lazy import lazy_exports

_EXPORTS = {
    "TextBank": "bank", "default_cache_dir": "bank",
    "check_labels": "labels",
    "TEMPLATE_SETS": "templates", "get_templates": "templates", "render": "templates",
    "resolve_templates": "templates", "check_template": "templates",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
