"""The bundled demo inputs are exactly what `tools/make_examples.py` generates today."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from clipheads.core.demo import example_images

TOOL = Path(__file__).resolve().parents[1] / "tools" / "make_examples.py"


def test_bundled_examples_are_reproducible(tmp_path):
    spec = importlib.util.spec_from_file_location("make_examples", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_examples(tmp_path)
    bundled = {p.name: p for p in example_images()}
    fresh = {p.name: p for p in tmp_path.glob("*.png")}
    assert bundled.keys() == fresh.keys()
    for name in bundled:
        assert np.array_equal(np.asarray(Image.open(bundled[name])), np.asarray(Image.open(fresh[name]))), name
