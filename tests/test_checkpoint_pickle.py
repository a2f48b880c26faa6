"""clipheads.core.checkpoint_pickle: checkpoints that pickle config objects load without
running code from the file and without the config library; malicious pickles run nothing;
broken files are one-line UserErrors."""
from __future__ import annotations

import argparse
import collections
import copy
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from clipheads.core.checkpoint_pickle import StubObject, load_checkpoint_object
from clipheads.core.errors import UserError
from clipheads.tasks.lseg.convert import load_official


def groupvit_like(path: Path, **save_kwargs) -> dict[str, torch.Tensor]:
    """A file laid out like NVlabs GroupViT's released `.pth` checkpoints."""
    model = {"a.weight": torch.randn(3, 2), "a.bias": torch.randn(3),
             "b.weight": torch.randn(4, 3).half(), "steps": torch.tensor(7)}
    cfg = OmegaConf.create({"model": {"type": "MultiLabelContrastive", "img_encoder": {"embed_dim": 384}},
                            "train": {"epochs": 30}})
    torch.save({"model": model, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
                "config": cfg, "epoch": 29, "max_accuracy": 43.7}, path, **save_kwargs)
    return model


def without_omegaconf(monkeypatch) -> None:
    """Make `import omegaconf...` fail, as if it were not installed."""
    for name in [n for n in sys.modules if n == "omegaconf" or n.startswith("omegaconf.")]:
        monkeypatch.setitem(sys.modules, name, None)


def node_value(cfg: StubObject, *keys: str):
    """Walk a stubbed DictConfig down to a leaf node's value."""
    for key in keys:
        cfg = cfg.state["_content"][key]
    return cfg.state["_val"]


def check_groupvit(loaded, model: dict[str, torch.Tensor]) -> None:
    obj = loaded.obj
    assert loaded.mode == "restricted"
    assert set(obj["model"]) == set(model)
    for k, v in model.items():
        assert obj["model"][k].dtype == v.dtype and torch.equal(obj["model"][k], v)
    assert obj["epoch"] == 29 and obj["max_accuracy"] == 43.7
    assert obj["optimizer"]["param_groups"][0]["lr"] == 0.1
    cfg = obj["config"]
    assert isinstance(cfg, StubObject) and cfg.global_name == "omegaconf.dictconfig.DictConfig"
    assert node_value(cfg, "model", "type") == "MultiLabelContrastive"
    assert node_value(cfg, "model", "img_encoder", "embed_dim") == 384
    assert node_value(cfg, "train", "epochs") == 30
    assert {"omegaconf.dictconfig.DictConfig", "omegaconf.nodes.AnyNode",
            "omegaconf.base.ContainerMetadata"} <= set(loaded.stubbed)
    assert all(not name.startswith("torch.") for name in loaded.stubbed)


def test_groupvit_checkpoint_loads_restricted_with_stubbed_config(tmp_path, monkeypatch):
    path = tmp_path / "group_vit_gcc_yfcc_30e.pth"
    model = groupvit_like(path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu", weights_only=True)
    without_omegaconf(monkeypatch)
    loaded = load_checkpoint_object(path)
    check_groupvit(loaded, model)
    again = copy.deepcopy(loaded.obj["config"])
    assert type(again) is type(loaded.obj["config"]) and node_value(again, "train", "epochs") == 30


def test_legacy_format_loads_restricted(tmp_path, monkeypatch):
    path = tmp_path / "legacy.pth"
    model = groupvit_like(path, _use_new_zipfile_serialization=False)
    without_omegaconf(monkeypatch)
    check_groupvit(load_checkpoint_object(path), model)


def test_plain_state_dict_uses_weights_only(tmp_path):
    state = collections.OrderedDict(w=torch.randn(2, 2), b=torch.arange(3))
    torch.save(state, tmp_path / "sd.pt")
    loaded = load_checkpoint_object(tmp_path / "sd.pt")
    assert loaded.mode == "weights_only" and loaded.stubbed == ()
    assert list(loaded.obj) == ["w", "b"] and all(torch.equal(loaded.obj[k], state[k]) for k in state)


def test_trust_pickle_rebuilds_the_real_objects(tmp_path):
    path = tmp_path / "g.pth"
    groupvit_like(path)
    loaded = load_checkpoint_object(path, trust_pickle=True)
    assert loaded.mode == "trusted" and isinstance(loaded.obj["config"], DictConfig)
    assert loaded.obj["config"].model.img_encoder.embed_dim == 384


class RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Execs:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


class Spawns:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.marker)],))


