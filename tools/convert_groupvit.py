"""Convert a GroupViT checkpoint — NVlabs' releases (`group_vit_gcc_yfcc_30e-879422e0.pth`,
`group_vit_gcc_redcap_30e-3dd09a76.pth`) or a transformers `GroupViTModel` file — into a
clipheads head folder, or into transformers' key names. Prints a JSON report.

    python tools/convert_groupvit.py group_vit_gcc_yfcc_30e-879422e0.pth --config gcc_yfcc_30e --out heads/gv_yfcc
    python tools/convert_groupvit.py group_vit_gcc_yfcc_30e-879422e0.pth --config gcc_yfcc_30e --to hf --out gv.safetensors
    clipheads groupvit infer --checkpoint heads/gv_yfcc --image street.jpg --labels "background,car,tree" --out out/

The official files pickle an omegaconf config: it is read inertly (nothing in the file
runs) unless --trust-pickle. Loading is strict: every key must fit the config's model.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clipheads.core.config import load_config, resolve_config_path
from clipheads.core.errors import UserError
from clipheads.tasks.groupvit.config import GroupViTConfig
from clipheads.tasks.groupvit.weights import convert_official


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="an NVlabs .pth or a transformers GroupViTModel file")
    p.add_argument("--config", default="gcc_yfcc_30e", help="groupvit config naming the architecture "
                   "(gcc_yfcc_30e: with the multi-label logit scale; gcc_redcap_30e: without)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--to", choices=["head", "hf"], default="head")
    p.add_argument("--out", type=Path, required=True, help="head folder (--to head) or .safetensors file (--to hf)")
    p.add_argument("--trust-pickle", action="store_true", help="unpickle fully (may run code)")
    args = p.parse_args(argv)
    try:
        cfg = load_config(GroupViTConfig, resolve_config_path("groupvit", args.config), args.overrides)
        report = convert_official(args.checkpoint, cfg.official.validate(), args.out, args.to, args.trust_pickle)
    except UserError as exc:
        print(f"convert_groupvit: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
