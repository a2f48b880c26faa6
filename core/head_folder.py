"""A trained head on disk: `<stem>.safetensors` (its state dict) + `<stem>.json` (what
rebuilds it: architecture, the backbone it was trained on, settings, metrics).

The JSON makes a head self-describing, so `--head DIR` / `--checkpoint DIR` rebuilds
the same module on the right backbone. Both files are written atomically. Each task
names its own stem and format tag; this module owns the file mechanics.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from .atomic import atomic_path, atomic_write_text
from .config import from_dict
from .errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class HeadFolder:
    """The file layout of one kind of head (`stem`, `format` tag, newest `version`)."""

    stem: str
    format: str
    version: int
    what: str          # for messages: "LSeg head", "GroupViT head"
    made_by: str       # for messages: which command writes such a folder

    def files(self, path: str | Path) -> tuple[Path, Path]:
        """(weights, json) for a head folder or either of its two files."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        return folder / f"{self.stem}.safetensors", folder / f"{self.stem}.json"

    def exists(self, path: str | Path) -> bool:
        return all(p.is_file() for p in self.files(path))

    def save(self, folder: Path, state: dict[str, torch.Tensor], info: dict[str, Any],
             half: bool = False) -> Path:
        """Write tensors (fp16 floats when `half`) and the description; returns the folder."""
        from safetensors.torch import save_file
        folder.mkdir(parents=True, exist_ok=True)
        weights, meta = self.files(folder)
        state = {k: (v.detach().to("cpu", torch.float16) if half and v.is_floating_point() else v.detach().cpu())
                 .contiguous() for k, v in state.items()}
        with atomic_path(weights) as tmp:
            save_file(state, str(tmp), metadata={"format": self.format})
        body = {"format": self.format, "version": self.version, **info}
        atomic_write_text(meta, json.dumps(body, indent=2) + "\n")
        return folder

    def read_info(self, path: str | Path) -> dict[str, Any]:
        """The JSON body (format/version checked and removed)."""
        weights, meta = self.files(path)
        if not meta.is_file() or not weights.is_file():
            raise UserError(f"no {self.what} at {path}: expected {weights.name} and {meta.name} "
                            f"(the folder written by {self.made_by})")
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {meta}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != self.format:
            found = data.get("format") if isinstance(data, dict) else None
            raise UserError(f"{meta} is not a {self.what} description (format {found!r})")
        if int(data.get("version", 0)) > self.version:
            raise UserError(f"{meta} has version {data['version']}; this clipheads reads up to "
                            f"{self.version}: upgrade clipheads")
        return {k: v for k, v in data.items() if k not in ("format", "version")}

    def save_dataclass(self, folder: Path, state: dict[str, torch.Tensor], info: Any, half: bool = False) -> Path:
        """`save` with a dataclass description (nested dataclasses become mappings)."""
        return self.save(folder, state, dataclasses.asdict(info), half=half)

    def read_dataclass(self, cls: type[T], path: str | Path) -> T:
        """The description as dataclass `cls` (nested ones rebuilt, unknown keys refused)."""
        return from_dict(cls, self.read_info(path), where=str(self.files(path)[1]))

    def read_state(self, path: str | Path) -> dict[str, torch.Tensor]:
        from safetensors import safe_open
        weights, _ = self.files(path)
        try:
            with safe_open(str(weights), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise UserError(f"cannot read {weights}: truncated or corrupt ({type(exc).__name__})") from exc
