"""CLIP4Clip benchmark (JSON). Weights are random: speed does not depend on them.

- indexing: videos/s of `encode_videos` + the head's pooling on N generated mp4 files
  (decoding included, one process) as a ratio to bare `encode_image` on the same number
  of frames already in memory; the decode share is the time spent reading and
  transforming frames;
- query latency: one text query (encode + similarity + top-k) over a synthetic index of
  `--index-size` videos, per loose head.

    python tools/bench_clip4clip.py --threads 2                                    # tiny world, CPU
    python tools/bench_clip4clip.py --config msrvtt9k_vitb32_seqTransf --backbone ViT-B-32:random --device cuda
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clipheads.core.benchmark import add_common_arguments, emit, measure, median_row, setup, synchronize
from clipheads.core.data.video import write_video
from clipheads.tasks.clip4clip.config import Clip4ClipConfig
from clipheads.tasks.clip4clip.encode import ClipFrames, encode_videos
from clipheads.tasks.clip4clip.frames import FrameTransform
from clipheads.tasks.clip4clip.model import Clip4Clip, HeadSpec


def _moving_pattern(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """Camera-like content (smooth colour waves drifting, light grain): random noise would
    make every frame an expensive keyframe, which real videos are not."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 6.28, 3)
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        for c in range(3):
            wave = np.sin(xs / (17 + 5 * c) + ys / 23 + 0.3 * t + phase[c])
            out[t, ..., c] = np.clip(128 + 90 * wave + rng.normal(0, 4, (h, w)), 0, 255)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=16, help="generated mp4 files to index")
    p.add_argument("--seconds", type=int, default=16, help="length of each video (1 fps sampling: frames kept)")
    p.add_argument("--video-size", type=int, default=256, help="pixels of the generated videos' short side")
    p.add_argument("--index-size", type=int, default=10_000, help="videos in the synthetic query index")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--workers", type=int, default=2, help="decoding processes (clip4clip index --workers)")
    add_common_arguments(p, "clip4clip")
    args = p.parse_args(argv)
    device, cfg, bb = setup(args, "clip4clip", Clip4ClipConfig)
    mf, sf = cfg.frames.max_frames, cfg.frames.slice_framepos
    m = bb.model
    spec = HeadSpec(cfg.head.sim_header if cfg.head.sim_header != "tightTransf" else "seqTransf", bb.embed_dim,
                    cfg.head.layers, m.transformer.resblocks[0].attn.num_heads, m.positional_embedding.shape[0])
    torch.manual_seed(0)
    head = Clip4Clip(spec).to(device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k in range(args.videos):
            frames = _moving_pattern(args.seconds * 2, args.video_size, args.video_size * 4 // 3, seed=k)
            paths.append(Path(tmp) / f"v{k}.mp4")
            write_video(paths[-1], frames, fps=2)
        n_frames = sum(min(mf, args.seconds) for _ in paths)
        pixels = torch.randn(n_frames, 3, *bb.image_size).to(device)
        ds = ClipFrames(paths, FrameTransform(bb.image_size[0], bb.mean, bb.std), mf, sf)

        def bare():
            with torch.no_grad():
                for chunk in pixels.split(16 * mf):
                    bb.encode_image(chunk)

        def index():
            with torch.no_grad():
                for enc in encode_videos(bb, paths, mf, sf, batch_size=16, workers=args.workers):
                    head.video_embeddings(enc.frames.to(device), enc.mask.to(device))

        def decode():
            for i in range(len(ds)):
                ds[i]

        rows = {"bare": [], "index": [], "decode": []}
        for _ in range(args.repeats):   # interleaved, so drifts of a shared machine hit all alike
            rows["bare"].append(measure(bare, device, 1))
            rows["index"].append(measure(index, device, 1))
            rows["decode"].append(measure(decode, device, 1))
    bare_row, index_row, decode_row = (median_row(rows[k]) for k in ("bare", "index", "decode"))

    # query latency over a synthetic index (video embeddings precomputed, as `clip4clip index` stores)
    video = F.normalize(torch.randn(args.index_size, bb.embed_dim), dim=-1).to(device)
    tokens = bb.tokenize(["a person is cooking in a kitchen"])

    def query():
        with torch.no_grad():
            text = F.normalize(bb.encode_text(tokens).float(), dim=-1)
            (text @ video.t()).topk(args.top)

    latency = [measure(query, device, 1, warmup=2)["seconds"] for _ in range(max(5, args.repeats))]
    synchronize(device)
    result = {"config": args.config, "backbone": str(bb.spec), "device": str(device), "precision": args.precision,
              "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
              "decode_workers": args.workers, "head": spec.sim_header,
              "videos": args.videos, "frames_per_video": min(mf, args.seconds),
              "video_size": [args.video_size, args.video_size * 4 // 3],
              "bare_encode_image": {**bare_row, "frames_per_s": round(n_frames / bare_row["seconds"], 1)},
              "index": {**index_row, "videos_per_s": round(args.videos / index_row["seconds"], 2)},
              "decode_and_transform": {**decode_row, "videos_per_s": round(args.videos / decode_row["seconds"], 2)},
              "ratio_index_to_bare_encode": round(bare_row["seconds"] / index_row["seconds"], 4),
              "decode_over_index": round(decode_row["seconds"] / index_row["seconds"], 4),
              "query": {"index_size": args.index_size, "top": args.top,
                        "median_ms": round(1000 * sorted(latency)[len(latency) // 2], 3)}}
    emit(result, args.out)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
