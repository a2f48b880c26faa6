"""The `clipheads` command: `list`, `demo`, and `<task> infer|train|eval`."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from .cli_args import ensure_writable_dir
from .config import list_configs, load_config, resolve_config_path, save_config
from .errors import UserError, close_matches
from .registry import TASKS
from .task import Context

ACTION_METHODS = {"infer": "infer", "train": "train", "eval": "evaluate"}


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors become one-line UserErrors (exit 2) with suggestions."""

    def error(self, message: str):
        import re
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = [c.strip(" '") for c in m.group(2).split(",")]
            message = (f"unknown {'command' if self.prog == 'clipheads' else 'choice'} "
                       f"'{m.group(1)}'{close_matches(m.group(1), choices)}; "
                       f"choose from {', '.join(choices)}")
        raise UserError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _common_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common options")
    g.add_argument("--backbone", help="tiny-world (default), ARCH:TAG (e.g. ViT-B-16:openai), "
                                      "ARCH:random, or ARCH with --weights")
    g.add_argument("--weights", help="CLIP weights file for --backbone ARCH "
                                     "(OpenAI/open_clip state dict, .safetensors)")
    g.add_argument("--allow-torchscript", action="store_true",
                   help="allow loading TorchScript archives (they run code when loaded)")
    g.add_argument("--config", help="a YAML file or the name of a bundled config of this task")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=0.001 (repeatable)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    g.add_argument("--out", type=Path, help="output directory")
    g.add_argument("--json", action="store_true", help="print results as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clipheads",
        description="One frozen CLIP backbone, many task heads.",
        epilog="Run 'clipheads list' to see backbones, tasks and configs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p_list = sub.add_parser("list", help="backbones, tasks and configs")
    p_list.add_argument("--json", action="store_true")
    p_list.add_argument("--all-tags", action="store_true",
                        help="list every open_clip architecture with its tags")
    p_demo = sub.add_parser("demo", help="run every head on bundled examples, write an HTML gallery")
    p_demo.add_argument("--out", type=Path, default=Path("clipheads-demo"))
    p_demo.add_argument("--device", default="cpu")
    for name in TASKS.names():
        cls = TASKS.get(name)
        p_task = sub.add_parser(name, help=cls.summary)
        actions = p_task.add_subparsers(dest="action", metavar="ACTION")
        actions.required = True
        for action in cls.actions:
            p_act = actions.add_parser(action, help=f"{name} {action}")
            cls.add_arguments(action, p_act)
            _common_options(p_act)
    return parser


def _print_list(args: argparse.Namespace) -> int:
    from .backbone import list_backbones
    backbones = list_backbones()
    tasks = {n: {"summary": TASKS.get(n).summary, "origin": TASKS.origin(n)} for n in TASKS.names()}
    configs = list_configs()
    if args.json:
        print(json.dumps({"backbones": backbones, "tasks": tasks, "configs": configs,
                          "failed_plugins": TASKS.failed}, indent=2))
        return 0
    print("Backbones (--backbone):")
    shown = backbones if args.all_tags else {k: v for k, v in backbones.items() if v}
    for arch, tags in shown.items():
        print(f"  {arch:<36} {', '.join(tags) if tags else '(random or --weights only)'}")
    if not args.all_tags:
        rest = len(backbones) - len(shown)
        print(f"  ... and {rest} more architectures usable with :random or --weights "
              "(--all-tags lists them)")
    print("Tasks:")
    for name, info in tasks.items():
        print(f"  {name:<12} {info['summary']}  [{info['origin']}]")
    for name, err in TASKS.failed.items():
        print(f"  {name:<12} FAILED TO LOAD: {err}")
    print("Configs (--config NAME):")
    for task, names in configs.items():
        print(f"  {task:<12} {', '.join(names)}")
    return 0


def _run_task(args: argparse.Namespace) -> int:
    cls = TASKS.get(args.command)
    config_name = args.config or cls.default_config
    path = resolve_config_path(cls.name, config_name) if config_name else None
    base = {k: v for k, v in (("backbone", args.backbone), ("weights", args.weights)) if v}
    if args.weights and not args.backbone:
        raise UserError("--weights needs --backbone ARCH naming the file's architecture")
    cfg = load_config(cls.Config, path, args.overrides, base=base)
    if args.out is not None:
        ensure_writable_dir(args.out)
    ctx = Context(cfg, device=args.device, out=args.out, json=args.json,
                  allow_torchscript=args.allow_torchscript)
    task = cls(cfg, ctx)
    result = getattr(task, ACTION_METHODS[args.action])(args)
    if args.out is not None:
        save_config(cfg, args.out / f"{cls.name}_{args.action}_config.yaml", cls.name)
    if args.json and result is not None:
        for item in result if isinstance(result, list) else [result]:
            print(json.dumps(item))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if "-v" in argv or "--verbose" in argv else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        if args.command == "list":
            return _print_list(args)
        if args.command == "demo":
            from .demo import run_demo
            run_demo(args.out, device=args.device)
            return 0
        return _run_task(args)
    except UserError as exc:
        print(f"clipheads: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("clipheads: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
