"""Export the tiny world in real dataset formats (COCO json + RLE masks, ADE20K-style PNG
masks, webdataset shards, MSR-VTT json/csv + mp4 videos), deterministically.

    python tools/export_tiny_world.py --out data/tinyworld [--train 512 --val 128 --videos 32]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipheads.core.errors import UserError
from clipheads.core.tinyworld import export_tiny_world


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train", type=int, default=512)
    p.add_argument("--val", type=int, default=128)
    p.add_argument("--videos", type=int, default=32)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    try:
        root = export_tiny_world(args.out, n_train=args.train, n_val=args.val, n_videos=args.videos,
                                 size=args.size, overwrite=args.overwrite)
    except UserError as exc:
        print(f"export_tiny_world: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote the tiny world to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
