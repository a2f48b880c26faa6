"""The zero-shot segmentation benchmarks GroupViT reports (PASCAL VOC 2012, PASCAL Context,
COCO-Object), read from the folder layouts of its official configs
(segmentation/configs/_base_/datasets/{pascal_voc12,pascal_context,coco}.py).

Each benchmark yields `EvalScene`s (name, RGB PIL image, H x W uint8 mask) whose values
index `spec.class_names`: 0 is background, 255 is ignored. The class names are
GroupViT's own CLASSES overrides (segmentation/datasets/*.py), which are what its text
encoder sees; mmsegmentation's names are kept alongside for reference. Unreadable or
missing files are skipped and counted (`folder.skips`), never ending an evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

from clipheads.core.data.masks import IGNORE_INDEX, SegmentationFolder
from clipheads.core.data.skipping import SkipCounter
from clipheads.core.errors import UserError, close_matches
from clipheads.core.segmentation.evaluation import EvalScene


@dataclass(frozen=True)
class InferenceSettings:
    """GroupViT's test-time pipeline, the same for the three benchmarks: mmseg
    `Resize(img_scale=(2048, 448), keep_ratio=True)` (short side 448 unless the long side
    would pass 2048), no flip, sliding-window inference of 448 crops at stride 224."""

    short_side: int = 448
    long_side_max: int = 2048
    mode: str = "slide"
    crop_size: int = 448
    stride: int = 224
    flip: bool = False


@dataclass(frozen=True)
class BenchmarkSpec:
    """What a benchmark is: where its files are, its classes and GroupViT's settings for it."""

    name: str
    title: str
    class_names: tuple[str, ...]              # GroupViT's CLASSES, background first
    mmseg_class_names: tuple[str, ...] | None  # mmsegmentation's CLASSES (None: no mmseg dataset)
    root_hint: str                            # the root GroupViT's config points at (under local_data/)
    image_dir: str
    mask_dir: str
    split_file: str | None                    # None: every image of image_dir, sorted (mmseg's scan)
    mask_suffix: str
    bg_thresh_code: float                     # test_cfg.bg_thresh of the official config
    bg_thresh_paper: float | None             # as reported for the paper; None where not stated
    prepare: str                              # how to build the folder
    with_background: bool = True
    image_suffix: str = ".jpg"
    ignore_index: int = IGNORE_INDEX
    inference: InferenceSettings = field(default_factory=InferenceSettings)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def foreground_names(self) -> tuple[str, ...]:
        """The names GroupViT embeds as text: with a background class, all but the first
        (background is predicted by thresholding, `bg_thresh`)."""
        return self.class_names[1:] if self.with_background else self.class_names

    @property
    def layout(self) -> str:
        """One line describing the expected folder, for error messages and docs."""
        parts = [f"{self.image_dir}/NAME{self.image_suffix}", f"{self.mask_dir}/NAME{self.mask_suffix}"]
        if self.split_file:
            parts.append(f"{self.split_file} (one NAME a line)")
        return f"ROOT = {self.root_hint} holding " + ", ".join(parts)


# Sources: GroupViT segmentation/datasets/pascal_voc.py (CLASSES), mmseg 0.x PascalVOCDataset.
VOC = BenchmarkSpec(
    name="voc", title="PASCAL VOC 2012 val",
    class_names=("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
                 "chair", "cow", "table", "dog", "horse", "motorbike", "person", "plant", "sheep",
                 "sofa", "train", "monitor"),
    mmseg_class_names=("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
                       "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
                       "pottedplant", "sheep", "sofa", "train", "tvmonitor"),
    root_hint="VOCdevkit/VOC2012", image_dir="JPEGImages", mask_dir="SegmentationClass",
    split_file="ImageSets/Segmentation/val.txt", mask_suffix=".png",
    bg_thresh_code=0.95, bg_thresh_paper=0.9,
    prepare="see mmsegmentation's dataset_prepare.md, 'Pascal VOC'")

# Sources: GroupViT segmentation/datasets/pascal_context.py (CLASSES), mmseg 0.x
# PascalContextDataset (60 classes with background, reduce_zero_label False).
CONTEXT = BenchmarkSpec(
    name="context", title="PASCAL Context val (59 classes + background)",
    class_names=("background", "airplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat",
                 "book", "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
                 "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
                 "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
                 "person", "plate", "platform", "plant", "road", "rock", "sheep", "shelves", "sidewalk",
                 "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "monitor",
                 "wall", "water", "window", "wood"),
    mmseg_class_names=("background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird",
                       "boat", "book", "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling",
                       "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door", "fence",
                       "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light",
                       "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant",
                       "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
                       "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window",
                       "wood"),
    root_hint="VOCdevkit/VOC2010", image_dir="JPEGImages", mask_dir="SegmentationClassContext",
    split_file="ImageSets/SegmentationContext/val.txt", mask_suffix=".png",
    bg_thresh_code=0.35, bg_thresh_paper=0.5,
    prepare="see mmsegmentation's dataset_prepare.md, 'Pascal Context' (tools/convert_datasets/pascal_context.py)")

# Source: GroupViT segmentation/datasets/coco_object.py (CLASSES, seg_map_suffix) and
# convert_dataset/convert_coco_object.py: COCO-Stuff-164k thing ids -> 1..80, stuff and
# unlabelled (255) -> 0, so these masks hold 0..80 and no ignore pixels.
COCO_OBJECT = BenchmarkSpec(
    name="coco_object", title="COCO-Object val2017 (80 things + background)",
    class_names=("background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
                 "truck", "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench",
                 "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe",
                 "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
                 "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
                 "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
                 "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
                 "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
                 "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
                 "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
                 "hair drier", "toothbrush"),
    mmseg_class_names=None,
    root_hint="coco", image_dir="images/val2017", mask_dir="annotations/val2017", split_file=None,
    mask_suffix="_instanceTrainIds.png", bg_thresh_code=0.95, bg_thresh_paper=None,
    prepare="download COCO-Stuff-164k (mmsegmentation's dataset_prepare.md) and run GroupViT's "
            "convert_dataset/convert_coco_object.py on it")

