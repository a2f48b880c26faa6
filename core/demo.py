"""`clipheads demo`: every installed head with tiny-world weights, run on the bundled
example images, collected into one HTML gallery."""
from __future__ import annotations

import html
import logging
import time
from importlib import resources
from pathlib import Path

from .atomic import atomic_write_text
from .cli_args import ensure_writable_dir
from .config import list_configs, load_config, resolve_config_path
from .errors import UserError
from .registry import TASKS
from .task import Context, DemoItem

log = logging.getLogger(__name__)


def example_images() -> list[Path]:
    folder = Path(str(resources.files("clipheads.core") / "assets" / "examples"))
    images = sorted(folder.glob("*.png"))
    if not images:
        raise UserError(f"no bundled example images in {folder}; rebuild them with "
                        "'python tools/make_examples.py'")
    return images


def _task_for_demo(name: str, device: str):
    cls = TASKS.get(name)
    config = "tiny_world" if "tiny_world" in list_configs().get(name, []) else cls.default_config
    path = resolve_config_path(name, config) if config else None
    cfg = load_config(cls.Config, path)
    cfg.backbone, cfg.weights = "tiny-world", None
    return cls(cfg, Context(cfg, device=device))


def _page(sections: list[tuple[str, str, list[DemoItem]]], seconds: float) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>clipheads demo</title>",
             "<style>body{font-family:sans-serif;margin:2em;background:#fafafa}"
             ".grid{display:flex;flex-wrap:wrap;gap:14px}.cell{background:#fff;border:1px solid #ddd;"
             "border-radius:6px;padding:8px;width:fit-content}.cell img{height:160px;"
             "image-rendering:pixelated;margin-right:4px}.cell p{margin:2px 0;font-size:13px}"
             "h2{margin-top:1.6em}</style></head><body>",
             "<h1>clipheads demo</h1>",
             f"<p>Every installed head on the bundled tiny-world examples, with the bundled "
             f"tiny CLIP backbone ({seconds:.1f} s).</p>"]
    for name, summary, items in sections:
        parts.append(f"<h2>{html.escape(name)}</h2><p>{html.escape(summary)}</p><div class='grid'>")
        for it in items:
            imgs = "".join(f"<img src='{html.escape(src)}' alt=''>" for src in it.images)
            lines = "".join(f"<p>{html.escape(line)}</p>" for line in it.lines)
            parts.append(f"<div class='cell'><b>{html.escape(it.title)}</b><br>{imgs}{lines}</div>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def run_demo(out: Path, device: str = "cpu") -> Path:
    """Write `out/index.html` plus each head's outputs under `out/<task>/`."""
    ensure_writable_dir(out)
    start = time.perf_counter()
    examples = example_images()
    sections = []
    for name in TASKS.names():
        task = _task_for_demo(name, device)
        folder = ensure_writable_dir(out / name)
        items = task.demo(examples, folder)
        if not any(folder.iterdir()):
            folder.rmdir()
        if items:
            rel = [DemoItem(i.title, [str(Path(name) / p) for p in i.images], i.lines) for i in items]
            sections.append((name, type(task).summary, rel))
            print(f"demo: {name}: {len(items)} results")
    if not sections:
        raise UserError("no installed head has a demo")
    index = out / "index.html"
    atomic_write_text(index, _page(sections, time.perf_counter() - start))
    print(f"demo: wrote {index} ({time.perf_counter() - start:.1f} s)")
    return index
