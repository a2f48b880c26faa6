"""The released ViLD classifier and rare-mask files load (synthetic files of the real
shapes: 512 x 1203 and 1204), and malformed ones fail with one clear line."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clipheads.core.errors import UserError
from clipheads.tasks.vild.importers import load_rare_mask, load_text_classifier


def test_released_shapes_load_as_classifier_and_novel_split(tmp_path):
    rng = np.random.default_rng(0)
    classifier = rng.standard_normal((512, 1203)).astype(np.float32)
    mask = np.ones(1204, dtype=np.float32)
    rare = rng.choice(np.arange(1, 1204), size=337, replace=False)
    mask[rare] = 0
    np.save(tmp_path / "clip_synonym_prompt.npy", classifier)
    np.save(tmp_path / "lvis_rare_masks.npy", mask)
    text = load_text_classifier(tmp_path / "clip_synonym_prompt.npy", embed_dim=512)
    novel = load_rare_mask(tmp_path / "lvis_rare_masks.npy", num_classes=text.shape[0])
    assert text.shape == (1203, 512) and torch.equal(text[7], torch.from_numpy(classifier[:, 7]))
    assert novel.dtype == torch.bool and novel.shape == (1203,) and int(novel.sum()) == 337
    assert bool(novel[rare[0] - 1]) and not bool(novel[np.setdiff1d(np.arange(1, 1204), rare)[0] - 1])


def test_bad_files_fail_clearly(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(10, dtype=np.float32))
    with pytest.raises(UserError, match="expected \\[embedding, classes\\]"):
        load_text_classifier(tmp_path / "flat.npy")
    np.save(tmp_path / "c.npy", np.zeros((256, 5), dtype=np.float32))
    with pytest.raises(UserError, match="256-d embeddings"):
        load_text_classifier(tmp_path / "c.npy", embed_dim=512)
    np.save(tmp_path / "m.npy", np.array([1, 0, 1, 2]))
    with pytest.raises(UserError, match="other than 0 and 1"):
        load_rare_mask(tmp_path / "m.npy")
    np.save(tmp_path / "m2.npy", np.ones(6))
    with pytest.raises(UserError, match="covers 5 classes"):
        load_rare_mask(tmp_path / "m2.npy", num_classes=1203)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError, match="plain numeric"):
        load_text_classifier(tmp_path / "obj.npy")
    with pytest.raises(UserError, match="not found"):
        load_rare_mask(tmp_path / "missing.npy")
