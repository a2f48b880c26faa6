"""Shared fixtures: tiny open_clip architectures (registered for the test session) and
checkpoints written in the real file formats."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch

TINY_VIT = "clipheads-test-vit"
TINY_RN = "clipheads-test-rn"

_CONFIGS = {
    TINY_VIT: {
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    TINY_RN: {
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
}


@pytest.fixture(scope="session", autouse=True)
def tiny_archs(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("archs")
    for name, cfg in _CONFIGS.items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)
    return {"vit": TINY_VIT, "rn": TINY_RN}


@pytest.fixture
def one_thread():
    """Tiny models: one thread is as fast and does not collapse on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own text cache so results never leak between tests."""
    monkeypatch.setenv("CLIPHEADS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def random_clip(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = open_clip.create_model(arch)
    # open_clip zero-inits some weights (ResNet bn3); randomise everything so parity is real
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 1 and "bn" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def openai_checkpoint(tmp_path):
    """Writes an OpenAI-layout state dict (.pt) for an arch; returns (path, model)."""
    def make(arch: str, seed: int = 0, suffix: str = ".pt"):
        model = random_clip(arch, seed)
        path = tmp_path / f"{arch}-{seed}{suffix}"
        state = model.state_dict()
        if suffix == ".safetensors":
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        else:
            torch.save(state, path)
        return path, model
    return make
