"""`vild infer` / `vild eval` end to end with a detector folder written by the test (an
untrained detector: the files, formats and errors, not the accuracy), and the COCO
reader's handling of bad annotations."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from clipheads.core.cli import main
from clipheads.core.data.coco import CocoDetection, load_coco
from clipheads.core.errors import UserError
from clipheads.core.tinyworld.export import export_tiny_world

SMALL = dict(backbone="narrow", narrow_widths=[8, 8, 16, 16], fpn_channels=8, anchor_sizes=[8, 16, 32, 64, 128],
             min_size=64, max_size=64, conv_channels=8, box_convs=1, box_fcs=1, fc_dim=16, mask_convs=1,
             rpn_pre_nms_test=50, rpn_post_nms_test=20)


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    """An untrained ViLD-ensemble detector folder in the tiny CLIP's text space."""
    import clipheads
    from clipheads.tasks.vild.config import DetectorModel, ViLDHeadConfig
    from clipheads.tasks.vild.detector import ViLDDetector
    from clipheads.tasks.vild.weights import DetectorInfo, save_detector
    torch.manual_seed(0)
    bb = clipheads.load("vild", device="cpu").ctx.backbone
    cfg = DetectorModel(**SMALL)
    model = ViLDDetector(cfg, ViLDHeadConfig(mode="ensemble"), bb.embed_dim)
    info = DetectorInfo(cfg, ViLDHeadConfig(mode="ensemble"), "tiny-world", bb.fingerprint, bb.embed_dim,
                        ["circle", "square"], ["heart"], templates="single")   # one prompt: 2000 labels stay quick
    return save_detector(tmp_path_factory.mktemp("det") / "detector", model.state_dict(), info)


def run(capsys, *argv):
    code = main(["vild", *argv, "--device", "cpu", "--json"])
    out = capsys.readouterr()
    return code, out


def test_infer_writes_json_and_drawing(detector_dir, tmp_path, capsys, one_thread):
    path = tmp_path / "scene.png"
    Image.fromarray((np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)).save(path)
    code, out = run(capsys, "infer", "--image", str(path), "--labels", "circle,heart,dog", "--checkpoint",
                    str(detector_dir), "--score-threshold", "0", "--max-detections", "7", "--out", str(tmp_path / "o"))
    assert code == 0, out.err
    row = json.loads(out.out.strip().splitlines()[-1])
    body = json.loads((tmp_path / "o" / "scene.json").read_text())
    assert body == row["detections"] and 0 < len(body) <= 7
    for det in body:
        assert set(det) == {"label", "score", "box", "mask_rle"} and det["label"] in {"circle", "heart", "dog"}
        x0, y0, x1, y1 = det["box"]
        assert 0 <= x0 <= x1 <= 70 and 0 <= y0 <= y1 <= 50
        assert mask_utils.decode({"size": det["mask_rle"]["size"],
                                  "counts": det["mask_rle"]["counts"].encode()}).shape == (50, 70)
    assert [d["score"] for d in body] == sorted((d["score"] for d in body), reverse=True)
    assert Image.open(tmp_path / "o" / "scene_boxes.png").size == (70, 50)


@pytest.mark.parametrize("labels", ["plain", "many"])
def test_blank_image_and_two_thousand_labels(detector_dir, tmp_path, labels, one_thread):
    import clipheads
    task = clipheads.load("vild", device="cpu", progress=False)
    words = ["circle"] if labels == "plain" else [f"thing {i}" for i in range(2000)]
    blank = Image.new("RGB", (64, 64), (240, 240, 240))
    dets = task.predict([blank], words, checkpoint=detector_dir, score_threshold=0.0)[0]
    assert all(d.label in words and 0.0 <= d.score <= 1.0 for d in dets)
    assert len(dets) <= task.cfg.infer.max_detections


def test_bad_requests_fail_with_one_line(detector_dir, tmp_path, capsys):
    path = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(path)
    code, out = run(capsys, "infer", "--image", str(path), "--labels", ",", "--checkpoint", str(detector_dir),
                    "--out", str(tmp_path / "o"))
    assert code == 2 and "label" in out.err and not (tmp_path / "o" / "x.json").exists()
    code, out = run(capsys, "infer", "--image", str(path), "--labels", "a", "--checkpoint", str(tmp_path / "nope"),
                    "--out", str(tmp_path / "o"))
    assert code == 2 and "not found" in out.err
    code, out = run(capsys, "infer", "--image", str(path), "--labels", "a", "--checkpoint", str(detector_dir),
                    "--score-threshold", "1.5", "--out", str(tmp_path / "o"))
    assert code == 2 and "[0, 1]" in out.err


def test_detector_from_another_backbone_is_refused(detector_dir, tmp_path):
    import shutil

    import clipheads
    other = tmp_path / "other"
    shutil.copytree(detector_dir, other)
    meta = other / "vild_detector.json"
    body = json.loads(meta.read_text())
    body["backbone_fingerprint"] = "0123456789abcdef"
    meta.write_text(json.dumps(body))
    with pytest.raises(UserError, match="text space of backbone"):
        clipheads.load("vild", device="cpu").load_detector(other)


def test_annotation_errors_and_degenerate_boxes(tmp_path):
    root = export_tiny_world(tmp_path / "tw", n_train=3, n_val=1, n_videos=0, size=64)
    ann = root / "annotations" / "instances_train.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"] = [70, 70, 10, 10]            # outside the 64x64 image
    data["annotations"][1]["bbox"] = [5, 5, 0, 12]               # zero width
    data["annotations"][2]["bbox"] = [-10, -10, 30, 30]          # partly outside: clipped, kept
    (tmp_path / "boxes.json").write_text(json.dumps(data))
    ds = CocoDetection(root / "images" / "train", tmp_path / "boxes.json")
    total = sum(len(ds[i][1]["boxes"]) for i in range(len(ds)))
    assert total == len(data["annotations"]) - 2 and ds.dropped_boxes.count == 2
    assert all(float(ds[i][1]["boxes"].min()) >= 0 and float(ds[i][1]["boxes"].max()) <= 64 for i in range(len(ds)))
    data["annotations"][3]["category_id"] = 99
    (tmp_path / "unknown.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="category_id 99, which is not in 'categories'"):
        load_coco(tmp_path / "unknown.json")
