"""Our XDoG map against the official CLIPasso code's `XDoG_`.

tests/fixtures/clipasso/official_xdog.npz holds the official function's binary maps
(np.packbits), computed outside this repository on canvases prepared by our pipeline
(`prepare_target`, then CLIP normalisation with the named mean/std): the six bundled
single-shape examples at 224 px (OpenAI mean/std, the paper) and 64 px (the tiny CLIP's
0.5/0.5), and two random RGB images stored in the fixture.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import scipy  # noqa: F401,E402 - the sketch/dev extras install both; missing must fail
import skimage  # noqa: F401,E402

from clipheads.core.data.images import load_image_rgba  # noqa: E402
from clipheads.tasks.clipasso.edges import xdog_official  # noqa: E402
from clipheads.tasks.clipasso.saliency import edge_map  # noqa: E402
from clipheads.tasks.clipasso.target import prepare_target  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "clipasso" / "official_xdog.npz"
NORMS = {"openai": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
         "tiny": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
DATA = np.load(FIXTURE)
KEYS = sorted(k[:-len("__bits")] for k in DATA.files if k.endswith("__bits"))


def official(key: str) -> np.ndarray:
    shape = tuple(int(v) for v in DATA[f"{key}__shape"])
    return np.unpackbits(DATA[f"{key}__bits"])[: shape[0] * shape[1]].reshape(shape).astype(np.float32)


def ours(key: str) -> np.ndarray:
    name, canvas, norm = key.split("__")
    if name.startswith("random"):
        image = Image.fromarray(DATA[f"{name}__image"], "RGB")
    else:
        image = load_image_rgba(ROOT / "core" / "assets" / "examples" / f"{name}.png")
    target = prepare_target(image, int(canvas))
    return edge_map(target, *NORMS[norm], variant="official")


def test_fixture_covers_the_examples_and_random_images() -> None:
    assert len(KEYS) == 14 and sum(k.startswith("random") for k in KEYS) == 2


@pytest.mark.parametrize("key", KEYS)
def test_matches_the_official_xdog(key: str) -> None:
    want, got = official(key), ours(key)
    assert got.shape == want.shape and got.dtype == np.float32
    agreement = float((got == want).mean())
    print(f"{key}: {agreement:.6f}")
    assert agreement >= 0.995, f"{key}: only {agreement:.4%} of pixels agree with the official XDoG"


def test_flat_image_has_no_edges_and_no_nan() -> None:
    assert np.array_equal(xdog_official(np.full((16, 16, 3), 1.9, np.float32)), np.ones((16, 16), np.float32))
