"""Convert the official LSeg checkpoint (isl-org/lang-seg `demo_e200.ckpt`) into a
clipheads LSeg head folder: lseg_head.safetensors + lseg_head.json + clip.safetensors
(the CLIP ViT-B/32 whose text tower LSeg uses). Prints a JSON report.

    python tools/convert_lseg.py demo_e200.ckpt --out heads/lseg_demo_e200
    clipheads lseg infer --head heads/lseg_demo_e200 --image street.jpg --labels "road,car,tree,sky,other" --out out/

Every checkpoint key is mapped, written to the CLIP file, or dropped because the official
forward never reads it (listed under "dropped"); anything else is an error.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clipheads.core.errors import UserError
from clipheads.tasks.lseg.convert import convert, export, load_official


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="demo_e200.ckpt (PyTorch Lightning) or a bare state dict")
    p.add_argument("--out", type=Path, required=True, help="head folder to write")
    p.add_argument("--layers", help="tapped ViT blocks, e.g. 5,11,17,23 (default: the official hooks)")
    p.add_argument("--arch-option", type=int, choices=[0, 1, 2], help="spatial regularisation variant used in training")
    p.add_argument("--block-depth", type=int, help="spatial regularisation depth used in training")
    p.add_argument("--activation", default="lrelu", choices=["relu", "lrelu", "tanh"])
    p.add_argument("--clip-arch", help="open_clip architecture of net.clip_pretrained (default: guessed)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="unpickle the checkpoint fully (may run code); by default objects besides tensors are read inertly")
    args = p.parse_args(argv)
    try:
        state = load_official(args.checkpoint, trust_pickle=args.trust_pickle)
        layers = [int(x) for x in args.layers.split(",")] if args.layers else None
        conv = convert(state, layers=layers, arch_option=args.arch_option, block_depth=args.block_depth,
                       activation=args.activation)
        report = export(conv, args.out, str(args.checkpoint), clip_arch=args.clip_arch)
    except UserError as exc:
        print(f"convert_lseg: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
