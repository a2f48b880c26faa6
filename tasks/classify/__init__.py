"""Zero-shot classification and linear probe (the CLIP paper's own evaluation)."""
from .task import ClassifyTask

__all__ = ["ClassifyTask"]