BENCHMARKS: Mapping[str, BenchmarkSpec] = {s.name: s for s in (VOC, CONTEXT, COCO_OBJECT)}

# Where the numbers above come from, for reports and docs.
SOURCES: Mapping[str, str] = {
    "class_names": "NVlabs/GroupViT segmentation/datasets/{pascal_voc,pascal_context,coco_object}.py",
    "mmseg_class_names": "open-mmlab/mmsegmentation 0.x mmseg/datasets/{voc,pascal_context}.py",
    "bg_thresh_code": "NVlabs/GroupViT segmentation/configs/_base_/datasets/{pascal_voc12,pascal_context,coco}.py",
    "bg_thresh_paper": "quoted from the paper in NVlabs/GroupViT issue #56 (VOC 0.9, Context 0.5; "
                       "COCO not stated); the author: released models are re-trained, hence other values",
    "inference": "img_scale (2048, 448) keep_ratio, test_cfg mode='slide' crop 448 stride 224, in the same configs",
}


class BenchmarkFolder:
    """The readable scenes of one benchmark root, in split-list order (or sorted, without one).

    Missing files are counted when the folder is opened, unreadable ones while iterating;
    `skips.summary()` is the one line to report. A mask value outside the class range
    raises UserError: the folder is the wrong dataset or unconverted, not a bad file."""

    def __init__(self, spec: BenchmarkSpec, root: str | Path, limit: int | None = None) -> None:
        self.spec = spec
        self.root = Path(root)
        self.limit = limit
        images, masks = self.root / spec.image_dir, self.root / spec.mask_dir
        for what, path in (("image folder", images), ("mask folder", masks)):
            if not path.is_dir():
                raise _layout_error(spec, self.root, f"no {what} {path}")
        names = self._names(images, masks)
        self.folder = SegmentationFolder(images, masks, ignore_index=spec.ignore_index, names=names,
                                         image_suffix=spec.image_suffix, mask_suffix=spec.mask_suffix)

    def _names(self, images: Path, masks: Path) -> list[str]:
        spec = self.spec
        if spec.split_file is None:
            names = sorted(p.name[:-len(spec.image_suffix)] for p in images.iterdir()
                           if p.name.endswith(spec.image_suffix))
            if not any(p.name.endswith(spec.mask_suffix) for p in masks.iterdir()):
                raise _layout_error(spec, self.root, f"no *{spec.mask_suffix} mask in {masks}")
        else:
            split = self.root / spec.split_file
            if not split.is_file():
                raise _layout_error(spec, self.root, f"no split list {split}")
            names = split.read_text().split()
        if not names:
            raise _layout_error(spec, self.root, f"no images listed ({spec.split_file or images})")
        return names

    @property
    def skips(self) -> SkipCounter:
        return self.folder.skips

    @property
    def skipped(self) -> int:
        return self.folder.skips.count

    def __len__(self) -> int:
        n = len(self.folder)
        return n if self.limit is None else min(self.limit, n)

    def __iter__(self) -> Iterator[EvalScene]:
        for i in range(len(self)):
            pair = self.folder[i]
            if pair is None:
                continue
            image, mask = pair
            mask = mask.numpy()
            valid = mask[mask != self.spec.ignore_index]
            image_path, path = self.folder.pairs[i]
            if valid.size and int(valid.max()) >= self.spec.num_classes:
                raise UserError(f"mask {path} holds class index {int(valid.max())} but {self.spec.title} "
                                f"has {self.spec.num_classes} classes (0..{self.spec.num_classes - 1}, "
                                f"{self.spec.ignore_index} = ignore); is this the right dataset? "
                                f"To build it: {self.spec.prepare}")
            yield EvalScene(image, mask, image_path.name[:-len(self.spec.image_suffix)])


def _layout_error(spec: BenchmarkSpec, root: Path, what: str) -> UserError:
    """Name what is missing, the layout expected, and a nearer root when there is one."""
    hint = ""
    leaf = Path(spec.root_hint).name
    if (root / leaf).is_dir():
        hint = f" (did you mean {root / leaf}?)"
    elif (root / spec.root_hint).is_dir():
        hint = f" (did you mean {root / spec.root_hint}?)"
    return UserError(f"{root} is not a {spec.title} folder: {what}{hint}; expected {spec.layout}; "
                     f"to build it: {spec.prepare}")


def open_benchmark(name: str, root: str | Path, limit: int | None = None) -> BenchmarkFolder:
    """The benchmark `name` ('voc', 'context', 'coco_object') read from `root`; `limit`
    keeps the first `limit` pairs (quick checks)."""
    spec = BENCHMARKS.get(name)
    if spec is None:
        raise UserError(f"unknown benchmark {name!r}{close_matches(name, BENCHMARKS)}; "
                        f"choose from {', '.join(BENCHMARKS)}")
    if limit is not None and limit < 1:
        raise UserError(f"benchmark limit must be >= 1, got {limit}")
    if not Path(root).is_dir():
        raise UserError(f"benchmark root {root} not found; expected {spec.layout}; to build it: {spec.prepare}")
    return BenchmarkFolder(spec, root, limit)
