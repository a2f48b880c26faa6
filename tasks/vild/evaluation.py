"""Scoring open-vocabulary detections with the official evaluators: COCO with the OVR-CNN
base/novel split (ViLD reports novel AP50) and LVIS v1 (novel = rare, ViLD reports APr).

Why the official code and not our own: papers quote pycocotools' `COCOeval` and the `lvis`
package's `LVISEval`, so those compute every number here. Base/novel numbers are read off
one evaluation's precision array, averaged over the group's category columns exactly as
the evaluators average all of them; each category is matched and accumulated on its own
in both evaluators, so this equals a rerun restricted to the group (tested), at no extra
cost.

Conventions: APs are fractions in [0, 1], as the evaluators report them (not percent).
No detections at all gives 0.0, which is the value the evaluators would compute; they
crash on an empty result list, so that case is answered without running them. A group
with no ground truth at all (the evaluators say -1) also reports 0.0, so the dicts hold
only plain floats and ints, never -1 or NaN. Box-only detections are not scored as masks:
"segm" needs a mask on every detection. For "segm" the result's box is dropped before
loading, so pycocotools and lvis take the area from the mask (as detectron2 does).

`lvis` 0.5.3 uses `np.float` (gone since NumPy 1.24) and imports a visualiser needing
OpenCV and matplotlib; we neither patch it nor install those (see `numpy_float_alias`
and `lvis_api`). Not thread-safe: the alias is process-wide while an LVIS evaluation runs.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import math
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from clipheads.core.errors import UserError, close_matches, first_line

if TYPE_CHECKING:
    from pycocotools.coco import COCO

Detection = Mapping[str, Any]
Metrics = dict[str, float | int]
IOU_TYPES = ("bbox", "segm")

# OVR-CNN's COCO split (Zareian et al. 2021), as used by ViLD and Detic: 48 base categories
# to train on, 17 novel ones held out; the other 15 COCO categories are in neither.
OVR_COCO_BASE = (
    "person", "bicycle", "car", "motorcycle", "train", "truck", "boat", "bench", "bird",
    "horse", "sheep", "bear", "zebra", "giraffe", "backpack", "handbag", "suitcase", "frisbee",
    "skis", "kite", "surfboard", "bottle", "fork", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "pizza", "donut", "chair", "bed", "toilet", "tv",
    "laptop", "mouse", "remote", "microwave", "oven", "toaster", "refrigerator", "book",
    "clock", "vase", "toothbrush",
)
OVR_COCO_NOVEL = (
    "airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard",
    "skateboard", "cup", "knife", "cake", "couch", "keyboard", "sink", "scissors",
)


def category_ids_by_name(categories: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Category name -> id from a COCO/LVIS `categories` list (duplicate names: UserError)."""
    out: dict[str, int] = {}
    for cat in categories:
        cat_id, name = int(cat["id"]), str(cat["name"])
        if name in out:
            raise UserError(f"category name {name!r} is used by ids {out[name]} and {cat_id} in the "
                            "ground truth; names must be unique to map detection labels to ids")
        out[name] = cat_id
    return out


