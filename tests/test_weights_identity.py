"""`fingerprint` identifies every byte of the current weights, and the text bank never
serves embeddings of other weights (memory or disk)."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from clipheads.core.backbone import FrozenCLIP
from clipheads.core.text import TextBank

from conftest import TINY_VIT, random_clip

PROMPT = "a photo of a {}."


@pytest.fixture
def weights_file(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(random_clip(TINY_VIT).state_dict(), path)
    return path


@pytest.fixture
def backbone(weights_file):
    return FrozenCLIP.from_spec(TINY_VIT, weights=weights_file)


def counting(bb: FrozenCLIP) -> list[int]:
    """Count `encode_text` calls (prompts per call) on `bb`."""
    calls: list[int] = []
    real = bb.encode_text

    def wrapped(texts, normalize=False):
        calls.append(len(texts))
        return real(texts, normalize=normalize)

    bb.encode_text = wrapped
    return calls


def direct(bb: FrozenCLIP, label: str) -> torch.Tensor:
    """The embedding of the single template, straight from open_clip (not counted)."""
    with torch.no_grad():
        return F.normalize(bb.model.encode_text(bb.tokenize([PROMPT.format(label)])).float(), dim=-1)[0]


def test_separately_built_identical_weights_share_the_fingerprint(weights_file, tmp_path):
    a = FrozenCLIP.from_spec(TINY_VIT, weights=weights_file)
    b = FrozenCLIP.from_spec(TINY_VIT, weights=weights_file)
    assert re.fullmatch(r"[0-9a-f]{16}", a.fingerprint)
    assert a.fingerprint == b.fingerprint and a.text_fingerprint == b.text_fingerprint
    safetensors = tmp_path / "tiny.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in a.model.state_dict().items()}, str(safetensors))
    assert FrozenCLIP.from_spec(TINY_VIT, weights=safetensors).fingerprint == a.fingerprint


def test_one_float_in_a_late_block_changes_the_fingerprint(weights_file, tmp_path):
    state = torch.load(weights_file, weights_only=True)
    key = "visual.transformer.resblocks.2.mlp.c_proj.weight"
    w = state[key]
    w[3, 7] = torch.nextafter(w[3, 7], torch.tensor(float("inf")))  # one ulp, one value
    changed = tmp_path / "changed.pt"
    torch.save(state, changed)
    a = FrozenCLIP.from_spec(TINY_VIT, weights=weights_file)
    b = FrozenCLIP.from_spec(TINY_VIT, weights=changed)
    assert a.fingerprint != b.fingerprint
    assert a.text_fingerprint == b.text_fingerprint  # the image tower is not the text's business


def test_in_place_edit_is_seen_without_rebuilding(backbone):
    before = backbone.fingerprint
    bias = backbone.model.visual.transformer.resblocks[-1].ln_2.bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias[0] += 1e-3
    assert backbone.fingerprint != before
    with torch.no_grad():
        bias.copy_(saved)
    assert backbone.fingerprint == before  # the bytes decide, not the history


def test_fine_tuning_updates_the_fingerprint(backbone):
    before, text_before = backbone.fingerprint, backbone.text_fingerprint
    params = backbone.unlock(["visual.last:1"])
    opt = torch.optim.SGD(params, lr=0.1)
    out = backbone.forward_intermediates(torch.randn(2, 3, 32, 32), [-1], fmt="NLC")
    out.tokens[0].square().mean().backward()
    opt.step()
    assert backbone.fingerprint != before
    assert backbone.text_fingerprint == text_before


def test_writes_through_data_need_a_refresh(backbone):
    before = backbone.fingerprint
    backbone.model.token_embedding.weight.data[5] += 1  # invisible to version counters
    assert backbone.refresh_fingerprint() != before
    assert backbone.fingerprint != before


def test_fingerprint_covers_dtype_and_bfloat16(backbone):
    before = backbone.fingerprint
    backbone.model.to(torch.bfloat16)
    assert re.fullmatch(r"[0-9a-f]{16}", backbone.fingerprint) and backbone.fingerprint != before


def test_bank_misses_after_text_weights_change(backbone, weights_file, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPHEADS_CACHE", str(tmp_path / "cache"))
    calls = counting(backbone)
    bank = TextBank(backbone)
    old = bank.embed(["cat", "dog"])
    assert calls == [2]
    sot = backbone.tokenizer.sot_token_id  # every prompt starts with it
    row = backbone.model.token_embedding.weight[sot]
    with torch.no_grad():  # not a constant: LayerNorm would cancel that
        row += torch.linspace(-1, 1, row.numel())
    new = bank.embed(["cat", "dog"])
    assert calls == [2, 2]  # memory did not answer with the old weights' embeddings
    assert not torch.allclose(new, old, atol=1e-4)
    assert torch.allclose(new[0], direct(backbone, "cat"), atol=1e-5)
    # the disk cache of another bank (another process) is keyed the same way
    again_calls = counting(backbone)
    assert torch.equal(TextBank(backbone).embed(["dog"])[0], new[1]) and again_calls == []
    original = FrozenCLIP.from_spec(TINY_VIT, weights=weights_file)
    orig_calls = counting(original)
    assert torch.equal(TextBank(original).embed(["cat"])[0], old[0]) and orig_calls == []


def test_bank_hits_while_weights_stay(backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPHEADS_CACHE", str(tmp_path / "cache"))
    calls = counting(backbone)
    bank = TextBank(backbone)
    first = bank.embed(["cat", "dog"])
    assert torch.equal(bank.embed(["dog", "cat"]), first[[1, 0]])
    assert torch.equal(TextBank(backbone).embed(["cat"])[0], first[0])
    assert calls == [2]


def test_image_tower_fine_tuning_keeps_the_text_cache(backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPHEADS_CACHE", str(tmp_path / "cache"))
    calls = counting(backbone)
    bank = TextBank(backbone)
    first = bank.embed(["cat"])
    opt = torch.optim.SGD(backbone.unlock(["visual.last:1"]), lr=0.1)
    backbone.encode_image(torch.randn(1, 3, 32, 32)).sum().backward()
    opt.step()
    assert torch.equal(bank.embed(["cat"]), first) and calls == [1]


def test_text_fine_tuning_reencodes_and_leaves_no_disk_litter(backbone, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CLIPHEADS_CACHE", str(cache))
    bank = TextBank(backbone)
    bank.embed(["cat"])
    opt = torch.optim.SGD(backbone.unlock(["text"]), lr=1.0)
    folders = sorted(p.name for p in (cache / "textbank").iterdir())
    for _ in range(2):
        backbone.encode_text(["a cat"]).square().sum().backward()
        opt.step()
        opt.zero_grad()
        assert torch.allclose(bank.embed(["cat"])[0], direct(backbone, "cat"), atol=1e-5)
    assert bank.encoded_prompts == 3
    assert sorted(p.name for p in (cache / "textbank").iterdir()) == folders
