"""Loading GroupViT weights the way users get them: NVlabs `.pth` files (state dict in
ckpt['model'], an omegaconf config pickled next to it), transformers' GroupViTModel
files, and the wrong files (the other variant, an LSeg checkpoint)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from safetensors.torch import save_file

from clipheads.core.errors import UserError
from clipheads.tasks.groupvit.config import OfficialModel
from clipheads.tasks.groupvit.hf import official_to_hf
from clipheads.tasks.groupvit.official import GroupViT
from clipheads.tasks.groupvit.weights import load_official

from clipheads.core.cli import main

from drawings import two_shapes

TINY = dict(image_size=32, patch_size=8, embed_dim=32, depths=[1, 1, 1], num_heads=[2, 2, 2],
            num_group_tokens=[8, 4, 0], num_output_groups=[8, 4], context_length=16, vocab_size=100,
            text_width=64, text_layers=1, text_heads=2, output_dim=16, proj_hidden=32)


def _model(multi: int = 3) -> GroupViT:
    torch.manual_seed(0)
    model = GroupViT(OfficialModel(**TINY, multi_label=multi)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _release_file(path: Path, model: GroupViT) -> Path:
    """A file laid out like NVlabs' releases: the omegaconf config is pickled in it."""
    config = OmegaConf.create({"model": {"type": "MultiLabelContrastive", "img_encoder": {"type": "GroupViT"}},
                               "train": {"epochs": 30, "base_lr": 1.6e-3}, "data": {"text_aug": {"multi_label": 3}}})
    torch.save({"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []},
                "lr_scheduler": {"last_epoch": 29}, "max_metrics": {"max_accuracy": 43.7}, "epoch": 29,
                "config": config}, path)
    return path


def test_release_layout_loads_without_unpickling_code(tmp_path):
    model = _model()
    path = _release_file(tmp_path / "group_vit_gcc_yfcc_30e.pth", model)
    with pytest.raises(Exception):   # the plain safe loader refuses the omegaconf object ...
        torch.load(path, weights_only=True)
    fresh = GroupViT(OfficialModel(**TINY, multi_label=3))
    load_official(fresh, path)        # ... the restricted unpickler reads it inertly
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_other_variant_and_lseg_files_fail_with_named_keys(tmp_path):
    path = _release_file(tmp_path / "yfcc.pth", _model(3))
    with pytest.raises(UserError, match=r"1 unexpected: multi_label_logit_scale.*multi_label=3"):
        load_official(GroupViT(OfficialModel(**TINY, multi_label=0)), path)
    redcap = _release_file(tmp_path / "redcap.pth", _model(0))
    with pytest.raises(UserError, match=r"1 missing: multi_label_logit_scale.*multi_label=0"):
        load_official(GroupViT(OfficialModel(**TINY, multi_label=3)), redcap)
    lseg = tmp_path / "demo_e200.ckpt"
    torch.save({"state_dict": {"net.pretrained.model.cls_token": torch.zeros(1, 1, 8),
                               "net.head.weight": torch.zeros(4, 4)}}, lseg)
    with pytest.raises(UserError, match=r"missing: .*unexpected: .*not a GroupViT checkpoint"):
        load_official(GroupViT(OfficialModel(**TINY, multi_label=3)), lseg)


def test_transformers_layout_file_loads(tmp_path):
    model = _model(3)
    hf_state = {k: v.contiguous() for k, v in official_to_hf(model.state_dict()).items()}
    path = tmp_path / "model.safetensors"
    save_file(hf_state, str(path))
    fresh = GroupViT(OfficialModel(**TINY, multi_label=0))    # transformers keeps no multi-label scale
    load_official(fresh, path)
    for k, v in fresh.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_infer_with_an_official_release_file(tmp_path, capsys):
    torch.manual_seed(0)
    arch = {**TINY, "vocab_size": 49408, "context_length": 77}    # CLIP's BPE vocabulary, as released
    path = _release_file(tmp_path / "group_vit_gcc_yfcc_30e.pth", GroupViT(OfficialModel(**arch, multi_label=3)))
    cfg = tmp_path / "official_tiny.yaml"
    cfg.write_text(yaml.safe_dump({"task": "groupvit", "model": "official", "official": {**arch, "multi_label": 3},
                                   "segment": {"short_side": 64, "crop": 32, "stride": 16}}))
    image = tmp_path / "two.png"
    two_shapes(("red", "circle"), ("blue", "square"))[0].save(image)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "groupvit", "infer", "--config", cfg, "--checkpoint", path, "--image", image,
                            "--labels", "background,circle,square", "--out", out, "--json")
    assert code == 0, err
    row = json.loads(stdout.strip().splitlines()[-1])
    assert abs(sum(row["fractions"].values()) - 1) < 1e-4 and row["group_labels"]
    for suffix in ("mask", "overlay", "groups"):
        assert (out / f"{image.stem}_{suffix}.png").is_file()
    code, _, err = run(capsys, "groupvit", "infer", "--config", cfg, "--checkpoint", path, "--image", image,
                       "--labels", "circle,square", "--out", out, "--groups", "3")
    assert code == 2 and "official model's groups are fixed" in err
