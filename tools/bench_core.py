"""Core benchmark (JSON): encode_image throughput, dense_embeddings and
forward_intermediates cost as ratios of encode_image on the same pixels, and the text bank
cold vs warm for many labels x 80 templates.

    python tools/bench_core.py --backbone ViT-B-16:random --device cuda --batch 32
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch

from clipheads.core.backbone import FrozenCLIP
from clipheads.core.benchmark import add_precision_argument, emit, enter_precision, median_seconds, synchronize
from clipheads.core.text import TextBank


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="tiny-world")
    p.add_argument("--weights")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--labels", type=int, default=1000)
    p.add_argument("--templates", default="imagenet80")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0 = leave as is)")
    add_precision_argument(p)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    enter_precision(args, device)
    bb = FrozenCLIP.from_spec(args.backbone, args.weights, device=device)
    x = torch.randn(args.batch, 3, *bb.image_size, device=device)

    def run(fn):
        def call():
            with torch.no_grad():
                fn()
        return median_seconds(call, device, args.repeats, warmup=2)

    t_enc = run(lambda: bb.encode_image(x))
    t_dense = run(lambda: bb.dense_embeddings(x))
    layers = [max(0, bb.num_layers * k // 4 - 1) for k in (1, 2, 3, 4)]
    t_inter = run(lambda: bb.forward_intermediates(x, layers=layers))
    t_attn = run(lambda: bb.forward_intermediates(x, layers=layers, attention=True)) if bb.is_vit else None

    labels = [f"label number {i}" for i in range(args.labels)]
    with tempfile.TemporaryDirectory() as cache:
        cold_bank = TextBank(bb, cache_dir=cache)
        t0 = time.perf_counter()
        cold_bank.embed(labels, args.templates)
        synchronize(device)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        cold_bank.embed(labels, args.templates)
        warm_mem = time.perf_counter() - t0
        fresh = TextBank(bb, cache_dir=cache)
        t0 = time.perf_counter()
        fresh.embed(labels, args.templates)
        warm_disk = time.perf_counter() - t0
        prompts = cold_bank.encoded_prompts

    result = {
        "benchmark": "core",
        "backbone": str(bb.spec), "device": str(device), "batch": args.batch,
        "image_size": list(bb.image_size), "precision": args.precision,
        "torch": torch.__version__, "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "encode_image_images_per_s": args.batch / t_enc,
        "dense_embeddings_ratio": t_dense / t_enc,
        "forward_intermediates_4_layers_ratio": t_inter / t_enc,
        "forward_intermediates_with_attention_ratio": (t_attn / t_enc) if t_attn else None,
        "text_bank": {"labels": args.labels, "templates": args.templates, "prompts_encoded": prompts,
                      "cold_s": cold, "warm_memory_s": warm_mem, "warm_disk_s": warm_disk,
                      "cold_over_warm_disk": cold / max(warm_disk, 1e-9)},
    }
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
