"""Label files, training data, and the PASCAL-5i zero-shot episode protocol on a synthetic
VOC-layout folder (the metrics themselves are tested in test_seg_benchmarks.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipheads.core.errors import UserError
from clipheads.core.tinyworld import CATEGORIES
from clipheads.tasks.lseg.config import AugmentConfig
from clipheads.tasks.lseg.data import TinyWorldSegmentation, TrainAugment, tiny_world_labels
from clipheads.tasks.lseg.episodes import OTHERS, VOCFolder, episode_schedule, evaluate_fold
from clipheads.tasks.lseg.labels import folder_labels, read_label_file


def test_label_files(tmp_path):
    plain = tmp_path / "labels.txt"
    plain.write_text("wall\nbuilding, edifice\n\nsky\n")
    assert read_label_file(plain) == ["wall", "building, edifice", "sky"]
    csv = tmp_path / "objectInfo150.csv"   # lang-seg's layout, ';'-separated synonyms
    csv.write_text("Idx,Ratio,Train,Val,Stuff,Name\n1,0.1,1,1,1,wall\n2,0.1,1,1,1,screen;door;screen\n"
                   "3,0.1,1,1,0,screen;silver;screen\n4,0.1,1,1,0,building;edifice\n")
    assert read_label_file(csv) == ["wall", "screen", "screen silver", "building"]
    tab = tmp_path / "objectInfo150.txt"   # the ADE20K release: tab-separated, ', ' synonyms
    tab.write_text("Idx\tRatio\tTrain\tVal\tName\n1\t0.15\t1\t1\twall\n2\t0.1\t1\t1\tbuilding, edifice\n")
    assert read_label_file(tab) == ["wall", "building"]
    dup = tmp_path / "dup.txt"
    dup.write_text("cat\ncat\n")
    with pytest.raises(UserError, match="duplicate"):
        read_label_file(dup)
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(UserError, match="labels.txt"):
        folder_labels(root)
    (root / "tinyworld.json").write_text(json.dumps({"categories": [{"id": 2, "name": "b"}, {"id": 1, "name": "a"}]}))
    found = folder_labels(root)
    assert found.names == ["background", "a", "b"] and found.reduce_zero_label is False
    assert folder_labels(root, labels=["x", "y"]).names == ["x", "y"]


def test_tiny_world_training_data_hides_held_out_shapes():
    labels, held = tiny_world_labels("background", ["star", "cross"])
    assert labels == ["background", "circle", "square", "triangle", "heart"] and held == ["star", "cross"]
    dropped = TinyWorldSegmentation(labels, held, 12, 48, heldout_mode="drop")
    assert len(dropped) == 12 and int(dropped.masks.max()) <= 4
    ignored = TinyWorldSegmentation(labels, held, 30, 48, heldout_mode="ignore")
    assert (ignored.masks == 255).any() and int(ignored.masks[ignored.masks != 255].max()) <= 4
    with pytest.raises(UserError, match="unknown tiny-world shape"):
        tiny_world_labels("background", ["hexagon"])
    with pytest.raises(UserError, match="every shape"):
        tiny_world_labels("background", list(CATEGORIES))


def test_augmentation_is_seeded_and_pads_with_ignore():
    aug = TrainAugment(AugmentConfig(base_size=20, crop_size=32, scale_min=0.5, scale_max=1.0), (0.5,) * 3, (0.5,) * 3)
    image = torch.randint(0, 255, (3, 20, 30), dtype=torch.uint8)
    mask = torch.randint(0, 3, (20, 30), dtype=torch.uint8)
    torch.manual_seed(3)
    x1, m1 = aug(image, mask)
    torch.manual_seed(3)
    x2, m2 = aug(image, mask)
    assert x1.shape == (3, 32, 32) and m1.shape == (32, 32) and m1.dtype == torch.long
    assert torch.equal(x1, x2) and torch.equal(m1, m2)
    assert (m1 == 255).any() and x1.min() >= -1 - 1e-6 and x1.max() <= 1 + 1e-6


def _voc(root, n=6):
    """Fold-0 classes 1..5 drawn as rectangles on class-index masks, with a 255 border."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    names = []
    for i in range(n):
        name = f"2008_{i:06d}"
        mask = np.zeros((24, 32), np.uint8)
        cls = 1 + i % 5
        mask[4:14, 6:20] = cls
        mask[4:14, 5] = 255
        if i == 0:
            mask[16:22, 22:30] = 12        # a fold-2 class: not a fold-0 query
        Image.fromarray(mask, "L").save(root / "SegmentationClassAug" / f"{name}.png")
        Image.fromarray(np.full((24, 32, 3), 30 * cls, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        names.append(name)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names) + "\n")
    return VOCFolder(root)


def test_pascal5i_episodes_with_oracle_and_blind_predictors(tmp_path):
    voc = _voc(tmp_path / "voc")
    queries = voc.queries(0)
    assert len(queries) == 6 and {q.class_id for q in queries} == {1, 2, 3, 4, 5}
    seen_labels = []

    def oracle(image, labels):
        seen_labels.append(tuple(labels))
        name = next(q.name for q in queries if voc.image(q.name).getpixel((0, 0)) == image.getpixel((0, 0)))
        cid = voc.class_names.index(labels[1]) + 1
        return (voc.mask(name) == cid).astype(np.uint8)

    r = evaluate_fold(voc, 0, oracle, episodes=20)
    assert r.miou == pytest.approx(1.0) and r.fb_iou == pytest.approx(1.0) and r.episodes == 20
    assert all(lbl[0] == OTHERS and lbl[1] in voc.class_names[:5] for lbl in seen_labels)
    blind = evaluate_fold(voc, 0, lambda image, labels: np.zeros((24, 32), np.uint8), episodes=20)
    assert blind.miou == 0.0
    valid = 24 * 32 - 10           # 255 pixels are ignored
    assert blind.fb_iou == pytest.approx(0.5 * (valid - 140) / valid)
    counts = episode_schedule(queries, 8)
    assert sum(counts.values()) == 8 and max(counts.values()) == 2   # 6 queries cycled
    (tmp_path / "voc" / "splits" / "val").mkdir(parents=True)
    (tmp_path / "voc" / "splits" / "val" / "fold0.txt").write_text("2008_000001__02\n2008_000000__12\n")
    assert [(q.name, q.class_id) for q in voc.queries(0)] == [("2008_000001", 2)]
    with pytest.raises(UserError, match="fold must be"):
        voc.queries(4)
    with pytest.raises(UserError, match="not a PASCAL VOC folder"):
        VOCFolder(tmp_path)
