"""`classify`: zero-shot classification with template ensembles, and the CLIP paper's
linear probe. The smallest head, and the worked example in docs/plugins.md."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from clipheads.core.cli_args import add_label_arguments, read_labels
from clipheads.core.data.images import load_image
from clipheads.core.errors import UserError
from clipheads.core.registry import register_task
from clipheads.core.task import DemoItem, Task

from .config import ClassifyConfig
from .data import extract_features, load_split
from .probe import LinearProbe, train_probe
from .zero_shot import top_k, zero_shot_logits


@register_task("classify")
class ClassifyTask(Task):
    summary = "zero-shot classification (template ensembles) and linear probe"
    Config = ClassifyConfig
    cfg: ClassifyConfig

    @classmethod
    def add_arguments(cls, action: str, parser: argparse.ArgumentParser) -> None:
        if action == "infer":
            parser.add_argument("--image", nargs="+", type=Path, required=True, help="image file(s)")
            add_label_arguments(parser, required=False)
            parser.add_argument("--probe", type=Path, help="use a trained linear probe folder "
                                                           "instead of zero-shot labels")
        else:
            parser.add_argument("--data", type=Path, required=True,
                                help="ImageFolder root with train/ and test/ (or val/), "
                                     "or the CIFAR root with --dataset")
            parser.add_argument("--dataset", default="folder", choices=["folder", "cifar10", "cifar100"])
            if action == "eval":
                parser.add_argument("--probe", type=Path, help="evaluate a trained probe folder")
        parser.add_argument("--templates", help="template set: single, imagenet80, cifar18, vild63")
        parser.add_argument("--top", type=int, help="how many labels to report per image")

    def _templates(self, args) -> str:
        return getattr(args, "templates", None) or self.cfg.templates

    def _label_embeddings(self, labels: list[str], templates: str) -> torch.Tensor:
        return self.ctx.text_bank.embed(labels, templates)

    def probabilities(self, images, labels: list[str], templates: str) -> torch.Tensor:
        """Softmax over labels of CLIP's scaled cosine logits, one row per image."""
        bb = self.ctx.backbone
        with torch.no_grad():
            feats = bb.encode_image(bb.images_to_pixels(images))
            logits = zero_shot_logits(feats, self._label_embeddings(labels, templates),
                                      bb.model.logit_scale)
        return logits.softmax(dim=-1).cpu()

    def infer(self, args: argparse.Namespace) -> list[dict]:
        probe = LinearProbe.load(args.probe) if args.probe else None
        if probe is None and args.labels is None and args.labels_file is None:
            raise UserError("pass --labels 'a,b,c' (zero-shot) or --probe DIR (linear probe)")
        images = [load_image(p) for p in args.image]  # every file checked before any work
        k = args.top or self.cfg.top_k
        if probe is not None:
            bb = self.ctx.backbone
            with torch.no_grad():
                probs = probe.logits(bb.encode_image(bb.images_to_pixels(images))).softmax(-1).cpu()
            labels = probe.classes
        else:
            labels = read_labels(args)
            probs = self.probabilities(images, labels, self._templates(args))
        results = [{"image": str(p), "top": top} for p, top in zip(args.image, top_k(probs, labels, k))]
        if not self.ctx.json:
            for r in results:
                best = ", ".join(f"{t['label']} {t['prob']:.3f}" for t in r["top"])
                print(f"{r['image']}: {best}")
        return results

    def train(self, args: argparse.Namespace) -> dict:
        out = self.ctx.out_dir()
        bb = self.ctx.backbone
        train = load_split(args.data, "train", args.dataset)
        x, y, skipped = extract_features(bb, train, self.cfg.batch_size)
        probe, info = train_probe(x, y, train.classes, self.cfg.probe)
        probe.save(out)
        result = {"probe": str(out), "train_images": len(y), "skipped": len(skipped), **info}
        if not self.ctx.json:
            print(f"linear probe: C={info['C']:.3g}, held-out top-1 {info['val_top1']:.3f} "
                  f"on {len(y)} images ({len(skipped)} skipped); saved to {out}")
        return result

    def evaluate(self, args: argparse.Namespace) -> dict:
        bb = self.ctx.backbone
        probe = LinearProbe.load(args.probe) if args.probe else None
        test = load_split(args.data, "test", args.dataset, probe.classes if probe else None)
        x, y, skipped = extract_features(bb, test, self.cfg.batch_size)
        if probe is not None:
            logits = probe.logits(x)
            mode = "linear probe"
        else:
            emb = self._label_embeddings(test.classes, self._templates(args)).cpu()
            logits = zero_shot_logits(x, emb, bb.model.logit_scale.cpu())
            mode = f"zero-shot ({self._templates(args)})"
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=-1).indices
        result = {"mode": mode, "images": len(y), "skipped": len(skipped),
                  "top1": float((topk[:, 0] == y).float().mean()),
                  "top5": float((topk == y[:, None]).any(-1).float().mean())}
        if not self.ctx.json:
            print(f"{mode}: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f} "
                  f"on {len(y)} images ({len(skipped)} skipped)")
        return result

    def demo(self, examples: list[Path], out: Path) -> list[DemoItem]:
        """Zero-shot over every tiny-world colour x shape name."""
        from clipheads.core.tinyworld import COLOURS, SHAPES
        labels = [f"{c} {s}" for c in COLOURS for s in SHAPES]
        probs = self.probabilities([load_image(p) for p in examples], labels, self.cfg.templates)
        items = []
        for path, top in zip(examples, top_k(probs, labels, 3)):
            shutil.copy2(path, out / path.name)
            items.append(DemoItem(path.stem, [path.name],
                                  [f"{t['label']}: {t['prob']:.2f}" for t in top]))
        return items