@dataclass(frozen=True)
class OpenVocabSplit:
    """Category names seen in training (base) and held out (novel); disjoint."""

    base: tuple[str, ...]
    novel: tuple[str, ...]

    def __post_init__(self) -> None:
        for group, names in (("base", self.base), ("novel", self.novel)):
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise UserError(f"open-vocabulary split lists {', '.join(repeated)} twice in {group}; "
                                "list each category once")
        both = sorted(set(self.base) & set(self.novel))
        if both:
            raise UserError(f"open-vocabulary split has {', '.join(both)} in both base and novel; "
                            "a category is one or the other")

    @classmethod
    def from_names(cls, base: Iterable[str], novel: Iterable[str]) -> OpenVocabSplit:
        """A split from two lists of category names."""
        return cls(tuple(base), tuple(novel))

    @classmethod
    def from_frequency(cls, categories: Iterable[Mapping[str, Any]],
                       novel_frequencies: Collection[str] = ("r",)) -> OpenVocabSplit:
        """LVIS-style split from categories' `frequency`: novel = rare ("r"), base = the rest (c + f)."""
        base: list[str] = []
        novel: list[str] = []
        for cat in categories:
            if "frequency" not in cat:
                raise UserError(f"category {cat.get('name')!r} (id {cat.get('id')}) has no 'frequency'; "
                                "a frequency split needs LVIS v1 categories (frequency r/c/f)")
            (novel if cat["frequency"] in novel_frequencies else base).append(str(cat["name"]))
        return cls(tuple(base), tuple(novel))

    def category_ids(self, categories: Iterable[Mapping[str, Any]]) -> tuple[list[int], list[int]]:
        """Sorted (base ids, novel ids) in a dataset; names it lacks: UserError naming them."""
        ids = category_ids_by_name(categories)
        unknown = [n for n in self.base + self.novel if n not in ids]
        if unknown:
            hint = close_matches(unknown[0], ids)
            raise UserError(f"open-vocabulary split names categories the ground truth lacks: "
                            f"{', '.join(unknown)}{hint}; use the dataset's category names")
        return sorted(ids[n] for n in self.base), sorted(ids[n] for n in self.novel)


OVR_COCO_SPLIT = OpenVocabSplit(OVR_COCO_BASE, OVR_COCO_NOVEL)


# ---------------------------------------------------------------- detections -> results

