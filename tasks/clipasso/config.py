"""Config schema of the `clipasso` task: every constant of the method is a field here.

Defaults are the paper's setting (configs/clipasso/paper.yaml records where they come
from); `tiny_world.yaml` overrides them for the bundled tiny CLIP. Widths are *full*
stroke widths in canvas pixels (SVG ``stroke-width``): the paper's ``--width 1.5`` is a
diffvg half-width, i.e. 3.0 here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from clipheads.core.task import TaskConfig


@dataclass
class StrokeConfig:
    """The drawing: how many strokes (the abstraction level) and how they look."""

    count: int = 16
    width: float = 3.0               # full width in canvas px (paper: diffvg half-width 1.5)
    colour: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    canvas: int | None = None        # long side of the canvas in px (aspect kept); None: CLIP's input size
    rasteriser: str = "torch"        # "torch" (default) or "diffvg" when pydiffvg is installed
    segments: int = 32               # polyline segments per cubic in the torch rasteriser


@dataclass
class InitConfig:
    """Saliency-driven stroke placement (attention x XDoG edges, softmax sampling)."""

    method: str = "saliency"         # "saliency" (paper) or "random" (uniform starts)
    saliency_backbone: str | None = None   # None: the loss backbone (must be a ViT)
    saliency_weights: str | None = None
    relevancy: str = "attention"     # "attention": CLS->patch mean over heads+blocks; "rollout"
    use_edges: bool = True           # multiply by (1 - XDoG) as the paper does
    temperature: float = 0.3         # softmax temperature over positive saliency pixels
    radius: float = 0.025            # each next control point within +-radius (canvas fraction)
    xdog_variant: str = "official"   # "official" (the official code's map) or "winnemoeller" (see edges.py)
    xdog_gamma: float = 0.98
    xdog_phi: float = 200.0
    xdog_eps: float = -0.1
    xdog_sigma: float = 0.8
    xdog_k: float = 10.0


@dataclass
class LossConfig:
    """Geometric (intermediate features, L2) + semantic (final embedding, 1 - cos) loss."""

    geometric_layers: list[int] | None = None   # None: ResNet [2, 3] (layer2, layer3); ViT see docs
    geometric_weights: list[float] | None = None  # None: 1.0 each
    semantic_weight: float = 0.1
    augmentations: int = 4           # augmented pairs per iteration, next to the clean pair
    perspective: float = 0.5         # RandomPerspective distortion scale (p = 1)
    crop_scale: float = 0.8          # RandomResizedCrop area fraction (ratio 1)
    fill: float = 0.0                # value outside the warped image (torchvision default 0)
    bank: int = 32                   # fixed augmentations whose target features are cached; 0 = fresh each step


@dataclass
class OptimConfig:
    """Adam on control points (optionally widths / colours), eval, early stop, seeds."""

    iterations: int = 2000
    lr: float = 1.0                  # on control points, in canvas pixels
    optimise_width: bool = False
    width_lr: float = 0.1
    min_width: float = 0.5
    optimise_colour: bool = False
    colour_lr: float = 0.01
    eval_every: int = 10
    patience: int = 50               # evals without an improvement > min_delta before stopping
    min_delta: float = 1e-5
    seeds: int = 3                   # optimised together as one batch; best by clean loss
    seed: int = 0                    # seed s uses seed + s


@dataclass
class OutputConfig:
    """What gets written next to the SVG."""

    png_scale: int = 1               # PNG rendered at canvas x png_scale
    gif: bool = False                # progress animation of the best seed
    gif_every: int = 20              # iterations between GIF frames
    gif_ms: int = 80                 # frame duration
    rembg: bool = False              # remove the background with rembg (needs its weights)
    write_saliency: bool = False     # also write <stem>_saliency.png


@dataclass
class DemoConfig:
    """`clipheads demo`'s budget: the gallery must stay quick on a busy laptop, so the demo
    may sketch with less than the config's own setting. None keeps the config's value."""

    strokes: int | None = None
    iterations: int | None = None
    seeds: int | None = None
    lr: float | None = None


@dataclass
class ClipassoConfig(TaskConfig):
    strokes: StrokeConfig = field(default_factory=StrokeConfig)
    init: InitConfig = field(default_factory=InitConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
