"""Export the tiny world in real dataset formats, so real loaders are what gets tested.

Layout written under `out_dir` (atomically: built in a sibling temp folder, then renamed):

    tinyworld.json                     manifest: parameters, vocabulary, counts, seeds
    images/{split}/{stem}.jpg          shared by the COCO and ADE20K-style views
    annotations/instances_{split}.json COCO instances (bbox xywh, area, RLE masks, iscrowd=0)
    annotations/captions_{split}.json  COCO captions
    annotations/{split}/{stem}.png     ADE20K-style masks: 0 = background, k = category k
    shards/{split}-000000.tar          img2dataset-layout webdataset shards (.jpg/.txt/.json)
    videos/video{k}.mp4                MSR-VTT-style clips
    msrvtt_{split}.json                MSR-VTT json ({"videos": [...], "sentences": [...]})
    msrvtt_test.csv                    1k-A-style csv (key, vid_key, video_id, sentence)

Image splits are 'train' and 'val'; video splits are 'train' and 'test' (as MSR-VTT).
Scene seeds come from `split_seeds`, so held-out scenes never appear in training.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tarfile
import uuid
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

from clipheads.core.data.video import write_video
from clipheads.core.errors import UserError
from clipheads.core.tinyworld.scene import Scene, make_scene
from clipheads.core.tinyworld.splits import split_seeds
from clipheads.core.tinyworld.video import VideoClip, make_video
from clipheads.core.tinyworld.vocab import CATEGORIES, COLOURS, SHAPES

FORMAT_VERSION = 1
JPEG_QUALITY = 95
SAMPLES_PER_SHARD = 10_000
MANIFEST = "tinyworld.json"


def _jpeg_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def _png_bytes(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask, "L").save(buf, format="PNG")
    return buf.getvalue()


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def coco_categories() -> list[dict[str, Any]]:
    """COCO `categories` entries: id k = CATEGORIES[k - 1]."""
    return [{"id": i, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORIES, 1)]


def _coco_files(scenes: list[tuple[str, Scene]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(instances json, captions json) for (stem, scene) pairs."""
    info = {"description": "clipheads tiny world", "version": str(FORMAT_VERSION)}
    images, anns, caps = [], [], []
    for image_id, (stem, scene) in enumerate(scenes, start=1):
        h, w = scene.mask.shape
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "width": w, "height": h,
                       "seed": scene.seed})
        caps.append({"id": image_id, "image_id": image_id, "caption": scene.caption})
        for inst, obj in enumerate(scene.objects, start=1):
            m = scene.instance_mask == inst
            x0, y0, x1, y1 = obj.box
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": obj.category_id,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(m.sum()), "iscrowd": 0,
                         "segmentation": _rle(m), "colour": obj.colour})
    instances = {"info": info, "licenses": [], "images": images, "annotations": anns,
                 "categories": coco_categories()}
    captions = {"info": info, "licenses": [], "images": images, "annotations": caps}
    return instances, captions


def _add_tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size, member.mtime, member.mode = len(data), 0, 0o644  # fixed metadata: reproducible bytes
    tar.addfile(member, io.BytesIO(data))


def _write_shards(root: Path, split: str, samples: Iterable[tuple[str, bytes, Scene]]) -> list[str]:
    """img2dataset layout: 9-digit keys, KEY.jpg / KEY.txt / KEY.json, SAMPLES_PER_SHARD per tar."""
    names: list[str] = []
    tar: tarfile.TarFile | None = None
    for n, (stem, jpg, scene) in enumerate(samples):
        if n % SAMPLES_PER_SHARD == 0:
            if tar is not None:
                tar.close()
            names.append(f"{split}-{n // SAMPLES_PER_SHARD:06d}.tar")
            tar = tarfile.open(root / names[-1], "w", format=tarfile.USTAR_FORMAT)
        key = f"{n:09d}"
        h, w = scene.mask.shape
        meta = {"url": f"tinyworld://{split}/{stem}", "key": key, "status": "success",
                "error_message": None, "width": w, "height": h, "original_width": w,
                "original_height": h, "caption": scene.caption, "seed": scene.seed}
        assert tar is not None
        _add_tar_member(tar, f"{key}.jpg", jpg)
        _add_tar_member(tar, f"{key}.txt", scene.caption.encode("utf-8"))
        _add_tar_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))
    if tar is not None:
        tar.close()
    return names


def _write_image_split(root: Path, split: str, seeds: list[int], size: int) -> dict[str, Any]:
    img_dir = root / "images" / split
    ann_dir = root / "annotations" / split
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    scenes: list[tuple[str, Scene]] = []
    samples = []
    for seed in seeds:
        scene = make_scene(seed, size=size)
        stem = f"{split}_{seed:08d}"
        jpg = _jpeg_bytes(scene.image)
        (img_dir / f"{stem}.jpg").write_bytes(jpg)
        (ann_dir / f"{stem}.png").write_bytes(_png_bytes(scene.mask))
        scenes.append((stem, scene))
        samples.append((stem, jpg, scene))
    instances, captions = _coco_files(scenes)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(instances), encoding="utf-8")
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(captions), encoding="utf-8")
    shards = _write_shards(root / "shards", split, samples)
    return {"images": len(seeds), "objects": len(instances["annotations"]), "shards": shards,
            "seeds": [seeds[0], seeds[-1] + 1] if seeds else []}


