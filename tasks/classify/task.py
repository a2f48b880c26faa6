"""`classify`: zero-shot classification with template ensembles, and the CLIP paper's
linear probe. The smallest head, and the worked example in docs/plugins.md.

Module level imports no torch (the CLI reads this class to build `--help`)."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from clipheads.core.cli_args import add_label_arguments, positive_int
from clipheads.core.errors import UserError
from clipheads.core.registry import register_task
from clipheads.core.task import DemoItem, Task

from .config import DATASETS, ClassifyConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

    from clipheads.core.runtime import TrainReport


@dataclasses.dataclass
class Prediction:
    """One image's labels, most probable first."""

    top: list[dict[str, Any]]            # [{"label": str, "prob": float}, ...]
    probabilities: "torch.Tensor"        # [K] over all labels, in the given order


@register_task("classify")
class ClassifyTask(Task):
    summary = "zero-shot classification (template ensembles) and linear probe"
    Config = ClassifyConfig
    writes = ()
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
            parser.add_argument("--dataset", choices=list(DATASETS), help="data layout (default: folder)")
            if action == "eval":
                parser.add_argument("--probe", type=Path, help="evaluate a trained probe folder")
        parser.add_argument("--templates", help="template set: single, imagenet80, cifar18, vild63")
        if action != "train":
            parser.add_argument("--top", type=positive_int, help="how many labels to report per image")

    def _templates(self, templates: str | None = None) -> str:
        return templates or self.cfg.templates

    def _label_embeddings(self, labels: Sequence[str], templates: str) -> "torch.Tensor":
        return self.ctx.text_bank.embed(list(labels), templates)

    def probabilities(self, images: Sequence["Image.Image"], labels: Sequence[str], templates: str) -> "torch.Tensor":
        """Softmax over labels of CLIP's scaled cosine logits, one row per image."""
        import torch

        from .zero_shot import zero_shot_logits
        bb = self.ctx.backbone
        with torch.no_grad():
            feats = bb.encode_image(bb.images_to_pixels(list(images)))
            logits = zero_shot_logits(feats, self._label_embeddings(labels, templates),
                                      bb.model.logit_scale)
        return logits.softmax(dim=-1).cpu()

    # Python API ------------------------------------------------------------------------------
    def predict(self, images: Sequence["str | Path | Image.Image"], labels: Sequence[str] | None = None, *,
                probe: str | Path | None = None, templates: str | None = None,
                top: int | None = None) -> list[Prediction]:
        """Zero-shot over `labels` (or a trained linear probe's classes) for each image."""
        import torch

        from clipheads.core.data.images import load_image
        from clipheads.core.text.labels import check_labels

        from .probe import LinearProbe
        from .zero_shot import top_k
        k = self._check_top(top)
        pictures = [im if hasattr(im, "convert") else load_image(Path(im)) for im in images]
        if probe is not None:
            head = LinearProbe.load(Path(probe))
            bb = self.ctx.backbone
            with torch.no_grad():
                probs = head.logits(bb.encode_image(bb.images_to_pixels(pictures))).softmax(-1).cpu()
            names = head.classes
        elif labels is None:
            raise UserError("pass --labels 'a,b,c' (zero-shot) or --probe DIR (linear probe)")
        else:
            names = check_labels(labels, where="labels")
            probs = self.probabilities(pictures, names, self._templates(templates))
        return [Prediction(t, p) for t, p in zip(top_k(probs, names, k), probs)]

    def _check_top(self, top: int | None) -> int:
        k = top if top is not None else self.cfg.top_k
        if k < 1:
            raise UserError(f"--top must be >= 1, got {k}")
        return k

    # CLI actions -------------------------------------------------------------------------------
    def infer(self, image: list[Path], labels: list[str] | None = None, probe: Path | None = None,
              templates: str | None = None, top: int | None = None) -> list[dict]:
        preds = self.predict(image, labels, probe=probe, templates=templates, top=top)
        return [{"image": str(p), "top": pred.top} for p, pred in zip(image, preds)]

    def apply_options(self, action: str, data: Path | None = None, dataset: str | None = None,
                      templates: str | None = None, **rest: Any) -> None:
        if data is not None:
            self.cfg.data = str(data)
        if dataset is not None:
            self.cfg.dataset = dataset
        if templates is not None:
            self.cfg.templates = templates
        super().apply_options(action, **rest)

    def _split(self, split: str, classes: list[str] | None = None):
        from .data import load_split
        if not self.cfg.data:
            raise UserError("no data: pass --data ROOT (ImageFolder train/ and test/, or a CIFAR root)")
        if self.cfg.dataset not in DATASETS:
            raise UserError(f"dataset={self.cfg.dataset!r}: use one of {', '.join(DATASETS)}")
        return load_split(Path(self.cfg.data), split, self.cfg.dataset, classes)

    def train(self, out: str | Path, *, resume: bool | str | Path = False, install: bool = False,
              progress: bool | None = None) -> "TrainReport":
        """The linear probe: L-BFGS logistic regression on frozen features (no SGD steps, so
        nothing to resume: `resume` refits)."""
        from clipheads.core.runtime import TrainReport

        from .data import extract_features
        from .probe import train_probe
        from clipheads.core.cli_args import check_writable_dir
        from clipheads.core.config import save_config
        self.check_training(install)
        out = check_writable_dir(Path(out))
        bb = self.ctx.backbone
        train = self._split("train")
        x, y, skipped = extract_features(bb, train, self.cfg.batch_size)
        probe, info = train_probe(x, y, train.classes, self.cfg.probe)
        probe.save(out)
        save_config(self.cfg, out / "classify_train_config.yaml", self.name)
        return TrainReport(self.name, out, 0, metrics={"train_images": len(y), **info},
                           exported=out, skipped=len(skipped))

    def evaluate(self, data: Path | None = None, dataset: str | None = None, probe: Path | None = None,
                 templates: str | None = None, top: int | None = None) -> dict:
        from .data import extract_features
        from .probe import LinearProbe
        from .zero_shot import zero_shot_logits
        self.apply_options("eval", data=data, dataset=dataset, templates=templates)
        bb = self.ctx.backbone
        head = LinearProbe.load(probe) if probe else None
        test = self._split("test", head.classes if head else None)
        x, y, skipped = extract_features(bb, test, self.cfg.batch_size)
        if head is not None:
            logits, mode = head.logits(x), "linear probe"
        else:
            emb = self._label_embeddings(test.classes, self.cfg.templates).cpu()
            logits = zero_shot_logits(x, emb, bb.model.logit_scale.cpu())
            mode = f"zero-shot ({self.cfg.templates})"
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=-1).indices
        return {"mode": mode, "images": len(y), "skipped": len(skipped),
                "top1": float((topk[:, 0] == y).float().mean()),
                "top5": float((topk == y[:, None]).any(-1).float().mean())}

    def describe(self, action: str, result: Any) -> list[str]:
        if action == "infer":
            return [f"{r['image']}: " + ", ".join(f"{t['label']} {t['prob']:.3f}" for t in r["top"])
                    for r in result]
        if action == "train":
            return [f"linear probe: C={result['C']:.3g}, held-out top-1 {result['val_top1']:.3f} on "
                    f"{result['val_images']} held-out of {result['train_images']} training images "
                    f"({result['skipped']} skipped); saved to {result['out']}"]
        return [f"{result['mode']}: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f} "
                f"on {result['images']} images ({result['skipped']} skipped)"]

    def demo(self, examples: list[Path], out: Path) -> list[DemoItem]:
        """Zero-shot over every tiny-world colour x shape name."""
        import shutil

        from clipheads.core.tinyworld import COLOURS, SHAPES
        labels = [f"{c} {s}" for c in COLOURS for s in SHAPES]
        items = []
        for path, pred in zip(examples, self.predict(examples, labels, top=3)):
            shutil.copy2(path, out / path.name)
            items.append(DemoItem(path.stem, [path.name], [f"{t['label']}: {t['prob']:.2f}" for t in pred.top]))
        return items
