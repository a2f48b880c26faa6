"""Semantic-segmentation evaluation shared by the segmentation heads (LSeg, GroupViT).

Import from the submodules: `.metrics` (confusion matrix, mIoU, chance levels, binary
episode counts), `.evaluation` (scenes, accumulation over a segmenter, the tiny-world
open-vocabulary report) and `.benchmarks` (PASCAL VOC, PASCAL Context and COCO-Object
readers in the layouts GroupViT's configs use). This package imports nothing itself.
"""
