"""CLIP4Clip: text-video retrieval by temporal pooling of frozen CLIP frame features —
index your videos, search them with words, train and evaluate with the paper's protocol."""
from .task import Clip4ClipTask

__all__ = ["Clip4ClipTask"]
