"""`vild`: open-vocabulary detection by distilling the frozen CLIP into region heads
(Gu et al., ICLR 2022).

A Mask R-CNN (torchvision's parts) whose region embeddings are scored against the text
bank's label embeddings: trained on base classes (ViLD-text) and distilled from the
frozen CLIP's embeddings of cached proposals (ViLD-image, `vild precompute`), so it
detects words it never saw. Module level imports no torch (the CLI reads this class).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from clipheads.core.cli_args import add_label_arguments, positive_int
from clipheads.core.errors import UserError
from clipheads.core.registry import register_task
from clipheads.core.task import DemoItem, Task, TrainData

from .config import ViLDConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

    from clipheads.core.runtime import TrainReport

    from .detector import ViLDDetector
    from .weights import DetectorInfo

log = logging.getLogger(__name__)
BRANCHES = ("ensemble", "text", "image")
BENCHMARKS = ("tiny-world", "coco", "lvis")


@dataclasses.dataclass
class Detection:
    """One detected object: label, score, box [x0, y0, x1, y1] in input pixels, and its
    mask (bool [H, W]) when the detector has a mask head."""

    label: str
    score: float
    box: list[float]
    mask: Any = None

    def to_json(self) -> dict[str, Any]:
        row = {"label": self.label, "score": round(self.score, 5), "box": [round(v, 2) for v in self.box]}
        if self.mask is not None:
            from .render import mask_rle
            row["mask_rle"] = mask_rle(self.mask)
        return row


def _scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(v) for v in text.split(","))
    except ValueError:
        scales = ()
    if not scales or any(not 0.0 < s <= 10.0 for s in scales):
        raise argparse.ArgumentTypeError(f"'{text}': give comma-separated crop scales in (0, 10], e.g. 1.0,1.5")
    return scales


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, help="a detector folder written by 'vild train' "
                        "(default: the bundled tiny-world detector)")
    parser.add_argument("--branch", choices=BRANCHES, default="ensemble", help="score with the ensemble, "
                        "or the text or image branch alone (a ViLD-ensemble detector; others have one)")


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-json", type=Path, help="COCO-format instances json (COCO, LVIS v1)")
    parser.add_argument("--images", type=Path, help="the folder its file_name entries are in")
    parser.add_argument("--limit", type=positive_int, help="at most N images")


@register_task("vild")
class ViLDTask(Task):
    summary = "open-vocabulary detection: CLIP distilled into Mask R-CNN region heads (ViLD)"
    Config = ViLDConfig
    default_config = "tiny_world"
    actions = ("infer", "train", "eval", "precompute")
    writes = ("infer", "precompute")
    installable = True
    best_metric = "AP50_novel"
    cfg: ViLDConfig

    @classmethod
    def add_arguments(cls, action: str, parser: argparse.ArgumentParser) -> None:
        if action == "infer":
            parser.add_argument("--image", nargs="+", type=Path, required=True, help="image file(s)")
            add_label_arguments(parser, required=True)
            _model_options(parser)
            parser.add_argument("--score-threshold", type=float, help="keep detections scoring above this "
                                "(default from the config: 0.3)")
            parser.add_argument("--max-detections", type=positive_int, help="keep at most N per image")
        if action == "eval":
            _model_options(parser)
            parser.add_argument("--benchmark", choices=BENCHMARKS, default="tiny-world",
                                help="tiny-world validation scenes, or a COCO / LVIS json (--data-json)")
            _data_options(parser)
        if action == "precompute":
            _data_options(parser)
            parser.add_argument("--checkpoint", type=Path, help="the detector whose RPN proposes regions "
                                "(default: the bundled tiny-world detector)")
            parser.add_argument("--proposals", type=Path, help="use these proposals instead of an RPN: "
                                "a COCO results json ([{image_id, bbox xywh, score}, ...])")
            parser.add_argument("--max-proposals", type=positive_int, default=300, help="M per image")
            parser.add_argument("--shard-size", type=positive_int, default=256, help="images per cache shard")
            parser.add_argument("--scales", type=_scales, default=(1.0, 1.5), help="crop scales around each "
                                "box, embedded and summed (the paper: 1.0,1.5)")

    # models -----------------------------------------------------------------------------
    def build_detector(self, info: "DetectorInfo") -> "ViLDDetector":
        from .detector import ViLDDetector
        return ViLDDetector(info.model, info.vild, info.embed_dim)

    def load_detector(self, checkpoint: str | Path | None = None) -> tuple["ViLDDetector", "DetectorInfo"]:
        """A trained detector folder (or the bundled one), on the device, eval mode."""
        from clipheads.core.state_dict import load_state_dict_strict

        from .weights import bundled_detector_dir, read_info, read_state
        path = Path(checkpoint or self.cfg.checkpoint or bundled_detector_dir())
        if not path.exists():
            raise UserError(f"ViLD detector not found: {path}; pass a folder written by 'vild train'")
        info = read_info(path)
        if "backbone" not in self.ctx.chosen and not self.ctx.has_backbone and self.cfg.backbone != info.backbone:
            self.cfg.backbone, self.cfg.weights = info.backbone, None
        if self.ctx.backbone.fingerprint != info.backbone_fingerprint:
            raise UserError(f"the detector at {path} was trained in the text space of backbone {info.backbone} "
                            f"({info.backbone_fingerprint}); this run uses {self.ctx.backbone.spec} "
                            f"({self.ctx.backbone.fingerprint}): pass --backbone {info.backbone}")
        model = self.build_detector(info)
        load_state_dict_strict(model, read_state(path), str(path), "this ViLD detector")
        model.roi_heads.discard_background = self.cfg.infer.discard_background
        return model.to(self.ctx.device).eval(), info

    def vocabulary(self, labels: Sequence[str], templates: str, base: Sequence[str] = ()) -> tuple["torch.Tensor", "torch.Tensor"]:
        """(text embeddings [C, E] from the text bank, novel [C] bool: not among `base`)."""
        import torch

        from clipheads.core.text.templates import resolve_templates
        text = self.ctx.text_bank.embed(list(labels), resolve_templates(templates)).float()
        known = set(base)
        return text, torch.tensor([label not in known for label in labels], dtype=torch.bool)

    # prediction -------------------------------------------------------------------------
    def predict(self, images: Sequence["str | Path | Image.Image"], labels: Sequence[str], *,
                checkpoint: str | Path | None = None, branch: str = "ensemble",
                score_threshold: float | None = None, max_detections: int | None = None
                ) -> list[list[Detection]]:
        """Detect `labels` (any words) in each image; best first."""
        import torch

        from clipheads.core.data.images import load_image
        from clipheads.core.text.labels import check_labels

        from .data import to_tensor
        labels = check_labels(labels, where="labels")
        threshold = self.cfg.infer.score_threshold if score_threshold is None else score_threshold
        if not 0.0 <= threshold <= 1.0:
            raise UserError(f"--score-threshold {threshold}: a score in [0, 1]")
        keep = max_detections or self.cfg.infer.max_detections
        model, info = self.load_detector(checkpoint)
        model.set_vocabulary(*self.vocabulary(labels, info.templates, info.base))
        model.roi_heads.branch = branch
        results = []
        for item in images:
            image = item if hasattr(item, "convert") else load_image(Path(item))
            with torch.no_grad():
                out = model([to_tensor(image.convert("RGB")).to(self.ctx.device)])[0]
            rows = []
            for i in torch.where(out["scores"] > threshold)[0][:keep].tolist():
                mask = (out["masks"][i, 0] > 0.5).cpu().numpy() if "masks" in out else None
                rows.append(Detection(labels[int(out["labels"][i]) - 1], float(out["scores"][i]),
                                      [float(v) for v in out["boxes"][i].tolist()], mask))
            results.append(rows)
        return results

    def infer(self, image: list[Path], labels: list[str], checkpoint: Path | None = None,
              branch: str = "ensemble", score_threshold: float | None = None,
              max_detections: int | None = None) -> list[dict]:
        """`<stem>.json` (detections) and `<stem>_boxes.png` per image into --out; every
        input is decoded before the first output is written."""
        import json

        from clipheads.core.atomic import atomic_write_text
        from clipheads.core.data.images import check_image_inputs, load_image

        from .render import draw_detections
        check_image_inputs(image)
        results = self.predict(image, labels, checkpoint=checkpoint, branch=branch,
                               score_threshold=score_threshold, max_detections=max_detections)
        out = self.ctx.out_dir()
        rows = []
        for path, dets in zip(image, results):
            body = [d.to_json() for d in dets]
            js = atomic_write_text(out / f"{path.stem}.json", json.dumps(body, indent=1) + "\n")
            png = draw_detections(load_image(path), dets, out / f"{path.stem}_boxes.png")
            rows.append({"image": str(path), "json": str(js), "boxes_png": str(png), "detections": body})
        return rows

    # evaluation -------------------------------------------------------------------------
    def _benchmark_data(self, benchmark: str, data_json: Path | None, images: Path | None):
        if benchmark == "tiny-world":
            if data_json is not None or images is not None:
                raise UserError("--data-json/--images are for --benchmark coco/lvis; the tiny world is built in")
            d = self.cfg.data
            root = self._tiny_world(d.n_train, d.n_val, d.scene_size)
            return root / "annotations" / "instances_val.json", root / "images" / "val"
        if data_json is None or images is None:
            raise UserError(f"--benchmark {benchmark} needs --data-json FILE and --images DIR")
        return data_json, images

    def _tiny_world(self, n_train: int, n_val: int, size: int) -> Path:
        from clipheads.core.text.bank import default_cache_dir

        from .tinyworld import tiny_world_coco
        return tiny_world_coco(Path(self.ctx.cache_dir or default_cache_dir()), n_train, n_val, size)

    def split(self, categories: list[dict], benchmark: str):
        """The open-vocabulary split of `categories` the config (or benchmark) asks for."""
        from .evaluation import OVR_COCO_SPLIT, OpenVocabSplit
        from .tinyworld import BASE, NOVEL
        d = self.cfg.data
        if benchmark == "tiny-world" and not d.base:
            return OpenVocabSplit(BASE, NOVEL)
        if d.split == "lvis-frequency" or benchmark == "lvis":
            return OpenVocabSplit.from_frequency(categories)
        if d.split == "ovr-coco":
            return OVR_COCO_SPLIT
        if not d.base:
            raise UserError("data.base is empty: list the base classes (or set data.split)")
        return OpenVocabSplit.from_names(d.base, d.novel)

    def detect_dataset(self, model: "ViLDDetector", info: "DetectorInfo", data_json: Path, images: Path,
                       benchmark: str, limit: int | None = None) -> dict[str, Any]:
        """COCO/LVIS metrics of `model` on a json + folder, with the base/novel bookkeeping."""
        import torch

        from clipheads.core.data.coco import CocoDetection, coco_index

        from .data import to_tensor
        from .evaluation import evaluate_coco, evaluate_lvis
        ds = CocoDetection(images, data_json)
        categories = ds.coco.dataset["categories"]
        split = self.split(categories, benchmark)
        names = [c["name"] for c in categories]
        text, _ = self.vocabulary(names, info.templates)
        novel = torch.tensor([n in set(split.novel) for n in names], dtype=torch.bool)
        model.set_vocabulary(text, novel)
        ids = [int(c["id"]) for c in categories]
        results, count = [], 0
        for index in range(len(ds)):
            if limit is not None and count >= limit:
                break
            item = ds[index]
            if item is None:
                continue
            image, target = item
            count += 1
            with torch.no_grad():
                out = model([to_tensor(image).to(self.ctx.device)])[0]
            results += _coco_rows(out, int(target["image_id"]), ids)
        gt = data_json
        if limit is not None:
            gt = _subset(ds.coco.dataset, {r for r in ds.ids[:count]})
        if benchmark == "lvis":
            metrics = {"bbox": evaluate_lvis(gt, results, "bbox", split)}
            if model.cfg.mask:
                metrics["segm"] = evaluate_lvis(gt, results, "segm", split)
        else:
            coco = ds.coco if limit is None else coco_index(gt)
            metrics = {"bbox": evaluate_coco(coco, results, "bbox", split)}
            if model.cfg.mask:
                metrics["segm"] = evaluate_coco(coco, results, "segm", split)
        return {"benchmark": benchmark, "images": count, "skipped": ds.skips.count,
                "branch": model.roi_heads.branch, **metrics}

    def evaluate(self, benchmark: str = "tiny-world", data_json: Path | None = None, images: Path | None = None,
                 limit: int | None = None, checkpoint: Path | None = None, branch: str = "ensemble") -> dict:
        model, info = self.load_detector(checkpoint)
        model.roi_heads.branch = branch
        data_json, images = self._benchmark_data(benchmark, data_json, images)
        return self.detect_dataset(model, info, data_json, images, benchmark, limit)

    # precompute (ViLD-image targets) --------------------------------------------------------
    def precompute(self, data_json: Path | None = None, images: Path | None = None, limit: int | None = None,
                   checkpoint: Path | None = None, proposals: Path | None = None, max_proposals: int = 300,
                   shard_size: int = 256, scales: Sequence[float] = (1.0, 1.5)) -> dict:
        """Embed up to M proposals per training image with the frozen CLIP into a
        resumable, sharded cache at --out (rank-parallel under torchrun)."""
        from .precompute import run_precompute
        if data_json is None and images is None:
            d = self.cfg.data
            root = self._tiny_world(d.n_train, d.n_val, d.scene_size)
            data_json, images = root / "annotations" / "instances_train.json", root / "images" / "train"
        elif data_json is None or images is None:
            raise UserError("precompute needs both --data-json FILE and --images DIR (or neither: the tiny world)")
        return run_precompute(self, data_json, images, self.ctx.out_dir(), checkpoint, proposals,
                              max_proposals, shard_size, limit, tuple(scales))

    # training on the core runtime ---------------------------------------------------------
    def _train_paths(self) -> tuple[Path, Path]:
        d = self.cfg.data
        if d.source == "tiny-world":
            root = self._tiny_world(d.n_train, d.n_val, d.scene_size)
            return root / "annotations" / "instances_train.json", root / "images" / "train"
        if not d.train_json or not d.train_images:
            raise UserError("data.source=coco needs data.train_json and data.train_images")
        return Path(d.train_json), Path(d.train_images)

    def _val_paths(self) -> tuple[Path, Path] | None:
        d = self.cfg.data
        if d.source == "tiny-world":
            root = self._tiny_world(d.n_train, d.n_val, d.scene_size)
            return root / "annotations" / "instances_val.json", root / "images" / "val"
        return (Path(d.val_json), Path(d.val_images)) if d.val_json and d.val_images else None

    def _base_names(self, ann_file: Path) -> list[str]:
        from clipheads.core.data.coco import load_coco
        categories = load_coco(ann_file).dataset["categories"]
        return list(self.split(categories, "tiny-world" if self.cfg.data.source == "tiny-world" else "coco").base)

    def check_install(self) -> None:
        if self.cfg.backbone != "tiny-world" or self.cfg.data.source != "tiny-world":
            raise UserError("--install ships a detector for the bundled tiny-world backbone trained on the "
                            "tiny world; drop --install or use --config tiny_world")

    def build_model(self) -> "torch.nn.Module":
        from .detector import ViLDDetector
        self.cfg.validate()
        if self.cfg.vild.mode != "text" and not self.cfg.data.cache:
            raise UserError(f"vild.mode={self.cfg.vild.mode} distils cached CLIP embeddings: run "
                            "'clipheads vild precompute --out CACHE' and set data.cache=CACHE (or vild.mode=text)")
        model = ViLDDetector(self.cfg.model, self.cfg.vild, self.ctx.backbone.embed_dim)
        model.set_vocabulary(*self._training_vocabulary()[1:])
        return model

    def _training_vocabulary(self) -> tuple[list[str], "torch.Tensor", "torch.Tensor | None"]:
        """(class names the labels index, their text embeddings, classes zeroed in training):
        the base classes from the text bank, or the released classifier over all classes
        with the released rare mask (`data.classifier_file` / `data.rare_mask_file`)."""
        d = self.cfg.data
        train_json, _ = self._train_paths()
        if d.classifier_file is None:
            base = self._base_names(train_json)
            return base, self.vocabulary(base, d.templates)[0].to(self.ctx.device), None
        from clipheads.core.data.coco import load_coco

        from .importers import load_rare_mask, load_text_classifier
        categories = sorted(load_coco(train_json).dataset["categories"], key=lambda c: c["id"])
        text = load_text_classifier(d.classifier_file, self.ctx.backbone.embed_dim)
        if text.shape[0] != len(categories):
            raise UserError(f"data.classifier_file has {text.shape[0]} classes, {train_json} {len(categories)}; "
                            "use the classifier made for this dataset's categories (in id order)")
        rare = load_rare_mask(d.rare_mask_file, len(categories)) if d.rare_mask_file else None
        return [c["name"] for c in categories], text.to(self.ctx.device), rare

    def train_data(self) -> TrainData:
        from .data import BaseClassSamples, collate
        from .proposal_cache import ProposalCache
        train_json, train_images = self._train_paths()
        cache = None
        if self.cfg.vild.mode != "text":
            cache = ProposalCache.open(self.cfg.data.cache, self.ctx.backbone.fingerprint).load()
        vocabulary = self._training_vocabulary()[0] if self.cfg.data.classifier_file else None
        ds = BaseClassSamples(train_images, train_json, self._base_names(train_json), cache,
                              with_masks=self.cfg.model.mask, max_distill=self.cfg.vild.distill_rois,
                              vocabulary=vocabulary)
        log.info("vild training data: %d images, %d novel-class boxes held out", len(ds), ds.removed_novel)
        return TrainData(ds, collate)

    def loss(self, module: "torch.nn.Module", batch: Any) -> dict[str, "torch.Tensor"]:
        inner = getattr(module, "module", module)
        if batch is None:
            return {"loss": sum(p.sum() * 0.0 for p in inner.parameters() if p.requires_grad)}
        images, targets, distill = batch
        device = next(inner.parameters()).device
        images = [i.to(device) for i in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        if distill is not None:
            from .roi_heads import DistillTargets
            distill = [DistillTargets(d.boxes.to(device), d.embeddings.to(device)) for d in distill]
        losses = dict(module(images, targets, distill))
        losses["loss"] = sum(losses.values())
        return losses

    def _info(self, metrics: dict[str, Any] | None = None, notes: str = "") -> "DetectorInfo":
        from .weights import DetectorInfo
        train_json, _ = self._train_paths()
        base = self._base_names(train_json)
        from clipheads.core.data.coco import load_coco
        names = [c["name"] for c in load_coco(train_json).dataset["categories"]]
        bb = self.ctx.backbone
        return DetectorInfo(self.cfg.model, self.cfg.vild, self.cfg.backbone, bb.fingerprint, bb.embed_dim, base,
                            [n for n in names if n not in base], self.cfg.data.templates, metrics or {}, notes)

    def evaluate_module(self, module: "torch.nn.Module") -> dict[str, float] | None:
        """Box AP50 on the validation json (novel, base, all), the detector in eval mode."""
        paths = self._val_paths()
        if paths is None:
            return None
        benchmark = "tiny-world" if self.cfg.data.source == "tiny-world" else "coco"
        inner = getattr(module, "module", module)
        result = self.detect_dataset(inner, self._info(), paths[0], paths[1], benchmark,
                                     self.cfg.data.max_val_images)
        box = result["bbox"]
        inner.set_vocabulary(*self._training_vocabulary()[1:])   # back to what training scores
        return {k: float(box[k]) for k in ("AP50_novel", "AP50_base", "AP50", "AP") if k in box}

    def export(self, module: "torch.nn.Module", out: Path, report: "TrainReport") -> Path:
        from .weights import save_detector
        info = self._info(report.metrics, f"trained by 'clipheads vild train' for {report.steps} steps, "
                                          f"mode {self.cfg.vild.mode}; novel classes never seen as boxes or names")
        return save_detector(out / "detector", module.state_dict(), info)

    def install(self, exported: Path) -> Path:
        from .weights import bundled_detector_dir, read_info, read_state, save_detector
        return save_detector(bundled_detector_dir(), read_state(exported), read_info(exported), half=True)

    # presentation -------------------------------------------------------------------------
    def describe(self, action: str, result: Any) -> list[str]:
        if action == "infer":
            return [f"{r['image']}: " + (", ".join(f"{d['label']} {d['score']:.2f}" for d in r["detections"][:6])
                                         or "nothing above the threshold") + f" -> {r['json']}, {r['boxes_png']}"
                    for r in result]
        if action == "precompute":
            return [f"vild precompute: {result['images']} images, {result['written']} shards written "
                    f"({result['skipped']} unreadable images skipped) -> {result['cache']}"]
        if action == "train":
            return [f"vild: {result['steps']} steps; novel AP50 {result.get('AP50_novel', float('nan')):.4f}, "
                    f"base AP50 {result.get('AP50_base', float('nan')):.4f}; detector in {result.get('exported')}"
                    + (f", installed to {result['installed']}" if "installed" in result else "")]
        box = result["bbox"]
        return [f"{result['benchmark']} ({result['branch']}): box AP50 novel {box.get('AP50_novel', float('nan')):.4f}, "
                f"base {box.get('AP50_base', float('nan')):.4f}, all {box['AP50']:.4f} over {result['images']} images"]

    def demo(self, examples: list[Path], out: Path) -> list[DemoItem] | None:
        """The bundled tiny-world detector on the example images: base and novel shapes."""
        from .render import draw_detections
        from .tinyworld import BASE, NOVEL
        from .weights import bundled_detector_dir, is_detector_folder
        if not is_detector_folder(bundled_detector_dir()):
            return None
        import shutil

        from clipheads.core.data.images import load_image
        labels = [*BASE, *NOVEL]
        try:
            results = self.predict(examples, labels)
        except UserError as exc:
            log.warning("vild demo skipped: %s", exc)
            return None
        items = []
        for path, dets in zip(examples, results):
            shutil.copy2(path, out / path.name)
            boxes = draw_detections(load_image(path), dets, out / f"{path.stem}_boxes.png")
            lines = [f"{d.label}{' (novel)' if d.label in NOVEL else ''}: {d.score:.2f}" for d in dets[:4]]
            items.append(DemoItem(path.stem, [path.name, boxes.name], lines or ["no detection above 0.3"]))
        return items


def _coco_rows(out: dict, image_id: int, category_ids: list[int]) -> list[dict]:
    """COCO result dicts of one image's detector output (labels 1-based into `category_ids`)."""
    from .render import mask_rle
    rows = []
    for i in range(len(out["scores"])):
        x0, y0, x1, y1 = (float(v) for v in out["boxes"][i].tolist())
        row = {"image_id": image_id, "category_id": category_ids[int(out["labels"][i]) - 1],
               "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(out["scores"][i])}
        if "masks" in out:
            row["segmentation"] = mask_rle((out["masks"][i, 0] > 0.5).cpu().numpy())
        rows.append(row)
    return rows


def _subset(dataset: dict, image_ids: set[int]) -> dict:
    """The ground truth restricted to `image_ids` (evaluating a --limit prefix)."""
    return {**dataset, "images": [i for i in dataset["images"] if i["id"] in image_ids],
            "annotations": [a for a in dataset["annotations"] if a["image_id"] in image_ids]}
