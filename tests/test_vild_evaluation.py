"""ViLD evaluation: our COCO/LVIS numbers against pycocotools' COCOeval and lvis' LVISEval
run directly on a small synthetic scene (random boxes, elliptic RLE masks, detections =
jittered ground truth + confusions + false positives), the base/novel subsets against
evaluator runs restricted to those categories, the detection-format conversion, the
OVR-CNN split and the np.float shim."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from clipheads.core.data.coco import load_coco
from clipheads.core.errors import UserError
from clipheads.tasks.vild.evaluation import (
    OVR_COCO_SPLIT,
    OpenVocabSplit,
    category_ids_by_name,
    evaluate_coco,
    evaluate_lvis,
    lvis_api,
    numpy_float_alias,
    to_coco_results,
)

# The 80 COCO 2017 detection categories, in id order.
COCO_2017 = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)

# Synthetic categories: non-contiguous ids, LVIS frequencies (2 rare, 2 common, 2 frequent).
CATEGORIES = [{"id": i, "name": n, "frequency": f} for i, n, f in
              [(1, "cat", "r"), (3, "dog", "c"), (4, "car", "f"), (8, "bus", "r"), (11, "cup", "c"),
               (13, "kite", "f")]]
SPLIT = OpenVocabSplit.from_names(base=["dog", "car", "cup", "kite"], novel=["cat", "bus"])
AP_KEYS = ("AP", "AP50", "AP75", "AP_base", "AP50_base", "AP_novel", "AP50_novel")


def _rle(height: int, width: int, box: list[float]) -> dict:
    """The ellipse inscribed in an xyxy box, as compressed RLE with str counts."""
    yy, xx = np.mgrid[:height, :width] + 0.5
    x0, y0, x1, y1 = box
    u, v = (xx - (x0 + x1) / 2) / ((x1 - x0) / 2), (yy - (y0 + y1) / 2) / ((y1 - y0) / 2)
    rle = mask_utils.encode(np.asfortranarray((u ** 2 + v ** 2 <= 1).astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _random_box(rng: np.random.Generator, height: int, width: int) -> list[float]:
    w, h = rng.uniform(12, width / 2), rng.uniform(12, height / 2)
    x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
    return [x0, y0, x0 + w, y0 + h]


def _jitter(rng: np.random.Generator, box: list[float], height: int, width: int) -> list[float]:
    x0, y0, x1, y1 = box
    dx, dy = 0.15 * (x1 - x0), 0.15 * (y1 - y0)
    x0, x1 = np.clip([x0 + rng.uniform(-dx, dx), x1 + rng.uniform(-dx, dx)], 0, width)
    y0, y1 = np.clip([y0 + rng.uniform(-dy, dy), y1 + rng.uniform(-dy, dy)], 0, height)
    return [float(x0), float(y0), float(max(x1, x0 + 4)), float(max(y1, y0 + 4))]


def _scene(seed: int = 0, n_images: int = 10) -> tuple[dict, dict]:
    """(LVIS-style ground truth, `vild infer`-style detections keyed by image id)."""
    rng = np.random.default_rng(seed)
    names = [c["name"] for c in CATEGORIES]
    ids = [c["id"] for c in CATEGORIES]
    images, annotations, detections = [], [], {}
    for image_id in range(1, n_images + 1):
        height, width = int(rng.integers(64, 96)), int(rng.integers(64, 96))
        present = set()
        dets = []
        for _ in range(int(rng.integers(2, 6))):
            k = int(rng.integers(len(CATEGORIES)))
            box = _random_box(rng, height, width)
            rle = _rle(height, width, box)
            present.add(ids[k])
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": ids[k],
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                "area": float(mask_utils.area(rle)), "iscrowd": 0, "segmentation": rle})
            if rng.random() < 0.85:  # found, maybe under a confused label too
                found = _jitter(rng, box, height, width)
                dets.append({"label": names[k], "score": float(rng.uniform(0.3, 1)), "box": found,
                             "mask_rle": _rle(height, width, found)})
                if rng.random() < 0.3:
                    confused = names[int(rng.integers(len(names)))]
                    dets.append({"label": confused, "score": float(rng.uniform(0, 0.6)), "box": found,
                                 "mask_rle": _rle(height, width, found)})
        for _ in range(int(rng.integers(1, 4))):  # false positives
            box = _random_box(rng, height, width)
            dets.append({"label": names[int(rng.integers(len(names)))], "score": float(rng.uniform(0, 0.8)),
                         "box": box, "mask_rle": _rle(height, width, box)})
        absent = [c for c in ids if c not in present]
        images.append({"id": image_id, "height": height, "width": width, "file_name": f"{image_id}.jpg",
                       "neg_category_ids": [c for c in absent if rng.random() < 0.6],
                       "not_exhaustive_category_ids": [c for c in sorted(present) if rng.random() < 0.3]})
        detections[image_id] = dets
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}, detections


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    dataset, detections = _scene()
    path = tmp_path_factory.mktemp("vild_eval") / "ground_truth.json"
    path.write_text(json.dumps(dataset))
    results = to_coco_results(detections, category_ids_by_name(CATEGORIES))
    return {"dataset": dataset, "path": path, "results": results}


def _direct_inputs(results: list[dict], iou_type: str) -> list[dict]:
    """Results as handed to the evaluators (mask area for segm: the box is dropped)."""
    return [{k: v for k, v in r.items() if not (iou_type == "segm" and k == "bbox")}
            for r in copy.deepcopy(results)]


def _coco_stats(path, results: list[dict], iou_type: str, cat_ids: list[int] | None = None) -> np.ndarray:
    gt = load_coco(path)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(_direct_inputs(results, iou_type)), iou_type)
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def _lvis_results(path, results: list[dict], iou_type: str, cat_ids: list[int] | None = None) -> dict:
    api = lvis_api()
    with numpy_float_alias():
        gt = api.LVIS(str(path))
        evaluator = api.LVISEval(gt, api.LVISResults(gt, _direct_inputs(results, iou_type)), iou_type)
        if cat_ids is not None:
            evaluator.params.cat_ids = cat_ids
        evaluator.run()
    return dict(evaluator.results)


def _plain(metrics: dict) -> None:
    assert all(type(v) in (float, int) for v in metrics.values()), metrics
    assert json.loads(json.dumps(metrics)) == metrics


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_matches_cocoeval(scene, iou_type):
    ours = evaluate_coco(scene["path"] if iou_type == "bbox" else load_coco(scene["path"]),
                         scene["results"], iou_type, SPLIT)
    _plain(ours)
    stats = _coco_stats(scene["path"], scene["results"], iou_type)
    assert [ours["AP"], ours["AP50"], ours["AP75"]] == pytest.approx(list(stats[:3]), abs=1e-12, rel=0)
    base_ids, novel_ids = SPLIT.category_ids(CATEGORIES)
    for group, ids in (("base", base_ids), ("novel", novel_ids)):
        restricted = _coco_stats(scene["path"], scene["results"], iou_type, ids)
        assert ours[f"AP_{group}"] == pytest.approx(restricted[0], abs=1e-12, rel=0)
        assert ours[f"AP50_{group}"] == pytest.approx(restricted[1], abs=1e-12, rel=0)
    assert 0.1 < ours["AP"] < ours["AP50"] < 0.99
    assert 0.1 < ours["AP50_novel"] < 0.99 and ours["AP50_novel"] != ours["AP50_base"]
    assert (ours["num_categories"], ours["num_categories_base"], ours["num_categories_novel"]) == (6, 4, 2)
    assert ours["num_images"] == 10 and ours["num_detections"] == len(scene["results"])


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_lvis_matches_lvis_eval(scene, iou_type):
    float_before = hasattr(np, "float")
    ground_truth = scene["dataset"] if iou_type == "bbox" else scene["path"]
    ours = evaluate_lvis(ground_truth, scene["results"], iou_type)
    assert hasattr(np, "float") == float_before
    _plain(ours)
    direct = _lvis_results(scene["path"], scene["results"], iou_type)
    for key in ("AP", "AP50", "AP75", "APr", "APc", "APf"):
        assert ours[key] == pytest.approx(direct[key], abs=1e-12, rel=0), key
    assert ours["AP_novel"] == pytest.approx(ours["APr"], abs=1e-12, rel=0)
    base_ids, novel_ids = OpenVocabSplit.from_frequency(CATEGORIES).category_ids(CATEGORIES)
    assert (base_ids, novel_ids) == ([3, 4, 11, 13], [1, 8])
    for group, ids in (("base", base_ids), ("novel", novel_ids)):
        restricted = _lvis_results(scene["path"], scene["results"], iou_type, ids)
        assert ours[f"AP_{group}"] == pytest.approx(restricted["AP"], abs=1e-12, rel=0)
        assert ours[f"AP50_{group}"] == pytest.approx(restricted["AP50"], abs=1e-12, rel=0)
    assert 0.1 < ours["AP"] < ours["AP50"] < 0.99
    assert all(0.05 < ours[k] < 0.99 for k in ("APr", "APc", "APf"))
    assert (ours["num_categories"], ours["num_categories_base"], ours["num_categories_novel"]) == (6, 4, 2)


def test_lvis_federated_rules_matter(scene):
    """Guards the synthetic data: LVIS's negative/not-exhaustive lists change the score."""
    plain = copy.deepcopy(scene["dataset"])
    for image in plain["images"]:
        image["neg_category_ids"] = [c["id"] for c in CATEGORIES]
        image["not_exhaustive_category_ids"] = []
    assert evaluate_lvis(plain, scene["results"], "bbox")["AP"] != evaluate_lvis(
        scene["dataset"], scene["results"], "bbox")["AP"]


