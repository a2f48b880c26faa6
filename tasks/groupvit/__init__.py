"""GroupViT: segmentation that emerges from grouping tokens (the official model with its
checkpoints and zero-shot protocol, and a grouping head over the frozen CLIP)."""
from .task import GroupViTTask

__all__ = ["GroupViTTask"]
