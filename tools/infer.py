"""Thin shim: `python tools/infer.py TASK [options]` == `clipheads TASK infer [options]`."""
import sys

from clipheads.core.cli import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: python tools/infer.py TASK [options]   (see: clipheads TASK infer --help)")
    sys.exit(main([sys.argv[1], "infer", *sys.argv[2:]]))
