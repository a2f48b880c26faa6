"""`lseg`: language-driven semantic segmentation (Li et al., ICLR 2022) on the core
backbone: predict with any words, train on the core runtime, evaluate with the paper's
protocols, and run the bundled tiny-world head in the demo.

Module level imports no torch (the CLI reads this class to build `--help`); the model,
data and inference modules load when an action runs.
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

from .config import InferConfig, LSegConfig

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from PIL import Image

    from clipheads.core.runtime import TrainReport

    from .inference import Segmenter
    from .model import LSegNet
    from .weights import HeadInfo

log = logging.getLogger(__name__)
DEFAULT_TEMPLATES = "single"


def resolve_templates(name: str) -> tuple[str, ...]:
    """A template-set name, or one literal format string with '{}' (LSeg uses '{}')."""
    from clipheads.core.text.templates import resolve_templates as resolve
    return resolve(name)


@dataclasses.dataclass
class Segmentation:
    """One image's result: `mask` [H, W] uint8 label indices at the input size."""

    mask: "np.ndarray"
    labels: list[str]
    fractions: dict[str, float]
    size: tuple[int, int]


def _head_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--head", type=Path, help="trained LSeg head (folder written by 'lseg train' "
                        "or tools/convert_lseg.py); default: the bundled tiny head")
    parser.add_argument("--multi-scale", action="store_true",
                        help="multi-scale + flip + sliding-window inference (infer.* settings)")
    parser.add_argument("--size", type=positive_int, help="single-scale long side in pixels")
    parser.add_argument("--templates", help="template set (single, imagenet80, ...) or a format "
                        "string with {} (LSeg uses '{}')")


