"""Export the tiny world, then read it back with the real-data loaders."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import DataLoader

from clipheads.core.data.coco import CocoDetection
from clipheads.core.data.masks import SegmentationFolder
from clipheads.core.data.msrvtt import MsrvttDataset, collate_clips, load_msrvtt_csv, load_msrvtt_json
from clipheads.core.data.webdataset_pairs import ImageTextShards
from clipheads.core.errors import UserError
from clipheads.core.tinyworld import export as export_mod
from clipheads.core.tinyworld.export import export_tiny_world, read_manifest
from clipheads.core.tinyworld.scene import make_scene
from clipheads.core.tinyworld.splits import split_seeds
from clipheads.core.tinyworld.video import make_video
from clipheads.core.tinyworld.vocab import CATEGORIES

N_TRAIN, N_VAL, N_VIDEOS = 64, 16, 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("export") / "tw"
    out = export_tiny_world(root, n_train=N_TRAIN, n_val=N_VAL, n_videos=N_VIDEOS, seed=0)
    assert out == root.resolve()
    return root


def test_export_is_complete(world):
    root = world
    m = read_manifest(root)
    assert m["images"]["train"]["images"] == N_TRAIN and m["images"]["val"]["images"] == N_VAL
    assert [c["name"] for c in m["categories"]] == list(CATEGORIES)
    assert m["videos"]["train"]["videos"] == N_VIDEOS and m["videos"]["test"]["videos"] == N_VIDEOS
    assert len(list((root / "images" / "train").glob("*.jpg"))) == N_TRAIN
    assert len(list((root / "annotations" / "val").glob("*.png"))) == N_VAL
    assert sorted(p.name for p in (root / "shards").iterdir()) == ["train-000000.tar", "val-000000.tar"]
    assert len(list((root / "videos").glob("*.mp4"))) == 2 * N_VIDEOS
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_coco_json_read_by_pycocotools(world):
    root = world
    coco = COCO(str(root / "annotations" / "instances_val.json"))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == sorted(CATEGORIES)
    seeds = set(split_seeds("val", N_VAL))
    for img in coco.loadImgs(coco.getImgIds()):
        assert img["seed"] in seeds
        scene = make_scene(img["seed"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert len(anns) == len(scene.objects)
        for inst, (ann, obj) in enumerate(zip(anns, scene.objects), start=1):
            m = coco.annToMask(ann)
            assert np.array_equal(m.astype(bool), scene.instance_mask == inst)
            assert ann["bbox"] == pytest.approx(mask_utils.toBbox(ann["segmentation"]).tolist())
            assert ann["area"] == m.sum() and ann["iscrowd"] == 0
            assert coco.cats[ann["category_id"]]["name"] == obj.shape and ann["colour"] == obj.colour
    caps = json.loads((root / "annotations" / "captions_val.json").read_text())
    assert len(caps["annotations"]) == N_VAL


def test_coco_dataset_targets(world):
    root = world
    ds = CocoDetection(root / "images" / "train", root / "annotations" / "instances_train.json",
                       with_masks=True)
    assert len(ds) == N_TRAIN and ds.category_names[1] == CATEGORIES[0]
    image, target = ds[3]
    scene = make_scene(ds.coco.imgs[target["image_id"]]["seed"])
    assert image.mode == "RGB" and image.size == (96, 96)
    np.testing.assert_allclose(target["boxes"].numpy(), [o.box for o in scene.objects])
    assert target["labels"].tolist() == [o.category_id for o in scene.objects]
    assert target["masks"].shape == (len(scene.objects), 96, 96)
    diff = np.abs(np.asarray(image, dtype=int) - np.asarray(scene.image, dtype=int)).mean()
    assert diff < 3.0  # the same pixels, through JPEG q95
    assert ds.skips.count == 0


def test_masks_dataset_matches_generator(world):
    root = world
    ds = SegmentationFolder(root / "images" / "val", root / "annotations" / "val")
    assert len(ds) == N_VAL and ds.skips.count == 0
    for i in range(len(ds)):
        image, mask = ds[i]
        seed = int(ds.pairs[i][0].stem.split("_")[1])
        assert mask.dtype == torch.uint8 and image.size == (96, 96)
        assert np.array_equal(mask.numpy(), make_scene(seed).mask)  # PNG is lossless
    _, reduced = SegmentationFolder(root / "images" / "val", root / "annotations" / "val",
                                    reduce_zero_label=True)[0]
    _, raw = ds[0]
    assert torch.equal(reduced == 255, raw == 0)
    assert torch.equal(reduced[raw > 0], raw[raw > 0] - 1)


def test_shards_read_with_webdataset(world):
    root = world
    ds = ImageTextShards(str(root / "shards" / "train-{000000..000000}.tar"), with_meta=True)
    items = list(ds)
    assert len(items) == N_TRAIN and ds.skips.count == 0
    for image, caption, meta in items[:8]:
        scene = make_scene(meta["seed"])
        assert caption == scene.caption and meta["caption"] == caption
        assert image.size == (96, 96) and meta["__key__"].isdigit() and len(meta["__key__"]) == 9
    keys = [m["__key__"] for _, _, m in items]
    assert keys == sorted(keys)


def test_shards_through_a_dataloader_with_workers(world):
    root = world
    ds = ImageTextShards([root / "shards" / "train-000000.tar", root / "shards" / "val-000000.tar"],
                         transform=lambda im: torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
    loader = DataLoader(ds, batch_size=16, num_workers=2)
    n = 0
    for images, captions in loader:
        assert images.shape[1:] == (3, 96, 96) and images.dtype == torch.uint8
        assert len(captions) == images.shape[0]
        n += images.shape[0]
    assert n == N_TRAIN + N_VAL  # each shard read exactly once across workers


def test_msrvtt_json_and_csv(world):
    root = world
    train = load_msrvtt_json(root / "msrvtt_train.json")
    assert len(train) == N_VIDEOS and all(len(v.captions) == 3 for v in train)
    assert load_msrvtt_json(root / "msrvtt_train.json", split="test") == []
    test_csv = load_msrvtt_csv(root / "msrvtt_test.csv")
    with open(root / "msrvtt_test.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header == ["key", "vid_key", "video_id", "sentence"]
    test_json = load_msrvtt_json(root / "msrvtt_test.json")
    assert [v.video_id for v in test_csv] == [v.video_id for v in test_json]
    assert all(c.captions[0] == j.captions[0] for c, j in zip(test_csv, test_json))
    assert not {v.video_id for v in train} & {v.video_id for v in test_json}


def test_msrvtt_dataset_decodes_frames(world):
    root = world
    doc = json.loads((root / "msrvtt_test.json").read_text())
    seeds = {v["video_id"]: v["seed"] for v in doc["videos"]}
    ds = MsrvttDataset(root / "videos", root / "msrvtt_test.json", fps=4.0, max_frames=12)
    assert len(ds) == N_VIDEOS and len(ds.caption_index) == 3 * N_VIDEOS
    item = ds[1]
    clip = make_video(seeds[item["video_id"]])
    assert item["frames"].shape == (12, 96, 96, 3) and item["frames"].dtype == torch.uint8
    assert item["frame_mask"].all() and item["captions"] == clip.captions
    picked = np.linspace(0, 15, 12, dtype=int)  # CLIP4Clip uniform sampling of 16 frames
    err = np.abs(item["frames"].numpy().astype(int) - clip.frames[picked].astype(int)).mean()
    assert err < 4.0
    # 1 fps on a 4 s clip: 4 real frames, zero-padded to max_frames with a mask.
    padded = MsrvttDataset(root / "videos", root / "msrvtt_test.csv", fps=1.0, max_frames=6)[0]
    assert padded["frame_mask"].tolist() == [True] * 4 + [False] * 2
    assert padded["frames"][4:].sum() == 0
    by_caption = MsrvttDataset(root / "videos", root / "msrvtt_train.json", unit="caption", max_frames=4)
    assert len(by_caption) == 3 * N_VIDEOS
    batch = collate_clips([by_caption[0], by_caption[1], None])
    assert batch["frames"].shape == (2, 4, 96, 96, 3) and len(batch["caption"]) == 2


def test_export_is_reproducible(world, tmp_path):
    """Every file, mp4s included, is byte-identical (same PyAV/FFmpeg build; docs/tiny_world.md)."""
    root = world
    again = export_tiny_world(tmp_path / "again", n_train=N_TRAIN, n_val=N_VAL, n_videos=N_VIDEOS)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".mp4"]) == 2 * N_VIDEOS
    differ = [str(rel) for rel in files if (again / rel).read_bytes() != (root / rel).read_bytes()]
    assert not differ


def test_export_refuses_existing_and_cleans_up_on_failure(tmp_path, monkeypatch):
    out = tmp_path / "tw"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        export_tiny_world(out, n_train=2, n_val=1, n_videos=1)
    assert (out / "keep.txt").read_text() == "mine"

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_mod, "make_video", boom)
    with pytest.raises(RuntimeError):
        export_tiny_world(out, n_train=2, n_val=1, n_videos=1, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"  # old data untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tw"]  # no temp folders left
    monkeypatch.undo()
    export_tiny_world(out, n_train=2, n_val=1, n_videos=1, overwrite=True)
    assert not (out / "keep.txt").exists() and read_manifest(out)["images"]["train"]["images"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tw"]


def test_export_bad_arguments(tmp_path):
    with pytest.raises(UserError):
        export_tiny_world(tmp_path / "a", n_train=-1, n_val=1, n_videos=1)
    with pytest.raises(UserError):
        export_tiny_world(tmp_path / "b", n_train=0, n_val=0, n_videos=1)
    with pytest.raises(UserError, match="not an exported tiny world"):
        read_manifest(tmp_path)
    assert not list(tmp_path.iterdir())