def _image_id(key: Any) -> int:
    """Image ids are ints; a JSON round trip turns mapping keys into digit strings."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return int(key)
    if isinstance(key, str) and key.strip().lstrip("-").isdigit():
        return int(key)
    raise UserError(f"detections are keyed by {key!r}, not an integer image id; key them by the "
                    "ground truth's image ids")


def _result(det: Detection, image_id: int, category_ids: Mapping[str, int], where: str) -> dict[str, Any]:
    label = det.get("label")
    if not isinstance(label, str) or label not in category_ids:
        raise UserError(f"{where}: label {label!r} is not a ground-truth category"
                        f"{close_matches(str(label), category_ids)}; detect with the dataset's names")
    box = det.get("box")
    try:
        x0, y0, x1, y1 = (float(v) for v in box)  # type: ignore[union-attr]
        score = float(det["score"])
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"{where}: needs 'score' and 'box' [x0, y0, x1, y1] in pixels "
                        f"({first_line(exc)}); is this `vild infer` output?") from exc
    if not all(map(math.isfinite, (x0, y0, x1, y1, score))) or x1 < x0 or y1 < y0:
        raise UserError(f"{where}: box {box} / score {score} is not a finite xyxy box with x1 >= x0 "
                        "and y1 >= y0; boxes must be [x0, y0, x1, y1] in pixels")
    out: dict[str, Any] = {"image_id": image_id, "category_id": int(category_ids[label]),
                           "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score}
    rle = det.get("mask_rle")
    if rle is not None:
        if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
            raise UserError(f"{where}: mask_rle must be {{'size': [h, w], 'counts': str}} "
                            "(pycocotools compressed RLE)")
        counts = rle["counts"]
        out["segmentation"] = {"size": [int(v) for v in rle["size"]],
                               "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
    return out


def to_coco_results(detections: Mapping[Any, Sequence[Detection]],
                    category_ids: Mapping[str, int]) -> list[dict[str, Any]]:
    """COCO result dicts (image_id, category_id, bbox xywh, score, segmentation if masked)
    from `vild infer` detections: image id -> [{label, score, box xyxy, mask_rle?}]."""
    out: list[dict[str, Any]] = []
    for key, dets in detections.items():
        image_id = _image_id(key)
        out += [_result(det, image_id, category_ids, f"detection {i} of image {image_id}")
                for i, det in enumerate(dets)]
    return out


def _prepare_results(results: Sequence[Mapping[str, Any]], image_ids: Collection[int],
                     iou_type: str) -> list[dict[str, Any]]:
    """Shallow copies (the evaluators add keys to results) checked against the ground truth."""
    if iou_type not in IOU_TYPES:
        raise UserError(f"iou_type must be one of {', '.join(IOU_TYPES)}, got {iou_type!r}")
    unknown = sorted({int(r["image_id"]) for r in results} - set(image_ids))
    if unknown:
        raise UserError(f"detections for image ids {unknown[:5]} that the ground truth does not have "
                        f"({len(unknown)} ids); evaluate against the annotations the images came from")
    prepared = [dict(r) for r in results]
    if iou_type == "segm":
        missing = next((r for r in prepared if "segmentation" not in r), None)
        if missing is not None:
            raise UserError(f"segm evaluation needs a mask on every detection, but one on image "
                            f"{missing['image_id']} has none; infer with masks or use iou_type='bbox'")
        for r in prepared:
            r.pop("bbox", None)
    return prepared


# ---------------------------------------------------------------- averaging

def _mean_ap(precision: np.ndarray, columns: Sequence[int], iou_index: int | None = None) -> float:
    """Mean of a [iou, recall, category] precision array over `columns` (and one IoU
    threshold), skipping the evaluators' -1 (no ground truth) entries as they do; 0.0 when
    nothing is left."""
    s = precision[:, :, list(columns)]
    if iou_index is not None:
        s = s[[iou_index]]
    valid = s[s > -1]
    return float(np.mean(valid)) if valid.size else 0.0


def _iou_index(iou_thresholds: np.ndarray, value: float) -> int:
    return int(np.where(iou_thresholds == value)[0][0])


def _summary(precision: np.ndarray, cat_ids: Sequence[int], iou_thresholds: np.ndarray,
             split_ids: tuple[list[int], list[int]] | None) -> Metrics:
    """AP, AP50, AP75 over all categories and AP, AP50 per split group, from the precision
    array [iou, recall, category] of one evaluation (area "all", the largest maxDets)."""
    i50, i75 = _iou_index(iou_thresholds, 0.5), _iou_index(iou_thresholds, 0.75)
    everything = range(len(cat_ids))
    out: Metrics = {"AP": _mean_ap(precision, everything), "AP50": _mean_ap(precision, everything, i50),
                    "AP75": _mean_ap(precision, everything, i75)}
    if split_ids is not None:
        column = {int(c): k for k, c in enumerate(cat_ids)}
        for group, ids in zip(("base", "novel"), split_ids):
            columns = [column[c] for c in ids]
            out[f"AP_{group}"] = _mean_ap(precision, columns)
            out[f"AP50_{group}"] = _mean_ap(precision, columns, i50)
    return out


def _zero_summary(split_ids: tuple[list[int], list[int]] | None) -> Metrics:
    keys = ["AP", "AP50", "AP75"] + ([] if split_ids is None else
                                     ["AP_base", "AP50_base", "AP_novel", "AP50_novel"])
    return {k: 0.0 for k in keys}


def _counts(num_categories: int, num_images: int, num_detections: int,
            split_ids: tuple[list[int], list[int]] | None) -> Metrics:
    out: Metrics = {"num_categories": num_categories, "num_images": num_images,
                    "num_detections": num_detections}
    if split_ids is not None:
        out["num_categories_base"], out["num_categories_novel"] = (len(ids) for ids in split_ids)
    return out


# ---------------------------------------------------------------- COCO

def _coco_eval_class() -> Any:
    try:
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise UserError("COCO evaluation needs pycocotools; run: pip install 'clipheads[detect]'") from exc
    return COCOeval


def evaluate_coco(ground_truth: COCO | str | os.PathLike[str], results: Sequence[Mapping[str, Any]],
                  iou_type: str = "bbox", split: OpenVocabSplit | None = None) -> Metrics:
    """COCO AP, AP50, AP75 (all categories) and, with `split`, AP/AP50 over its base and
    novel categories, by pycocotools' COCOeval (maxDets 100, area "all").

    ground_truth: a pycocotools `COCO` or an instances json path; results: COCO result
    dicts (see `to_coco_results`); iou_type: "bbox" or "segm".
    """
    COCOeval = _coco_eval_class()
    if isinstance(ground_truth, (str, os.PathLike)):
        from clipheads.core.data.coco import load_coco  # here: that module imports torch
        ground_truth = load_coco(ground_truth)
    categories = ground_truth.dataset["categories"]
    split_ids = split.category_ids(categories) if split is not None else None
    image_ids = ground_truth.getImgIds()
    prepared = _prepare_results(results, image_ids, iou_type)
    counts = _counts(len(categories), len(image_ids), len(prepared), split_ids)
    if not prepared:
        return {**_zero_summary(split_ids), **counts}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(prepared), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
    params = evaluator.params
    precision = evaluator.eval["precision"][:, :, :, params.areaRngLbl.index("all"), -1]
    return {**_summary(precision, params.catIds, params.iouThrs, split_ids), **counts}


# ---------------------------------------------------------------- LVIS

class LvisApi(NamedTuple):
    """The `lvis` package's evaluation classes."""

    LVIS: Any
    LVISResults: Any
    LVISEval: Any


