"""The `clipheads` command: `list`, `demo`, and `<task> infer|train|eval`.

A thin layer over the Python API (`clipheads.core.api` / the task objects): it parses,
builds the task, calls it with plain arguments and presents the result (`--json` or the
task's own lines). Building the parser imports neither torch nor open_clip, so `--help`
and usage errors answer at once; torch loads when a command really runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from .cli_args import check_writable_dir, read_labels
from .config import list_configs, load_config, resolve_config_path, save_config
from .device import check_device_spec
from .precision import PRECISIONS
from .jsonout import json_safe
from .errors import UserError, close_matches
from .registry import TASKS

ACTIONS = ("infer", "train", "eval")
HELP = {"infer": "run on your own inputs", "train": "train (torchrun-ready)", "eval": "evaluate",
        "precompute": "precompute what training reads (torchrun-ready, resumable)",
        "index": "encode your files once into a searchable index (resumable, adds new files only)"}
# the Task method behind each action that is not named like it
METHODS = {"eval": "evaluate"}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown in help (only where a default exists)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required and action.option_strings:
            text += " (required)"
        if action.default in (None, False, [], argparse.SUPPRESS) or "%(default)" in text:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors become one-line UserErrors (exit 2) with suggestions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        import re
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = [c.strip(" '") for c in m.group(2).split(",")]
            message = (f"unknown {'command' if self.prog == 'clipheads' else 'choice'} "
                       f"'{m.group(1)}'{close_matches(m.group(1), choices)}; "
                       f"choose from {', '.join(choices)}")
        raise UserError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _device(text: str) -> str:
    try:
        return check_device_spec(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--device ", "")) from exc


def _common_options(p: argparse.ArgumentParser, cls: type, action: str) -> None:
    g = p.add_argument_group("common options")
    g.add_argument("--backbone", help="tiny-world (the task's default), ARCH:TAG (e.g. "
                                      "ViT-B-16:openai), ARCH:random, or ARCH with --weights")
    g.add_argument("--weights", help="CLIP weights file for --backbone ARCH "
                                     "(OpenAI/open_clip state dict, .safetensors)")
    g.add_argument("--allow-torchscript", action="store_true",
                   help="allow loading TorchScript archives (they run code when loaded)")
    g.add_argument("--allow-activation-mismatch", action="store_true",
                   help="load an OpenAI-layout file into a non-QuickGELU architecture anyway")
    g.add_argument("--config", help="a YAML file or the name of a bundled config of this task"
                   + (f" (default: {cls.default_config})" if cls.default_config else ""))
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=0.001 (repeatable)")
    g.add_argument("--device", default="auto", type=_device,
                   help="auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda, cuda:N")
    writes = action == "train" or action in cls.writes
    g.add_argument("--out", type=Path, required=writes,
                   help="output directory" + ("" if writes else " (optional)"))
    g.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="forward passes in fp32 (exact), or bf16/fp16 by autocast (fp16 needs CUDA); "
                        "training: the same as train.amp")
    g.add_argument("--json", action="store_true", help="print results as JSON (one object per line)")
    if action == "train":
        t = p.add_argument_group("training")
        t.add_argument("--resume", nargs="?", const=True, default=False, type=Path, metavar="CKPT",
                       help="continue the run in --out from its newest readable checkpoint, "
                            "or from the checkpoint file CKPT")
        if cls.installable:
            t.add_argument("--install", action="store_true",
                           help="ship the result as this head's bundled tiny-world artifact")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clipheads",
        description="One frozen CLIP backbone, many task heads.",
        epilog="Run 'clipheads list' to see backbones, tasks and configs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    p_list = sub.add_parser("list", help="backbones, tasks and configs")
    p_list.add_argument("--json", action="store_true")
    p_list.add_argument("--all-tags", action="store_true",
                        help="list every open_clip architecture with its tags")
    p_demo = sub.add_parser("demo", help="run every head on bundled examples, write an HTML gallery")
    p_demo.add_argument("--out", type=Path, default=Path("clipheads-demo"), help="gallery folder")
    p_demo.add_argument("--device", default="auto", type=_device, help="auto, cpu, cuda, cuda:N")
    for name in TASKS.names():
        cls = TASKS.get(name)
        p_task = sub.add_parser(name, help=cls.summary, description=cls.summary)
        actions = p_task.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
        actions.required = True
        for action in cls.actions:
            p_act = actions.add_parser(action, help=HELP.get(action, action),
                                       description=f"{name} {action}: {HELP.get(action, action)}")
            before = {a.dest for a in p_act._actions}
            cls.add_arguments(action, p_act)
            own = [a.dest for a in p_act._actions if a.dest not in before]
            _common_options(p_act, cls, action)
            p_act.set_defaults(_task_options=own)
    return parser


def task_options(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed options a task declared for this action, as plain keyword arguments;
    `--labels`/`--labels-file` arrive as one checked `labels` list."""
    opts = {dest: getattr(args, dest) for dest in getattr(args, "_task_options", [])}
    if "labels" in opts or "labels_file" in opts:
        given = opts.get("labels") is not None or opts.get("labels_file") is not None
        opts.pop("labels_file", None)
        opts["labels"] = read_labels(args) if given else None
    return opts


