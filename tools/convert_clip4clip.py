"""Import an official CLIP4Clip checkpoint (ArrowLuo/CLIP4Clip `pytorch_model.bin.N`, any
sim_header) or MMAction2's CLIP4Clip (meanP) into a clipheads head folder:
clip4clip_head.safetensors + clip4clip_head.json + clip.safetensors (the fine-tuned CLIP).
Prints a JSON report.

    python tools/convert_clip4clip.py ckpts/pytorch_model.bin.4 --out heads/c4c_seqtransf
    clipheads clip4clip index --videos my_videos/ --checkpoint heads/c4c_seqtransf --out my_index
    clipheads clip4clip infer --index my_index --checkpoint heads/c4c_seqtransf --query "a man is cooking"
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clipheads.core.errors import UserError
from clipheads.tasks.clip4clip.importers import convert, export, load_checkpoint


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="pytorch_model.bin.N (CLIP4Clip) or an MMAction2 .pth")
    p.add_argument("--out", type=Path, required=True, help="head folder to write")
    p.add_argument("--clip-arch", help="open_clip architecture of the checkpoint's CLIP (default: guessed)")
    args = p.parse_args(argv)
    report = export(convert(load_checkpoint(args.checkpoint)), args.out, str(args.checkpoint), args.clip_arch)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        print(f"convert_clip4clip: error: {exc}", file=sys.stderr)
        sys.exit(2)
