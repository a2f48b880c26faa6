"""`clipheads lseg` end to end: the infer contract (mask PNG of label indices at input size,
overlay, --json fractions), bad input, the text bank, folder evaluation with skipped and
mismatched annotations, and training on an ADE20K-layout folder."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipheads.core.backbone import FrozenCLIP
from clipheads.core.cli import main
from clipheads.tasks.lseg.config import ModelConfig
from clipheads.tasks.lseg.model import build_net
from clipheads.tasks.lseg.weights import HeadInfo, save_head

from conftest import TINY_VIT

SMALL = dict(layers=[0, 1, 2], channels=[8, 16, 16], strides=[4, 8, 16], features=8)
SMALL_SET = ["--set", "model.layers=[0,1,2]", "--set", "model.channels=[8,16,16]",
             "--set", "model.strides=[4,8,16]", "--set", "model.features=8"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def tiny(tmp_path, openai_checkpoint):
    """A TINY_VIT checkpoint and an LSeg head (random weights) trained-on-it description."""
    ckpt, _ = openai_checkpoint(TINY_VIT)
    bb = FrozenCLIP.from_spec(TINY_VIT, weights=ckpt)
    torch.manual_seed(0)
    cfg = ModelConfig(**SMALL)
    net = build_net(cfg, bb)
    info = HeadInfo(model=cfg, backbone=TINY_VIT, text_dim=bb.embed_dim, templates="single",
                    infer={"size": 48, "base_size": 48, "crop_size": 48, "stride": 32},
                    backbone_fingerprint=bb.fingerprint)
    head = save_head(tmp_path / "head", net.state_dict(), info)
    common = ["--backbone", TINY_VIT, "--weights", ckpt, "--head", head]
    return {"ckpt": ckpt, "head": head, "common": common, "bb": bb}


def _png(path, arr, mode=None):
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(path)
    return path


def test_infer_contract(tmp_path, capsys, tiny):
    img = _png(tmp_path / "photo.png", np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8))
    labels = ["red thing", "blue thing", "other"]
    code, out, err = run(capsys, "lseg", "infer", "--image", img, "--labels", ",".join(labels),
                         *tiny["common"], "--out", tmp_path / "out", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    mask = Image.open(tmp_path / "out" / "photo_mask.png")
    over = Image.open(tmp_path / "out" / "photo_overlay.png")
    assert mask.mode == "L" and mask.size == (53, 37) and over.size == (53, 37) and over.mode == "RGB"
    values = np.asarray(mask)
    assert values.max() < len(labels)
    assert list(result["fractions"]) == labels
    assert sum(result["fractions"].values()) == pytest.approx(1.0, abs=1e-4)
    for i, label in enumerate(labels):
        assert result["fractions"][label] == pytest.approx((values == i).mean(), abs=1e-5)
    # multi-scale + flip + sliding window on the same contract
    code, out, err = run(capsys, "lseg", "infer", "--image", img, "--labels", ",".join(labels),
                         *tiny["common"], "--out", tmp_path / "ms", "--multi-scale", "--json",
                         "--set", "infer.scales=[0.75,1.5]")
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "ms" / "photo_mask.png")).shape == (37, 53)


@pytest.mark.parametrize("kind", ["gray", "rgba", "gray16", "palette", "smaller_than_patch"])
def test_odd_image_modes(tmp_path, capsys, tiny, kind):
    rng = np.random.default_rng(1)
    if kind == "smaller_than_patch":   # 5 x 3 pixels, the patch is 8 x 8
        img = _png(tmp_path / "g.png", rng.integers(0, 255, (3, 5, 3), dtype=np.uint8))
        code, _, err = run(capsys, "lseg", "infer", "--image", img, "--labels", "a,b", *tiny["common"],
                           "--out", tmp_path / "o")
        assert code == 0, err
        assert Image.open(tmp_path / "o" / "g_mask.png").size == (5, 3)
        return
    if kind == "gray":
        img = _png(tmp_path / "g.png", rng.integers(0, 255, (30, 40), dtype=np.uint8), "L")
    elif kind == "rgba":
        img = _png(tmp_path / "g.png", rng.integers(0, 255, (30, 40, 4), dtype=np.uint8), "RGBA")
    elif kind == "gray16":
        img = tmp_path / "g.png"
        Image.fromarray(rng.integers(0, 65535, (30, 40), dtype=np.uint16)).save(img)
        assert Image.open(img).mode.startswith("I")
    else:
        img = tmp_path / "g.png"
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).convert("P").save(img)
    code, _, err = run(capsys, "lseg", "infer", "--image", img, "--labels", "a,b", *tiny["common"],
                       "--out", tmp_path / "o")
    assert code == 0, err
    assert Image.open(tmp_path / "o" / "g_mask.png").size == (40, 30)


def test_one_label_and_many_labels(tmp_path, capsys, caplog, tiny):
    img = _png(tmp_path / "x.png", np.full((20, 20, 3), 128, np.uint8))
    code, out, err = run(capsys, "lseg", "infer", "--image", img, "--labels", "thing", *tiny["common"],
                         "--out", tmp_path / "o", "--json")
    assert code == 0, err
    assert "only one label" in caplog.text
    assert json.loads(out.strip().splitlines()[-1])["fractions"] == {"thing": 1.0}
    labels = [f"label {i}" for i in range(230)]
    code, out, err = run(capsys, "lseg", "infer", "--image", img, "--labels", ",".join(labels),
                         *tiny["common"], "--out", tmp_path / "o", "--json")
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "o" / "x_mask.png")).max() < 230
    assert len(json.loads(out.strip().splitlines()[-1])["fractions"]) == 230


@pytest.mark.parametrize("extra, pattern", [
    (["--labels", "cat,cat"], "duplicate label"),
    (["--labels", ""], "empty"),
    (["--labels", "a,b", "--templates", "imagenet81"], "unknown template set"),
    (["--labels", "a,b", "--set", "infer.sizee=3"], "unknown key 'sizee'"),
])
def test_bad_labels_and_options_exit_2(tmp_path, capsys, tiny, extra, pattern):
    img = _png(tmp_path / "x.png", np.zeros((16, 16, 3), np.uint8))
    code, out, err = run(capsys, "lseg", "infer", "--image", img, *tiny["common"], "--out", tmp_path / "o", *extra)
    assert code == 2 and pattern in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "x_mask.png").exists()


def test_bad_files_exit_2_before_any_output(tmp_path, capsys, tiny):
    good = _png(tmp_path / "a.png", np.zeros((16, 16, 3), np.uint8))
    (tmp_path / "sub").mkdir()
    twin = _png(tmp_path / "sub" / "a.png", np.zeros((16, 16, 3), np.uint8))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    for images, pattern in (([good, tmp_path / "missing.png"], "not found"), ([good, broken], "broken.png"),
                            ([good, twin], "share the name")):
        code, _, err = run(capsys, "lseg", "infer", "--image", *images, "--labels", "a,b", *tiny["common"],
                           "--out", tmp_path / "o")
        assert code == 2 and pattern in err, err
        assert not (tmp_path / "o" / "a_mask.png").exists()
    code, _, err = run(capsys, "lseg", "infer", "--image", good, "--labels", "a,b", "--backbone", TINY_VIT,
                       "--weights", tiny["ckpt"], "--head", tmp_path / "nohead", "--out", tmp_path / "o")
    assert code == 2 and "no LSeg head" in err


def test_head_for_another_text_width_is_refused(tmp_path, capsys, tiny):
    info = json.loads((tiny["head"] / "lseg_head.json").read_text())
    info["text_dim"] = 512
    (tiny["head"] / "lseg_head.json").write_text(json.dumps(info))
    img = _png(tmp_path / "a.png", np.zeros((16, 16, 3), np.uint8))
    code, _, err = run(capsys, "lseg", "infer", "--image", img, "--labels", "a,b", *tiny["common"],
                       "--out", tmp_path / "o")
    assert code == 2 and "512-d" in err


def test_labels_are_encoded_once(tmp_path, capsys, tiny, monkeypatch):
    from clipheads.core.text import bank
    calls = []
    real = bank.TextBank._encode
    monkeypatch.setattr(bank.TextBank, "_encode", lambda self, labels, t: calls.append(len(labels)) or real(self, labels, t))
    imgs = [_png(tmp_path / f"i{k}.png", np.full((16, 16, 3), 40 * k, np.uint8)) for k in range(3)]
    argv = ["lseg", "infer", "--image", *imgs, "--labels", "a,b,c", *tiny["common"], "--out", tmp_path / "o"]
    assert run(capsys, *argv)[0] == 0
    assert calls == [3]  # three images, one encoding of the label set
    assert run(capsys, *argv)[0] == 0
    assert calls == [3]  # and none at all the second time (disk cache)


def _ade_folder(root, n=4, size=(24, 32), missing=(), mismatch=()):
    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(n):
            name = f"{split}_{i}"
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "images" / split / f"{name}.jpg")
            if name in missing:
                continue
            shape = (size[0] + 3, size[1]) if name in mismatch else size
            Image.fromarray(rng.integers(0, 4, shape, dtype=np.uint8), "L").save(root / "annotations" / split / f"{name}.png")
    (root / "labels.txt").write_text("wall\nfloor\nsky\n")  # ADE-style: 0 = ignore, 1..3 named
    return root


def test_eval_on_an_ade_folder_counts_skips_and_names_bad_masks(tmp_path, capsys, caplog, tiny):
    root = _ade_folder(tmp_path / "ade", missing={"validation_1"})
    code, out, err = run(capsys, "lseg", "eval", "--data", root, *tiny["common"], "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["skipped"] == 1 and result["images"] == 3 and "validation_1" in caplog.text
    assert list(result["per_class_iou"]) == ["wall", "floor", "sky"]
    # the same numbers computed here from the head's own predictions and the raw PNGs
    import clipheads
    seg = clipheads.load("lseg", backbone=TINY_VIT, weights=tiny["ckpt"])
    names = ["validation_0", "validation_2", "validation_3"]
    preds = seg.predict([root / "images" / "validation" / f"{n}.jpg" for n in names],
                        ["wall", "floor", "sky"], head=tiny["head"])
    inter, union, correct, valid = np.zeros(3), np.zeros(3), 0, 0
    for n, p in zip(names, preds):
        gt = np.asarray(Image.open(root / "annotations" / "validation" / f"{n}.png")).astype(int) - 1
        ok = gt >= 0                                     # ADE: 0 is ignored, k -> k-1
        correct += int((p.mask[ok] == gt[ok]).sum())
        valid += int(ok.sum())
        for c in range(3):
            inter[c] += ((p.mask == c) & (gt == c) & ok).sum()
            union[c] += (((p.mask == c) | (gt == c)) & ok).sum()
    iou = inter[union > 0] / union[union > 0]
    assert result["miou"] == pytest.approx(iou.mean(), abs=1e-9)
    assert result["pixel_accuracy"] == pytest.approx(correct / valid, abs=1e-9)
    bad = _ade_folder(tmp_path / "bad", mismatch={"validation_2"})
    code, _, err = run(capsys, "lseg", "eval", "--data", bad, *tiny["common"])
    assert code == 2 and "validation_2.png" in err and "validation_2.jpg" in err
    (bad / "labels.txt").write_text("wall\nfloor\n")
    code, _, err = run(capsys, "lseg", "eval", "--data", tmp_path / "ade", *tiny["common"],
                       "--set", "data.labels=[wall,floor]")
    assert code == 2 and "class index 2" in err


def test_train_on_a_folder_then_infer_with_the_head(tmp_path, capsys, tiny):
    root = _ade_folder(tmp_path / "ade", n=4)
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "lseg", "train", "--data", root, "--backbone", TINY_VIT, "--weights",
                            tiny["ckpt"], "--out", out, "--json", *SMALL_SET,
                            "--set", "train.steps=2", "--set", "train.warmup_steps=0", "--set", "train.batch_size=2", "--set", "data.n_val=2",
                            "--set", "augment.base_size=32", "--set", "augment.crop_size=24",
                            "--set", "train.optimizer=sgd", "--set", "train.lr=0.01")
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    head = out / "head"
    meta = json.loads((head / "lseg_head.json").read_text())
    assert summary["steps"] == 2 and meta["labels"] == ["wall", "floor", "sky"]
    assert meta["backbone"] == TINY_VIT and meta["infer"] == {"size": 128, "base_size": 128, "crop_size": 128, "stride": 85}
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(l.get("kind") == "eval" for l in lines)
    img = _png(tmp_path / "q.png", np.zeros((20, 20, 3), np.uint8))
    code, _, err = run(capsys, "lseg", "infer", "--image", img, "--labels", "wall,sky", "--head", head,
                       "--backbone", TINY_VIT, "--weights", tiny["ckpt"], "--out", tmp_path / "o")
    assert code == 0, err


def test_train_on_the_tiny_world_with_held_out_shapes(tmp_path, capsys, tiny):
    out = tmp_path / "tw"
    code, stdout, err = run(capsys, "lseg", "train", "--config", "tiny_world", "--backbone", TINY_VIT,
                            "--weights", tiny["ckpt"], "--out", out, "--json", *SMALL_SET,
                            "--set", "train.steps=2", "--set", "train.warmup_steps=0", "--set", "train.batch_size=2", "--set", "data.n_train=6",
                            "--set", "data.n_val=2", "--set", "eval.n_scenes=3", "--set", "data.render_workers=0",
                            "--set", "data.scene_size=48", "--set", "augment.base_size=48",
                            "--set", "augment.crop_size=32", "--set", "infer.size=48")
    assert code == 0, err
    meta = json.loads((out / "head" / "lseg_head.json").read_text())
    assert meta["heldout"] == ["star", "cross"] and "star" not in meta["labels"]
    assert {"miou_seen", "miou_heldout", "chance_iou_heldout", "episodes"} <= set(meta["metrics"])
    code, _, err = run(capsys, "lseg", "train", "--config", "tiny_world", "--backbone", TINY_VIT,
                       "--weights", tiny["ckpt"], "--out", tmp_path / "x", "--install")
    assert code == 2 and "--install" in err


def test_head_sizes_and_templates_win_over_the_default_config_only(tiny):
    import clipheads
    from clipheads.tasks.lseg.weights import read_info

    task = clipheads.load("lseg")                        # the default config: infer.size 128
    info = read_info(tiny["head"])                       # size 48, 'single'
    info.templates = "{}"

    assert task.infer_config(info).size == 48
    assert task.templates(None, info) == "{}"
    assert clipheads.load("lseg", overrides=["infer.size=64"]).infer_config(info).size == 64
    assert clipheads.load("lseg", config="tiny_world").infer_config(info).size == 128
    assert task.infer_config(info, size=32).size == 32
    assert task.templates("imagenet80", info) == "imagenet80"
    assert clipheads.load("lseg", overrides=["templates=single"]).templates(None, info) == "single"


def test_training_batch_shrunk_by_unreadable_images_never_crashes(tmp_path, capsys, tiny):
    """Half the training images are corrupt: a global batch of 2 can shrink to 1 sample,
    which would break BatchNorm; such a batch is skipped (zero loss), the run finishes."""
    root = _ade_folder(tmp_path / "ade", n=4)
    for name in ("training_1", "training_2"):
        (root / "images" / "training" / f"{name}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "lseg", "train", "--data", root, "--backbone", TINY_VIT, "--weights",
                            tiny["ckpt"], "--out", out, "--json", *SMALL_SET, "--set", "model.use_bn=true",
                            "--set", "train.steps=6", "--set", "train.warmup_steps=0", "--set", "train.batch_size=2",
                            "--set", "data.n_val=2", "--set", "augment.base_size=16", "--set", "augment.crop_size=16",
                            "--set", "train.optimizer=sgd", "--set", "train.lr=0.01", "--set", "train.shuffle=false")
    assert code == 0, err
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(line).get("kind") == "train"]
    assert all(np.isfinite(losses))
