"""`vild precompute`: the ViLD-image targets. For each training image, up to M proposals
(the RPN of a trained detector, or a proposal file) and the frozen CLIP's embedding of
each (1.0x and 1.5x crops, summed, normalised: `FrozenCLIP.region_embeddings`), into a
sharded, resumable cache (`proposal_cache`). Under torchrun each rank fills the shards
k with k % WORLD_SIZE == RANK; the processes need no process group.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch

from clipheads.core.data.coco import CocoDetection
from clipheads.core.errors import UserError

from .data import to_tensor
from .proposal_cache import CacheSpec, ProposalCache, ShardRecord, fill_cache

SCALES = (1.0, 1.5)   # the paper's crops: the box and 1.5x around it


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def read_proposal_file(path: Path, max_proposals: int) -> dict[int, torch.Tensor]:
    """COCO results json ([{image_id, bbox [x, y, w, h], score}, ...]) -> image id ->
    [<=M, 4] xyxy boxes, best first."""
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read proposal file {path}: {exc}") from exc
    if not isinstance(rows, list):
        raise UserError(f"proposal file {path} is not a list of COCO result dicts")
    by_image: dict[int, list[tuple[float, list[float]]]] = defaultdict(list)
    for i, row in enumerate(rows):
        try:
            x, y, w, h = (float(v) for v in row["bbox"])
            by_image[int(row["image_id"])].append((float(row.get("score", 0.0)), [x, y, x + w, y + h]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"proposal file {path}, entry {i}: needs image_id and bbox [x, y, w, h] ({exc})") from exc
    return {k: torch.tensor([b for _, b in sorted(v, key=lambda sb: -sb[0])[:max_proposals]]).reshape(-1, 4)
            for k, v in by_image.items()}


def run_precompute(task, data_json: Path, images: Path, out: Path, checkpoint: Path | None,
                   proposals: Path | None, max_proposals: int, shard_size: int, limit: int | None,
                   scales: tuple[float, ...] = SCALES) -> dict[str, Any]:
    ds = CocoDetection(images, data_json)
    ids = ds.ids[:limit] if limit else ds.ids
    backbone = task.ctx.backbone
    if proposals is not None:
        from_file = read_proposal_file(proposals, max_proposals)
        source = f"file:{_sha256(proposals)}"

        def propose(image_id: int, pixels: torch.Tensor) -> torch.Tensor:
            return from_file.get(image_id, torch.zeros(0, 4))
    else:
        from .weights import FOLDER, bundled_detector_dir
        model, _ = task.load_detector(checkpoint)
        source = f"rpn:{_sha256(FOLDER.files(checkpoint or task.cfg.checkpoint or bundled_detector_dir())[0])}"

        def propose(image_id: int, pixels: torch.Tensor) -> torch.Tensor:
            return model.proposals([pixels])[0][:max_proposals]

    spec = CacheSpec(backbone.fingerprint, tuple(scales), max_proposals, source, len(ids), shard_size)
    cache = ProposalCache.create_or_resume(out, spec)
    index = {image_id: i for i, image_id in enumerate(ds.ids)}
    mean = torch.tensor(backbone.mean, device=task.ctx.device).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std, device=task.ctx.device).view(1, 3, 1, 1)

    def embed(image_id: int) -> ShardRecord | None:
        item = ds[index[image_id]]
        if item is None:
            return None
        pixels = to_tensor(item[0]).to(task.ctx.device)
        with torch.no_grad():
            boxes = _clip_to_image(propose(image_id, pixels).float().to(pixels.device), pixels.shape[-2:])
            emb = backbone.region_embeddings((pixels[None] - mean) / std, [boxes], scales=tuple(scales))
        return ShardRecord(image_id, boxes.cpu(), emb.cpu())

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    written = fill_cache(cache, ids, embed, rank, world, _progress(task))
    return {"cache": str(out), "images": len(ids), "shards": spec.num_shards, "written": written,
            "skipped": ds.skips.count, "missing_shards": len(cache.missing()), "source": source,
            "rank": rank, "world_size": world}


def _clip_to_image(boxes: torch.Tensor, size) -> torch.Tensor:
    """Boxes clipped to the image; those left without area are dropped."""
    h, w = int(size[0]), int(size[1])
    boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                         boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1) if len(boxes) else boxes
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) if len(boxes) else torch.zeros(0, dtype=torch.bool)
    return boxes[keep].reshape(-1, 4)


def _progress(task) -> Callable:
    if not task.ctx.progress:
        return lambda it: it
    from tqdm import tqdm
    return lambda it: tqdm(it, desc="vild precompute (shards)", leave=False)
