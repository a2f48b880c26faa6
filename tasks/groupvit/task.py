"""`groupvit`: segmentation that emerges from grouping (Xu et al., CVPR 2022).

Two models: the default frozen-CLIP grouping head (grouping stages over the backbone's
patch tokens, groups matched to the text bank's label embeddings) and the official
architecture (its own ViT and text transformer; released checkpoints load). Both
predict with the official zero-shot protocol, train on image-text pairs through the
core runtime (no masks), and evaluate mIoU on VOC / Context / COCO-Object folders or
the tiny world.

Module level imports no torch (the CLI reads this class to build `--help`).
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

from .config import GroupViTConfig, SegmentConfig

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from PIL import Image

    from clipheads.core.runtime import TrainReport

    from .segment import GroupSegmenter
    from .weights import HeadInfo

log = logging.getLogger(__name__)
BACKGROUND = "background"
BENCHMARK_CHOICES = ("tiny-world", "voc", "context", "coco_object")


@dataclasses.dataclass
class GroupSegmentation:
    """One image: `mask` [H, W] label indices, `groups` [H, W] group indices (before any
    label), each group's pixel share and its best labels."""

    mask: "np.ndarray"
    groups: "np.ndarray"
    labels: list[str]
    fractions: dict[str, float]
    group_labels: list[dict]
    size: tuple[int, int]


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, help="a trained head folder ('groupvit train'), an "
                        "official NVlabs .pth or a transformers GroupViTModel file (with --set "
                        "model=official); default: the bundled tiny-world head")
    parser.add_argument("--groups", type=positive_int, help="output groups of a grouping head "
                        "(any number up to the head's size; the official model is fixed at 8)")
    parser.add_argument("--short-side", type=int, help="resize the short side to this many pixels "
                        "before grouping (0 = keep; default from the config / the head)")
    parser.add_argument("--bg-thresh", type=float, help="a pixel whose best label scores below this is "
                        "'background' (only when the labels include 'background')")
    parser.add_argument("--trust-pickle", action="store_true", help="unpickle an official checkpoint "
                        "fully (may run code); by default config objects in it are read inertly")


