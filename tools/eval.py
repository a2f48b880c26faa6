"""Thin shim: `python tools/eval.py TASK [options]` == `clipheads TASK eval [options]`."""
import sys

from clipheads.core.cli import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: python tools/eval.py TASK [options]   (see: clipheads TASK eval --help)")
    sys.exit(main([sys.argv[1], "eval", *sys.argv[2:]]))