def _print_list(args: argparse.Namespace) -> int:
    from .backbone.catalog import list_backbones  # reads open_clip's files: no torch import
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


def _build_task(args: argparse.Namespace):
    from .task import Context
    cls = TASKS.get(args.command)
    config_name = args.config or cls.default_config
    path = resolve_config_path(cls.name, config_name) if config_name else None
    if args.weights and not args.backbone:
        raise UserError("--weights needs --backbone ARCH naming the file's architecture")
    base = {k: v for k, v in (("backbone", args.backbone), ("weights", args.weights)) if v}
    cfg = load_config(cls.Config, path, args.overrides, base=base)
    ctx = Context(cfg, device=args.device, out=args.out, allow_torchscript=args.allow_torchscript,
                  allow_activation_mismatch=args.allow_activation_mismatch, progress=not args.json,
                  chosen=_chosen_keys(args), precision=args.precision)
    return cls(cfg, ctx)


def _chosen_keys(args: argparse.Namespace) -> set[str]:
    """Config keys the user set on purpose ('*' = all, for their own --config file)."""
    keys = {o.split("=", 1)[0].strip() for o in args.overrides}
    if args.config:
        keys.add("*")
    if args.backbone:
        keys.add("backbone")
    return keys


def _run_task(args: argparse.Namespace) -> int:
    task = _build_task(args)
    opts = task_options(args)
    if args.out is not None:
        check_writable_dir(args.out)
    task.ctx.device  # noqa: B018 - a missing GPU is refused before any file or model is touched
    if args.action == "train":
        task.apply_options("train", **opts)
        task.check_training(getattr(args, "install", False))
        report = task.train(args.out, resume=args.resume, install=getattr(args, "install", False))
        if not report.is_main:
            return 0
        result: Any = report.to_dict()
    else:
        result = getattr(task, METHODS.get(args.action, args.action))(**opts)
        if args.out is not None and args.out.is_dir():
            save_config(task.cfg, args.out / f"{task.name}_{args.action}_config.yaml", task.name)
    _present(task, args.action, result, args.json)
    return 0


def _present(task: Any, action: str, result: Any, as_json: bool) -> None:
    """--json: one JSON object per line; otherwise the task's own lines (or compact JSON)."""
    if result is None:
        return
    if as_json:
        for item in result if isinstance(result, list) else [result]:
            print(json.dumps(json_safe(item), allow_nan=False))
        return
    lines = task.describe(action, result)
    for line in lines or [json.dumps(result)]:
        print(line)


class _Stopped(Exception):
    """SIGTERM arrived: torchrun stopping this rank because another failed, or a scheduler."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Stopped()


def _stopped_message(args: argparse.Namespace | None) -> str:
    text = "stopped by SIGTERM (under torchrun: another rank failed, see its log)"
    if args is not None and getattr(args, "action", None) == "train" and getattr(args, "out", None):
        from .runtime import resume_hint
        text += f"; {resume_hint(args.out)}"
    return text


def _finish_distributed(succeeded: bool) -> None:
    """Leave a torchrun process group cleanly (only if torch was ever loaded); after a
    success every rank leaves together."""
    if "torch" in sys.modules:
        from .engine.distributed import cleanup
        cleanup(together=succeeded)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        logging.getLogger("clipheads").setLevel(logging.DEBUG)
    # third-party warnings (deprecations, pickle notices) go to the log: shown with -v only,
    # so an error stays one line
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if verbose else logging.ERROR)
    args = None
    succeeded = False
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        args = build_parser().parse_args(argv)
        if args.command == "list":
            return _print_list(args)
        if args.command == "demo":
            from .demo import run_demo
            from .device import resolve_device
            resolve_device(args.device)
            run_demo(args.out, device=args.device)
            return 0
        code = _run_task(args)
        succeeded = code == 0
        return code
    except UserError as exc:
        print(f"clipheads: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("clipheads: interrupted", file=sys.stderr)
        return 130
    except _Stopped:
        print(f"clipheads: error: {_stopped_message(args)}", file=sys.stderr)
        return 143
    finally:
        _finish_distributed(succeeded)


if __name__ == "__main__":
    sys.exit(main())