@pytest.mark.parametrize("evil,stub", [(RunsShell, f"{os.system.__module__}.system"),
                                       (Execs, "builtins.exec"), (Spawns, "subprocess.call")])
def test_malicious_reduce_is_stubbed_not_run(tmp_path, evil, stub):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(2), "x": evil(marker)}, path)
    loaded = load_checkpoint_object(path)
    assert not marker.exists()
    assert stub in loaded.stubbed and isinstance(loaded.obj["x"], StubObject)
    assert loaded.obj["x"].global_name == stub and str(marker) in repr(loaded.obj["x"].args)
    assert torch.equal(loaded.obj["w"], torch.ones(2))


def _s(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def legacy_file(path: Path, payload: bytes) -> Path:
    """A legacy (non-zip) torch file whose object pickle is `payload`, written by hand."""
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION
    info = {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4}}
    head = b"".join(pickle.dumps(x, protocol=2) for x in (MAGIC_NUMBER, PROTOCOL_VERSION, info))
    path.write_bytes(head + payload + pickle.dumps([], protocol=2))
    return path


def test_hand_written_exploits_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    # getattr(__import__("os"), "system")("touch marker"): the stubs refuse the last call
    chain = (b"\x80\x02c__builtin__\ngetattr\nc__builtin__\n__import__\n" + _s("os") + b"\x85R"
             + _s("system") + b"\x86R" + _s(f"touch {marker}") + b"\x85R.")
    with pytest.raises(UserError, match="safely: it pickles a call to a stubbed builtins.getattr") as exc:
        load_checkpoint_object(legacy_file(tmp_path / "chain.pth", chain))
    assert "\n" not in str(exc.value) and "trust_pickle" in str(exc.value)
    assert not marker.exists()
    # BUILD on an allow-listed class would set attributes on it for the whole process
    build = b"\x80\x02ccollections\nCounter\nN}" + _s("polluted") + b"K\x01s\x86b."
    with pytest.raises(UserError, match="safely: it pickles new state for Counter"):
        load_checkpoint_object(legacy_file(tmp_path / "build.pth", build))
    assert not hasattr(collections.Counter, "polluted")


def test_broken_files_are_one_line_user_errors(tmp_path):
    good = tmp_path / "good.pth"
    groupvit_like(good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    legacy = tmp_path / "legacy.pth"
    groupvit_like(legacy, _use_new_zipfile_serialization=False)
    cut_legacy = tmp_path / "cut_legacy.pth"
    cut_legacy.write_bytes(legacy.read_bytes()[:-40])
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    for bad in (cut, cut_legacy, text, empty, tmp_path / "missing.pth"):
        with pytest.raises(UserError) as exc:
            load_checkpoint_object(bad)
        msg = str(exc.value)
        assert "\n" not in msg and str(bad) in msg, msg


def test_torchscript_is_refused_not_run(tmp_path):
    path = tmp_path / "ts.pt"
    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(UserError, match="TorchScript"):
        load_checkpoint_object(path)


class AttributeDict(dict):
    """Stands in for Lightning's AttributeDict (a dict subclass) in `hyper_parameters`."""


def test_lseg_lightning_checkpoint_with_hparams_loads_without_trust(tmp_path):
    state = {"net.scratch.head1.weight": torch.randn(4, 3), "net.pretrained.model.cls_token": torch.randn(1, 1, 3)}
    hparams = AttributeDict(backbone="clip_vitl16_384", num_features=256,
                            args=argparse.Namespace(lr=0.004, arch_option=0))
    path = tmp_path / "demo_e200.ckpt"
    torch.save({"epoch": 199, "state_dict": state, "hyper_parameters": hparams,
                "hparams_name": "kwargs"}, path)
    out = load_official(path)
    assert set(out) == {"scratch.head1.weight", "pretrained.model.cls_token"}
    assert all(torch.equal(out[k[len("net."):]], v) for k, v in state.items())
    loaded = load_checkpoint_object(path)
    hp = loaded.obj["hyper_parameters"]
    assert "argparse.Namespace" in loaded.stubbed
    assert hp.dictitems["backbone"] == "clip_vitl16_384" and hp.dictitems["args"].state["lr"] == 0.004
