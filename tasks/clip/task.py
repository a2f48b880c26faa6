"""`clip`: contrastive image-text training (symmetric InfoNCE, learnable logit scale) with
the core trainer. It trains the bundled tiny CLIP on the tiny world."""
from __future__ import annotations

import argparse
import math
import shutil

import open_clip
import torch

from clipheads.core.backbone.spec import tiny_world_dir
from clipheads.core.engine import Trainer, contrastive_loss
from clipheads.core.errors import UserError
from clipheads.core.registry import register_task
from clipheads.core.task import Task

from .config import ClipConfig
from .data import TinyWorldPairs, class_names, heldout_singles, zero_shot_accuracy
from .export import export_open_clip, used_token_ids

MAX_LOGIT_SCALE = math.log(100.0)


@register_task("clip")
class ClipTask(Task):
    summary = "contrastive image-text training (trains the tiny-world CLIP)"
    Config = ClipConfig
    default_config = "tiny_world"
    actions = ("train", "eval")
    cfg: ClipConfig

    @classmethod
    def add_arguments(cls, action: str, parser: argparse.ArgumentParser) -> None:
        if action == "train":
            parser.add_argument("--resume", action="store_true", help="continue the run in --out")
            parser.add_argument("--install", action="store_true",
                                help="copy the exported weights into the package as the "
                                     "bundled tiny-world backbone")

    # model and data ----------------------------------------------------------------
    def build(self) -> torch.nn.Module:
        cfg = self.cfg.model
        model = open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"],
                               text_cfg=cfg["text_cfg"], quick_gelu=cfg.get("quick_gelu", False))
        return model

    def tokenizer(self):
        return open_clip.tokenizer.SimpleTokenizer(
            context_length=self.cfg.model["text_cfg"]["context_length"])

    def transform(self):
        size = self.cfg.model["vision_cfg"]["image_size"]
        pp = self.cfg.preprocess
        return open_clip.image_transform(size, is_train=False, mean=pp["mean"], std=pp["std"],
                                         resize_mode=pp["resize_mode"], interpolation=pp["interpolation"])

    def loss(self, module: torch.nn.Module, batch) -> dict[str, torch.Tensor]:
        """Symmetric InfoNCE; the logit scale is clamped to 100 as in CLIP (before the step
        that uses it, so a resumed run clamps identically)."""
        inner = getattr(module, "module", module)
        with torch.no_grad():
            inner.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        images, tokens = batch
        out = module(images, tokens)
        loss = contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"])
        return {"loss": loss, "logit_scale": out["logit_scale"].detach()}

    # actions -------------------------------------------------------------------------
    def train(self, args: argparse.Namespace) -> dict:
        if self.cfg.data.source != "tiny-world":
            raise UserError(f"clip train: data.source '{self.cfg.data.source}' is not supported; "
                            "use tiny-world")
        out = self.ctx.out_dir()
        tok, tf = self.tokenizer(), self.transform()
        d = self.cfg.data
        pp = self.cfg.preprocess
        dataset = TinyWorldPairs(d.n_train, tok, self.cfg.model["vision_cfg"]["image_size"],
                                 d.single_fraction, pp["mean"], pp["std"], workers=d.render_workers)
        model = self.build()
        model.output_dict = True
        heldout = heldout_singles(d.eval_per_class, d.scene_size)

        def evaluate(m) -> dict[str, float]:
            dev = next(m.parameters()).device
            acc = zero_shot_accuracy(m.encode_image, lambda t: m.encode_text(tok(t).to(dev)), tf,
                                     heldout, dev)
            return {"zero_shot_top1": acc}

        trainer = Trainer(model, self.loss, dataset, self.cfg.train, out, eval_fn=evaluate,
                          best_metric="zero_shot_top1", config_dict=self.cfg, device=self.ctx.device)
        result = trainer.fit(resume=args.resume)
        metrics = dict(result.eval_metrics)  # the trainer evaluated at its last step
        if not metrics:  # resumed a finished run: nothing was trained or evaluated now
            with torch.no_grad():
                metrics = evaluate(trainer.module.eval())
        captions = ([f"a photo of a {n}." for n in class_names()]
                    + dataset.captions)
        export = export_open_clip(trainer.module, self.cfg.model, self.cfg.preprocess, out / "export",
                                  keep_tokens=used_token_ids(tok, captions))
        summary = {"out": str(out), "export": str(export), "steps": trainer.step, **metrics}
        if getattr(args, "install", False):
            target = tiny_world_dir()
            target.mkdir(parents=True, exist_ok=True)
            for f in export.iterdir():
                shutil.copy2(f, target / f.name)
            summary["installed"] = str(target)
        if not self.ctx.json:
            print(f"clip: {trainer.step} steps, held-out zero-shot top-1 "
                  f"{metrics['zero_shot_top1']:.3f}; exported to {export}")
        return summary

    def evaluate(self, args: argparse.Namespace) -> dict:
        bb = self.ctx.backbone
        tf = bb.preprocess
        items = heldout_singles(self.cfg.data.eval_per_class, self.cfg.data.scene_size)
        acc = zero_shot_accuracy(bb.encode_image, bb.encode_text, tf, items, bb.device)
        result = {"backbone": str(bb.spec), "classes": len(class_names()), "images": len(items),
                  "zero_shot_top1": acc}
        if not self.ctx.json:
            print(f"{bb.spec}: zero-shot top-1 {acc:.3f} on {len(items)} held-out tiny-world images "
                  f"({len(class_names())} classes)")
        return result
