"""Core segmentation: the confusion-matrix metrics, and the PASCAL VOC / PASCAL Context /
COCO-Object readers on tiny fake folders in GroupViT's layouts (split order, palette and
'L' masks, ignore values, skipped files, layout errors)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipheads.core.errors import UserError
from clipheads.core.segmentation.benchmarks import BENCHMARKS, open_benchmark
from clipheads.core.segmentation.evaluation import EvalScene, confusion
from clipheads.core.segmentation.metrics import ConfusionMatrix, binary_counts, chance_iou


def test_confusion_matrix_iou_accuracy_and_ignore():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 2]])
    cm = ConfusionMatrix(4)
    cm.update(pred, gt)
    iou = cm.iou()
    assert iou[0] == pytest.approx(1 / 3)        # class 0: inter 1, union 2 + 2 - 1 (ignored pred skipped)
    assert iou[1] == pytest.approx(2 / 3)
    assert iou[2] == pytest.approx(1 / 2)
    assert np.isnan(iou[3])                       # never present: left out of the mean
    assert cm.miou() == pytest.approx(np.mean([1 / 3, 2 / 3, 1 / 2]))
    assert cm.miou([1, 2]) == pytest.approx(np.mean([2 / 3, 1 / 2]))
    assert cm.pixel_accuracy() == pytest.approx(4 / 6)   # ignored pixels do not count
    with pytest.raises(UserError, match="class index 5"):
        cm.update(np.zeros((1, 1)), np.full((1, 1), 5))
    with pytest.raises(UserError, match="differ in size"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    assert chance_iou(0.1, 10) == pytest.approx(0.01 / (0.1 + 0.1 - 0.01))


def test_binary_counts_skip_ignore():
    gt = np.array([[0, 3, 3, 255]])
    pred = np.array([[1, 1, 0, 1]])
    # bg: gt {0}, pred {2} -> inter 0, union 2; fg: gt {1,2}, pred {0,1} -> inter 1, union 3
    assert binary_counts(pred, gt, 3).tolist() == [[0, 2], [1, 3]]


# ------------------------------------------------------------------- fake benchmark folders
SIZE = 8


def _mask(seed: int, num_classes: int, ignore: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.integers(0, num_classes, (SIZE, SIZE), dtype=np.uint8)
    if ignore:
        m[0, :] = 255                             # VOC's object boundaries
    return m


def _write(root, spec, names, listed=None, palette=True, seed=0):
    """Images and masks of `names` in `spec`'s layout (split list = `listed` or `names`)."""
    (root / spec.image_dir).mkdir(parents=True, exist_ok=True)
    (root / spec.mask_dir).mkdir(parents=True, exist_ok=True)
    masks = {}
    for i, name in enumerate(names):
        Image.fromarray(np.full((SIZE, SIZE, 3), 20 * i, np.uint8)).save(root / spec.image_dir / f"{name}.jpg")
        m = _mask(seed + i, spec.num_classes, ignore=spec.name == "voc")
        img = Image.fromarray(m, "L")
        if palette:                               # VOC-style palette PNG: the index is the class
            img = img.convert("P")
            img.putpalette([v for k in range(256) for v in ((k * 37) % 256, (k * 91) % 256, (k * 53) % 256)])
        img.save(root / spec.mask_dir / f"{name}{spec.mask_suffix}")
        masks[name] = m
    if spec.split_file:
        split = root / spec.split_file
        split.parent.mkdir(parents=True, exist_ok=True)
        split.write_text("\n".join(names if listed is None else listed) + "\n")
    return masks


def test_benchmark_specs_record_groupvit_settings():
    voc, ctx, coco = BENCHMARKS["voc"], BENCHMARKS["context"], BENCHMARKS["coco_object"]
    assert (voc.num_classes, ctx.num_classes, coco.num_classes) == (21, 60, 81)
    for spec in (voc, ctx, coco):
        assert spec.class_names[0] == "background" and spec.with_background
        assert len(set(spec.class_names)) == spec.num_classes
        assert spec.foreground_names == spec.class_names[1:]
        inf = spec.inference
        assert (inf.short_side, inf.crop_size, inf.stride, inf.mode) == (448, 448, 224, "slide")
    assert (voc.bg_thresh_code, ctx.bg_thresh_code, coco.bg_thresh_code) == (0.95, 0.35, 0.95)
    assert (voc.bg_thresh_paper, ctx.bg_thresh_paper, coco.bg_thresh_paper) == (0.9, 0.5, None)
    # GroupViT renames three mmseg classes on each PASCAL benchmark (prompt-friendly names)
    assert voc.mmseg_class_names is not None and len(voc.mmseg_class_names) == 21
    assert {a: b for a, b in zip(voc.mmseg_class_names, voc.class_names) if a != b} == {
        "diningtable": "table", "pottedplant": "plant", "tvmonitor": "monitor"}
    assert {a: b for a, b in zip(ctx.mmseg_class_names, ctx.class_names) if a != b} == {
        "aeroplane": "airplane", "pottedplant": "plant", "tvmonitor": "monitor"}
    assert coco.class_names[1] == "person" and coco.class_names[-1] == "toothbrush"


