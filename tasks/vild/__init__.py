"""ViLD: open-vocabulary detection by distilling the frozen CLIP into Mask R-CNN region
heads (train on base classes, detect any words)."""
from .task import ViLDTask

__all__ = ["ViLDTask"]
