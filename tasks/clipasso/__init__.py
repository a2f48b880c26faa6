"""CLIPasso: object sketches as Bézier strokes optimised through a frozen CLIP.

Library use: `Sketcher(cfg, backbone).sketch(prepare_target(image, canvas))`; the CLI is
`clipheads clipasso infer|eval`. The rasteriser, SVG, XDoG and stroke-init modules are
usable on their own. The torch-heavy names load on first use.
"""
from clipheads.core.lazy import lazy_exports

from .config import ClipassoConfig
from .task import ClipassoTask

_EXPORTS = {"Sketch": "sketcher", "Sketcher": "sketcher", "Target": "target", "prepare_target": "target"}
__all__ = ["ClipassoConfig", "ClipassoTask", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