@register_task("groupvit")
class GroupViTTask(Task):
    summary = "segmentation that emerges from grouping (GroupViT: official model + frozen-CLIP head)"
    Config = GroupViTConfig
    default_config = "tiny_world"
    writes = ("infer",)
    installable = True
    best_metric = "miou"
    cfg: GroupViTConfig

    @classmethod
    def add_arguments(cls, action: str, parser: argparse.ArgumentParser) -> None:
        if action == "infer":
            parser.add_argument("--image", nargs="+", type=Path, required=True, help="image file(s)")
            add_label_arguments(parser, required=True)
            _model_options(parser)
        if action == "train":
            parser.add_argument("--shards", help="webdataset shards (img2dataset layout), e.g. "
                                "'data/train-{000000..000099}.tar' (default: the tiny world)")
        if action == "eval":
            _model_options(parser)
            parser.add_argument("--benchmark", choices=BENCHMARK_CHOICES, default="tiny-world",
                                help="tiny-world test scenes, or a PASCAL VOC / Context / COCO-Object "
                                "folder (--data)")
            parser.add_argument("--data", type=Path, help="benchmark root (VOCdevkit/VOC2012, "
                                "VOCdevkit/VOC2010 or the coco folder)")
            parser.add_argument("--limit", type=positive_int, help="evaluate at most N images")
            parser.add_argument("--paper-threshold", action="store_true",
                                help="use the paper's background threshold instead of the code's")

    # models -----------------------------------------------------------------------------
    def load_model(self, checkpoint: str | Path | None = None, trust_pickle: bool = False
                   ) -> tuple["torch.nn.Module", "HeadInfo | None"]:
        """The model to segment with: a trained folder (either model), an official file
        (model=official), or the bundled tiny-world head."""
        from .weights import bundled_head_dir, is_head_folder, load_official, read_info, read_state
        path = checkpoint or self.cfg.checkpoint
        if path is not None and not Path(path).exists():
            raise UserError(f"GroupViT checkpoint not found: {path}")
        if path is None and self.cfg.model == "official":
            raise UserError("model=official needs --checkpoint (a group_vit_*.pth, a transformers "
                            "GroupViTModel file, or a folder written by 'groupvit train')")
        if path is not None and not is_head_folder(path):
            if self.cfg.model != "official":
                raise UserError(f"{path} is not a head folder; for an official GroupViT checkpoint add "
                                "--set model=official (or --config groupvit/gcc_yfcc_30e)")
            from .official import GroupViT
            model = GroupViT(self.cfg.official)
            load_official(model, path, trust_pickle)
            return model.to(self.ctx.device).eval(), None
        folder = Path(path or bundled_head_dir())
        info = read_info(folder)
        model = self._build(info)
        from clipheads.core.state_dict import load_state_dict_strict
        load_state_dict_strict(model, read_state(folder), str(folder), f"this GroupViT {info.model}")
        return model.to(self.ctx.device).eval(), info

    def _build(self, info: "HeadInfo") -> "torch.nn.Module":
        if info.model == "official":
            from .official import GroupViT
            return GroupViT(info.official)
        from .head import GroupingHead
        if info.backbone and "backbone" not in self.ctx.chosen and not self.ctx.has_backbone \
                and self.cfg.backbone != info.backbone:
            log.info("using the head's backbone %s", info.backbone)
            self.cfg.backbone, self.cfg.weights = info.backbone, None
        bb = self.ctx.backbone
        if info.backbone_fingerprint and info.backbone_fingerprint != bb.fingerprint:
            log.warning("GroupViT head was trained on backbone %s (fingerprint %s) but %s has %s; "
                        "groups will be poor until the head is retrained", info.backbone,
                        info.backbone_fingerprint, bb.spec, bb.fingerprint)
        return GroupingHead(info.head, bb)

    def segment_config(self, info: "HeadInfo | None", short_side: int | None = None,
                       bg_thresh: float | None = None) -> SegmentConfig:
        """Explicit options > the user's config > the head's recorded settings > defaults."""
        cfg = dataclasses.replace(self.cfg.segment)
        for key, value in (info.segment if info else {}).items():
            if hasattr(cfg, key) and not self.ctx.user_chose(f"segment.{key}"):
                setattr(cfg, key, value)
        if short_side is not None:
            if short_side < 0:
                raise UserError(f"--short-side {short_side}: use 0 (keep the size) or a positive size")
            cfg.short_side = short_side
        if bg_thresh is not None:
            if not 0.0 <= bg_thresh <= 1.0:
                raise UserError(f"--bg-thresh {bg_thresh}: a probability in [0, 1]")
            cfg.bg_thresh = bg_thresh
        return cfg.validate()

    def text(self, model, labels: Sequence[str], template: str) -> "torch.Tensor":
        """Normalised label embeddings: the frozen CLIP's (text bank, cached) for a head,
        the model's own text tower for the official model (its tokenizer: CLIP's BPE)."""
        from clipheads.core.text.templates import resolve_templates
        templates = resolve_templates(template)
        if hasattr(model, "text_encoder"):
            import open_clip
            import torch
            tok = open_clip.tokenizer.SimpleTokenizer(context_length=model.cfg.context_length)
            if tok.vocab_size > model.cfg.vocab_size:
                raise UserError(f"this GroupViT's text tower has {model.cfg.vocab_size} token embeddings but "
                                f"CLIP's tokenizer makes ids up to {tok.vocab_size - 1}; set official.vocab_size")
            with torch.no_grad():
                rows = []
                for label in labels:
                    emb = model.encode_text(tok([t.format(label) for t in templates]).to(self.ctx.device))
                    rows.append(torch.nn.functional.normalize(emb, dim=-1).mean(0))
                return torch.nn.functional.normalize(torch.stack(rows), dim=-1)
        return self.ctx.text_bank.embed(list(labels), templates).float()

    def segmenter(self, model, labels: Sequence[str], cfg: SegmentConfig, groups: int | None = None
                  ) -> "GroupSegmenter":
        from .segment import GroupSegmenter
        bg = next((i for i, name in enumerate(labels) if name.lower() == BACKGROUND), None)
        fg = [name for i, name in enumerate(labels) if i != bg]
        if not fg:
            raise UserError("the labels hold only 'background'; add the classes to look for")
        if groups is not None and not hasattr(model, "max_groups"):
            raise UserError("--groups applies to a grouping head; the official model's groups are fixed")
        return GroupSegmenter(model, self.text(model, fg, cfg.template), list(labels), cfg, bg, groups,
                              self.ctx.device)

    # prediction -------------------------------------------------------------------------
    def predict(self, images: Sequence["str | Path | Image.Image"], labels: Sequence[str], *,
                checkpoint: str | Path | None = None, groups: int | None = None,
                short_side: int | None = None, bg_thresh: float | None = None,
                trust_pickle: bool = False) -> list[GroupSegmentation]:
        """Segment each image (a path or a PIL image) into `labels`; a label named
        'background' is decided by the threshold, as in the paper's protocol."""
        import numpy as np

        from clipheads.core.data.images import load_image
        from clipheads.core.text.labels import check_labels
        labels = check_labels(labels, where="labels")
        model, info = self.load_model(checkpoint, trust_pickle)
        seg = self.segmenter(model, labels, self.segment_config(info, short_side, bg_thresh), groups)
        out = []
        for item in images:
            image = item if hasattr(item, "convert") else load_image(Path(item))
            mask = seg.predict(image)
            report = seg.groups(image)
            counts = np.bincount(mask.ravel(), minlength=len(labels)) / mask.size
            group_labels = []
            for g, share in enumerate(report.shares):
                if share <= 0:
                    continue
                order = np.argsort(-report.scores[g])[:3]
                group_labels.append({"group": g, "share": round(float(share), 4),
                                     "labels": {labels[i]: round(float(report.scores[g, i]), 4) for i in order}})
            out.append(GroupSegmentation(mask, report.groups, list(labels),
                                         {n: round(float(c), 6) for n, c in zip(labels, counts)},
                                         group_labels, (image.width, image.height)))
        return out

    def infer(self, image: list[Path], labels: list[str], checkpoint: Path | None = None,
              groups: int | None = None, short_side: int | None = None, bg_thresh: float | None = None,
              trust_pickle: bool = False) -> list[dict]:
        """`<stem>_mask.png`, `<stem>_overlay.png`, `<stem>_groups.png` per image into --out;
        every input is decoded before the first output is written."""
        from clipheads.core.data.images import check_image_inputs, load_image
        from clipheads.core.segmentation.render import mask_image, overlay, save_png
        check_image_inputs(image)
        results = self.predict(image, labels, checkpoint=checkpoint, groups=groups, short_side=short_side,
                               bg_thresh=bg_thresh, trust_pickle=trust_pickle)
        out = self.ctx.out_dir()
        rows = []
        for path, seg in zip(image, results):
            picture = load_image(path)
            mask = save_png(mask_image(seg.mask), out / f"{path.stem}_mask.png")
            over = save_png(overlay(picture, seg.mask, len(labels)), out / f"{path.stem}_overlay.png")
            grp = save_png(overlay(picture, seg.groups, int(seg.groups.max()) + 1, alpha=0.6),
                           out / f"{path.stem}_groups.png")
            rows.append({"image": str(path), "mask": str(mask), "overlay": str(over), "groups": str(grp),
                         "size": list(seg.size), "fractions": seg.fractions, "group_labels": seg.group_labels})
        return rows

    # evaluation -------------------------------------------------------------------------
    def evaluate(self, benchmark: str = "tiny-world", data: Path | None = None, limit: int | None = None,
                 checkpoint: Path | None = None, groups: int | None = None, short_side: int | None = None,
                 bg_thresh: float | None = None, paper_threshold: bool = False,
                 trust_pickle: bool = False) -> dict:
        from clipheads.core.segmentation.evaluation import confusion
        model, info = self.load_model(checkpoint, trust_pickle)
        if benchmark == "tiny-world":
            if data is not None:
                raise UserError("--data is for --benchmark voc/context/coco_object; the tiny world is built in")
            from .tinyworld import eval_labels, eval_scenes
            cfg = self.segment_config(info, short_side, bg_thresh)
            scenes = eval_scenes("test", limit or 96)
            labels = eval_labels()
            cm = confusion(self.segmenter(model, labels, cfg, groups), scenes, len(labels),
                           progress=self.ctx.progress, total=len(scenes))
            return {"benchmark": "tiny-world test split", "images": len(scenes), **cm.summary(labels),
                    **_chance(cm, len(labels) - 1)}
        if data is None:
            raise UserError(f"--benchmark {benchmark} needs --data ROOT (the dataset folder)")
        from clipheads.core.segmentation.benchmarks import open_benchmark
        bench = open_benchmark(benchmark, data, limit=limit)
        spec = bench.spec
        thresh = bg_thresh if bg_thresh is not None else (spec.bg_thresh_paper if paper_threshold
                                                         else spec.bg_thresh_code)
        cfg = self.segment_config(info, short_side, thresh)
        labels = list(spec.class_names)
        cm = confusion(self.segmenter(model, labels, cfg, groups), bench, len(labels),
                       progress=self.ctx.progress, total=len(bench))
        return {"benchmark": benchmark, "data": str(data), "images": len(bench), "skipped": bench.skipped,
                "bg_thresh": cfg.bg_thresh, **cm.summary(labels)}

    # training on the core runtime ---------------------------------------------------------
    def apply_options(self, action: str, shards: str | None = None, **rest: Any) -> None:
        if shards is not None:
            self.cfg.data.source, self.cfg.data.shards = "shards", shards
        super().apply_options(action, **rest)

    def check_install(self) -> None:
        if self.cfg.model != "head" or self.cfg.backbone != "tiny-world" or self.cfg.data.source != "tiny-world":
            raise UserError("--install ships a grouping head for the bundled tiny-world backbone trained "
                            "on the tiny world; drop --install or use --config tiny_world")

    def build_model(self) -> "torch.nn.Module":
        """The model to train. Gumbel noise is drawn from each rank's generator, so a run on
        N ranks samples other noise than one process (`gumbel_noise: false` makes the
        training assignment a plain hard argmax, identical on any number of ranks)."""
        self.cfg.validate()
        if self.cfg.model == "official":
            from .official import GroupViT
            model = GroupViT(self.cfg.official)
        else:
            from .head import GroupingHead
            model = GroupingHead(self.cfg.head, self.ctx.backbone)
        from .blocks import AssignAttention
        for module in model.modules():
            if isinstance(module, AssignAttention):
                module.gumbel = self.cfg.gumbel_noise
        return model

    def ddp_options(self) -> dict[str, Any]:
        """A `pooled` head embeds groups from their tokens, so the last grouping block's
        group-feature layers never reach the loss: DDP must not wait for their gradients."""
        if self.cfg.model == "head" and self.cfg.head.embed == "pooled":
            return {"find_unused_parameters": True}
        return {}

    def _prompt_count(self) -> int:
        return self.cfg.official.multi_label if self.cfg.model == "official" else 3

    def train_data(self) -> TrainData:
        from clipheads.core.text.templates import resolve_templates

        from .data import CaptionPrompts, ImageToPixels, StreamPrompts, TinyWorldCaptioned, collate, noun_finder
        d = self.cfg.data.require_source()
        self.cfg.validate()
        tokenize, size, mean, std = self._text_and_pixels()
        prompts = CaptionPrompts(tokenize, noun_finder(d.nouns, d.noun_words),
                                 resolve_templates(d.prompt_templates), max(self._prompt_count(), 0))
        to_pixels = ImageToPixels(size, mean, std)
        if d.source == "shards":
            from clipheads.core.data.webdataset_pairs import ImageTextStream
            transform = _shard_transform(size, mean, std, d.augment)
            return TrainData(ImageTextStream(d.shards, transform=transform, text_transform=StreamPrompts(prompts),
                                             shuffle=d.shuffle_buffer, seed=self.cfg.train.seed,
                                             num_samples=d.shard_samples), collate)
        dataset = TinyWorldCaptioned(d.n_train, d.scene_size, d.single_fraction, prompts, to_pixels,
                                     d.render_workers, seed=self.cfg.train.seed)
        return TrainData(dataset, collate)

    def _text_and_pixels(self):
        """(tokenizer, training input size, mean, std) of the model being trained."""
        import open_clip
        if self.cfg.model == "official":
            o = self.cfg.official
            return open_clip.tokenizer.SimpleTokenizer(context_length=o.context_length), o.image_size, o.mean, o.std
        bb = self.ctx.backbone
        return bb.tokenize, self.cfg.head.input_size or bb.image_size, bb.mean, bb.std

    def loss(self, module: "torch.nn.Module", batch: Any) -> dict[str, "torch.Tensor"]:
        """InfoNCE (image vs caption) + multi-label (image vs noun prompts), global batch."""
        import torch

        from .losses import groupvit_losses
        inner = getattr(module, "module", module)
        if batch is None:
            return {"loss": sum(p.sum() * 0.0 for p in inner.parameters() if p.requires_grad)}
        pixels, tokens, valid, noun_ids = batch
        keep = None
        if self.cfg.model == "head":   # train every group count the head may be asked for
            keep = _shared_draw(tokens, self.cfg.head.groups_min, inner.max_groups)
        out = module(pixels, keep)
        image, groups = out["image"], out["groups"]
        if self.cfg.model == "official":
            text = inner.encode_text(tokens)
        else:
            with torch.no_grad():
                text = self.ctx.backbone.encode_text(tokens.reshape(-1, tokens.shape[-1])).float()
            text = text.reshape(*tokens.shape[:2], -1)
        scale, multi_scale = out["scale"], out["multi_scale"]
        prompts = text[:, 1:] if text.shape[1] > 1 else None
        out = groupvit_losses(image, text[:, 0], scale, prompts, valid, multi_scale,
                              self.cfg.multi_label_weight, groups, self.cfg.group_noun_weight, noun_ids,
                              self.cfg.group_mil_weight)
        out["logit_scale"] = scale.detach()
        return out

    def evaluate_module(self, module: "torch.nn.Module") -> dict[str, float]:
        """mIoU on held-out tiny-world scenes (validation split; masks only read here)."""
        from clipheads.core.segmentation.evaluation import confusion

        from .tinyworld import eval_labels, eval_scenes
        if not hasattr(self, "_val"):
            self._val = eval_scenes("val", self.cfg.data.n_val)
        labels = eval_labels()
        cm = confusion(self.segmenter(module, labels, self.cfg.segment), self._val, len(labels))
        return {"miou": cm.miou(), "pixel_accuracy": cm.pixel_accuracy()}

    def final_metrics(self, module: "torch.nn.Module", last_eval: dict[str, float]) -> dict[str, Any]:
        if self.cfg.data.source != "tiny-world":
            return super().final_metrics(module, last_eval)
        from clipheads.core.segmentation.evaluation import confusion

        from .tinyworld import eval_labels, eval_scenes
        labels, scenes = eval_labels(), eval_scenes("test", self.cfg.data.n_test)
        cm = confusion(self.segmenter(module, labels, self.cfg.segment), scenes, len(labels))
        return {"miou": cm.miou(), "pixel_accuracy": cm.pixel_accuracy(), "scenes": len(scenes),
                **cm.summary(labels), **_chance(cm, len(labels) - 1)}

    def export(self, module: "torch.nn.Module", out: Path, report: "TrainReport") -> Path:
        from .weights import HeadInfo, save_head
        cfg = self.cfg
        bb = self.ctx.backbone if cfg.model == "head" else None
        info = HeadInfo(model=cfg.model, head=cfg.head if cfg.model == "head" else None,
                        official=cfg.official if cfg.model == "official" else None,
                        backbone=cfg.backbone if bb else None, backbone_fingerprint=bb.fingerprint if bb else None,
                        segment=dataclasses.asdict(cfg.segment), metrics=report.metrics,
                        notes=f"trained by 'clipheads groupvit train' for {report.steps} steps "
                              f"(image-text pairs only, no masks)")
        return save_head(out / "head", module.state_dict(), info)

    def install(self, exported: Path) -> Path:
        """The bundled copy is stored in fp16 (half the size)."""
        from .weights import bundled_head_dir, read_info, read_state, save_head
        return save_head(bundled_head_dir(), read_state(exported), read_info(exported), half=True)

    # presentation -------------------------------------------------------------------------
    def describe(self, action: str, result: Any) -> list[str]:
        if action == "infer":
            lines = []
            for r in result:
                top = sorted(r["fractions"].items(), key=lambda kv: -kv[1])[:5]
                lines.append(f"{r['image']}: {', '.join(f'{k} {v:.3f}' for k, v in top)} "
                             f"({len(r['group_labels'])} groups) -> {r['mask']}, {r['groups']}")
            return lines
        if action == "train":
            return [f"groupvit: {result['steps']} steps; mIoU {result.get('miou', float('nan')):.4f}; "
                    f"head in {result.get('exported')}"
                    + (f", installed to {result['installed']}" if "installed" in result else "")]
        return [f"{result['benchmark']}: mIoU {result['miou']:.4f}, pixel accuracy "
                f"{result['pixel_accuracy']:.4f} over {result['images']} images"]

    def demo(self, examples: list[Path], out: Path) -> list[DemoItem] | None:
        """The bundled tiny-world head: the learned groups, then the labelled overlay with a
        legend (shape names + background by threshold)."""
        import shutil

        import numpy as np

        from clipheads.core.data.images import load_image
        from clipheads.core.demo import GALLERY_IMAGE_HEIGHT
        from clipheads.core.segmentation.render import legend, overlay, palette, save_png

        from .tinyworld import eval_labels
        labels = eval_labels()
        try:
            results = self.predict(examples, labels)
        except UserError as exc:
            log.warning("groupvit demo skipped: %s", exc)
            return None
        colours = palette(len(labels))
        items = []
        for path, seg in zip(examples, results):
            shutil.copy2(path, out / path.name)
            picture = load_image(path)
            groups, over, key = (f"{path.stem}_groups.png", f"{path.stem}_overlay.png", f"{path.stem}_legend.png")
            save_png(overlay(picture, seg.groups, int(seg.groups.max()) + 1, alpha=0.6), out / groups)
            save_png(overlay(picture, seg.mask, len(labels)), out / over)
            present = np.unique(seg.mask)
            save_png(legend([labels[i] for i in present], colours[present], height=GALLERY_IMAGE_HEIGHT), out / key)
            frac = {k: v for k, v in seg.fractions.items() if k != BACKGROUND and v >= 0.01}
            lines = [f"{len(seg.group_labels)} groups"] + [
                f"{k}: {v:.0%}" for k, v in sorted(frac.items(), key=lambda kv: -kv[1])[:3]]
            items.append(DemoItem(path.stem, [path.name, groups, over, key], lines))
        return items


