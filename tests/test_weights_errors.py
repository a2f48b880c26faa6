"""Checkpoint loading fails loudly and precisely."""
from __future__ import annotations

import pytest
import torch

from clipheads.core.backbone import FrozenCLIP
from clipheads.core.errors import UserError

from conftest import TINY_RN, TINY_VIT, random_clip


def test_checkpoint_of_another_architecture(openai_checkpoint):
    path, _ = openai_checkpoint(TINY_RN)
    with pytest.raises(UserError, match="does not fit architecture") as err:
        FrozenCLIP.from_spec(TINY_VIT, weights=path)
    assert "missing" in str(err.value) and "\n" not in str(err.value)


def test_shape_mismatch_is_named(tmp_path):
    state = random_clip(TINY_VIT).state_dict()
    state["visual.proj"] = torch.zeros(64, 16)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"visual.proj: file \(64, 16\) vs model \(64, 32\)"):
        FrozenCLIP.from_spec(TINY_VIT, weights=path)


def test_unexpected_and_missing_keys(tmp_path):
    state = random_clip(TINY_VIT).state_dict()
    state.pop("ln_final.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(UserError, match="1 missing: ln_final.weight; 1 unexpected: extra.weight"):
        FrozenCLIP.from_spec(TINY_VIT, weights=path)


def test_truncated_checkpoint(openai_checkpoint, tmp_path):
    path, _ = openai_checkpoint(TINY_VIT)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        FrozenCLIP.from_spec(TINY_VIT, weights=cut)


def test_truncated_safetensors(openai_checkpoint, tmp_path):
    path, _ = openai_checkpoint(TINY_VIT, suffix=".safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="truncated or corrupt"):
        FrozenCLIP.from_spec(TINY_VIT, weights=cut)


def test_open_clip_training_checkpoint_with_module_prefix(tmp_path):
    model = random_clip(TINY_VIT)
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    bb = FrozenCLIP.from_spec(TINY_VIT, weights=path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(bb.encode_image(x), model.encode_image(x), atol=1e-5)


def test_torchscript_needs_opt_in(tmp_path):
    model = random_clip(TINY_VIT)
    scripted = torch.jit.trace(model.visual.conv1, torch.randn(1, 3, 32, 32))
    path = tmp_path / "ViT-B-32.pt"
    scripted.save(str(path))
    with pytest.raises(UserError, match="TorchScript"):
        FrozenCLIP.from_spec(TINY_VIT, weights=path)


def test_quick_gelu_mismatch_with_recorded_activation(tmp_path):
    from safetensors.torch import save_file
    state = random_clip(TINY_VIT).state_dict()
    path = tmp_path / "gelu.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"quick_gelu": "false"})
    with pytest.raises(UserError, match="trained with GELU but architecture"):
        FrozenCLIP.from_spec(TINY_VIT, weights=path)


@pytest.mark.parametrize("spec, pattern", [
    ("ViT-B-61:openai", "unknown backbone architecture 'ViT-B-61'.*did you mean"),
    ("ViT-B-32:opena", "unknown pretrained tag 'opena'.*did you mean: openai"),
    ("ViT-B-32", "names an architecture but no weights: pass --weights FILE"),
])
def test_bad_specs(spec, pattern):
    with pytest.raises(UserError, match=pattern):
        FrozenCLIP.from_spec(spec)


def test_missing_weights_file():
    with pytest.raises(UserError, match="weights file not found"):
        FrozenCLIP.from_spec(TINY_VIT, weights="/nonexistent/file.pt")
