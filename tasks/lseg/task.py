"""`lseg`: language-driven semantic segmentation (Li et al., ICLR 2022) on the core
backbone: infer with any words, train with the core trainer, evaluate with the paper's
protocols, and run the bundled tiny-world head in the demo."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from clipheads.core.cli_args import add_label_arguments, read_labels
from clipheads.core.data.errors import CorruptSample, MissingSample
from clipheads.core.data.images import load_image
from clipheads.core.data.skipping import skip_none_collate
from clipheads.core.engine import Trainer
from clipheads.core.errors import UserError
from clipheads.core.registry import register_task
from clipheads.core.task import DemoItem, Task
from clipheads.core.text.templates import get_templates
from clipheads.core.tinyworld import CATEGORIES

from .config import InferConfig, LSegConfig
from .data import (FolderSegmentation, TinyWorldSegmentation, TrainAugment, tiny_world_eval,
                   tiny_world_labels)
from .episodes import VOCFolder, evaluate_fold
from .evaluation import confusion, folder_scenes, tiny_world_report
from .inference import Segmenter, fractions
from .labels import folder_labels
from .model import LSegNet, build_net
from .render import mask_image, overlay, save_png
from .weights import (HeadInfo, bundled_head_dir, check_backbone, head_files, load_state, read_info,
                      read_state, save_head)

log = logging.getLogger(__name__)
DEFAULT_TEMPLATES = "single"


def resolve_templates(name: str) -> tuple[str, ...]:
    """A template-set name, or one literal format string containing '{}' (LSeg: '{}')."""
    if "{}" in name:
        return (name,)
    return get_templates(name)


def check_image_files(paths: list[Path]) -> None:
    """Every input exists and has a recognised header, and stems are distinct (outputs are
    named by stem), before any work starts."""
    stems: dict[str, Path] = {}
    for p in paths:
        if not p.is_file():
            raise MissingSample(p, "image file")
        try:
            with Image.open(p) as im:
                im.size  # noqa: B018 - reads the header only
        except Exception as exc:
            raise CorruptSample(p, "not a recognised image format") from exc
        if p.stem in stems:
            raise UserError(f"{stems[p.stem]} and {p} share the name '{p.stem}', so their outputs "
                            "would overwrite each other; rename one")
        stems[p.stem] = p


@register_task("lseg")
class LSegTask(Task):
    summary = "language-driven semantic segmentation (LSeg: DPT decoder, pixels matched to any words)"
    Config = LSegConfig
    default_config = "tiny_world"
    cfg: LSegConfig
    _train_text: torch.Tensor | None = None

    @classmethod
    def add_arguments(cls, action: str, parser: argparse.ArgumentParser) -> None:
        if action == "infer":
            parser.add_argument("--image", nargs="+", type=Path, required=True, help="image file(s)")
            add_label_arguments(parser, required=True)
        if action in ("infer", "eval"):
            parser.add_argument("--head", type=Path, help="trained LSeg head (folder written by "
                                "'lseg train' or tools/convert_lseg.py); default: the bundled tiny head")
            parser.add_argument("--multi-scale", action="store_true",
                                help="multi-scale + flip + sliding-window inference (infer.* settings)")
            parser.add_argument("--size", type=int, help="single-scale long side in pixels")
            parser.add_argument("--templates", help="template set (single, imagenet80, ...) or a "
                                "format string with {} (LSeg uses '{}')")
        if action == "train":
            parser.add_argument("--data", type=Path, help="ADE20K-layout root (default: the tiny world)")
            parser.add_argument("--resume", action="store_true", help="continue the run in --out")
            parser.add_argument("--install", action="store_true",
                                help="install the trained head as the bundled tiny-world head")
        if action == "eval":
            parser.add_argument("--data", type=Path, help="ADE20K-layout root, or a VOC root with "
                                "--protocol pascal5i (default: the tiny world's test split)")
            parser.add_argument("--protocol", choices=["miou", "pascal5i"], default="miou")
            parser.add_argument("--split", help="folder split to evaluate (default: data.val_split)")
            parser.add_argument("--fold", type=int, action="append", help="PASCAL-5i fold (repeatable)")
            parser.add_argument("--limit", type=int, help="evaluate at most N images")

    # building --------------------------------------------------------------------------
    def build(self) -> LSegNet:
        return build_net(self.cfg.model, self.ctx.backbone)

    @staticmethod
    def _explicit(args: argparse.Namespace | None, key: str) -> bool:
        """Whether the user chose `key` (a --set override or a --config of their own); values
        that only come from the automatic default config yield to the head's own."""
        if getattr(args, "config", None):
            return True
        return any(item.split("=", 1)[0].strip() == key for item in getattr(args, "overrides", None) or [])

    def _templates(self, args: argparse.Namespace | None, info: HeadInfo | None = None) -> str:
        """--templates > the user's config > the head's own > the default config > 'single'."""
        head = info.templates if info else None
        name = getattr(args, "templates", None)
        if not name:
            name = (self.cfg.templates if self._explicit(args, "templates") else None) or head \
                or self.cfg.templates or DEFAULT_TEMPLATES
        resolve_templates(name)  # unknown set names fail here, before any work
        return name

    def text(self, labels: list[str], templates: str) -> torch.Tensor:
        """Label embeddings from the core text bank (encoded once, cached)."""
        return self.ctx.text_bank.embed(labels, resolve_templates(templates)).float()

    def load_head(self, args: argparse.Namespace | None = None) -> tuple[LSegNet, HeadInfo]:
        """The head of --head / config `head` / the bundled tiny head, on its backbone.

        Without an explicit --backbone the head's own backbone is used (a converted
        checkpoint carries its CLIP next to it); the backbone is built only after that."""
        path = getattr(args, "head", None) or self.cfg.head
        path = Path(path) if path else bundled_head_dir()
        info = read_info(path)
        if not getattr(args, "backbone", None) and "backbone" not in vars(self.ctx):
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

    def infer_config(self, args: argparse.Namespace | None, info: HeadInfo | None) -> InferConfig:
        """Sizes: --size > the user's config/--set > the head's own > the default config."""
        cfg = dataclasses.replace(self.cfg.infer)
        for name, value in (info.infer if info else {}).items():
            if hasattr(cfg, name) and value is not None and not self._explicit(args, f"infer.{name}"):
                setattr(cfg, name, int(value))
        if getattr(args, "multi_scale", False):
            cfg.multi_scale = True
        if getattr(args, "size", None):
            cfg.size = args.size
        return cfg.resolved(info.infer if info else {})

    def segmenter(self, net: LSegNet, labels: list[str], templates: str, cfg: InferConfig) -> Segmenter:
        return Segmenter(net, self.text(labels, templates), cfg, self.ctx.device)

    # actions ----------------------------------------------------------------------------
    def infer(self, args: argparse.Namespace) -> list[dict]:
        labels = read_labels(args)
        if len(labels) == 1:
            log.warning("only one label (%s): every pixel gets it; add a contrast label such as "
                        "'other'", labels[0])
        check_image_files(list(args.image))
        out = self.ctx.out_dir()
        net, info = self.load_head(args)
        templates = self._templates(args, info)
        seg = self.segmenter(net, labels, templates, self.infer_config(args, info))
        results = []
        for path in args.image:
            image = load_image(path)
            mask = seg.predict(image)
            mask_path = save_png(mask_image(mask), out / f"{path.stem}_mask.png")
            over_path = save_png(overlay(image, mask, len(labels)), out / f"{path.stem}_overlay.png")
            frac = fractions(mask, labels)
            results.append({"image": str(path), "mask": str(mask_path), "overlay": str(over_path),
                            "size": [image.width, image.height], "fractions": frac})
            if not self.ctx.json:
                top = sorted(frac.items(), key=lambda kv: -kv[1])[:5]
                print(f"{path}: {', '.join(f'{k} {v:.3f}' for k, v in top)} -> {mask_path}")
        return results

    def loss(self, module: torch.nn.Module, batch) -> dict[str, torch.Tensor]:
        """Pixel cross-entropy over the training labels (ignore index respected); a batch
        whose samples were all unreadable, or all ignored, gives a zero loss, never NaN."""
        if batch is None:
            inner = getattr(module, "module", module)
            return {"loss": sum(p.sum() * 0.0 for p in inner.parameters() if p.requires_grad)}
        pixels, target = batch
        logits = module(pixels, self._train_text)
        ignore = self.cfg.data.ignore_index
        loss = F.cross_entropy(logits, target.long(), ignore_index=ignore, reduction="sum")
        return {"loss": loss / (target != ignore).sum().clamp(min=1)}

    def train(self, args: argparse.Namespace) -> dict:
        cfg = self.cfg
        cfg.model.validate()
        if getattr(args, "data", None):
            cfg.data.source, cfg.data.root = "folder", str(args.data)
        cfg.data.validate()
        if getattr(args, "install", False) and (cfg.backbone != "tiny-world" or cfg.data.source != "tiny-world"):
            raise UserError("--install ships a head for the bundled tiny-world backbone trained on the "
                            "tiny world; drop --install or use --config tiny_world")
        out = self.ctx.out_dir()
        templates = self._templates(args)
        net = self.build()
        aug = TrainAugment(cfg.augment, net.encoder.mean, net.encoder.std, cfg.data.ignore_index)
        d = cfg.data
        if d.source == "tiny-world":
            labels, heldout = tiny_world_labels(d.background, d.heldout)
            dataset = TinyWorldSegmentation(labels, heldout, d.n_train, d.scene_size, aug, "train",
                                            d.heldout_mode, d.ignore_index, d.render_workers)
            val = tiny_world_eval("val", d.n_val, d.scene_size)
            eval_labels = [d.background, *CATEGORIES]
            best = "miou_seen"
        else:
            if not d.root:
                raise UserError("data.source=folder needs data.root (or --data DIR)")
            root = Path(d.root)
            names = folder_labels(root, d.labels, d.labels_file, d.reduce_zero_label)
            labels, heldout, eval_labels, best = names.names, [], names.names, "miou"
            dataset = FolderSegmentation(root, d.train_split, names, aug, d.ignore_index)
            val = list(folder_scenes(FolderSegmentation(root, d.val_split, names, None, d.ignore_index), d.n_val))
        self._train_text = self.text(labels, templates).to(self.ctx.device)
        eval_text = self.text(eval_labels, templates)
        infer_defaults = {"size": cfg.augment.crop_size, "base_size": cfg.augment.base_size,
                          "crop_size": cfg.augment.crop_size, "stride": cfg.augment.crop_size * 2 // 3}
        quick = dataclasses.replace(self.cfg.infer, multi_scale=False).resolved(infer_defaults)
        seen_idx = [i for i, n in enumerate(eval_labels) if n not in heldout]

        def eval_fn(module) -> dict[str, float]:
            cm = confusion(Segmenter(module, eval_text, quick), val, len(eval_labels), d.ignore_index)
            return {"miou": cm.miou(), "miou_seen": cm.miou(seen_idx), "pixel_accuracy": cm.pixel_accuracy()}

        trainer = Trainer(net, self.loss, dataset, cfg.train, out, collate_fn=skip_none_collate,
                          param_groups=lambda m: m.param_groups(cfg.head_lr_mult), eval_fn=eval_fn,
                          best_metric=best, config_dict=cfg, device=self.ctx.device)
        trainer.fit(resume=getattr(args, "resume", False))
        module = trainer.module.eval()
        recorded = {k: getattr(cfg.infer, k) or v for k, v in infer_defaults.items()}
        info = HeadInfo(model=cfg.model, backbone=cfg.backbone, text_dim=self.ctx.backbone.embed_dim,
                        templates=templates, infer=recorded,
                        backbone_fingerprint=self.ctx.backbone.fingerprint, labels=labels,
                        heldout=list(heldout), notes=f"trained by 'clipheads lseg train' for "
                                                     f"{trainer.step} steps")
        with torch.no_grad():
            if d.source == "tiny-world":
                scenes = tiny_world_eval("test", cfg.eval.n_scenes, d.scene_size)
                make = lambda names: Segmenter(module, self.text(names, templates), quick)  # noqa: E731
                info.metrics = tiny_world_report(make, scenes, d.background, heldout)
            else:
                info.metrics = eval_fn(module)
        head_dir = save_head(out / "head", module.state_dict(), info)
        summary = {"out": str(out), "head": str(head_dir), "steps": trainer.step,
                   "skipped": getattr(dataset, "skipped", 0), **_headline(info.metrics)}
        if getattr(args, "install", False):
            # the bundled copy is stored in fp16 (half the size; masks are unchanged in practice)
            summary["installed"] = str(save_head(bundled_head_dir(), module.state_dict(), info, half=True))
        if not self.ctx.json:
            print(f"lseg: {trainer.step} steps; {_format(_headline(info.metrics))}; head in {head_dir}"
                  + (f", installed to {summary['installed']}" if "installed" in summary else ""))
        return summary

    def evaluate(self, args: argparse.Namespace) -> dict | list[dict]:
        net, info = self.load_head(args)
        templates = self._templates(args, info)
        icfg = self.infer_config(args, info)
        data = getattr(args, "data", None)
        if args.protocol == "pascal5i":
            if data is None:
                raise UserError("--protocol pascal5i needs --data VOC_ROOT (JPEGImages/, "
                                "SegmentationClassAug/)")
            voc = VOCFolder(data)
            cache: dict[tuple[str, ...], Segmenter] = {}

            def predict(image, labels):
                key = tuple(labels)
                if key not in cache:
                    cache[key] = self.segmenter(net, list(labels), templates, icfg)
                return cache[key].predict(image)

            folds = args.fold or self.cfg.eval.folds
            results = []
            for fold in folds:
                r = evaluate_fold(voc, fold, predict, self.cfg.eval.episodes)
                results.append({"protocol": "pascal5i", **dataclasses.asdict(r)})
                if not self.ctx.json:
                    print(f"PASCAL-5i fold {fold}: mIoU {r.miou:.4f}, FB-IoU {r.fb_iou:.4f} "
                          f"({r.episodes} episodes)")
            return results
        limit = args.limit or self.cfg.eval.limit
        if data is not None:
            d = self.cfg.data
            names = folder_labels(Path(data), d.labels, d.labels_file, d.reduce_zero_label)
            ds = FolderSegmentation(Path(data), args.split or d.val_split, names, None, d.ignore_index)
            seg = self.segmenter(net, names.names, templates, icfg)
            n = len(ds) if limit is None else min(limit, len(ds))
            seen = []
            scenes = (seen.append(s.name) or s for s in folder_scenes(ds, limit))
            cm = confusion(seg, scenes, len(names.names), d.ignore_index, progress=not self.ctx.json, total=n)
            result = {"data": str(data), "images": len(seen), "skipped": ds.skipped,
                      "labels_from": names.source, **cm.summary(names.names)}
        else:
            scenes = tiny_world_eval("test", limit or self.cfg.eval.n_scenes, self.cfg.data.scene_size)
            make = lambda names: self.segmenter(net, names, templates, icfg)  # noqa: E731
            result = {"data": "tiny-world test split",
                      **tiny_world_report(make, scenes, self.cfg.data.background, info.heldout,
                                          progress=not self.ctx.json)}
        if not self.ctx.json:
            print(_format(_headline(result)))
        return result

    def demo(self, examples: list[Path], out: Path) -> list[DemoItem] | None:
        """The bundled tiny head on the example images, every shape name as a label."""
        try:
            net, info = self.load_head(None)
        except UserError as exc:
            log.warning("lseg demo skipped: %s", exc)
            return None
        labels = [self.cfg.data.background, *CATEGORIES]
        seg = self.segmenter(net, labels, self._templates(None, info), self.infer_config(None, info))
        items = []
        for path in examples:
            image = load_image(path)
            mask = seg.predict(image)
            shutil.copy2(path, out / path.name)
            name = f"{path.stem}_overlay.png"
            save_png(overlay(image, mask, len(labels)), out / name)
            frac = {k: v for k, v in fractions(mask, labels).items() if k != labels[0] and v >= 0.01}
            lines = [f"{k}: {v:.0%}" for k, v in sorted(frac.items(), key=lambda kv: -kv[1])[:3]]
            items.append(DemoItem(path.stem, [path.name, name], lines or ["(background only)"]))
        return items


def _headline(metrics: dict) -> dict:
    keys = ("miou", "miou_seen", "miou_heldout", "chance_iou_heldout", "pixel_accuracy")
    out = {k: round(float(metrics[k]), 4) for k in keys if k in metrics}
    if isinstance(metrics.get("episodes"), dict) and metrics["episodes"]:
        out["episode_fb_iou_heldout"] = round(metrics["episodes"]["fb_iou"], 4)
        out["episode_miou_heldout"] = round(metrics["episodes"]["miou"], 4)
    return out


def _format(headline: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in headline.items())
