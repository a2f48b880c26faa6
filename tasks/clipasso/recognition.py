"""Does the sketch still read as the object? Tiny-world shapes, sketched, then classified.

CLIPasso's claim is that a few strokes keep the object's semantics. With the tiny CLIP
that is measurable: sketch held-out tiny-world shapes, classify each sketch zero-shot
among the shape names with the same CLIP, and compare with the saliency initialisation
(no optimisation) and with random strokes of the same count. The label embedding of a
shape averages the tiny world's own caption forms over every colour.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from clipheads.core.tinyworld import COLOURS, SHAPES, make_single, split_seeds
from clipheads.core.tinyworld.scene import article

from .outputs import atomic_write, contact_sheet, png_bytes
from .placement import random_strokes
from .raster import Rasteriser
from .saliency import normalise
from .strokes import Strokes
from .target import prepare_target, resize, square_pad

if TYPE_CHECKING:
    from clipheads.core.backbone import FrozenCLIP
    from clipheads.core.text import TextBank

    from .sketcher import Sketcher

SCENE_SIZE = 96


def shape_templates() -> tuple[str, ...]:
    """'a photo of a red {}.', ... over every tiny-world colour (the captions' own form)."""
    return tuple(f"a photo of {article(c)} {c} {{}}." for c in COLOURS)


def classify(backbone: "FrozenCLIP", text: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Softmax over labels [N, L] for canvas images [N, 3, H, W] in [0, 1] (white-padded to square)."""
    pixels = normalise(resize(square_pad(images.to(backbone.device)), tuple(backbone.image_size)),
                       backbone.mean, backbone.std)
    with torch.no_grad():
        feats = torch.nn.functional.normalize(backbone.encode_image(pixels).float(), dim=-1)
        logits = backbone.model.logit_scale.exp().float() * feats @ text.float().T
    return logits.softmax(-1).cpu()


def render(strokes: Strokes, size: tuple[int, int], rasteriser: Rasteriser) -> torch.Tensor:
    with torch.no_grad():
        return rasteriser.render(strokes, *size, background=1.0)


def shape_probabilities(backbone: "FrozenCLIP", text_bank: "TextBank", strokes: Strokes, size: tuple[int, int],
                        rasteriser: Rasteriser) -> tuple[torch.Tensor, list[str]]:
    """[B, shapes] probabilities that each sketch shows each tiny-world shape."""
    text = text_bank.embed(list(SHAPES), shape_templates())
    return classify(backbone, text, render(strokes, size, rasteriser)), list(SHAPES)


ROWS = ("image", "init", "sketch", "random")


def sketch_recognition(sketcher: "Sketcher", text_bank: "TextBank", per_shape: int = 4, split: str = "test",
                       start: int = 0, sheet: Path | None = None) -> dict:
    """Shape top-1 of optimised sketches vs the saliency init, random strokes and the images;
    `sheet` writes a contact sheet (one column per image, one row per kind, predicted label)."""
    backbone, raster = sketcher.backbone, sketcher.rasteriser
    text = text_bank.embed(list(SHAPES), shape_templates())
    count, width = sketcher.cfg.strokes.count, sketcher.cfg.strokes.width
    seeds = split_seeds(split, per_shape * len(SHAPES), start)
    labels, sketches, inits, randoms, images = [], [], [], [], []
    began = time.perf_counter()
    for i, seed in enumerate(seeds):
        shape = SHAPES[i % len(SHAPES)]
        colour = COLOURS[(i // len(SHAPES)) % len(COLOURS)]
        target = prepare_target(make_single(seed, colour, shape, SCENE_SIZE).image, sketcher.canvas)
        sk = sketcher.sketch(target)
        size = sk.size
        g = torch.Generator().manual_seed(seed)
        labels.append(SHAPES.index(shape))
        sketches.append(render(sk.best, size, raster))
        inits.append(render(sk.init.item(0), size, raster))
        randoms.append(render(random_strokes(count, size, width, generator=g), size, raster))
        images.append(target.pixels)
    y = torch.tensor(labels)

    preds = {name: classify(backbone, text, torch.cat(batch)).argmax(-1)
             for name, batch in zip(ROWS, (images, inits, sketches, randoms))}
    if sheet is not None:
        grid = [[(im[0], SHAPES[int(p)], int(p) == int(t)) for im, p, t in zip(batch, preds[name], y)]
                for name, batch in zip(ROWS, (images, inits, sketches, randoms))]
        atomic_write(sheet, png_bytes(contact_sheet(grid).quantize(64), optimize=True))  # small enough for docs

    def top1(name: str) -> float:
        return float((preds[name] == y).float().mean())

    return {"images": len(seeds), "strokes": count, "iterations": sketcher.cfg.optim.iterations,
            "seeds": sketcher.cfg.optim.seeds, "backbone": str(backbone.spec),
            "sketch_top1": top1("sketch"), "init_top1": top1("init"), "random_top1": top1("random"),
            "target_top1": top1("image"), "chance": 1.0 / len(SHAPES),
            "seconds": round(time.perf_counter() - began, 1)}
