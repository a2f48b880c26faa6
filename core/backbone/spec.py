"""Backbone spec strings: `tiny-world`, `ARCH:TAG`, `ARCH:random`, `local-dir:PATH` (an
exported open_clip folder), or `ARCH` + a weights file."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import open_clip

from ..errors import UserError, close_matches

TINY_WORLD = "tiny-world"
RANDOM_TAG = "random"
LOCAL_DIR = "local-dir:"


@dataclass(frozen=True)
class BackboneSpec:
    """A parsed spec. `tag` is an open_clip pretrained tag, `random`, or None (weights file)."""

    arch: str
    tag: str | None = None

    @property
    def is_tiny_world(self) -> bool:
        return self.arch == TINY_WORLD

    @property
    def local_dir(self) -> Path | None:
        """The folder of a `local-dir:PATH` spec (open_clip_config.json + weights)."""
        return Path(self.arch[len(LOCAL_DIR):]) if self.arch.startswith(LOCAL_DIR) else None

    def __str__(self) -> str:
        return self.arch if self.tag is None else f"{self.arch}:{self.tag}"


def tiny_world_dir() -> Path:
    """Folder of the bundled tiny CLIP (open_clip_config.json + weights)."""
    return Path(str(resources.files("clipheads.core") / "assets" / "tiny_clip"))


def parse_spec(spec: str, weights: str | Path | None = None) -> BackboneSpec:
    """Validate a spec against open_clip's registry; errors name close matches and tags."""
    spec = (spec or TINY_WORLD).strip()
    if spec == TINY_WORLD:
        if weights is not None:
            raise UserError("--weights cannot be combined with the tiny-world backbone; "
                            "name the architecture the file belongs to with --backbone ARCH")
        return BackboneSpec(TINY_WORLD)
    if spec.startswith(LOCAL_DIR):
        folder = Path(spec[len(LOCAL_DIR):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise UserError(f"backbone '{spec}': {folder} has no open_clip_config.json; point "
                            "local-dir: at an exported CLIP folder (e.g. RUN/export from "
                            "'clipheads clip train')")
        return BackboneSpec(f"{LOCAL_DIR}{folder}")
    arch, _, tag = spec.partition(":")
    known = open_clip.list_models()
    if arch not in known:
        raise UserError(f"unknown backbone architecture '{arch}'"
                        f"{close_matches(arch, known + [TINY_WORLD])}; "
                        "'clipheads list' shows every architecture and tag")
    if tag:
        if weights is not None:
            raise UserError(f"backbone '{spec}' names pretrained weights and --weights names a "
                            f"file; use either '{arch}:{tag}' or '--backbone {arch} --weights FILE'")
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if tag != RANDOM_TAG and tag not in tags:
            raise UserError(f"unknown pretrained tag '{tag}' for {arch}{close_matches(tag, tags)}; "
                            f"known tags: {', '.join(tags + [RANDOM_TAG]) or RANDOM_TAG}")
        return BackboneSpec(arch, tag)
    if weights is None:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        example = f"{arch}:{tags[0]}" if tags else f"{arch}:{RANDOM_TAG}"
        raise UserError(f"backbone '{arch}' names an architecture but no weights: pass "
                        f"--weights FILE, or '{example}' to download pretrained weights, "
                        f"or '{arch}:{RANDOM_TAG}' for random weights")
    return BackboneSpec(arch, None)


def list_backbones() -> dict[str, list[str]]:
    """Architecture -> pretrained tags, with the bundled tiny world first (see `catalog`)."""
    from .catalog import list_backbones as _catalog_backbones

    return _catalog_backbones()
