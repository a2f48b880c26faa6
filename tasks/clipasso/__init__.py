"""CLIPasso: object sketches as Bézier strokes optimised through a frozen CLIP.

Library use: `Sketcher(cfg, backbone).sketch(prepare_target(image, canvas))`; the CLI is
`clipheads clipasso infer|eval`. The rasteriser, SVG, XDoG and stroke-init modules are
usable on their own.
"""
from .config import ClipassoConfig
from .sketcher import Sketch, Sketcher
from .target import Target, prepare_target
from .task import ClipassoTask

__all__ = ["ClipassoConfig", "ClipassoTask", "Sketch", "Sketcher", "Target", "prepare_target"]