def test_numpy_float_alias_restores(monkeypatch):
    before = hasattr(np, "float")
    with numpy_float_alias():
        assert np.float is float
    assert hasattr(np, "float") == before
    with pytest.raises(RuntimeError), numpy_float_alias():
        raise RuntimeError("inside")
    assert hasattr(np, "float") == before
    sentinel = object()
    monkeypatch.setattr(np, "float", sentinel, raising=False)
    with numpy_float_alias():
        assert np.float is float
    assert np.float is sentinel


def test_to_coco_results():
    ids = category_ids_by_name(CATEGORIES)
    rle = _rle(40, 50, [10, 5, 30, 25])
    detections = {7: [{"label": "dog", "score": 0.9, "box": [10, 5, 30, 25], "mask_rle": rle}],
                  "8": [{"label": "cup", "score": np.float32(0.25), "box": [1.5, 2, 4, 10]}], 9: []}
    assert to_coco_results(detections, ids) == [
        {"image_id": 7, "category_id": 3, "bbox": [10.0, 5.0, 20.0, 20.0], "score": 0.9, "segmentation": rle},
        {"image_id": 8, "category_id": 11, "bbox": [1.5, 2.0, 2.5, 8.0], "score": 0.25},
    ]
    with pytest.raises(UserError, match="'zebra'"):
        to_coco_results({7: [{"label": "zebra", "score": 0.5, "box": [0, 0, 1, 1]}]}, ids)
    with pytest.raises(UserError, match="x1 >= x0"):
        to_coco_results({7: [{"label": "dog", "score": 0.5, "box": [5, 0, 1, 1]}]}, ids)
    with pytest.raises(UserError, match="box"):
        to_coco_results({7: [{"label": "dog", "score": 0.5, "box": [0, 0, 1]}]}, ids)
    with pytest.raises(UserError, match="image id"):
        to_coco_results({"a.jpg": []}, ids)


