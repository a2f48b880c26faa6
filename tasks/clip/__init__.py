"""Contrastive image-text training; trains the bundled tiny-world CLIP."""
from .task import ClipTask

__all__ = ["ClipTask"]
