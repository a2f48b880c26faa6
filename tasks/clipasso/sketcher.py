"""One image in, a sketch out: saliency -> initial strokes -> batched-seed optimisation.

`Sketcher` holds what does not change between images (config, backbones, rasteriser);
`sketch(target)` does the per-image work. Library users call this directly; the CLI
task is a thin layer over it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from clipheads.core.errors import UserError, close_matches

from .config import ClipassoConfig
from .edges import XDOG_VARIANTS
from .losses import SketchLoss
from .optimise import OptimResult, check_optim, optimise
from .placement import INIT_METHODS, initial_strokes
from .raster import Rasteriser, get_rasteriser
from .saliency import RELEVANCY, SaliencyMaps, saliency_maps
from .strokes import Strokes
from .target import Target

if TYPE_CHECKING:
    from clipheads.core.backbone import FrozenCLIP

MIN_CANVAS = 16
BANK_SEED = 0  # generator of the cached bank of target augmentations (shared by all seeds)


def check_config(cfg: ClipassoConfig) -> None:
    """Every value the pipeline relies on, checked before any model is built."""
    s, i, o = cfg.strokes, cfg.init, cfg.output
    if s.count < 1:
        raise UserError(f"strokes.count must be >= 1, got {s.count}")
    if s.width <= 0:
        raise UserError(f"strokes.width must be > 0 (full width in px), got {s.width}")
    if s.canvas is not None and s.canvas < MIN_CANVAS:
        raise UserError(f"strokes.canvas must be >= {MIN_CANVAS} px, got {s.canvas}")
    if len(s.colour) != 3 or not all(0.0 <= c <= 1.0 for c in s.colour):
        raise UserError(f"strokes.colour must be 3 numbers in [0, 1], got {s.colour}")
    if i.method not in INIT_METHODS:
        raise UserError(f"unknown init.method {i.method!r}{close_matches(i.method, INIT_METHODS)}; "
                        f"use one of {', '.join(INIT_METHODS)}")
    if i.relevancy not in RELEVANCY:
        raise UserError(f"unknown init.relevancy {i.relevancy!r}{close_matches(i.relevancy, RELEVANCY)}; "
                        f"use one of {', '.join(RELEVANCY)}")
    if i.xdog_variant not in XDOG_VARIANTS:
        raise UserError(f"unknown init.xdog_variant {i.xdog_variant!r}{close_matches(i.xdog_variant, XDOG_VARIANTS)}; "
                        f"use one of {', '.join(XDOG_VARIANTS)}")
    if i.temperature <= 0 or i.radius < 0:
        raise UserError("init.temperature must be > 0 and init.radius >= 0")
    if o.png_scale < 1 or o.gif_every < 1 or o.gif_ms < 1:
        raise UserError("output.png_scale, output.gif_every and output.gif_ms must be >= 1")
    check_optim(cfg.optim)


@dataclass
class Sketch:
    """The result for one image: every seed's best strokes, the target, the maps used."""

    result: OptimResult
    target: Target
    init: Strokes
    saliency: SaliencyMaps | None

    @property
    def best(self) -> Strokes:
        """The best seed's strokes, as a batch of one."""
        return self.result.strokes.item(self.result.best_seed)

    @property
    def size(self) -> tuple[int, int]:
        return self.target.height, self.target.width


class Sketcher:
    """CLIPasso for one config: `loss_backbone` scores sketches, `saliency_backbone` (a ViT)
    places the first strokes (None: the loss backbone)."""

    def __init__(self, cfg: ClipassoConfig, loss_backbone: "FrozenCLIP",
                 saliency_backbone: "FrozenCLIP | None" = None, rasteriser: Rasteriser | None = None):
        check_config(cfg)
        self.cfg = cfg
        self.backbone = loss_backbone
        self.saliency_backbone = saliency_backbone if saliency_backbone is not None else loss_backbone
        if cfg.init.method == "saliency" and not self.saliency_backbone.is_vit:
            raise UserError(f"saliency needs a ViT backbone (attention maps); {self.saliency_backbone.spec} "
                            "is a ResNet: set init.saliency_backbone (e.g. ViT-B-32:openai) or init.method=random")
        size = cfg.strokes.canvas or max(loss_backbone.image_size)
        self.canvas: int = max(MIN_CANVAS, int(size))
        self.rasteriser = rasteriser or get_rasteriser(
            cfg.strokes.rasteriser, **({"segments": cfg.strokes.segments} if cfg.strokes.rasteriser == "torch" else {}))

    def saliency(self, target: Target) -> SaliencyMaps | None:
        """The placement maps, or None for init.method=random."""
        i = self.cfg.init
        if i.method == "random":
            return None
        xdog = {"gamma": i.xdog_gamma, "phi": i.xdog_phi, "eps": i.xdog_eps, "sigma": i.xdog_sigma, "k": i.xdog_k}
        return saliency_maps(self.saliency_backbone, target, i.relevancy, i.use_edges, xdog, i.xdog_variant)

    def seeds(self) -> list[int]:
        """The seeds of one sketch: optim.seed, optim.seed + 1, ..."""
        o = self.cfg.optim
        return [o.seed + s for s in range(o.seeds)]

    def initial(self, target: Target, maps: SaliencyMaps | None) -> Strokes:
        return initial_strokes(maps.placement if maps is not None else None, (target.height, target.width),
                               self.cfg.strokes, self.cfg.init, self.seeds())

    def sketch(self, target: Target, progress: bool = False, gif: bool | None = None) -> Sketch:
        """Sketch `target`: every seed optimised in one batch; the best seed by clean loss."""
        cfg = self.cfg
        maps = self.saliency(target)
        init = self.initial(target, maps)
        device = self.backbone.device
        # The bank of target views belongs to the image, not to a seed: a fixed generator, so
        # that a seed's run does not depend on which seeds run beside it.
        loss = SketchLoss(self.backbone, target.pixels, cfg.loss, torch.Generator().manual_seed(BANK_SEED))
        # Each seed draws its augmentations from its own generator, seeded by the seed.
        generators = [torch.Generator().manual_seed(s) for s in self.seeds()]
        want_gif = cfg.output.gif if gif is None else gif

        def loss_fn(images: torch.Tensor, augment: bool):
            return loss(images, augment=augment, generator=generators)

        init_dev = Strokes(*(t.to(device) for t in (init.points, init.widths, init.colours, init.opacity)))
        result = optimise(init_dev, self.rasteriser, (target.height, target.width), loss_fn, cfg.optim,
                          gif_every=cfg.output.gif_every if want_gif else 0, progress=progress)
        return Sketch(result, target, init, maps)
