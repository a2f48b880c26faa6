"""LSeg: language-driven semantic segmentation (DPT decoder over CLIP/ViT blocks, pixel
embeddings matched to text embeddings of any label set)."""
from .task import LSegTask

__all__ = ["LSegTask"]