def test_empty_detections_score_zero(scene):
    metrics = evaluate_coco(scene["path"], to_coco_results({1: []}, {}), "segm", SPLIT)
    assert all(metrics[k] == 0.0 for k in AP_KEYS) and metrics["num_detections"] == 0
    _plain(metrics)
    metrics = evaluate_lvis(scene["dataset"], [], "bbox")
    assert all(metrics[k] == 0.0 for k in AP_KEYS + ("APr", "APc", "APf"))
    assert (metrics["num_categories_base"], metrics["num_categories_novel"]) == (4, 2)
    _plain(metrics)


def test_bad_inputs(scene, tmp_path, monkeypatch):
    results = scene["results"]
    with pytest.raises(UserError, match="mask"):
        boxes_only = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
        evaluate_coco(scene["path"], boxes_only, "segm")
    with pytest.raises(UserError, match=r"\[99\]"):
        evaluate_coco(scene["path"], [{**results[0], "image_id": 99}], "bbox")
    with pytest.raises(UserError, match="iou_type"):
        evaluate_coco(scene["path"], results, "keypoints")
    with pytest.raises(UserError, match="not found"):
        evaluate_coco(tmp_path / "missing.json", results)
    with pytest.raises(UserError, match="zebra, horse"):
        OpenVocabSplit.from_names(["dog", "zebra"], ["horse"]).category_ids(CATEGORIES)
    with pytest.raises(UserError, match="both base and novel"):
        OpenVocabSplit.from_names(["dog", "cat"], ["cat"])
    with pytest.raises(UserError, match="frequency"):
        OpenVocabSplit.from_frequency([{"id": 1, "name": "cat"}])
    coco_style = copy.deepcopy(scene["dataset"])
    for cat in coco_style["categories"]:
        del cat["frequency"]
    with pytest.raises(UserError, match="LVIS v1"):
        evaluate_lvis(coco_style, results)
    with pytest.raises(UserError, match="not found"):
        evaluate_lvis(tmp_path / "missing.json", results)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read LVIS"):
        evaluate_lvis(tmp_path / "broken.json", results)
    monkeypatch.setitem(sys.modules, "lvis", None)  # as if not installed
    with pytest.raises(UserError, match="pip install lvis"):
        evaluate_lvis(scene["dataset"], results)


def test_ovr_coco_split():
    base, novel = OVR_COCO_SPLIT.base, OVR_COCO_SPLIT.novel
    assert (len(base), len(novel), len(set(base)), len(set(novel))) == (48, 17, 48, 17)
    assert not set(base) & set(novel)
    assert set(base) | set(novel) <= set(COCO_2017)
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(COCO_2017)]
    base_ids, novel_ids = OVR_COCO_SPLIT.category_ids(categories)
    assert (len(base_ids), len(novel_ids)) == (48, 17)
    assert [COCO_2017[i - 1] for i in novel_ids] == sorted(novel, key=COCO_2017.index)