_LVIS_MISSING = ("LVIS evaluation needs the lvis package: pip install lvis "
                 "(or pip install --no-deps lvis==0.5.3: evaluation only needs numpy and pycocotools)")


def lvis_api() -> LvisApi:
    """`LVIS`, `LVISResults`, `LVISEval` from the installed `lvis` package.

    lvis/__init__ also imports its visualiser, which needs OpenCV and matplotlib that
    evaluation never touches; when they are missing or broken (OpenCV without libGL), the
    three evaluation modules are imported without running that __init__ (`lvis` then stays
    a bare package in sys.modules, with no visualiser and no logging.basicConfig call).
    """
    if importlib.util.find_spec("lvis") is None:
        raise UserError(_LVIS_MISSING)
    try:
        from lvis import LVIS, LVISEval, LVISResults
        return LvisApi(LVIS, LVISResults, LVISEval)
    except ImportError:
        pass
    stub = None
    if "lvis" not in sys.modules:
        spec = importlib.util.find_spec("lvis")
        stub = sys.modules["lvis"] = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    try:
        from lvis.eval import LVISEval
        from lvis.lvis import LVIS
        from lvis.results import LVISResults
    except ImportError as exc:
        if stub is not None and sys.modules.get("lvis") is stub:
            del sys.modules["lvis"]
        raise UserError(f"cannot import the lvis evaluator ({first_line(exc)}); "
                        "reinstall it: pip install --force-reinstall --no-deps lvis==0.5.3") from exc
    return LvisApi(LVIS, LVISResults, LVISEval)


@contextlib.contextmanager
def numpy_float_alias() -> Iterator[None]:
    """`numpy.float = float` inside the block only (lvis 0.5.3 calls `np.float`, removed in
    NumPy 1.24); afterwards numpy is as before, also on error. Process-wide while it lasts."""
    missing = object()
    previous = np.__dict__.get("float", missing)
    np.float = float  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if previous is missing:
            del np.float  # type: ignore[attr-defined]
        else:
            np.float = previous  # type: ignore[attr-defined]