def test_voc_reads_split_order_palette_masks_and_ignore(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    spec = BENCHMARKS["voc"]
    masks = _write(root, spec, ["2007_000002", "2007_000001", "2007_000003"])
    _write(root, spec, ["2007_000009"], listed=["2007_000002", "2007_000001", "2007_000003"], seed=9)
    ds = open_benchmark("voc", root)
    scenes = list(ds)
    assert len(ds) == 3 and ds.skipped == 0       # the unlisted image is not part of val
    assert [s.name for s in scenes] == ["2007_000002", "2007_000001", "2007_000003"]
    for s in scenes:
        assert isinstance(s, EvalScene) and s.image.mode == "RGB" and s.image.size == (SIZE, SIZE)
        assert s.mask.dtype == np.uint8 and np.array_equal(s.mask, masks[s.name])
        assert (s.mask[0] == 255).all() and s.mask[1:].max() <= 20
    assert [s.name for s in open_benchmark("voc", root, limit=2)] == ["2007_000002", "2007_000001"]
    # an oracle gets mIoU 1 through the shared evaluation (255 ignored)
    oracle = type("Oracle", (), {"predict": lambda self, image: lookup[image.getpixel((0, 0))]})()
    lookup = {s.image.getpixel((0, 0)): np.where(s.mask == 255, 0, s.mask) for s in scenes}
    assert confusion(oracle, open_benchmark("voc", root), spec.num_classes).miou() == pytest.approx(1.0)


def test_context_reads_sixty_class_masks(tmp_path):
    root = tmp_path / "VOC2010"
    spec = BENCHMARKS["context"]
    masks = _write(root, spec, ["2008_000002", "2008_000008"], seed=3)
    masks["2008_000008"][:] = 59                 # the last class, 'wood'
    Image.fromarray(masks["2008_000008"], "L").save(root / spec.mask_dir / "2008_000008.png")
    scenes = {s.name: s.mask for s in open_benchmark("context", root)}
    assert set(scenes) == {"2008_000002", "2008_000008"}
    assert all(np.array_equal(scenes[n], masks[n]) for n in scenes)
    assert (scenes["2008_000008"] == 59).all() and spec.class_names[59] == "wood"


def test_coco_object_pairs_train_id_masks_and_counts_missing(tmp_path):
    root = tmp_path / "coco"
    spec = BENCHMARKS["coco_object"]
    masks = _write(root, spec, ["000000000285", "000000000139"], palette=False)
    Image.fromarray(np.full((SIZE, SIZE), 181, np.uint8), "L").save(   # the raw COCO-Stuff mask: not read
        root / spec.mask_dir / "000000000139.png")
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(root / spec.image_dir / "000000000632.jpg")
    ds = open_benchmark("coco_object", root)
    scenes = list(ds)
    assert [s.name for s in scenes] == ["000000000139", "000000000285"]   # sorted, as mmseg scans
    assert all(np.array_equal(s.mask, masks[s.name]) for s in scenes)
    assert ds.skipped == 1 and ds.skips.reasons == {"missing": 1}       # image without a mask


def test_corrupt_mask_and_image_are_skipped_and_counted(tmp_path):
    root = tmp_path / "VOC2012"
    names = ["a", "b", "c", "d"]
    _write(root, BENCHMARKS["voc"], names)
    (root / "SegmentationClass" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "JPEGImages" / "d.jpg").write_bytes(b"\xff\xd8\xff truncated")
    ds = open_benchmark("voc", root)
    assert [s.name for s in ds] == ["a", "c"]
    assert ds.skipped == 2 and ds.skips.reasons == {"corrupt": 2}
    assert "skipped 2 samples" in ds.skips.summary()


def test_layout_errors_name_the_missing_piece_and_the_layout(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    _write(devkit / "VOC2012", BENCHMARKS["voc"], ["a"])
    with pytest.raises(UserError, match=r"no image folder .*JPEGImages \(did you mean .*VOC2012\?\)"):
        open_benchmark("voc", devkit)             # the devkit instead of the year folder
    with pytest.raises(UserError, match=r"SegmentationClassContext.*expected ROOT = VOCdevkit/VOC2010"):
        open_benchmark("context", devkit / "VOC2012")
    (devkit / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(UserError, match="no split list .*val.txt"):
        open_benchmark("voc", devkit / "VOC2012")
    with pytest.raises(UserError, match="not found"):
        open_benchmark("voc", tmp_path / "nowhere")
    with pytest.raises(UserError, match="did you mean: .*coco_object"):
        open_benchmark("coco", tmp_path)
    coco = tmp_path / "coco"
    for d in ("images/val2017", "annotations/val2017"):
        (coco / d).mkdir(parents=True)
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8), "L").save(coco / "annotations/val2017/x.png")
    with pytest.raises(UserError, match="_instanceTrainIds.png.*convert_coco_object.py"):
        open_benchmark("coco_object", coco)       # unconverted COCO-Stuff masks


def test_mask_values_beyond_the_classes_are_refused(tmp_path):
    root = tmp_path / "VOC2012"
    _write(root, BENCHMARKS["voc"], ["a"])
    Image.fromarray(np.full((SIZE, SIZE), 40, np.uint8), "L").save(root / "SegmentationClass" / "a.png")
    with pytest.raises(UserError, match="class index 40 .* 21 classes"):
        list(open_benchmark("voc", root))
