"""Thin shim: `python tools/train.py TASK [options]` == `clipheads TASK train [options]`."""
import sys

from clipheads.core.cli import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: python tools/train.py TASK [options]   (see: clipheads TASK train --help)")
    sys.exit(main([sys.argv[1], "train", *sys.argv[2:]]))
