"""The text bank encodes each (backbone, template set, label) once, across processes."""
from __future__ import annotations

import pytest
import torch

from clipheads.core.backbone import FrozenCLIP
from clipheads.core.errors import UserError
from clipheads.core.text import TextBank, render
from clipheads.core.text.templates import CIFAR18, IMAGENET80, VILD63

from conftest import TINY_VIT


@pytest.fixture
def backbone(openai_checkpoint):
    path, _ = openai_checkpoint(TINY_VIT)
    return FrozenCLIP.from_spec(TINY_VIT, weights=path)


def test_template_sets_have_published_sizes():
    assert (len(IMAGENET80), len(CIFAR18), len(VILD63)) == (80, 18, 63)
    assert render(VILD63, "apple")[0] == "There is an apple in the scene."
    assert render(VILD63, "traffic_light")[2] == "This is a photo of a traffic light in the scene."


def test_embeddings_are_normalised_template_means(backbone, isolated_cache):
    bank = TextBank(backbone)
    emb = bank.embed(["red circle", "blue star"], "cifar18")
    assert emb.shape == (2, 32)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    with torch.no_grad():
        per = backbone.encode_text(render(CIFAR18, "blue star"), normalize=True).mean(0)
    assert torch.allclose(emb[1], per / per.norm(), atol=1e-5)
    assert bank.encoded_prompts == 36


def test_second_bank_reads_disk_and_encodes_nothing(backbone, isolated_cache):
    first = TextBank(backbone).embed(["a", "b", "c"], "imagenet80")
    bank = TextBank(backbone)
    again = bank.embed(["c", "a"], "imagenet80")
    assert bank.encoded_prompts == 0
    assert torch.equal(again, first[[2, 0]])
    bank.embed(["c", "d"], "imagenet80")
    assert bank.encoded_prompts == 80  # only the new label


def test_cache_is_keyed_by_weights_not_name(openai_checkpoint, isolated_cache):
    p0, _ = openai_checkpoint(TINY_VIT, seed=0)
    p1, _ = openai_checkpoint(TINY_VIT, seed=1)
    a = FrozenCLIP.from_spec(TINY_VIT, weights=p0)
    b = FrozenCLIP.from_spec(TINY_VIT, weights=p1)
    assert a.fingerprint != b.fingerprint
    TextBank(a).embed(["cat"])
    bank_b = TextBank(b)
    bank_b.embed(["cat"])
    assert bank_b.encoded_prompts == 1


def test_unwritable_cache_falls_back_to_memory(backbone, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    bank = TextBank(backbone, cache_dir=blocker)
    assert torch.isfinite(bank.embed(["cat", "dog"])).all()
    assert "not writable" in caplog.text


@pytest.mark.parametrize("labels, pattern", [
    ([], "empty"), (["cat", ""], "empty label"), (["cat", "dog", "cat"], "duplicate label"),
])
def test_bad_label_lists(backbone, labels, pattern):
    with pytest.raises(UserError, match=pattern):
        TextBank(backbone).embed(labels)
