"""Checkpoint loading fails loudly and precisely."""
from __future__ import annotations

import json

import open_clip
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


# QuickGELU: files that record nothing but are OpenAI releases ---------------------------
VIT_GELU, RN_GELU = "clipheads-test-vitg", "clipheads-test-rng"


@pytest.fixture(scope="module")
def gelu_twins(tiny_archs, tmp_path_factory) -> dict[str, str]:
    """GELU twins of the tiny archs, plus '-quickgelu' names, as open_clip names its pairs."""
    folder = tmp_path_factory.mktemp("gelu_archs")
    for base, name in ((TINY_VIT, VIT_GELU), (TINY_RN, RN_GELU)):
        for suffix, quick in (("", False), ("-quickgelu", True)):
            cfg = dict(open_clip.get_model_config(base), quick_gelu=quick)
            path = folder / f"{name}{suffix}.json"
            path.write_text(json.dumps(cfg))
            open_clip.add_model_config(path)
    return {"vit": VIT_GELU, "rn": RN_GELU}


def openai_release(arch: str, folder, kind: str):
    """A bare OpenAI-layout file as OpenAI ships them: float16 (clip's convert_weights) or
    a TorchScript archive's state dict with its constants. Returns (path, fp32 reference)."""
    model = random_clip(arch)
    if kind == "float16":
        open_clip.model.convert_weights_to_lp(model, torch.float16)
        state = model.state_dict()
        model = model.float()  # what loading casts the float16 values to
    else:
        state = dict(model.state_dict(), input_resolution=torch.tensor(32),
                     context_length=torch.tensor(16), vocab_size=torch.tensor(49408))
    path = folder / f"{arch}-{kind}.pt"
    torch.save(state, path)
    return path, model


@pytest.mark.parametrize("tower", ["vit", "rn"])
@pytest.mark.parametrize("kind", ["float16", "constants"])
def test_openai_release_into_gelu_architecture_is_refused(gelu_twins, tmp_path, tower, kind):
    arch = gelu_twins[tower]
    path, reference = openai_release(f"{arch}-quickgelu", tmp_path, kind)
    with pytest.raises(UserError) as err:
        FrozenCLIP.from_spec(arch, weights=path)
    msg = str(err.value)
    assert "\n" not in msg and "OpenAI CLIP release" in msg
    assert (f"was trained with QuickGELU but architecture '{arch}' uses GELU; use --backbone "
            f"{arch}-quickgelu (or pass --allow-activation-mismatch") in msg
    bb = FrozenCLIP.from_spec(f"{arch}-quickgelu", weights=path)
    x = torch.randn(1, 3, *bb.image_size)
    with torch.no_grad():
        assert torch.allclose(bb.encode_image(x), reference.encode_image(x), atol=1e-5)


def test_activation_mismatch_can_be_allowed(gelu_twins, tmp_path, caplog):
    path, _ = openai_release(f"{VIT_GELU}-quickgelu", tmp_path, "float16")
    bb = FrozenCLIP.from_spec(VIT_GELU, weights=path, allow_activation_mismatch=True)
    assert bb.spec.arch == VIT_GELU
    assert "trained with QuickGELU" in caplog.text and "loading it anyway" in caplog.text


def test_open_clip_files_with_openai_keys_are_not_refused(gelu_twins, tmp_path):
    """open_clip-trained GELU weights have OpenAI's keys; they must load into GELU archs."""
    model = random_clip(VIT_GELU)
    bare = tmp_path / "open_clip_pytorch_model.bin"  # float32, as open_clip's hub exports
    torch.save(model.state_dict(), bare)
    half = random_clip(VIT_GELU)
    open_clip.model.convert_weights_to_lp(half, torch.float16)
    trainer = tmp_path / "epoch_3.pt"  # open_clip's trainer: wrapped and `module.`-prefixed
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in half.state_dict().items()}},
               trainer)
    from safetensors.torch import save_file
    recorded = tmp_path / "gelu16.safetensors"  # float16 but the file says GELU
    save_file({k: v.contiguous() for k, v in half.state_dict().items()}, str(recorded),
              metadata={"quick_gelu": "false"})
    for path in (bare, trainer, recorded):
        FrozenCLIP.from_spec(VIT_GELU, weights=path)


def test_side_config_decides_for_a_float16_file(gelu_twins, tmp_path):
    half = random_clip(VIT_GELU)
    open_clip.model.convert_weights_to_lp(half, torch.float16)
    torch.save(half.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    cfg = {"model_cfg": dict(open_clip.get_model_config(VIT_GELU), quick_gelu=False)}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    FrozenCLIP.from_spec(VIT_GELU, weights=tmp_path / "open_clip_pytorch_model.bin")


def test_openai_release_of_another_architecture_names_the_keys(gelu_twins, tmp_path):
    path, _ = openai_release(f"{RN_GELU}-quickgelu", tmp_path, "float16")
    with pytest.raises(UserError, match="does not fit architecture"):
        FrozenCLIP.from_spec(VIT_GELU, weights=path)
