"""The frozen CLIP backbone every head stands on (imported lazily: torch and open_clip load
on first use, not when the CLI reads a spec string)."""
from __future__ import annotations

from clipheads.core.lazy import lazy_exports

_EXPORTS = {
    "FrozenCLIP": "frozen_clip", "Intermediates": "frozen_clip",
    "BackboneSpec": "spec", "parse_spec": "spec", "list_backbones": "spec",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
