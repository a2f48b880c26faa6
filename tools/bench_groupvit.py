"""GroupViT inference benchmark (JSON). Weights are random: speed does not depend on them.

- grouping head: images/s of the zero-shot segmentation of one SIZE x SIZE image (whole
  image) as a ratio to the frozen backbone's bare `forward_intermediates` (the tapped
  block) on the same pixels, and for `--groups` fewer output groups;
- official model: the paper's slide inference (short side 448, 448 windows, stride 224)
  on a LONGxSHORT image, and its grouping forward on one 448 window, vs a 448 window of
  the head's backbone for scale;
- peak memory per phase (CUDA allocator, or the process's resident set on CPU).

    python tools/bench_groupvit.py                                        # tiny world, CPU
    python tools/bench_groupvit.py --config clip_vitb16_head --backbone ViT-B-16:random --device cuda
"""
from __future__ import annotations

import argparse
import platform
import sys

import numpy as np
import torch
from PIL import Image

from clipheads.core.benchmark import add_common_arguments, emit, measure, median_row, setup
from clipheads.tasks.groupvit.config import GroupViTConfig, OfficialModel, SegmentConfig
from clipheads.tasks.groupvit.head import GroupingHead
from clipheads.tasks.groupvit.official import GroupViT
from clipheads.tasks.groupvit.segment import GroupSegmenter, to_pixels


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=224, help="square input size of the head runs")
    p.add_argument("--labels", type=int, default=21, help="number of labels (VOC: 21)")
    p.add_argument("--groups", type=int, default=4, help="fewer output groups to time as well")
    p.add_argument("--official-size", default="448x672", help="HxW of the official slide-inference image")
    p.add_argument("--skip-official", action="store_true", help="skip the (slow on CPU) official model")
    add_common_arguments(p, "groupvit")
    args = p.parse_args(argv)
    device, cfg, bb = setup(args, "groupvit", GroupViTConfig)
    torch.manual_seed(0)
    head = GroupingHead(cfg.head, bb).to(device).eval()
    labels = ["background"] + [f"class {i}" for i in range(args.labels - 1)]
    text = torch.randn(len(labels) - 1, bb.embed_dim, device=device)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8), "RGB")
    whole = SegmentConfig(short_side=0, crop=0)
    # the very pixels the segmenter feeds the backbone (the image at its own size, normalised)
    pixels = to_pixels(image, (args.size, args.size), head.mean, head.std, device)

    def backbone():
        with torch.no_grad():
            bb.forward_intermediates(pixels, layers=[head.tap])

    def segment(seg):
        return lambda: seg.predict(image)

    full = GroupSegmenter(head, text, labels, whole, 0, None, device)
    fewer = GroupSegmenter(head, text, labels, whole, 0, min(args.groups, head.max_groups), device)
    rows = {"backbone": [], "head": [], "head_fewer": []}
    for _ in range(args.repeats):   # interleaved, so drifts of a shared machine hit all alike
        rows["backbone"].append(measure(backbone, device, 1))
        rows["head"].append(measure(segment(full), device, 1))
        rows["head_fewer"].append(measure(segment(fewer), device, 1))
    result = {"config": args.config, "backbone": str(bb.spec), "device": str(device), "precision": args.precision,
              "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(), "size": args.size,
              "labels": len(labels), "head_params": sum(q.numel() for q in head.parameters()),
              "head_groups": head.max_groups, "fewer_groups": fewer.keep,
              "backbone_forward_intermediates": median_row(rows["backbone"]), "head_segment": median_row(rows["head"]),
              "head_segment_fewer_groups": median_row(rows["head_fewer"])}
    base = result["backbone_forward_intermediates"]["images_per_s"]
    result["ratio_head_to_backbone"] = round(result["head_segment"]["images_per_s"] / base, 4)
    result["ratio_head_fewer_groups_to_backbone"] = round(result["head_segment_fewer_groups"]["images_per_s"] / base, 4)
    if not args.skip_official:
        h, w = (int(v) for v in args.official_size.split("x"))
        official = GroupViT(OfficialModel()).to(device).eval()
        big = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")
        slide = GroupSegmenter(official, torch.randn(len(labels) - 1, 256, device=device), labels,
                               SegmentConfig(), 0, None, device)
        window = torch.randn(1, 3, 448, 448, device=device)

        def official_window():
            with torch.no_grad():
                official.embed_groups(official.group(window))

        result["official_slide_inference"] = measure(lambda: slide.predict(big), device, max(1, args.repeats // 2))
        result["official_slide_image"] = [h, w]
        result["official_window_448"] = measure(official_window, device, args.repeats)
        result["official_windows_per_image"] = round(
            result["official_slide_inference"]["seconds"] / result["official_window_448"]["seconds"], 2)
    emit(result, args.out)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