@register_task("lseg")
class LSegTask(Task):
    summary = "language-driven semantic segmentation (LSeg: DPT decoder, pixels matched to any words)"
    Config = LSegConfig
    default_config = "tiny_world"
    writes = ("infer",)
    installable = True
    best_metric = "miou"
    cfg: LSegConfig
    _train_text: "torch.Tensor | None" = None

    @classmethod
    def add_arguments(cls, action: str, parser: argparse.ArgumentParser) -> None:
        if action == "infer":
            parser.add_argument("--image", nargs="+", type=Path, required=True, help="image file(s)")
            add_label_arguments(parser, required=True)
            _head_options(parser)
        if action == "train":
            parser.add_argument("--data", type=Path, help="ADE20K-layout root (default: the tiny world)")
        if action == "eval":
            _head_options(parser)
            parser.add_argument("--data", type=Path, help="ADE20K-layout root, or a VOC root with "
                                "--protocol pascal5i (default: the tiny world's test split)")
            parser.add_argument("--protocol", choices=["miou", "pascal5i"], default="miou",
                                help="mIoU over a folder/the tiny world, or PASCAL-5i episodes")
            parser.add_argument("--split", help="folder split to evaluate (default: data.val_split)")
            parser.add_argument("--fold", type=int, choices=range(4), action="append",
                                help="PASCAL-5i fold 0-3 (repeatable)")
            parser.add_argument("--limit", type=positive_int, help="evaluate at most N images")

    # text and heads ------------------------------------------------------------------------
    def templates(self, given: str | None = None, info: "HeadInfo | None" = None) -> str:
        """`given` > the user's config > the head's own > the default config > 'single'."""
        name = given
        if not name:
            name = (self.cfg.templates if self.ctx.user_chose("templates") else None) \
                or (info.templates if info else None) or self.cfg.templates or DEFAULT_TEMPLATES
        resolve_templates(name)  # unknown set names fail here, before any work
        return name

    def text(self, labels: list[str], templates: str) -> "torch.Tensor":
        """Label embeddings from the core text bank (encoded once, cached)."""
        return self.ctx.text_bank.embed(labels, resolve_templates(templates)).float()

    def load_head(self, head: str | Path | None = None) -> tuple["LSegNet", "HeadInfo"]:
        """The head at `head` / config `head` / the bundled tiny head, on its backbone.

        Unless the user chose a backbone, the head's own is used (a converted checkpoint
        carries its CLIP next to it); the backbone is built only after that."""
        from .model import build_net
        from .weights import bundled_head_dir, check_backbone, head_files, load_state, read_info, read_state
        path = Path(head or self.cfg.head or bundled_head_dir())
        info = read_info(path)
        if "backbone" not in self.ctx.chosen and not self.ctx.has_backbone:
            weights = head_files(path)[0].parent / info.backbone_weights if info.backbone_weights else None
            if (self.cfg.backbone, self.cfg.weights) != (info.backbone, str(weights) if weights else None):
                log.info("using the head's backbone %s", info.backbone)
                self.cfg.backbone, self.cfg.weights = info.backbone, str(weights) if weights else None
        backbone = self.ctx.backbone
        check_backbone(info, backbone, str(path))
        model_cfg = dataclasses.replace(info.model, timm=dataclasses.replace(info.model.timm, weights=None))
        net = build_net(model_cfg, backbone, info.text_dim)
        load_state(net, read_state(path), str(head_files(path)[0]))
        return net.to(self.ctx.device).eval(), info

    def infer_config(self, info: "HeadInfo | None", size: int | None = None,
                     multi_scale: bool = False) -> InferConfig:
        """Sizes: `size` > the user's config/--set > the head's own > the default config."""
        cfg = dataclasses.replace(self.cfg.infer)
        for name, value in (info.infer if info else {}).items():
            if hasattr(cfg, name) and value is not None and not self.ctx.user_chose(f"infer.{name}"):
                setattr(cfg, name, int(value))
        if multi_scale:
            cfg.multi_scale = True
        if size:
            cfg.size = size
        return cfg.resolved(info.infer if info else {})

    def segmenter(self, net: "LSegNet", labels: list[str], templates: str, cfg: InferConfig) -> "Segmenter":
        from .inference import Segmenter
        return Segmenter(net, self.text(labels, templates), cfg, self.ctx.device)

    # prediction (Python API) and the CLI's infer ---------------------------------------------
    def predict(self, images: Sequence["str | Path | Image.Image"], labels: Sequence[str], *,
                head: str | Path | None = None, templates: str | None = None, size: int | None = None,
                multi_scale: bool = False) -> list[Segmentation]:
        """Segment each image (a path or a PIL image) into `labels`."""
        from clipheads.core.data.images import load_image
        from clipheads.core.text.labels import check_labels

        from .inference import fractions
        labels = check_labels(labels, where="labels")
        net, info = self.load_head(head)
        seg = self.segmenter(net, labels, self.templates(templates, info),
                             self.infer_config(info, size, multi_scale))
        results = []
        for item in images:
            image = item if hasattr(item, "convert") else load_image(Path(item))
            mask = seg.predict(image)
            results.append(Segmentation(mask, list(labels), fractions(mask, labels), (image.width, image.height)))
        return results

    def infer(self, image: list[Path], labels: list[str], head: Path | None = None,
              multi_scale: bool = False, size: int | None = None, templates: str | None = None) -> list[dict]:
        """`<stem>_mask.png` (label indices) and `<stem>_overlay.png` per image into --out;
        every input is decoded before the first output is written."""
        from clipheads.core.data.images import check_image_inputs, load_image

        from clipheads.core.segmentation.render import mask_image, overlay, save_png
        if len(labels) == 1:
            log.warning("only one label (%s): every pixel gets it; add a contrast label such as "
                        "'other'", labels[0])
        check_image_inputs(image)
        if templates:
            resolve_templates(templates)
        out = self.ctx.out_dir()
        results = []
        for path, seg in zip(image, self.predict(image, labels, head=head, templates=templates,
                                                 size=size, multi_scale=multi_scale)):
            mask_path = save_png(mask_image(seg.mask), out / f"{path.stem}_mask.png")
            over_path = save_png(overlay(load_image(path), seg.mask, len(labels)),
                                 out / f"{path.stem}_overlay.png")
            results.append({"image": str(path), "mask": str(mask_path), "overlay": str(over_path),
                            "size": list(seg.size), "fractions": seg.fractions})
        return results

    # training on the core runtime ----------------------------------------------------------
    def apply_options(self, action: str, data: Path | None = None, **rest: Any) -> None:
        if data is not None:
            self.cfg.data.source, self.cfg.data.root = "folder", str(data)
        super().apply_options(action, **rest)

    def check_install(self) -> None:
        if self.cfg.backbone != "tiny-world" or self.cfg.data.source != "tiny-world":
            raise UserError("--install ships a head for the bundled tiny-world backbone trained on the "
                            "tiny world; drop --install or use --config tiny_world")

    def build_model(self) -> "LSegNet":
        from .model import build_net
        self.cfg.model.validate()
        return build_net(self.cfg.model, self.ctx.backbone)

    def train_data(self) -> TrainData:
        """Training crops, the label embeddings, and the validation scenes (kept for eval)."""
        from clipheads.core.data.skipping import SkipNoneCollate
        from clipheads.core.tinyworld import CATEGORIES

        from .data import (FolderSegmentation, TinyWorldSegmentation, TrainAugment, folder_scenes,
                           tiny_world_eval, tiny_world_labels)
        from .labels import folder_labels
        cfg, d = self.cfg, self.cfg.data
        cfg.model.validate()
        d.validate()
        self._train_templates = self.templates()
        aug = TrainAugment(cfg.augment, *self._image_stats(), d.ignore_index)
        if d.source == "tiny-world":
            labels, heldout = tiny_world_labels(d.background, d.heldout)
            dataset = TinyWorldSegmentation(labels, heldout, d.n_train, d.scene_size, aug, "train",
                                            d.heldout_mode, d.ignore_index, d.render_workers,
                                            seed=cfg.train.seed)
            self._val = tiny_world_eval("val", d.n_val, d.scene_size)
            self._eval_labels = [d.background, *CATEGORIES]
            self.best_metric = "miou_seen"
        else:
            if not d.root:
                raise UserError("data.source=folder needs data.root (or --data DIR)")
            root = Path(d.root)
            names = folder_labels(root, d.labels, d.labels_file, d.reduce_zero_label)
            labels, heldout, self._eval_labels = names.names, [], names.names
            dataset = FolderSegmentation(root, d.train_split, names, aug, d.ignore_index,
                                         seed=cfg.train.seed)
            self._val = list(folder_scenes(FolderSegmentation(root, d.val_split, names, None,
                                                              d.ignore_index), d.n_val))
            self.best_metric = "miou"
        self._labels, self._heldout = labels, list(heldout)
        self._train_text = self.text(labels, self._train_templates).to(self.ctx.device)
        self._eval_text = self.text(self._eval_labels, self._train_templates)
        return TrainData(dataset, SkipNoneCollate(min_samples=2))  # BatchNorm needs 2 samples

    def _image_stats(self) -> tuple[Sequence[float], Sequence[float]]:
        """Pixel mean/std of the configured image encoder (the timm ViT's or the CLIP's)."""
        m = self.cfg.model
        if m.encoder == "timm":
            return m.timm.mean, m.timm.std
        return self.ctx.backbone.mean, self.ctx.backbone.std

    def _quick_infer(self) -> InferConfig:
        """Single-scale inference at the training crop size (evaluation during training)."""
        return dataclasses.replace(self.cfg.infer, multi_scale=False).resolved(self._infer_defaults())

    def _infer_defaults(self) -> dict[str, int]:
        a = self.cfg.augment
        return {"size": a.crop_size, "base_size": a.base_size, "crop_size": a.crop_size,
                "stride": a.crop_size * 2 // 3}

    def loss(self, module: "torch.nn.Module", batch: Any) -> dict[str, "torch.Tensor"]:
        """Pixel cross-entropy over the training labels (ignore index respected); a batch
        whose samples were all unreadable, or all ignored, gives a zero loss, never NaN."""
        import torch.nn.functional as F

        from clipheads.core.engine.distributed import global_mean
        if batch is None:
            inner = getattr(module, "module", module)
            return {"loss": sum(p.sum() * 0.0 for p in inner.parameters() if p.requires_grad)}
        pixels, target = batch
        logits = module(pixels, self._train_text)
        ignore = self.cfg.data.ignore_index
        loss = F.cross_entropy(logits, target.long(), ignore_index=ignore, reduction="sum")
        return {"loss": global_mean(loss, (target != ignore).sum())}

    def param_groups(self, module: "torch.nn.Module") -> list[dict]:
        return module.param_groups(self.cfg.head_lr_mult)

    def evaluate_module(self, module: "torch.nn.Module") -> dict[str, float]:
        from clipheads.core.segmentation.evaluation import confusion

        from .inference import Segmenter
        d = self.cfg.data
        seen = [i for i, n in enumerate(self._eval_labels) if n not in self._heldout]
        cm = confusion(Segmenter(module, self._eval_text, self._quick_infer()), self._val,
                       len(self._eval_labels), d.ignore_index)
        return {"miou": cm.miou(), "miou_seen": cm.miou(seen), "pixel_accuracy": cm.pixel_accuracy()}

    def final_metrics(self, module: "torch.nn.Module", last_eval: dict[str, float]) -> dict[str, Any]:
        """Tiny world: the open-vocabulary report on the test split; folders: validation mIoU."""
        if self.cfg.data.source != "tiny-world":
            return super().final_metrics(module, last_eval)
        from clipheads.core.segmentation.evaluation import tiny_world_report

        from .data import tiny_world_eval
        from .inference import Segmenter
        d, quick = self.cfg.data, self._quick_infer()
        scenes = tiny_world_eval("test", self.cfg.eval.n_scenes, d.scene_size)
        make = lambda names: Segmenter(module, self.text(names, self._train_templates), quick)  # noqa: E731
        return tiny_world_report(make, scenes, d.background, self._heldout)

    def export(self, module: "torch.nn.Module", out: Path, report: "TrainReport") -> Path:
        """The head folder (`lseg_head.safetensors` + `lseg_head.json`) in `out/head`."""
        from .weights import save_head
        return save_head(out / "head", module.state_dict(), self._head_info(report))

    def _head_info(self, report: "TrainReport") -> "HeadInfo":
        from .weights import HeadInfo
        cfg, bb = self.cfg, self.ctx.backbone
        recorded = {k: getattr(cfg.infer, k) or v for k, v in self._infer_defaults().items()}
        return HeadInfo(model=cfg.model, backbone=cfg.backbone, text_dim=bb.embed_dim,
                        templates=self._train_templates, infer=recorded, backbone_fingerprint=bb.fingerprint,
                        labels=self._labels, heldout=self._heldout, metrics=report.metrics,
                        notes=f"trained by 'clipheads lseg train' for {report.steps} steps")

    def install(self, exported: Path) -> Path:
        """The bundled copy is stored in fp16 (half the size; masks are unchanged in practice)."""
        from .weights import bundled_head_dir, read_info, read_state, save_head
        return save_head(bundled_head_dir(), read_state(exported), read_info(exported), half=True)

    # evaluation ----------------------------------------------------------------------------
    def evaluate(self, data: Path | None = None, protocol: str = "miou", split: str | None = None,
                 fold: list[int] | None = None, limit: int | None = None, head: Path | None = None,
                 multi_scale: bool = False, size: int | None = None,
                 templates: str | None = None) -> dict | list[dict]:
        net, info = self.load_head(head)
        templates = self.templates(templates, info)
        icfg = self.infer_config(info, size, multi_scale)
        if protocol == "pascal5i":
            return self._pascal5i(net, templates, icfg, data, fold)
        from clipheads.core.segmentation.evaluation import confusion, tiny_world_report
        limit = limit or self.cfg.eval.limit
        if data is not None:
            from .data import FolderSegmentation, folder_scenes
            from .labels import folder_labels
            d = self.cfg.data
            names = folder_labels(Path(data), d.labels, d.labels_file, d.reduce_zero_label)
            ds = FolderSegmentation(Path(data), split or d.val_split, names, None, d.ignore_index)
            seg = self.segmenter(net, names.names, templates, icfg)
            n = len(ds) if limit is None else min(limit, len(ds))
            seen: list[str] = []
            scenes = (seen.append(s.name) or s for s in folder_scenes(ds, limit))
            cm = confusion(seg, scenes, len(names.names), d.ignore_index, progress=self.ctx.progress, total=n)
            return {"data": str(data), "images": len(seen), "skipped": ds.skipped,
                    "labels_from": names.source, **cm.summary(names.names)}
        from .data import tiny_world_eval
        scenes = tiny_world_eval("test", limit or self.cfg.eval.n_scenes, self.cfg.data.scene_size)
        make = lambda names: self.segmenter(net, names, templates, icfg)  # noqa: E731
        return {"data": "tiny-world test split",
                **tiny_world_report(make, scenes, self.cfg.data.background, info.heldout,
                                    progress=self.ctx.progress)}

    def _pascal5i(self, net: "LSegNet", templates: str, icfg: InferConfig, data: Path | None,
                  folds: list[int] | None) -> list[dict]:
        from .episodes import VOCFolder, evaluate_fold
        if data is None:
            raise UserError("--protocol pascal5i needs --data VOC_ROOT (JPEGImages/, SegmentationClassAug/)")
        voc = VOCFolder(data)
        cache: dict[tuple[str, ...], Any] = {}

        def predict(image, labels):
            key = tuple(labels)
            if key not in cache:
                cache[key] = self.segmenter(net, list(labels), templates, icfg)
            return cache[key].predict(image)

        return [{"protocol": "pascal5i", **dataclasses.asdict(evaluate_fold(voc, f, predict, self.cfg.eval.episodes))}
                for f in folds or self.cfg.eval.folds]

    # presentation ------------------------------------------------------------------------
    def describe(self, action: str, result: Any) -> list[str]:
        if action == "infer":
            lines = []
            for r in result:
                top = sorted(r["fractions"].items(), key=lambda kv: -kv[1])[:5]
                lines.append(f"{r['image']}: {', '.join(f'{k} {v:.3f}' for k, v in top)} -> {r['mask']}")
            return lines
        if action == "train":
            return [f"lseg: {result['steps']} steps; {_format(_headline(result))}; head in {result['exported']}"
                    + (f", installed to {result['installed']}" if "installed" in result else "")]
        if isinstance(result, list):
            return [f"PASCAL-5i fold {r['fold']}: mIoU {r['miou']:.4f}, FB-IoU {r['fb_iou']:.4f} "
                    f"({r['episodes']} episodes)" for r in result]
        return [_format(_headline(result))]

    def demo(self, examples: list[Path], out: Path) -> list[DemoItem] | None:
        """The bundled tiny head on the example images, every shape name as a label. Each
        overlay comes with its colour legend, and a first cell says which shapes the head
        never saw in training (it finds those through CLIP's text embeddings alone)."""
        import shutil

        import numpy as np

        from clipheads.core.data.images import load_image
        from clipheads.core.tinyworld import CATEGORIES

        from clipheads.core.segmentation.render import overlay, palette, save_png
        from .weights import bundled_head_dir, read_info
        labels = [self.cfg.data.background, *CATEGORIES]
        try:
            heldout = read_info(Path(self.cfg.head or bundled_head_dir())).heldout
            results = self.predict(examples, labels)
        except UserError as exc:
            log.warning("lseg demo skipped: %s", exc)
            return None
        names = [f"{n} (held out)" if n in heldout else n for n in labels]
        colours = palette(len(labels))
        items = [_demo_labels_item(names, colours, heldout, out)]
        for path, seg in zip(examples, results):
            shutil.copy2(path, out / path.name)
            name, key = f"{path.stem}_overlay.png", f"{path.stem}_legend.png"
            save_png(overlay(load_image(path), seg.mask, len(labels)), out / name)
            present = np.unique(seg.mask)
            _save_legend([names[i] for i in present], colours[present], out / key)
            frac = {k: v for k, v in seg.fractions.items() if k != labels[0] and v >= 0.01}
            lines = [f"{k}: {v:.0%}" + (" (held out)" if k in heldout else "")
                     for k, v in sorted(frac.items(), key=lambda kv: -kv[1])[:3]]
            items.append(DemoItem(path.stem, [path.name, name, key], lines or ["(background only)"]))
        return items


def _save_legend(names: list[str], colours: "np.ndarray", path: Path) -> None:
    """A legend PNG drawn at the gallery's picture height, so its text is not rescaled."""
    from clipheads.core.demo import GALLERY_IMAGE_HEIGHT

    from clipheads.core.segmentation.render import legend, save_png
    save_png(legend(names, colours, height=GALLERY_IMAGE_HEIGHT), path)


def _demo_labels_item(names: list[str], colours: "np.ndarray", heldout: list[str], out: Path) -> DemoItem:
    """The gallery's first lseg cell: every label's colour and the classes held out of training."""
    _save_legend(names, colours, out / "labels_legend.png")
    if not heldout:
        return DemoItem("labels", ["labels_legend.png"], ["no class was held out of training"])
    return DemoItem("labels", ["labels_legend.png"], [
        f"held out of training: {', '.join(heldout)}",
        "the head never saw them; it segments them zero-shot, through CLIP's text embeddings"])


def _headline(metrics: dict) -> dict:
    keys = ("miou", "miou_seen", "miou_heldout", "chance_iou_heldout", "pixel_accuracy")
    out = {k: round(float(metrics[k]), 4) for k in keys if k in metrics}
    if isinstance(metrics.get("episodes"), dict) and metrics["episodes"]:
        out["episode_fb_iou_heldout"] = round(metrics["episodes"]["fb_iou"], 4)
        out["episode_miou_heldout"] = round(metrics["episodes"]["miou"], 4)
    return out


def _format(headline: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in headline.items())
