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


def test_released_files_become_the_training_classifier(tmp_path, one_thread):
    """data.classifier_file / rare_mask_file: the classifier covers every category (id
    order), rare logits are zeroed in training, labels index the full vocabulary, and
    the rare classes' boxes are still held out."""
    import clipheads
    from clipheads.core.tinyworld.export import export_tiny_world
    from clipheads.tasks.vild.data import BaseClassSamples
    world = export_tiny_world(tmp_path / "tw", n_train=4, n_val=1, n_videos=0, size=64)
    task = clipheads.load("vild", device="cpu", overrides=[
        "data.source=coco", f"data.train_json={world / 'annotations' / 'instances_train.json'}",
        f"data.train_images={world / 'images' / 'train'}", "data.base=[circle,square,triangle,star]",
        "data.novel=[heart,cross]", f"data.classifier_file={tmp_path / 'c.npy'}",
        f"data.rare_mask_file={tmp_path / 'm.npy'}", "vild.mode=text"])
    dim = task.ctx.backbone.embed_dim
    np.save(tmp_path / "c.npy", np.random.default_rng(0).standard_normal((dim, 6)).astype(np.float32))
    np.save(tmp_path / "m.npy", np.array([1, 1, 1, 1, 1, 0, 0], dtype=np.float32))   # heart, cross rare
    names, text, rare = task._training_vocabulary()
    assert names == ["circle", "square", "triangle", "star", "heart", "cross"]
    assert torch.equal(rare, torch.tensor([False, False, False, False, True, True]))
    assert torch.allclose(text, torch.from_numpy(np.load(tmp_path / "c.npy").T))
    ds = BaseClassSamples(world / "images" / "train", world / "annotations" / "instances_train.json",
                          ["circle", "square", "triangle", "star"], vocabulary=names, with_masks=False)
    labels = torch.cat([ds[i][1]["labels"] for i in range(len(ds))])
    assert labels.numel() > 0 and int(labels.min()) >= 1 and int(labels.max()) <= 4
    model = task.build_model()
    assert model.roi_heads.classifier.num_classes == 6 and bool(model.roi_heads.classifier.zeroed[4:].all())
