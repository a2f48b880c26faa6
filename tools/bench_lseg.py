"""LSeg inference benchmark (JSON): images/s at SIZE x SIZE for single-scale and for the
multi-scale + flip + sliding-window protocol, each as a ratio to the image encoder's bare
tapped forward (`forward_intermediates` for CLIP encoders) on the same pixels, and peak
memory per phase. Weights are random: speed does not depend on them.

    python tools/bench_lseg.py                                   # tiny world, CPU
    python tools/bench_lseg.py --config clip_vitb16_frozen --backbone ViT-B-16:random --device cuda
    python tools/bench_lseg.py --config ade20k_vitl16 --backbone ViT-B-32:random --device cuda
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import sys

import numpy as np
import torch
from PIL import Image

from clipheads.core.benchmark import (add_common_arguments, add_compile_argument, compile_modules, emit, measure,
                                      median_row, setup, warmup_seconds)
from clipheads.tasks.lseg.config import LSegConfig
from clipheads.tasks.lseg.inference import Segmenter
from clipheads.tasks.lseg.model import build_net


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, "lseg")
    p.add_argument("--size", type=int, default=480, help="square input size")
    p.add_argument("--labels", type=int, default=150, help="number of labels (ADE20K: 150)")
    p.add_argument("--scales", default="0.5,0.75,1.0,1.25,1.5,1.75", help="multi-scale scales (the paper's)")
    p.add_argument("--base-size", type=int, default=520)
    p.add_argument("--crop-size", type=int, default=480)
    p.add_argument("--stride", type=int, default=320)
    p.add_argument("--single-only", action="store_true", help="skip the (slow on CPU) multi-scale run")
    add_compile_argument(p)
    args = p.parse_args(argv)
    device, cfg, bb = setup(args, "lseg", LSegConfig)
    torch.manual_seed(0)
    cfg.model.timm.weights = None
    net = build_net(cfg.model, bb).to(device).eval()
    text = torch.randn(args.labels, bb.embed_dim, device=device)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8), "RGB")
    pixels = torch.randn(1, 3, args.size, args.size, device=device)
    def encoder():
        with torch.no_grad():
            net.encoder(pixels)

    single_cfg = dataclasses.replace(cfg.infer, multi_scale=False, size=args.size)
    multi_cfg = dataclasses.replace(cfg.infer, multi_scale=True, size=args.size,
                                    scales=[float(s) for s in args.scales.split(",")],
                                    base_size=args.base_size, crop_size=args.crop_size, stride=args.stride)
    if args.compile:
        compile_modules(net, ["decoder"])   # the DPT decoder: the convolutions (the head is one 1x1 conv)
    single = Segmenter(net, text, single_cfg, device)
    multi = Segmenter(net, text, multi_cfg, device)

    def run(seg):
        return lambda: seg.predict(image)

    result = {
        "config": args.config, "backbone": str(bb.spec), "encoder": cfg.model.encoder,
        "device": str(device), "torch": torch.__version__, "python": platform.python_version(),
        "size": args.size, "labels": args.labels, "precision": args.precision,
        "decoder_params": sum(p.numel() for m in (net.decoder, net.head) for p in m.parameters()),
        "multi_scale": {"scales": multi_cfg.scales, "base_size": multi_cfg.base_size,
                        "crop_size": multi_cfg.crop_size, "stride": multi_cfg.stride, "flip": multi_cfg.flip},
    }
    # interleaved rounds, so slow drifts of a shared machine hit both sides alike
    result["compiled"] = args.compile
    result["compile_warmup_s"] = warmup_seconds(run(single), device)   # first call: compiles if --compile
    enc, one = [], []
    for _ in range(args.repeats):
        enc.append(measure(encoder, device, 1))
        one.append(measure(run(single), device, 1))
    result["encoder_forward_intermediates"] = median_row(enc)
    result["lseg_single_scale"] = median_row(one)
    base = result["encoder_forward_intermediates"]["images_per_s"]
    result["ratio_single_scale"] = round(result["lseg_single_scale"]["images_per_s"] / base, 4)
    if not args.single_only:
        result["lseg_multi_scale"] = measure(run(multi), device, max(1, args.repeats // 2))
        result["ratio_multi_scale"] = round(result["lseg_multi_scale"]["images_per_s"] / base, 4)
        result["multi_scale_encoder_passes"] = round(base and result["lseg_multi_scale"]["seconds"] * base, 1)
    emit(result, args.out)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