def _shared_draw(tokens: "torch.Tensor", low: int, high: int) -> int:
    """A group count in [low, high] drawn from the batch's content, summed over ranks, so
    every rank keeps the same number of groups (gathered losses need equal shapes) and a
    resumed run draws what an uninterrupted one would."""
    import torch

    from clipheads.core.engine.distributed import is_initialized
    total = tokens.sum().double().reshape(1)
    if is_initialized():
        import torch.distributed as dist
        dist.all_reduce(total)
    g = torch.Generator().manual_seed(int(total.item()) & 0x7FFFFFFF)
    return int(torch.randint(low, high + 1, (1,), generator=g))


def _chance(cm, num_fg: int) -> dict[str, float]:
    """The mIoU of labelling every pixel uniformly at random (the floor 'above chance' means)."""
    import numpy as np

    from clipheads.core.segmentation.metrics import chance_iou
    gt = cm.counts.sum(1).double()
    share = (gt / max(float(gt.sum()), 1.0)).numpy()
    present = [i for i in range(len(share)) if share[i] > 0]
    return {"chance_miou": float(np.mean([chance_iou(share[i], num_fg + 1) for i in present]))}


def _shard_transform(size: int | Sequence[int], mean, std, augment: str):
    """Shard images (PIL) -> normalised square pixels. `deit` is the paper's recipe (timm's
    DeiT transform: random-resized crop 0.08-1, RandAugment m9, colour jitter 0.4, random
    erasing 0.25); `center` resizes the short side and centre-crops."""
    import torch
    side = size if isinstance(size, int) else int(size[0])
    if augment == "deit":
        try:
            from timm.data import create_transform
        except ImportError as exc:
            raise UserError("data.augment=deit needs timm: pip install 'clipheads[lseg]' (or use "
                            "data.augment=center)") from exc
        return create_transform(side, is_training=True, scale=(0.08, 1.0), interpolation="bilinear",
                                color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25,
                                re_mode="pixel", re_count=1, mean=tuple(mean), std=tuple(std))
    from torchvision.transforms import v2
    return v2.Compose([v2.ToImage(), v2.Resize(side, antialias=True), v2.CenterCrop(side),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