def _write_videos(root: Path, splits: dict[str, list[int]], size: int, n_frames: int,
                  fps: float) -> dict[str, Any]:
    vid_dir = root / "videos"
    vid_dir.mkdir()
    counter = 0
    summary: dict[str, Any] = {}
    test_rows: list[dict[str, str]] = []
    codec = None
    for split, seeds in splits.items():
        videos, sentences = [], []
        for seed in seeds:
            clip: VideoClip = make_video(seed, n_frames=n_frames, size=size)
            vid = f"video{counter}"
            codec = write_video(vid_dir / f"{vid}.mp4", clip.frames, fps)
            videos.append({"category": 0, "url": f"tinyworld://video/{seed}", "video_id": vid,
                           "start time": 0.0, "end time": n_frames / fps, "split": split,
                           "id": counter, "seed": seed})
            for caption in clip.captions:
                sentences.append({"caption": caption, "video_id": vid, "sen_id": len(sentences)})
            if split == "test":
                test_rows.append({"key": f"ret{len(test_rows)}", "vid_key": f"msr{counter}",
                                  "video_id": vid, "sentence": clip.caption})
            counter += 1
        doc = {"info": {"description": "clipheads tiny world, MSR-VTT layout"},
               "videos": videos, "sentences": sentences}
        (root / f"msrvtt_{split}.json").write_text(json.dumps(doc), encoding="utf-8")
        summary[split] = {"videos": len(videos), "sentences": len(sentences)}
    with open(root / "msrvtt_test.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["key", "vid_key", "video_id", "sentence"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(test_rows)
    summary.update({"fps": fps, "n_frames": n_frames, "codec": codec})
    return summary


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise UserError(f"{name} must be a non-negative integer, got {value!r}")
    if counts["n_train"] + counts["n_val"] == 0:
        raise UserError("export needs at least one image scene; pass n_train > 0 or n_val > 0")


def export_tiny_world(out_dir: str | os.PathLike[str], n_train: int = 512, n_val: int = 128,
                      n_videos: int = 32, seed: int = 0, size: int = 96, n_test_videos: int | None = None,
                      video_frames: int = 16, video_fps: float = 4.0, overwrite: bool = False) -> Path:
    """Write the tiny world to `out_dir` (layout in the module docstring) and return its path.

    `seed` is the start position inside each split's seed block, so two exports with
    different `seed` draw different scenes but never mix train with held-out seeds.
    Videos: `n_videos` train clips and `n_test_videos` (default `n_videos`) test clips.
    Nothing is left behind on failure; an existing `out_dir` is replaced only with
    `overwrite=True`.
    """
    n_test_videos = n_videos if n_test_videos is None else n_test_videos
    _check_counts(n_train=n_train, n_val=n_val, n_videos=n_videos, n_test_videos=n_test_videos,
                  seed=seed, video_frames=video_frames)
    out = Path(out_dir).resolve()
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass overwrite=True (--overwrite) or choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_sibling(out, "tmp")
    try:
        (tmp / "shards").mkdir()
        images = {split: _write_image_split(tmp, split, split_seeds(split, n, start=seed), size)
                  for split, n in (("train", n_train), ("val", n_val))}
        videos = _write_videos(tmp, {"train": split_seeds("train", n_videos, start=seed),
                                     "test": split_seeds("test", n_test_videos, start=seed)},
                               size, video_frames, video_fps)
        manifest = {"format_version": FORMAT_VERSION, "size": size, "seed": seed,
                    "colours": list(COLOURS), "shapes": list(SHAPES),
                    "categories": coco_categories(), "background_id": 0,
                    "images": images, "videos": videos}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _fresh_sibling(out: Path, tag: str) -> Path:
    """A new empty hidden folder next to `out` (same filesystem, so renames are atomic).

    Made with mkdir rather than mkdtemp so it gets the usual umask permissions, not 0700.
    """
    path = out.parent / f".{out.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def _replace_dir(new: Path, out: Path) -> None:
    """Rename `new` onto `out`; an old `out` is moved aside first and removed after."""
    if not out.exists():
        os.replace(new, out)
        return
    old = _fresh_sibling(out, "old")
    os.replace(out, old / "data")
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old / "data", out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an exported tiny world (UserError when `root` is not one)."""
    path = Path(root) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError(f"{root} is not an exported tiny world (no {MANIFEST}); "
                        "run export_tiny_world / `clipheads` export first") from exc
