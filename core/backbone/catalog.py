"""open_clip's architectures and pretrained tags, read without importing open_clip or torch.

`clipheads list` must answer at once, and importing open_clip costs seconds (it imports
torch, timm and, via `open_clip.pretrained`, `safetensors.torch`). Both lists live in plain
files inside the installed open_clip package, so they are read from there:

- architectures: the `model_configs/*.json` files that define `embed_dim`, `vision_cfg` and
  `text_cfg` (the test open_clip's own registry applies), in open_clip's natural order;
- pretrained tags: the module-level `_PRETRAINED` dict of `open_clip/pretrained.py`, parsed
  with `ast` (never executed): its values are `dict(tag=_pcfg(...), ...)` calls, dict
  literals, or names of module-level such dicts; plus the `ARCH-quickgelu` entries open_clip
  derives at import time from the tags whose config says `quick_gelu=True`.

The package is located with `importlib.util.find_spec`, which does not run
`open_clip/__init__.py`. When anything does not look as expected (a newer open_clip changed
its layout), the lists come from importing open_clip instead (logged at debug level), so the
answer is always open_clip's own; only the speed differs. When open_clip is already imported,
its live registry is used (it also holds architectures added with `add_model_config`).
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Same value as spec.TINY_WORLD (spec.py imports open_clip, so it is not imported from there).
TINY_WORLD = "tiny-world"
BUNDLED_TAG = "bundled"

_REQUIRED_KEYS = ("embed_dim", "vision_cfg", "text_cfg")  # open_clip factory._rescan_model_configs
_QUICKGELU_SUFFIX = "-quickgelu"


class CatalogLayoutError(Exception):
    """open_clip's files are not laid out as this reader expects."""


def _natural_key(text: str) -> list[Any]:
    """open_clip's sort key for architecture names (factory._natural_key)."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", text.lower())]


def open_clip_dir() -> Path:
    """The installed open_clip package folder, found without importing open_clip."""
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise CatalogLayoutError("open_clip is not installed as a package")
    return Path(locations[0])


def static_architectures(package: Path) -> list[str]:
    """Architecture names from `model_configs/*.json`, as `open_clip.list_models()` gives them."""
    folder = package / "model_configs"
    if not folder.is_dir():
        raise CatalogLayoutError(f"no model_configs folder in {package}")
    names = []
    for path in folder.glob("*.json"):
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CatalogLayoutError(f"unreadable model config {path.name}: {exc}") from exc
        if isinstance(cfg, dict) and all(k in cfg for k in _REQUIRED_KEYS):
            names.append(path.stem)
    if not names:
        raise CatalogLayoutError(f"no model configs in {folder}")
    return sorted(set(names), key=_natural_key)


def _constant(node: ast.AST) -> Any:
    if not isinstance(node, ast.Constant):
        raise CatalogLayoutError(f"expected a constant, found {ast.dump(node)[:80]}")
    return node.value


def _keyed_items(node: ast.AST) -> list[tuple[str, ast.AST]]:
    """(key, value node) pairs of `{...}` or `dict(k=...)` with constant string keys."""
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):  # {**other}
            raise CatalogLayoutError("dict unpacking in a pretrained table")
        pairs = [(_constant(k), v) for k, v in zip(node.keys, node.values)]
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict"
          and not node.args):
        if any(kw.arg is None for kw in node.keywords):  # dict(**other)
            raise CatalogLayoutError("dict(**...) in a pretrained table")
        pairs = [(kw.arg, kw.value) for kw in node.keywords]
    else:
        raise CatalogLayoutError(f"not a dict: {ast.dump(node)[:80]}")
    if not all(isinstance(k, str) for k, _ in pairs):
        raise CatalogLayoutError("non-string key in a pretrained table")
    return pairs


def _helper_defaults(fn: ast.FunctionDef) -> dict[str, Any]:
    """Constant entries of a config helper whose body is `return {..., **kwargs}`."""
    body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    if len(body) != 1 or not isinstance(body[0], ast.Return) or not isinstance(body[0].value, ast.Dict):
        raise CatalogLayoutError(f"config helper {fn.name} is not a plain 'return {{...}}'")
    out = {}
    for k, v in zip(body[0].value.keys, body[0].value.values):
        if k is not None and isinstance(k, ast.Constant) and isinstance(v, ast.Constant):
            out[k.value] = v.value
    return out


def _quick_gelu(node: ast.AST, helpers: dict[str, ast.FunctionDef]) -> bool:
    """Whether one tag's config (`_pcfg(..., quick_gelu=True)` or a dict) says quick_gelu."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in helpers:
        for kw in node.keywords:
            if kw.arg is None:
                raise CatalogLayoutError("**kwargs in a pretrained config call")
            if kw.arg == "quick_gelu":
                return bool(_constant(kw.value))
        return bool(_helper_defaults(helpers[node.func.id]).get("quick_gelu", False))
    for key, value in _keyed_items(node):
        if key == "quick_gelu":
            return bool(_constant(value))
    return False


