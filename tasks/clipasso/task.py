"""`clipasso`: object sketching with Bézier strokes optimised through a frozen CLIP.

    clipheads clipasso infer --image IMG --strokes 16 --iters 2000 --seeds 3 --out DIR
        -> DIR/<stem>.svg (best seed), DIR/<stem>.png (+ <stem>.gif with --gif),
           DIR/<stem>_attention.png, <stem>_edges.png, <stem>_placement.png
    clipheads clipasso eval --per-shape 4
        -> tiny-world shapes sketched, then classified by the same CLIP (vs random strokes)
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipheads.core.cli_args import ensure_writable_dir, non_negative_int, positive_int
from clipheads.core.errors import UserError
from clipheads.core.registry import register_task
from clipheads.core.task import DemoItem, Task

from .config import ClipassoConfig

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

    from clipheads.core.backbone import FrozenCLIP

    from .sketcher import Sketch, Sketcher
    from .target import Target

DEMO_IMAGES = ("single_green_triangle.png", "single_blue_star.png")


def check_no_overwrite(out: Path, images: list[Path], masks: list[Path]) -> None:
    """Refuse before any work when DIR/<stem>.{svg,png,gif} would replace an input file."""
    inputs_resolved = {p.resolve() for p in images + masks if p.exists()}
    for image in images:
        for suffix in (".svg", ".png", ".gif", "_saliency.png", "_attention.png", "_edges.png", "_placement.png"):
            target = (out / f"{image.stem}{suffix}").resolve()
            if target in inputs_resolved:
                raise UserError(f"writing {target} would overwrite an input file; choose another --out")


@register_task("clipasso")
class ClipassoTask(Task):
    summary = "CLIPasso object sketching: Bézier strokes optimised through CLIP, SVG out"
    Config = ClipassoConfig
    default_config = "tiny_world"
    actions = ("infer", "eval")
    writes = ("infer",)
    cfg: ClipassoConfig

    @classmethod
    def add_arguments(cls, action: str, parser: argparse.ArgumentParser) -> None:
        if action == "infer":
            parser.add_argument("--image", nargs="+", type=Path, required=True, help="image file(s) to sketch")
            parser.add_argument("--mask", nargs="+", type=Path,
                                help="object mask(s), one per image (white/opaque = object)")
            parser.add_argument("--gif", action="store_true", help="also write <stem>.gif of the optimisation")
        else:
            parser.add_argument("--per-shape", type=positive_int, default=4, help="tiny-world images per shape")
            parser.add_argument("--sheet", type=Path, help="write a contact sheet PNG (images, init, "
                                                          "sketches, random strokes; predicted shapes)")
        parser.add_argument("--strokes", type=positive_int, help="strokes per sketch (abstraction level)")
        parser.add_argument("--iters", type=non_negative_int, help="optimisation iterations (0 = the initialisation)")
        parser.add_argument("--seeds", type=positive_int, help="seeds optimised together; the best is kept")
        parser.add_argument("--seed", type=non_negative_int, help="first seed")

    # setup ------------------------------------------------------------------------------
    def apply_options(self, action: str, strokes: int | None = None, iters: int | None = None,
                      seeds: int | None = None, seed: int | None = None, gif: bool = False,
                      **rest: Any) -> None:
        """CLI shortcuts override the config (and so land in the saved resolved config)."""
        from .sketcher import check_config
        for value, section, key in ((strokes, "strokes", "count"), (iters, "optim", "iterations"),
                                    (seeds, "optim", "seeds"), (seed, "optim", "seed")):
            if value is not None:
                setattr(getattr(self.cfg, section), key, value)
        if gif:
            self.cfg.output.gif = True
        check_config(self.cfg)
        super().apply_options(action, **rest)

    def _saliency_backbone(self) -> "FrozenCLIP | None":
        """A second backbone only when the config names a different one for saliency."""
        i, cfg = self.cfg.init, self.cfg
        if i.method == "random":
            return None
        spec = i.saliency_backbone or cfg.backbone
        if spec == cfg.backbone and i.saliency_weights == cfg.weights:
            return None
        from clipheads.core.backbone import FrozenCLIP
        return FrozenCLIP.from_spec(spec, i.saliency_weights, device=self.ctx.device,
                                    allow_torchscript=self.ctx.allow_torchscript,
                                    allow_activation_mismatch=self.ctx.allow_activation_mismatch)

    def sketcher(self) -> "Sketcher":
        from .sketcher import Sketcher
        return Sketcher(self.cfg, self.ctx.backbone, self._saliency_backbone())

    def read_input(self, image: Path, mask: Path | None = None) -> tuple["Image.Image", "np.ndarray | None"]:
        """Decode (and check) an image and its optional mask file; huge images are reduced."""
        from clipheads.core.data.images import load_image_rgba

        from .target import load_mask, remove_background, shrink
        img = shrink(load_image_rgba(image))
        if self.cfg.output.rembg:
            img = remove_background(img)
        return img, (load_mask(mask, img.size) if mask is not None else None)

    def load_target(self, image: Path, mask: Path | None = None, canvas: int | None = None) -> "Target":
        """Image (+ optional mask file) -> white-background target on the canvas (default:
        strokes.canvas, else the loss backbone's input size)."""
        from .target import prepare_target
        img, m = self.read_input(image, mask)
        return prepare_target(img, canvas or self.cfg.strokes.canvas or max(self.ctx.backbone.image_size), m)

    # actions ----------------------------------------------------------------------------
    def infer(self, image: list[Path], mask: list[Path] | None = None, gif: bool = False,
              strokes: int | None = None, iters: int | None = None, seeds: int | None = None,
              seed: int | None = None) -> list[dict]:
        """`<stem>.svg` (best seed) and `<stem>.png` per image into --out."""
        from .target import prepare_target
        self.apply_options("infer", strokes=strokes, iters=iters, seeds=seeds, seed=seed, gif=gif)
        masks = mask or []
        if masks and len(masks) != len(image):
            raise UserError(f"got {len(masks)} --mask file(s) for {len(image)} image(s); "
                            "pass one mask per image")
        stems = [p.stem for p in image]
        if len(set(stems)) != len(stems):
            raise UserError("two input images share a file name stem; their outputs would collide in --out")
        inputs = [self.read_input(p, masks[i] if masks else None) for i, p in enumerate(image)]
        out = self.ctx.out_dir()
        check_no_overwrite(out, list(image), list(masks))
        sketcher = self.sketcher()
        results = []
        for path, (picture, m) in zip(image, inputs):
            start = time.perf_counter()
            target = prepare_target(picture, sketcher.canvas, m)
            sk = sketcher.sketch(target, progress=self.ctx.progress)
            files = self.write(sk, sketcher, out, path.stem)
            r = sk.result
            results.append({
                "image": str(path), **{k: str(v) for k, v in files.items()},
                "strokes": self.cfg.strokes.count, "seeds": self.cfg.optim.seeds,
                "best_seed": r.best_seed, "loss": round(float(r.losses[r.best_seed]), 6),
                "losses": [round(float(v), 6) for v in r.losses],
                "iterations": r.iterations, "stopped_early": r.stopped_early,
                "seconds": round(time.perf_counter() - start, 2)})
        return results

    def write(self, sk: "Sketch", sketcher: "Sketcher", out: Path, stem: str) -> dict[str, Path]:
        """<stem>.svg, <stem>.png, the maps behind the initialisation (<stem>_attention.png,
        <stem>_edges.png, <stem>_placement.png, each when it exists for the init method), and the
        optional GIF / saliency picture."""
        from .outputs import (atomic_write, attention_image, edges_image, placement_image, png_bytes,
                              saliency_image, write_gif, write_png, write_svg)
        o, size, maps = self.cfg.output, sk.size, sk.saliency
        files = {"svg": write_svg(out / f"{stem}.svg", sk.best, size),
                 "png": write_png(out / f"{stem}.png", sk.best, size, sketcher.rasteriser, o.png_scale)}
        pictures = {}
        if maps is not None:
            pictures["attention"] = attention_image(maps)
            if maps.edges is not None:
                pictures["edges"] = edges_image(maps)
        starts = sk.init.points[sk.result.best_seed, :, 0]
        pictures["placement"] = placement_image(maps, size, starts, self.cfg.strokes.count,
                                                self.cfg.init.temperature)
        for name, picture in pictures.items():
            files[name] = atomic_write(out / f"{stem}_{name}.png", png_bytes(picture))
        if sk.result.frames:
            files["gif"] = write_gif(out / f"{stem}.gif", sk.result.frames, sk.result.best_seed, size,
                                     sketcher.rasteriser, o.gif_ms, o.png_scale)
        if o.write_saliency and sk.saliency is not None:
            files["saliency"] = atomic_write(out / f"{stem}_saliency.png",
                                             png_bytes(saliency_image(sk.saliency, sk.target.pixels)))
        return files

    def evaluate(self, per_shape: int = 4, sheet: Path | None = None, strokes: int | None = None,
                 iters: int | None = None, seeds: int | None = None, seed: int | None = None) -> dict:
        from .recognition import sketch_recognition
        self.apply_options("eval", strokes=strokes, iters=iters, seeds=seeds, seed=seed)
        if per_shape < 1:
            raise UserError(f"--per-shape must be >= 1, got {per_shape}")
        if sheet is not None:
            ensure_writable_dir(Path(sheet).parent)
        return sketch_recognition(self.sketcher(), self.ctx.text_bank, per_shape=per_shape, sheet=sheet)

    def describe(self, action: str, result: Any) -> list[str]:
        if action == "infer":
            return [f"{r['image']}: {r['svg']} (seed {r['best_seed']}, loss {r['loss']:.4f}, "
                    f"{r['iterations']} iterations, {r['seconds']} s)" for r in result]
        return [f"clipasso eval: {result['images']} tiny-world shapes, {result['strokes']} strokes; "
                f"shape top-1 of the sketches {result['sketch_top1']:.3f}, saliency init "
                f"{result['init_top1']:.3f}, random strokes {result['random_top1']:.3f}, "
                f"target images {result['target_top1']:.3f} (chance {result['chance']:.3f})"]

    def demo(self, examples: list[Path], out: Path) -> list[DemoItem]:
        """Sketch two bundled single-shape examples within the config's demo budget."""
        from PIL import Image

        from .outputs import atomic_write, maps_strip, png_bytes
        from .recognition import shape_probabilities
        from .sketcher import Sketcher
        chosen = [p for p in examples if p.name in DEMO_IMAGES] or examples[:2]
        cfg = self._demo_config()
        sketcher = Sketcher(cfg, self.ctx.backbone, self._saliency_backbone())
        items = []
        for path in chosen:
            sk = sketcher.sketch(self.load_target(path, canvas=sketcher.canvas), progress=self.ctx.progress)
            files = self.write(sk, sketcher, out, f"{path.stem}_sketch")
            shutil.copy2(path, out / path.name)
            shown = [k for k in ("attention", "edges", "placement") if k in files]
            strip = maps_strip([Image.open(files[k]) for k in shown])
            maps_file = atomic_write(out / f"{path.stem}_sketch_maps.png", png_bytes(strip))
            probs, labels = shape_probabilities(sketcher.backbone, self.ctx.text_bank,
                                                sk.best, sk.size, sketcher.rasteriser)
            top = int(probs[0].argmax())
            items.append(DemoItem(path.stem, [path.name, files["png"].name, maps_file.name], [
                *_demo_run_lines(cfg, self.cfg, sk),
                f"small, top to bottom: {', '.join(shown)} (placement: start distribution, chosen starts red)",
                f"tiny CLIP reads the sketch as: {labels[top]} ({float(probs[0, top]):.2f})"]))
        return items

    def _demo_config(self) -> ClipassoConfig:
        """The config with the demo budget applied: strokes, iterations and seeds are capped
        (a caller's smaller values stay), the learning rate replaced when the budget sets one."""
        import copy
        cfg, d = copy.deepcopy(self.cfg), self.cfg.demo
        for value, section, key in ((d.strokes, cfg.strokes, "count"), (d.iterations, cfg.optim, "iterations"),
                                    (d.seeds, cfg.optim, "seeds")):
            if value is not None:
                setattr(section, key, min(value, getattr(section, key)))
        if d.lr is not None:
            cfg.optim.lr = d.lr
        return cfg


def _demo_run_lines(run: ClipassoConfig, full: ClipassoConfig, sk: "Sketch") -> list[str]:
    """What the demo ran, said plainly, and how it differs from the config's own run."""
    o, result = run.optim, sk.result
    done = f"stopped early after {result.iterations} of {o.iterations}" if result.stopped_early \
        else f"{result.iterations}"
    lines = [f"{run.strokes.count} strokes, {done} iterations (lr {o.lr:g}), {o.seeds} seeds: "
             f"best seed {result.best_seed}, loss {float(result.losses[result.best_seed]):.3f}"]
    cut = [f"{name} {b} (config {a})" for name, a, b in (
        ("strokes", full.strokes.count, run.strokes.count), ("iterations", full.optim.iterations, o.iterations),
        ("seeds", full.optim.seeds, o.seeds), ("lr", f"{full.optim.lr:g}", f"{o.lr:g}")) if a != b]
    if cut:
        lines.append(f"demo budget: {', '.join(cut)}")
    return lines