@contextlib.contextmanager
def _quiet_lvis() -> Iterator[None]:
    """lvis warns (through a deprecated `Logger.warn`) on every in-memory result list; mute
    its logger and that DeprecationWarning for the block (restored afterwards)."""
    logger = logging.getLogger("lvis")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _check_lvis(dataset: Mapping[str, Any], where: str, iou_type: str) -> None:
    """The fields LVISEval reads beyond COCO's, so a COCO json fails here, in one line."""
    for cat in dataset["categories"]:
        if cat.get("frequency") not in ("r", "c", "f"):
            raise UserError(f"{where}: category {cat.get('name')!r} has frequency "
                            f"{cat.get('frequency')!r}, not r/c/f; is this an LVIS v1 json?")
    needed = ["neg_category_ids", "not_exhaustive_category_ids"]
    needed += ["height", "width"] if iou_type == "segm" else []
    for image in dataset["images"]:
        lacking = [k for k in needed if k not in image]
        if lacking:
            raise UserError(f"{where}: image {image.get('id')} has no {', '.join(lacking)}; "
                            "is this an LVIS v1 json?")


@contextlib.contextmanager
def _json_path(data: str | os.PathLike[str] | Mapping[str, Any]) -> Iterator[Path]:
    """A path to the ground-truth json; in-memory data is written to a temporary folder
    that is removed afterwards (lvis reads ground truth from files only)."""
    if not isinstance(data, Mapping):
        path = Path(data)
        if not path.is_file():
            raise UserError(f"LVIS annotation file not found: {path}; pass the lvis_v1_val.json path")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="clipheads-lvis-") as folder:
        path = Path(folder) / "ground_truth.json"
        path.write_text(json.dumps(data), encoding="utf-8")
        yield path


def _load_lvis(api: LvisApi, data: str | os.PathLike[str] | Mapping[str, Any], iou_type: str) -> Any:
    with _json_path(data) as path:
        where = "in-memory LVIS ground truth" if isinstance(data, Mapping) else str(path)
        try:
            gt = api.LVIS(str(path))
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:  # ValueError: bad json
            raise UserError(f"cannot read LVIS annotations {where}: {first_line(exc)}; "
                            "pass an LVIS v1 json (images, annotations, categories)") from exc
    _check_lvis(gt.dataset, where, iou_type)
    return gt


def evaluate_lvis(ground_truth: str | os.PathLike[str] | Mapping[str, Any],
                  results: Sequence[Mapping[str, Any]], iou_type: str = "segm",
                  split: OpenVocabSplit | None = None) -> Metrics:
    """LVIS v1 AP, AP50, AP75, APr, APc, APf by the `lvis` package's LVISEval (300
    detections per image, federated: only categories verified present or absent in an
    image are scored there), plus AP/AP50 and category counts for base and novel.

    ground_truth: an LVIS json path or its parsed dict; results: COCO-style result dicts
    (see `to_coco_results`); split: defaults to the frequency split (novel = rare, base =
    common + frequent: 337 / 866 categories on LVIS v1), where AP_novel equals APr.
    """
    api = lvis_api()
    gt = _load_lvis(api, ground_truth, iou_type)
    categories = gt.dataset["categories"]
    split = split if split is not None else OpenVocabSplit.from_frequency(categories)
    split_ids = split.category_ids(categories)
    image_ids = gt.get_img_ids()
    prepared = _prepare_results(results, image_ids, iou_type)
    counts = _counts(len(categories), len(image_ids), len(prepared), split_ids)
    frequency_keys = ("APr", "APc", "APf")
    if not prepared:
        return {**_zero_summary(split_ids), **{k: 0.0 for k in frequency_keys}, **counts}
    with numpy_float_alias(), _quiet_lvis():
        evaluator = api.LVISEval(gt, api.LVISResults(gt, prepared), iou_type)
        evaluator.run()
    params = evaluator.params
    precision = evaluator.eval["precision"][:, :, :, params.area_rng_lbl.index("all")]
    frequency = {k: max(float(evaluator.results[k]), 0.0) for k in frequency_keys}  # -1: no such category
    return {**_summary(precision, params.cat_ids, params.iou_thrs, split_ids), **frequency, **counts}