def _is_quickgelu_derivation(stmt: ast.stmt) -> bool:
    """The loop/update open_clip uses to add `ARCH-quickgelu` copies of QuickGELU tags."""
    text = ast.unparse(stmt)
    if isinstance(stmt, ast.For):
        return ("_PRETRAINED.items()" in text and "quick_gelu" in text
                and repr(_QUICKGELU_SUFFIX) in text and "_PRETRAINED_quickgelu[" in text)
    return text == "_PRETRAINED.update(_PRETRAINED_quickgelu)"


def static_pretrained(package: Path) -> dict[str, list[str]]:
    """Architecture -> tags as `open_clip.list_pretrained_tags_by_model` gives them."""
    try:
        source = (package / "pretrained.py").read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (OSError, SyntaxError, ValueError) as exc:
        raise CatalogLayoutError(f"cannot parse pretrained.py: {exc}") from exc
    names: dict[str, ast.AST] = {}
    helpers: dict[str, ast.FunctionDef] = {}
    table: ast.AST | None = None
    derive = 0
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef):
            helpers[stmt.name] = stmt
            continue
        targets: list[ast.expr] = []
        if isinstance(stmt, ast.Assign):
            targets = stmt.targets
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets = [stmt.target]
        if targets:
            if len(targets) == 1 and isinstance(targets[0], ast.Name):
                names[targets[0].id] = stmt.value  # type: ignore[assignment]
                if targets[0].id == "_PRETRAINED":
                    if table is not None:
                        raise CatalogLayoutError("_PRETRAINED assigned twice")
                    table = stmt.value
                continue
            if "_PRETRAINED" in ast.unparse(stmt):
                raise CatalogLayoutError("unexpected assignment involving _PRETRAINED")
            continue
        if table is not None and "_PRETRAINED" in ast.unparse(stmt):
            # Only open_clip's own -quickgelu derivation may touch the table after it is built.
            if not _is_quickgelu_derivation(stmt):
                raise CatalogLayoutError(f"unexpected statement on _PRETRAINED: {ast.unparse(stmt)[:80]}")
            derive += 1
    if table is None:
        raise CatalogLayoutError("no module-level _PRETRAINED in pretrained.py")
    if derive not in (0, 2):  # the loop and the update come together
        raise CatalogLayoutError("incomplete -quickgelu derivation")

    tags: dict[str, list[str]] = {}
    quick: dict[str, list[str]] = {}
    for arch, value in _keyed_items(table):
        if isinstance(value, ast.Name):
            if value.id not in names:
                raise CatalogLayoutError(f"_PRETRAINED[{arch!r}] names unknown {value.id}")
            value = names[value.id]
        entries: dict[str, ast.AST] = {}
        for tag, cfg in _keyed_items(value):
            entries[tag] = cfg  # later duplicates win, keeping the first position (dict rules)
        if arch in tags:
            raise CatalogLayoutError(f"duplicate architecture {arch!r} in _PRETRAINED")
        tags[arch] = list(entries)
        if derive:
            qg = [t for t, cfg in entries.items() if _quick_gelu(cfg, helpers)]
            if qg:
                quick[arch + _QUICKGELU_SUFFIX] = qg
    tags.update(quick)
    return tags


@functools.lru_cache(maxsize=1)
def _from_files() -> tuple[tuple[str, ...], dict[str, list[str]], str]:
    """(architectures, tags by architecture, where they came from), read once per process."""
    try:
        package = open_clip_dir()
        return tuple(static_architectures(package)), static_pretrained(package), "static"
    except Exception as exc:  # any surprise: ask open_clip itself
        log.debug("reading open_clip's catalog statically failed (%s: %s); importing open_clip",
                  type(exc).__name__, exc)
    return _from_open_clip()


def _from_open_clip() -> tuple[tuple[str, ...], dict[str, list[str]], str]:
    import open_clip

    archs = tuple(open_clip.list_models())
    return archs, {a: list(open_clip.list_pretrained_tags_by_model(a)) for a in archs}, "open_clip"


def _catalog() -> tuple[tuple[str, ...], dict[str, list[str]], str]:
    # Once open_clip is loaded anyway, its live registry is free and also holds the
    # architectures added at run time (open_clip.add_model_config).
    if "open_clip" in sys.modules:
        return _from_open_clip()
    return _from_files()


def list_architectures() -> list[str]:
    """open_clip's architecture names (as `open_clip.list_models()`)."""
    return list(_catalog()[0])


def list_pretrained_tags(arch: str) -> list[str]:
    """open_clip's pretrained tags of `arch` (as `open_clip.list_pretrained_tags_by_model`)."""
    return list(_catalog()[1].get(arch, []))


def catalog_source() -> str:
    """'static' (read from open_clip's files) or 'open_clip' (already imported, or the fallback)."""
    return _catalog()[2]


def list_backbones() -> dict[str, list[str]]:
    """Architecture -> pretrained tags, with the bundled tiny world first."""
    out: dict[str, list[str]] = {TINY_WORLD: [BUNDLED_TAG]}
    for arch in list_architectures():
        out[arch] = list_pretrained_tags(arch)
    return out
