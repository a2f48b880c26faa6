"""`clip`: contrastive image-text training (symmetric InfoNCE gathered across ranks,
learnable logit scale) on the core runtime. It trains the bundled tiny CLIP on the tiny
world, and any open_clip architecture on your own webdataset shards.

Module level imports no torch (the CLI reads this class to build `--help`)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipheads.core.errors import UserError
from clipheads.core.registry import register_task
from clipheads.core.task import Task, TrainData

from .config import ClipConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from clipheads.core.runtime import TrainReport

MAX_LOGIT_SCALE = math.log(100.0)


@register_task("clip")
class ClipTask(Task):
    summary = "contrastive image-text training (trains the tiny-world CLIP, or yours on shards)"
    Config = ClipConfig
    default_config = "tiny_world"
    actions = ("train", "eval")
    installable = True
    best_metric = "zero_shot_top1"
    cfg: ClipConfig

    # model and data ----------------------------------------------------------------
    def build_model(self) -> "torch.nn.Module":
        import open_clip
        cfg = self.cfg.model
        try:
            model = open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"],
                                   text_cfg=cfg["text_cfg"], quick_gelu=cfg.get("quick_gelu", False))
        except (TypeError, ValueError, KeyError) as exc:
            raise UserError(f"model: cannot build an open_clip CLIP from this config ({exc}); "
                            "check model.vision_cfg / model.text_cfg") from exc
        model.output_dict = True
        return model

    def tokenizer(self):
        import open_clip
        return open_clip.tokenizer.SimpleTokenizer(
            context_length=self.cfg.model["text_cfg"]["context_length"])

    def transform(self):
        import open_clip
        size = self.cfg.model["vision_cfg"]["image_size"]
        pp = self.cfg.preprocess
        return open_clip.image_transform(size, is_train=False, mean=pp["mean"], std=pp["std"],
                                         resize_mode=pp["resize_mode"], interpolation=pp["interpolation"])

    def train_data(self) -> TrainData:
        d = self.cfg.data
        d.validate()
        if d.source == "shards":
            from .data import shard_pairs
            return TrainData(shard_pairs(d, self.transform(), self.tokenizer(), self.cfg.train.seed))
        from .data import TinyWorldPairs
        pp = self.cfg.preprocess
        self._pairs = TinyWorldPairs(d.n_train, self.tokenizer(), self.cfg.model["vision_cfg"]["image_size"],
                                     d.single_fraction, pp["mean"], pp["std"], workers=d.render_workers)
        return TrainData(self._pairs)

    def loss(self, module: "torch.nn.Module", batch: Any) -> dict[str, "torch.Tensor"]:
        """Symmetric InfoNCE over the global batch; the logit scale is clamped to 100 as in
        CLIP (before the step that uses it, so a resumed run clamps identically)."""
        import torch

        from clipheads.core.engine import contrastive_loss
        inner = getattr(module, "module", module)
        with torch.no_grad():
            inner.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        images, tokens = batch
        out = module(images, tokens)
        loss = contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"])
        return {"loss": loss, "logit_scale": out["logit_scale"].detach()}

    def evaluate_module(self, module: "torch.nn.Module") -> dict[str, float]:
        """Zero-shot top-1 on held-out single-object tiny-world images."""
        from .data import heldout_singles, zero_shot_accuracy
        d = self.cfg.data
        if not hasattr(self, "_heldout"):
            self._heldout = heldout_singles(d.eval_per_class, d.scene_size)
        tok, tf = self.tokenizer(), self.transform()
        dev = next(module.parameters()).device
        acc = zero_shot_accuracy(module.encode_image, lambda t: module.encode_text(tok(t).to(dev)), tf,
                                 self._heldout, dev)
        return {"zero_shot_top1": acc}

    def export(self, module: "torch.nn.Module", out: Path, report: "TrainReport") -> Path:
        """An open_clip `local-dir` folder (loads back with --backbone local-dir:OUT/export)."""
        from .data import class_names
        from .export import export_open_clip, used_token_ids
        keep = None
        pairs = getattr(self, "_pairs", None)
        if pairs is not None:  # tiny world: zero the rows of tokens its captions never use
            tok = self.tokenizer()
            keep = used_token_ids(tok, [f"a photo of a {n}." for n in class_names()] + pairs.captions)
        return export_open_clip(module, self.cfg.model, self.cfg.preprocess, out / "export", keep_tokens=keep)

    def check_install(self) -> None:
        if self.cfg.data.source != "tiny-world":
            raise UserError("--install ships the bundled tiny-world CLIP; it must be trained on the "
                            "tiny world (data.source: tiny-world)")

    def install(self, exported: Path) -> Path:
        from clipheads.core.atomic import atomic_write_bytes
        from clipheads.core.backbone.spec import tiny_world_dir
        target = tiny_world_dir()
        for f in sorted(exported.iterdir()):
            atomic_write_bytes(target / f.name, f.read_bytes())
        return target

    # actions -------------------------------------------------------------------------
    def evaluate(self) -> dict:
        from .data import class_names, heldout_singles, zero_shot_accuracy
        bb = self.ctx.backbone
        items = heldout_singles(self.cfg.data.eval_per_class, self.cfg.data.scene_size)
        acc = zero_shot_accuracy(bb.encode_image, bb.encode_text, bb.preprocess, items, bb.device)
        return {"backbone": str(bb.spec), "classes": len(class_names()), "images": len(items),
                "zero_shot_top1": acc}

    def describe(self, action: str, result: dict) -> list[str]:
        if action == "train":
            return [f"clip: {result['steps']} steps, held-out zero-shot top-1 "
                    f"{result.get('zero_shot_top1', float('nan')):.3f}; exported to {result.get('exported')}"
                    + (f", installed to {result['installed']}" if "installed" in result else "")]
        return [f"{result['backbone']}: zero-shot top-1 {result['zero_shot_top1']:.3f} on "
                f"{result['images']} held-out tiny-world images ({result['classes']} classes)"]

