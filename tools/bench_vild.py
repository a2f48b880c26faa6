"""ViLD benchmark (JSON). Weights are random: speed does not depend on them.

- precompute: region embeddings per second of `FrozenCLIP.region_embeddings` (M boxes of
  one image, crops at 1.0x and 1.5x resized by RoIAlign, encoded, summed, normalised) as
  a ratio to bare `encode_image` on the same number of ready-made crops (2 x M images at
  the CLIP input size): the cost of cropping and summing on top of the backbone;
- detector inference: images/s of the ViLD detector (one SIZE x SIZE image, the
  config's proposals, LABELS classes), and its peak memory.

    python tools/bench_vild.py --threads 2                                  # tiny world, CPU
    python tools/bench_vild.py --config lvis_r50 --backbone ViT-B-32:random --device cuda
"""
from __future__ import annotations

import argparse
import platform
import sys

import torch

from clipheads.core.benchmark import add_common_arguments, emit, measure, median_row, setup
from clipheads.tasks.vild.config import ViLDConfig
from clipheads.tasks.vild.detector import ViLDDetector


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, help="square detector input (default: the config's min_size)")
    p.add_argument("--proposals", type=int, default=300, help="M boxes embedded per image")
    p.add_argument("--labels", type=int, default=1203, help="vocabulary size (LVIS: 1203)")
    add_common_arguments(p, "vild")
    args = p.parse_args(argv)
    device, cfg, bb = setup(args, "vild", ViLDConfig)
    size = args.size or cfg.model.min_size
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, size, size, generator=g).to(device)
    corner = torch.rand(args.proposals, 2, generator=g) * size * 0.7
    boxes = torch.cat([corner, corner + 8 + torch.rand(args.proposals, 2, generator=g) * size * 0.3], 1).to(device)
    crops = torch.randn(2 * args.proposals, 3, *bb.image_size, generator=g).to(device)
    batch = 64

    def bare():
        with torch.no_grad():
            for chunk in crops.split(batch):
                bb.encode_image(chunk, normalize=True)

    def regions():
        with torch.no_grad():
            bb.region_embeddings(pixels, [boxes], batch_size=batch)

    torch.manual_seed(0)
    model = ViLDDetector(cfg.model, cfg.vild, bb.embed_dim).to(device).eval()
    model.set_vocabulary(torch.randn(args.labels, bb.embed_dim), torch.arange(args.labels) % 4 == 0)
    image = torch.rand(3, size, size, generator=g).to(device)

    def detect():
        with torch.no_grad():
            model([image])

    rows = {"bare": [], "regions": [], "detector": []}
    for _ in range(args.repeats):   # interleaved, so drifts of a shared machine hit all alike
        rows["bare"].append(measure(bare, device, 1))
        rows["regions"].append(measure(regions, device, 1))
        rows["detector"].append(measure(detect, device, 1))
    bare_row, region_row = median_row(rows["bare"]), median_row(rows["regions"])
    result = {"config": args.config, "backbone": str(bb.spec), "device": str(device), "precision": args.precision, "torch": torch.__version__,
              "python": platform.python_version(), "threads": torch.get_num_threads(), "size": size,
              "proposals": args.proposals, "labels": args.labels,
              "detector_params": sum(q.numel() for q in model.parameters()),
              "bare_encode_image_crops": {**bare_row, "crops_per_s": round(2 * args.proposals / bare_row["seconds"], 1)},
              "region_embeddings": {**region_row, "regions_per_s": round(args.proposals / region_row["seconds"], 1)},
              "ratio_region_embeddings_to_bare_encode": round(bare_row["seconds"] / region_row["seconds"], 4),
              "detector_inference": median_row(rows["detector"])}
    emit(result, args.out)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
