"""`clip4clip`: text-video retrieval over frozen CLIP frame features (CLIP4Clip heads).

`index` encodes a folder of videos once (resumable; new files only on re-runs), `infer`
ranks an index by words or by a video, `eval` gives R@1/5/10, MdR, MnR both ways, and
`train` fits a head (meanP, seqLSTM, seqTransf, tightTransf) on captioned videos.
Module level imports no torch (the CLI reads this class to build `--help`).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipheads.core.cli_args import positive_int
from clipheads.core.errors import UserError
from clipheads.core.registry import register_task
from clipheads.core.task import DemoItem, Task, TrainData

from .config import Clip4ClipConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from clipheads.core.runtime import TrainReport

    from .model import Clip4Clip, HeadSpec
    from .weights import HeadInfo

BENCHMARKS = ("tiny-world", "msrvtt")


def _head_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, help="a head folder from 'clip4clip train' (default: the "
                        "bundled tiny-world head on the tiny-world backbone, else parameter-free meanP)")
    parser.add_argument("--head", choices=("meanP",), help="use the parameter-free meanP head (zero-shot CLIP)")


@register_task("clip4clip")
class Clip4ClipTask(Task):
    summary = "text-video retrieval: index your videos, search them by words (CLIP4Clip heads)"
    Config = Clip4ClipConfig
    default_config = "tiny_world"
    actions = ("index", "infer", "eval", "train")
    writes = ("index",)
    installable = True
    best_metric = "val_t2v_R@1"
    cfg: Clip4ClipConfig

    @classmethod
    def add_arguments(cls, action: str, parser: argparse.ArgumentParser) -> None:
        if action == "index":
            parser.add_argument("--videos", required=True, help="a folder (searched recursively), a file or a "
                                "glob of videos; the index folder is --out")
            _head_options(parser)
            parser.add_argument("--batch-size", type=positive_int, default=16, help="videos per encoder batch")
            parser.add_argument("--workers", type=int, default=0, help="decoding processes (0 = in this one)")
            parser.add_argument("--chunk", type=positive_int, default=256, help="videos per index chunk file")
        if action == "infer":
            parser.add_argument("--index", type=Path, required=True, help="an index folder ('clip4clip index')")
            parser.add_argument("--query", action="append", default=[], help="a text query (repeatable)")
            parser.add_argument("--query-video", type=Path, action="append", default=[],
                                help="a video file: rank the index by similarity to it (repeatable)")
            parser.add_argument("--top", type=positive_int, default=5, help="results per query")
            _head_options(parser)
        if action == "eval":
            parser.add_argument("--benchmark", choices=BENCHMARKS, default="tiny-world",
                                help="the tiny world's test clips, or MSR-VTT (--annotations, --video-dir)")
            parser.add_argument("--annotations", type=Path, help="msrvtt: MSRVTT_JSFUSION_test.csv (1k-A) or a json")
            parser.add_argument("--split", help="msrvtt json: the split to evaluate")
            parser.add_argument("--video-dir", type=Path, help="msrvtt: the folder of VIDEO_ID.mp4")
            parser.add_argument("--limit", type=positive_int, help="evaluate the first N videos only")
            parser.add_argument("--workers", type=int, default=0, help="decoding processes")
            _head_options(parser)

    # heads ------------------------------------------------------------------------------------
    def load_head(self, checkpoint: str | Path | None = None, head: str | None = None
                  ) -> tuple["Clip4Clip", "HeadInfo"]:
        """A trained head (or meanP), on the device, eval mode, checked against the backbone."""
        from clipheads.core.state_dict import load_state_dict_strict

        from .model import Clip4Clip, HeadSpec
        from .weights import FOLDER, HeadInfo, bundled_head_dir, read_info, read_state
        path = checkpoint or self.cfg.checkpoint
        if head is not None and path is not None:
            raise UserError("--head meanP and --checkpoint are two heads: pass one")
        if head is None and path is None and self.cfg.backbone == "tiny-world" and FOLDER.exists(bundled_head_dir()):
            path = bundled_head_dir()
        if path is None:
            bb = self.ctx.backbone
            spec = HeadSpec("meanP", bb.embed_dim)
            info = HeadInfo(spec, str(bb.spec), bb.fingerprint, max_frames=self.cfg.frames.max_frames,
                            slice_framepos=self.cfg.frames.slice_framepos, max_words=self.cfg.data.max_words)
            model = Clip4Clip(spec, float(bb.model.logit_scale.detach()))
            return model.to(bb.device).eval(), info
        path = Path(path)
        if not path.exists():
            raise UserError(f"CLIP4Clip head not found: {path}; pass a folder written by 'clip4clip train'")
        info = read_info(path)
        if "backbone" not in self.ctx.chosen and not self.ctx.has_backbone:   # the head's own backbone
            weights = str(FOLDER.files(path)[0].parent / info.backbone_weights) if info.backbone_weights else None
            self.cfg.backbone, self.cfg.weights = info.backbone, weights
        bb = self.ctx.backbone
        if bb.fingerprint != info.backbone_fingerprint:
            raise UserError(f"the head at {path} was trained on backbone {info.backbone} "
                            f"({info.backbone_fingerprint}); this run uses {bb.spec} ({bb.fingerprint}): "
                            f"pass --backbone {info.backbone}")
        model = Clip4Clip(info.spec)
        load_state_dict_strict(model, read_state(path), str(path), "this CLIP4Clip head")
        return model.to(bb.device).eval(), info

    def _index_spec(self, info: "HeadInfo"):
        from .index import IndexSpec
        bb = self.ctx.backbone
        return IndexSpec(str(bb.spec), bb.fingerprint, info.max_frames, info.slice_framepos, bb.embed_dim)

    # index ------------------------------------------------------------------------------------
    def index(self, videos: str, checkpoint: Path | None = None, head: str | None = None,
              batch_size: int = 16, workers: int = 0, chunk: int = 256, root: Path | None = None) -> dict[str, Any]:
        """Encode every video under `videos` not yet in the index at `root` (default --out);
        corrupt files are listed in skipped.json, not indexed."""
        import torch

        from .encode import encode_videos
        from .index import FileKey, VideoIndex, batched, list_videos
        from .weights import head_id
        paths = list_videos(videos)
        model, info = self.load_head(checkpoint, head)
        store = VideoIndex(root if root is not None else self.ctx.out_dir())
        store.open(self._index_spec(info))
        known = {k.path: k for k in store.known()}
        keys = [FileKey.of(p) for p in paths]
        todo = [(p, k) for p, k in zip(paths, keys) if known.get(k.path) != k]
        skipped = {k: v for k, v in store.read_skipped().items() if Path(k).exists()}
        hid = head_id(info.spec, model.state_dict())
        bar = self._bar(len(todo), "index")
        added = 0
        for part in batched(todo, chunk):
            rows, frames, masks = [], [], []
            for enc in encode_videos(self.ctx.backbone, [p for p, _ in part], info.max_frames,
                                     info.slice_framepos, batch_size=batch_size, workers=workers,
                                     progress=bar.update if bar else None):
                rows += [part[i][1] for i in enc.indices]
                frames.append(enc.frames)
                masks.append(enc.mask)
                for i, reason in enc.failed.items():
                    skipped[part[i][1].path] = reason
            if rows:
                f, m = torch.cat(frames), torch.cat(masks)
                with torch.no_grad():
                    video = self._pool(model, f, m)
                store.write_chunk(rows, f, m, video, hid)
                added += len(rows)
            for k in rows:
                skipped.pop(k.path, None)
            store.write_skipped(skipped)
        if bar:
            bar.close()
        return {"index": str(store.root), "videos": len(paths), "added": added,
                "already_indexed": len(paths) - len(todo), "skipped": len(skipped),
                "skipped_files": skipped}

    def _pool(self, model: "Clip4Clip", frames: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
        """Video embeddings of a loose head, or zeros for tightTransf (it scores pairs)."""
        import torch
        dev = next(iter(model.parameters())).device
        if not model.loose:
            return torch.zeros(frames.shape[0], frames.shape[-1])
        out = [model.video_embeddings(frames[s:s + 512].to(dev), mask[s:s + 512].to(dev)).cpu()
               for s in range(0, len(frames), 512)]
        return torch.cat(out)

    def _bar(self, total: int, what: str):
        if not self.ctx.progress or total == 0:
            return None
        from tqdm import tqdm
        return tqdm(total=total, desc=f"clip4clip {what}", unit="video")

    # infer ------------------------------------------------------------------------------------
    def infer(self, index: Path, query: list[str] | None = None, query_video: list[Path] | None = None,
              top: int = 5, checkpoint: Path | None = None, head: str | None = None) -> list[dict]:
        """The `top` videos of the index for each text query and each query video."""
        import torch
        import torch.nn.functional as F

        from .encode import caption_features, encode_videos
        from .index import VideoIndex
        from .weights import head_id
        query, query_video = list(query or []), list(query_video or [])
        if not query and not query_video:
            raise UserError("clip4clip infer: give --query TEXT and/or --query-video FILE")
        if any(not q.strip() for q in query):
            raise UserError("clip4clip infer: an empty --query; write some words, e.g. --query 'a dog runs'")
        model, info = self.load_head(checkpoint, head)
        store = VideoIndex(index)
        store.check(self._index_spec(info))
        entries = store.entries()
        hid = head_id(info.spec, model.state_dict())
        if model.loose and any(h != hid for h in entries.heads):
            with torch.no_grad():   # another head built the index: re-pool its frames (no decoding)
                entries.video = self._pool(model, entries.frames, entries.mask)
        dev = self.ctx.backbone.device
        results = []
        if query:
            text = caption_features(self.ctx.backbone, query, info.max_words)
            with torch.no_grad():
                if model.loose:
                    scores = F.normalize(text, dim=-1).cpu() @ entries.video.t()
                else:   # one forward pass per (query, video) pair, in blocks of videos
                    scores = torch.cat([model.cross(text.to(dev), entries.frames[s:s + 1024].to(dev),
                                                    entries.mask[s:s + 1024].to(dev)).cpu()
                                        for s in range(0, len(entries.frames), 1024)], dim=1)
            results += [self._ranked({"query": q}, row, entries, top) for q, row in zip(query, scores)]
        for path in query_video:
            if not model.loose:
                raise UserError("--query-video needs a loose head (meanP, seqLSTM, seqTransf); "
                                "tightTransf scores text-video pairs only")
            enc = next(iter(encode_videos(self.ctx.backbone, [path], info.max_frames, info.slice_framepos)))
            if enc.failed:
                raise UserError(f"--query-video {path}: cannot read it ({enc.failed[0]})")
            with torch.no_grad():
                emb = self._pool(model, enc.frames, enc.mask)
            results.append(self._ranked({"query_video": str(path)}, (emb @ entries.video.t())[0], entries, top))
        return results

    @staticmethod
    def _ranked(head: dict, scores: "torch.Tensor", entries, top: int) -> dict:
        order = scores.argsort(descending=True)[:top].tolist()
        return {**head, "results": [{"rank": r + 1, "path": entries.keys[i].path, "score": float(scores[i])}
                                    for r, i in enumerate(order)]}

    # eval -------------------------------------------------------------------------------------
    def _tiny_world(self) -> Path:
        """The exported clips; the first call (on every rank: it waits for rank 0's export)
        is remembered, so rank 0's evaluation never waits for ranks that do not evaluate."""
        if not hasattr(self, "_tiny_root"):
            from clipheads.core.text.bank import default_cache_dir

            from .tinyworld import tiny_world_videos
            d = self.cfg.data
            self._tiny_root = tiny_world_videos(Path(self.ctx.cache_dir or default_cache_dir()),
                                                d.n_train + d.n_val, d.n_test, d.video_size)
        return self._tiny_root

    def _benchmark(self, benchmark: str, annotations: Path | None, split: str | None,
                   video_dir: Path | None):
        from clipheads.core.data.msrvtt import load_msrvtt
        if benchmark == "tiny-world":
            root = self._tiny_world()
            return load_msrvtt(root / "msrvtt_test.json"), root / "videos"
        if annotations is None or video_dir is None:
            raise UserError("--benchmark msrvtt needs --annotations (MSRVTT_JSFUSION_test.csv) and --video-dir")
        if not video_dir.is_dir():
            raise UserError(f"--video-dir {video_dir}: not a folder of VIDEO_ID.mp4 files")
        return load_msrvtt(annotations, split), video_dir

    def evaluate(self, benchmark: str = "tiny-world", annotations: Path | None = None, split: str | None = None,
                 video_dir: Path | None = None, limit: int | None = None, workers: int = 0,
                 checkpoint: Path | None = None, head: str | None = None) -> dict[str, Any]:
        """R@1/5/10, MdR, MnR text->video and video->text (several captions per video: the
        multi-sentence protocol, video->text by each video's best caption)."""
        from .metrics import multi_sentence_metrics
        entries, folder = self._benchmark(benchmark, annotations, split, video_dir)
        entries = entries[:limit] if limit else entries
        model, info = self.load_head(checkpoint, head)
        frames, mask, text, owner = self._features(entries, folder, info.max_frames, info.slice_framepos,
                                                   info.max_words, workers)
        result = multi_sentence_metrics(_similarity(model, text, frames, mask), owner.tolist())
        return {"benchmark": benchmark, "head": info.spec.sim_header, "videos": len(frames),
                "captions": len(text), "skipped": self._skipped, **result}

    # training ---------------------------------------------------------------------------------
    def head_spec(self) -> "HeadSpec":
        """The head of this config on this backbone (sizes from the CLIP text tower, as the paper)."""
        from .model import HeadSpec
        bb, h = self.ctx.backbone, self.cfg.head
        text = bb.model.transformer.resblocks
        spec = HeadSpec(h.sim_header, bb.embed_dim, h.layers, text[0].attn.num_heads,
                        bb.model.positional_embedding.shape[0])
        width = bb.model.positional_embedding.shape[1]
        if h.sim_header in ("seqTransf", "tightTransf") and h.init_from_text and width != bb.embed_dim:
            raise UserError(f"head.sim_header={h.sim_header} starts from the CLIP text blocks, {width} wide, but "
                            f"{bb.spec} embeds frames in {bb.embed_dim} dimensions; use meanP or seqLSTM, or "
                            "--set head.init_from_text=false")
        if self.cfg.frames.max_frames + (h.sim_header == "tightTransf") > spec.positions:
            raise UserError(f"frames.max_frames={self.cfg.frames.max_frames} exceeds the {spec.positions} "
                            "positions the head holds (the text context length)")
        return spec

    def build_model(self) -> "torch.nn.Module":
        from .model import Clip4Clip
        self.cfg.validate()
        bb = self.ctx.backbone
        model = Clip4Clip(self.head_spec(), float(bb.model.logit_scale.detach()))
        if self.cfg.head.init_from_text:
            model.init_from_clip_text(bb.model)
        return model

    def param_groups(self, module: "torch.nn.Module") -> list[dict]:
        """New modules at train.lr; the logit scale (CLIP's own) at lr x 1e-3 (the paper's
        coef_lr); weight decay on everything but biases, as the official optimiser."""
        inner = getattr(module, "module", module)
        named = list(inner.named_parameters())
        groups = [{"params": [p for n, p in named if n != "logit_scale" and "bias" not in n], "lr_mult": 1.0},
                  {"params": [p for n, p in named if "bias" in n], "lr_mult": 1.0, "weight_decay": 0.0},
                  {"params": [p for n, p in named if n == "logit_scale"], "lr_mult": 1e-3}]
        return [g for g in groups if g["params"]]

    def _split(self, which: str):
        """(video entries, folder) of the train / val split of the configured data."""
        from clipheads.core.data.msrvtt import load_msrvtt
        d = self.cfg.data.check_paths()
        if d.source == "tiny-world":
            root = self._tiny_world()
            entries = load_msrvtt(root / "msrvtt_train.json")
            return (entries[:d.n_train] if which == "train" else entries[d.n_train:d.n_train + d.n_val]), root / "videos"
        val = (load_msrvtt(d.val_annotations or d.train_annotations, d.val_split)
               if d.val_annotations or d.val_split else [])
        if which == "val":
            return val, Path(d.video_dir)
        train = load_msrvtt(d.train_annotations, d.train_split)
        if d.train_ids:
            listed = {e.video_id for e in load_msrvtt(d.train_ids)}
            train = [e for e in train if e.video_id in listed]
        held_out = {e.video_id for e in val}
        return [e for e in train if e.video_id not in held_out], Path(d.video_dir)

    def _features(self, entries, folder: Path, max_frames: int, slice_framepos: int, max_words: int,
                  workers: int = 0):
        """Frame features of the readable videos with captions, and those captions' text
        features with the index of their video; unreadable videos are counted in `_skipped`."""
        import torch

        from clipheads.core.data.errors import CorruptSample
        from clipheads.core.data.msrvtt import find_video

        from .encode import caption_features, encode_videos
        paths, kept = [], []
        for e in entries:
            if not e.captions:
                continue
            try:
                paths.append(find_video(folder, e.video_id))
                kept.append(e)
            except CorruptSample:
                continue
        frames, masks, ok = [], [], []
        bar = self._bar(len(paths), "encode")
        for enc in encode_videos(self.ctx.backbone, paths, max_frames, slice_framepos, workers=workers,
                                 progress=bar.update if bar else None):
            frames.append(enc.frames)
            masks.append(enc.mask)
            ok += enc.indices
        if bar:
            bar.close()
        videos = [kept[i] for i in ok]
        if not videos:
            raise UserError(f"no readable video with a caption among {len(entries)} in {folder}")
        captions = [c for v in videos for c in v.captions]
        owner = torch.tensor([j for j, v in enumerate(videos) for _ in v.captions], dtype=torch.long)
        text = caption_features(self.ctx.backbone, captions, max_words).cpu()
        self._skipped = len(entries) - len(videos)
        return torch.cat(frames), torch.cat(masks), text, owner

    def _config_features(self, which: str):
        entries, folder = self._split(which)
        if not entries:
            return None
        f, d = self.cfg.frames, self.cfg.data
        return self._features(entries, folder, f.max_frames, f.slice_framepos, d.max_words, d.num_workers)

    def train_data(self) -> TrainData:
        """One item per caption (its video's frame features, the caption's text feature),
        precomputed once: the backbone is frozen, so both are fixed."""
        from .data import CaptionPairs
        features = self._config_features("train")
        if features is None:
            raise UserError("no training videos: set data.train_annotations (and data.video_dir)")
        return TrainData(CaptionPairs(*features))

    def loss(self, module: "torch.nn.Module", batch: Any) -> dict[str, "torch.Tensor"]:
        import torch
        import torch.nn.functional as F

        from clipheads.core.engine import contrastive_loss
        dev = self.ctx.device
        frames, mask, text = (t.to(dev) for t in batch)
        out = module(text, frames, mask)
        if "logits" in out:   # tightTransf: the local batch, as the official code
            logits = out["logits"]
            labels = torch.arange(len(logits), device=dev)
            loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
            return {"loss": loss}
        return {"loss": contrastive_loss(out["video"], out["text"], out["scale"]),
                "logit_scale": out["scale"].detach()}

    def evaluate_module(self, module: "torch.nn.Module") -> dict[str, float] | None:
        """Retrieval on the validation split (never the test set)."""
        from .metrics import multi_sentence_metrics
        if not hasattr(self, "_val"):
            self._val = self._config_features("val")
        if self._val is None:
            return None
        frames, mask, text, owner = self._val
        m = multi_sentence_metrics(_similarity(getattr(module, "module", module), text, frames, mask), owner.tolist())
        return {f"val_{d}_{k}": float(v) for d in ("t2v", "v2t") for k, v in m[d].items()
                if k in ("R@1", "R@5", "R@10", "MdR", "MnR")}

    def _info(self, metrics: dict[str, Any], notes: str) -> "HeadInfo":
        from .weights import HeadInfo
        bb, f = self.ctx.backbone, self.cfg.frames
        return HeadInfo(self.head_spec(), str(bb.spec), bb.fingerprint, max_frames=f.max_frames,
                        slice_framepos=f.slice_framepos, max_words=self.cfg.data.max_words, metrics=metrics,
                        notes=notes)

    def export(self, module: "torch.nn.Module", out: Path, report: "TrainReport") -> Path:
        from .weights import save_head
        notes = (f"trained by 'clipheads clip4clip train' for {report.steps} steps on {self.cfg.data.source} "
                 f"({self.cfg.head.sim_header}, frozen backbone)")
        return save_head(out / "head", module.state_dict(), self._info(report.metrics, notes))

    def check_install(self) -> None:
        if self.cfg.backbone != "tiny-world" or self.cfg.data.source != "tiny-world":
            raise UserError("--install ships a head for the bundled tiny-world backbone trained on the tiny "
                            "world; drop --install or use --config tiny_world")

    def install(self, exported: Path) -> Path:
        from .weights import bundled_head_dir, read_info, read_state, save_head
        return save_head(bundled_head_dir(), read_state(exported), read_info(exported), half=True)

    # demo -------------------------------------------------------------------------------------
    def demo(self, examples: list[Path], out: Path) -> list[DemoItem] | None:
        """Six held-out tiny-world clips indexed with the bundled head; two captions
        searched, each shown with its top 3 clips as rows of frames."""
        from clipheads.core.data.video import write_video
        from clipheads.core.tinyworld.splits import split_seeds
        from clipheads.core.tinyworld.video import make_video

        from .render import frame_row
        from .tinyworld import VIDEO_FPS, VIDEO_FRAMES
        from .weights import FOLDER, bundled_head_dir
        if not FOLDER.exists(bundled_head_dir()):
            return None
        clips = [make_video(seed, n_frames=VIDEO_FRAMES, size=96) for seed in split_seeds("test", 6, start=1000)]
        folder = out / "videos"
        for k, clip in enumerate(clips):
            write_video(folder / f"clip{k}.mp4", clip.frames, VIDEO_FPS)
        progress, self.ctx.progress = self.ctx.progress, False
        try:
            self.index(str(folder), root=out / "index")
        finally:
            self.ctx.progress = progress
        queries = [clips[0].caption, clips[3].caption]
        items = []
        for q, result in zip(queries, self.infer(out / "index", query=queries, top=3)):
            images, lines = [], []
            for r in result["results"]:
                name = Path(r["path"]).stem
                images.append(frame_row(Path(r["path"]), out / f"{len(items)}_{r['rank']}_{name}.png").name)
                lines.append(f"{r['rank']}. {name} ({r['score']:.2f}): {clips[int(name[4:])].caption}")
            items.append(DemoItem(f"query: {q}", images, lines))
        return items

    def describe(self, action: str, result: Any) -> list[str]:
        if action == "index":
            return [f"clip4clip index: {result['videos']} videos ({result['added']} added, "
                    f"{result['already_indexed']} already indexed, {result['skipped']} unreadable) -> {result['index']}"]
        if action == "infer":
            lines = []
            for r in result:
                lines.append(f"{r.get('query') or r.get('query_video')}:")
                lines += [f"  {x['rank']}. {x['score']:.3f} {x['path']}" for x in r["results"]]
            return lines
        if action == "eval":
            t, v = result["t2v"], result["v2t"]
            return [f"clip4clip {result['head']} on {result['benchmark']} ({result['videos']} videos, "
                    f"{result['captions']} captions, {result['skipped']} skipped)",
                    f"  text->video R@1 {t['R@1']:.1f} R@5 {t['R@5']:.1f} R@10 {t['R@10']:.1f} "
                    f"MdR {t['MdR']:.1f} MnR {t['MnR']:.1f}",
                    f"  video->text R@1 {v['R@1']:.1f} R@5 {v['R@5']:.1f} R@10 {v['R@10']:.1f} "
                    f"MdR {v['MdR']:.1f} MnR {v['MnR']:.1f}"]
        if action == "train":
            return [f"clip4clip: {result['steps']} steps, val t2v R@1 {result.get('val_t2v_R@1', float('nan')):.1f}; "
                    f"exported to {result.get('exported')}"]
        return []


def _similarity(model: "Clip4Clip", text: "torch.Tensor", frames: "torch.Tensor", mask: "torch.Tensor",
                batch: int = 64):
    """[captions, videos] similarities as numpy (batches of captions on the head's device)."""
    import torch
    dev = next(iter(model.parameters())).device
    frames, mask = frames.to(dev), mask.to(dev)
    with torch.no_grad():
        return torch.cat([model.logits(text[s:s + batch].to(dev), frames, mask).float().cpu()
                          for s in range(0, len(text), batch)]).numpy()
