"""CLIPasso benchmark (JSON): where an iteration's time goes and how seeds batch.

Reports, for one config and backbone, in one process:
- the rasteriser's forward + backward as a fraction of one full iteration
  (render + CLIP loss on clean + augmented pairs + backward + Adam step);
- iterations/s with 1, 3, 8 seeds in one batch (and the cost of 3 seeds relative to
  3 x one seed);
- iteration time per stroke count;
- the one-off cost per image (saliency + target features) and the projected seconds
  per sketch at the config's iteration count.

    python tools/bench_clipasso.py                               # tiny world, CPU
    python tools/bench_clipasso.py --config paper --backbone RN101:random \\
        --saliency-backbone ViT-B-32:random --device cuda        # the paper setting
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from clipheads.core.benchmark import add_precision_argument, emit, enter_precision, median_seconds, synchronize
from clipheads.core.backbone import FrozenCLIP
from clipheads.core.config import load_config, resolve_config_path
from clipheads.core.tinyworld import make_single
from clipheads.tasks.clipasso import ClipassoConfig, Sketcher, prepare_target
from clipheads.tasks.clipasso.losses import SketchLoss
from clipheads.tasks.clipasso.optimise import StrokeParams
from clipheads.tasks.clipasso.strokes import Strokes


class Bench:
    """One target image, one loss; iteration timings for any seed / stroke count."""

    def __init__(self, cfg: ClipassoConfig, loss_bb: FrozenCLIP, sal_bb: FrozenCLIP, device: torch.device):
        self.cfg, self.device = cfg, device
        self.sketcher = Sketcher(cfg, loss_bb, sal_bb)
        image = make_single(0, "blue", "star", max(96, self.sketcher.canvas)).image
        self.target = prepare_target(image, self.sketcher.canvas)
        self.generator = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        self.maps = self.sketcher.saliency(self.target)
        self.loss = SketchLoss(loss_bb, self.target.pixels, cfg.loss, self.generator)
        synchronize(device)
        self.setup_seconds = time.perf_counter() - t0
        self.size = (self.target.height, self.target.width)

    def params(self, seeds: int, strokes: int) -> StrokeParams:
        """Initial strokes of `seeds` distinct seeds (the bench's own config copy is edited)."""
        self.cfg.strokes.count, self.cfg.optim.seeds = strokes, seeds
        init = self.sketcher.initial(self.target, self.maps)
        return StrokeParams(Strokes(*(t.to(self.device) for t in
                                      (init.points, init.widths, init.colours, init.opacity))), self.cfg.optim)

    def iteration(self, seeds: int, strokes: int, repeats: int, warmup: int) -> dict[str, float]:
        p = self.params(seeds, strokes)
        opt = p.optimiser()
        raster = self.sketcher.rasteriser

        def full() -> None:
            terms = self.loss(raster.render(p.strokes(), *self.size, background=1.0), True, self.generator)
            opt.zero_grad(set_to_none=True)
            terms.total.sum().backward()
            opt.step()

        def render_only() -> None:
            img = raster.render(p.strokes(), *self.size, background=1.0)
            img.backward(torch.ones_like(img))
            p.points.grad = None

        t_full = median_seconds(full, self.device, repeats, warmup)
        t_raster = median_seconds(render_only, self.device, repeats, warmup)
        return {"seeds": seeds, "strokes": strokes, "iteration_s": t_full, "iterations_per_s": 1.0 / t_full,
                "raster_fwd_bwd_s": t_raster, "raster_fraction": t_raster / t_full}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny_world", help="bundled clipasso config or YAML file")
    p.add_argument("--backbone", help="loss backbone (default: the config's)")
    p.add_argument("--saliency-backbone", help="saliency backbone (default: the config's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seeds", default="1,3,8", help="seed counts to time in one batch")
    p.add_argument("--strokes", default="4,16,64,256", help="stroke counts to time (at the config's seeds)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    add_precision_argument(p)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    enter_precision(args, device)
    cfg = load_config(ClipassoConfig, resolve_config_path("clipasso", args.config))
    loss_spec = args.backbone or cfg.backbone
    sal_spec = args.saliency_backbone or cfg.init.saliency_backbone or loss_spec
    t0 = time.perf_counter()
    loss_bb = FrozenCLIP.from_spec(loss_spec, None if args.backbone else cfg.weights, device=device)
    sal_bb = loss_bb if sal_spec == loss_spec else FrozenCLIP.from_spec(sal_spec, device=device)
    load_s = time.perf_counter() - t0
    bench = Bench(cfg, loss_bb, sal_bb, device)
    base_strokes, seeds = cfg.strokes.count, cfg.optim.seeds

    by_seeds = [bench.iteration(int(s), base_strokes, args.repeats, args.warmup) for s in args.seeds.split(",")]
    one = next((r for r in by_seeds if r["seeds"] == 1), None)
    for r in by_seeds:
        if one is not None:
            r["cost_vs_separate_runs"] = r["iteration_s"] / (r["seeds"] * one["iteration_s"])
    at_cfg = next((r for r in by_seeds if r["seeds"] == seeds), None) or \
        bench.iteration(seeds, base_strokes, args.repeats, args.warmup)
    by_strokes = [bench.iteration(seeds, int(s), args.repeats, args.warmup) for s in args.strokes.split(",")]
    views = seeds * (1 + cfg.loss.augmentations)
    result = {
        "bench": "clipasso", "device": str(device), "precision": args.precision,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": sys.version.split()[0],
        "config": args.config, "loss_backbone": loss_spec, "saliency_backbone": sal_spec,
        "canvas": [bench.size[0], bench.size[1]], "clip_input": list(loss_bb.image_size),
        "augmentations": cfg.loss.augmentations, "bank": cfg.loss.bank,
        "images_through_clip_per_iteration": views,
        "backbone_load_s": load_s, "per_image_setup_s": bench.setup_seconds,
        "by_seeds": by_seeds, "by_strokes": by_strokes,
        "raster_fraction_at_config": at_cfg["raster_fraction"],
        "iterations": cfg.optim.iterations,
        "projected_s_per_sketch": bench.setup_seconds + cfg.optim.iterations * at_cfg["iteration_s"],
    }
    three = next((r for r in by_seeds if r["seeds"] == 3), None)
    if one is not None and three is not None:
        # The official runner starts one process per seed: each loads the models and the target again.
        result["sketch_s_3_seeds_one_batch"] = bench.setup_seconds + cfg.optim.iterations * three["iteration_s"]
        result["sketch_s_3_seeds_separate_runs"] = 3 * (load_s + bench.setup_seconds
                                                        + cfg.optim.iterations * one["iteration_s"])
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
