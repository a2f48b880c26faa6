"""clipheads: one frozen CLIP backbone, many task heads.

    import clipheads
    seg = clipheads.load("lseg")                      # the bundled tiny-world head and CLIP
    result = seg.predict(["street.png"], ["road", "car", "sky", "other"])[0]
    result.mask                                       # [H, W] uint8 label indices

Every head: `clipheads.load(NAME, backbone=..., config=..., overrides=[...], device=...)`
returns the task object with `predict(...)`, `train(out)` and `evaluate(...)`.
This file is installed as the top-level `clipheads` package (see setup.py); importing it
loads no torch.
"""
from clipheads.core.api import load, task_names

__all__ = ["load", "task_names"]
