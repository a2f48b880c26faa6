"""Config schema of the `clip4clip` task (text-video retrieval)."""
from __future__ import annotations

from dataclasses import dataclass, field

from clipheads.core.config import checked
from clipheads.core.engine import TrainConfig
from clipheads.core.errors import UserError
from clipheads.core.task import TaskConfig

SOURCES = ("tiny-world", "msrvtt")
HEADS: tuple[str, ...] = ("meanP", "seqLSTM", "seqTransf", "tightTransf")


@dataclass
class HeadConfig:
    """Which similarity head, and its size (the official `sim_header`,
    `cross_num_hidden_layers`)."""

    sim_header: str = checked("meanP", choices=HEADS)
    layers: int = checked(4, ge=1)        # seqTransf / tightTransf blocks, from CLIP text blocks 0..3
    init_from_text: bool = True           # the paper's init of position embeddings and blocks


@dataclass
class FramesConfig:
    """The official sampling: one frame per second, at most `max_frames`, thinned by
    `slice_framepos` (0 head, 1 tail, 2 uniform)."""

    max_frames: int = checked(12, ge=1)
    slice_framepos: int = checked(2, choices=(0, 1, 2))


@dataclass
class Clip4ClipData:
    """Training and evaluation videos. `msrvtt`: the standard json (MSRVTT_data.json,
    with `train_split`) or csv files over one folder of VIDEO_ID.mp4; model selection runs
    on `val_annotations`, never on the test set (the official code selects on test).
    `tiny-world`: exported moving-shape clips (train / val / test seeds never overlap)."""

    source: str = checked("tiny-world", choices=SOURCES)
    video_dir: str | None = None
    train_annotations: str | None = None     # msrvtt: MSRVTT_data.json or a csv of (video_id, sentence)
    train_split: str | None = None           # msrvtt json: only videos of this 'split' field
    train_ids: str | None = None             # a csv whose video_id column lists the training videos (9k / 7k)
    val_annotations: str | None = None       # model selection; default: train_annotations
    val_split: str | None = None             # e.g. 'validate' (MSR-VTT's own 497): removed from training
    test_annotations: str | None = None      # msrvtt: MSRVTT_JSFUSION_test.csv (1k-A); eval only
    max_words: int = checked(32, ge=2)       # text tokens incl. start/end (longer captions are cut)
    n_train: int = checked(1500, ge=1)       # tiny world videos
    n_val: int = checked(100, ge=1)
    n_test: int = checked(200, ge=1)
    video_size: int = checked(96, ge=32)
    num_workers: int = checked(0, ge=0)      # decoding processes

    def check_paths(self) -> "Clip4ClipData":
        """Paths training needs (paper configs leave them to --set, so not checked at load)."""
        if self.source == "msrvtt" and not (self.video_dir and self.train_annotations):
            raise UserError("data.source=msrvtt needs data.video_dir and data.train_annotations "
                            "(e.g. --set data.video_dir=MSRVTT/videos --set data.train_annotations=MSRVTT_data.json)")
        return self


@dataclass
class Clip4ClipConfig(TaskConfig):
    head: HeadConfig = field(default_factory=HeadConfig)
    frames: FramesConfig = field(default_factory=FramesConfig)
    data: Clip4ClipData = field(default_factory=Clip4ClipData)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=1000, batch_size=128, lr=1e-4, weight_decay=0.2, warmup_steps=100, schedule="cosine",
        clip_grad=1.0, eval_every=200, ckpt_every=200, log_every=20))
    checkpoint: str | None = None            # a head folder written by 'clip4clip train'

    def validate(self) -> "Clip4ClipConfig":
        self.train.validate()
        return self
