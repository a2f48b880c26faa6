"""Class names of a segmentation dataset, read from the dataset, never hard-coded.

Accepted files: one name per line (`labels.txt`), or an objectInfo150-style table with
a header naming a `Name` column (tab- or comma-separated; the first synonym of
'building;edifice' / 'building, edifice' is used). An exported tiny world names its
classes in `tinyworld.json` (background first).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from clipheads.core.errors import UserError
from clipheads.core.text import check_labels

CANDIDATES = ("labels.txt", "objectInfo150.txt", "objectInfo150.csv", "ade20k_objectInfo150.txt")


def _split_table_row(line: str, delimiter: str) -> list[str]:
    return [c.strip() for c in line.split(delimiter)]


def read_label_file(path: str | Path) -> list[str]:
    """Names in index order from a plain list or an objectInfo-style table."""
    path = Path(path)
    try:
        lines = [ln.rstrip("\r\n") for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read label file {path}: {exc}") from exc
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        raise UserError(f"label file {path} is empty; put one class name per line")
    delimiter = "\t" if "\t" in lines[0] else ("," if "," in lines[0] else None)
    header = _split_table_row(lines[0], delimiter) if delimiter else []
    lowered = [h.lower() for h in header]
    if "name" in lowered:
        col = lowered.index("name")
        names = []
        for n, line in enumerate(lines[1:], start=2):
            cells = _split_table_row(line, delimiter)
            # tab tables keep comma synonyms inside the Name cell; CSV tables use ';'
            cell = ",".join(cells[col:]) if delimiter == "," else (cells[col] if col < len(cells) else "")
            synonyms = [w.strip() for w in cell.replace(",", ";").split(";") if w.strip()]
            if not synonyms:
                raise UserError(f"{path}:{n}: no class name in column '{header[col]}'")
            names.append(_unique_name(synonyms, names))
    else:
        names = [ln.strip() for ln in lines]
    return check_labels(names, where=str(path))


def _unique_name(synonyms: list[str], taken: list[str]) -> str:
    """The first synonym, or (when an earlier row took it) the synonyms joined until unique:
    lang-seg's 'screen;door;screen' after 'screen' becomes 'screen door'."""
    for n in range(1, len(synonyms) + 1):
        name = " ".join(synonyms[:n])
        if name not in taken:
            return name
    return f"{synonyms[0]} {len(taken)}"


@dataclass
class FolderLabels:
    """Names of a folder dataset and whether mask value 0 is 'ignore' (ADE20K) or a class."""

    names: list[str]
    reduce_zero_label: bool
    source: str


def folder_labels(root: Path, labels: Sequence[str] = (), labels_file: str | None = None,
                  reduce_zero_label: bool = True) -> FolderLabels:
    """Config names > config file > a labels/objectInfo file in `root` > tinyworld.json."""
    if labels:
        return FolderLabels(check_labels(list(labels), where="data.labels"), reduce_zero_label, "data.labels")
    if labels_file:
        return FolderLabels(read_label_file(labels_file), reduce_zero_label, str(labels_file))
    for name in CANDIDATES:
        if (root / name).is_file():
            return FolderLabels(read_label_file(root / name), reduce_zero_label, str(root / name))
    manifest = root / "tinyworld.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text(encoding="utf-8"))
        cats = sorted(data.get("categories", []), key=lambda c: c["id"])
        names = ["background"] + [c["name"] for c in cats]
        return FolderLabels(names, False, str(manifest))
    raise UserError(f"no class names for {root}: put a labels.txt (one name per line, in mask-index "
                    "order) or objectInfo150.txt there, or set data.labels / data.labels_file")
