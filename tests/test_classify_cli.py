"""`clipheads classify` end to end through the CLI, against open_clip's own logits."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipheads.core.cli import main

from conftest import TINY_VIT


def _image(path, colour):
    Image.fromarray(np.full((40, 50, 3), colour, np.uint8)).save(path)
    return path


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_probabilities_equal_open_clip_softmax(tmp_path, capsys, openai_checkpoint):
    ckpt, model = openai_checkpoint(TINY_VIT)
    img = _image(tmp_path / "red.png", (220, 30, 30))
    labels = ["red square", "blue circle", "green star"]
    code, out, err = _run(capsys, "classify", "infer", "--image", str(img), "--labels", ",".join(labels),
                          "--templates", "single", "--backbone", TINY_VIT, "--weights", str(ckpt), "--json")
    assert code == 0, err
    result = json.loads(out.strip())
    assert result["image"] == str(img) and len(result["top"]) == 3
    import open_clip
    preprocess = open_clip.image_transform(32, is_train=False)
    tokens = open_clip.get_tokenizer(TINY_VIT)([f"a photo of a {l}." for l in labels])
    with torch.no_grad():
        logits, _ = model.get_logits(preprocess(Image.open(img).convert("RGB"))[None], tokens)
    expected = dict(zip(labels, logits.softmax(-1)[0].tolist()))
    for entry in result["top"]:
        assert entry["prob"] == pytest.approx(expected[entry["label"]], abs=1e-5)
    probs = [e["prob"] for e in result["top"]]
    assert probs == sorted(probs, reverse=True)


def test_second_infer_reencodes_nothing(tmp_path, capsys, openai_checkpoint, monkeypatch):
    ckpt, _ = openai_checkpoint(TINY_VIT)
    img = _image(tmp_path / "a.png", (0, 0, 255))
    from clipheads.core.text import bank as bank_module
    counts = []
    real = bank_module.TextBank._encode

    def counting(self, labels, templates):
        counts.append(len(labels) * len(templates))
        return real(self, labels, templates)

    monkeypatch.setattr(bank_module.TextBank, "_encode", counting)
    argv = ["classify", "infer", "--image", str(img), "--labels", "cat,dog", "--backbone", TINY_VIT,
            "--weights", str(ckpt), "--json"]
    assert _run(capsys, *argv)[0] == 0
    assert counts == [160]
    assert _run(capsys, *argv)[0] == 0
    assert counts == [160]  # second run: every prompt came from the cache


@pytest.mark.parametrize("extra, pattern", [
    (["--labels", ""], "empty"),
    (["--labels", "cat,cat"], "duplicate"),
    (["--labels", "cat", "--templates", "imagenet81"], "unknown template set"),
    (["--labels", "cat", "--set", "top_kk=3"], "unknown key 'top_kk'.*did you mean: top_k"),
    (["--labels", "cat", "--set", "top_k=many"], "expected an integer"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, openai_checkpoint, extra, pattern):
    ckpt, _ = openai_checkpoint(TINY_VIT)
    img = _image(tmp_path / "a.png", (0, 0, 255))
    code, out, err = _run(capsys, "classify", "infer", "--image", str(img), "--backbone", TINY_VIT,
                          "--weights", str(ckpt), *extra)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    import re
    assert re.search(pattern, err), err


def test_corrupt_image_is_named(tmp_path, capsys, openai_checkpoint):
    ckpt, _ = openai_checkpoint(TINY_VIT)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, _, err = _run(capsys, "classify", "infer", "--image", str(bad), "--labels", "a,b",
                        "--backbone", TINY_VIT, "--weights", str(ckpt))
    assert code == 2 and "broken.jpg" in err and len(err.strip().splitlines()) == 1


def test_unknown_task_and_backbone(tmp_path, capsys):
    img = _image(tmp_path / "x.png", (1, 2, 3))
    code, _, err = _run(capsys, "clasify", "infer")
    assert code == 2 and "did you mean: classify" in err
    code, _, err = _run(capsys, "classify", "infer", "--image", str(img), "--labels", "a",
                        "--backbone", "ViT-B-3:openai")
    assert code == 2 and "did you mean" in err


def test_linear_probe_train_eval_infer(tmp_path, capsys, openai_checkpoint):
    ckpt, _ = openai_checkpoint(TINY_VIT)
    rng = np.random.default_rng(0)
    colours = {"red_thing": (230, 20, 20), "blue_thing": (20, 20, 230)}
    for split, n in (("train", 12), ("test", 6)):
        for name, colour in colours.items():
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                noise = rng.integers(-25, 25, (32, 32, 3))
                arr = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(folder / f"{i}.png")
    (tmp_path / "data" / "train" / "red_thing" / "corrupt.png").write_bytes(b"garbage")
    common = ["--backbone", TINY_VIT, "--weights", str(ckpt), "--json"]
    code, out, err = _run(capsys, "classify", "train", "--data", str(tmp_path / "data"),
                          "--out", str(tmp_path / "probe"), *common)
    assert code == 0, err
    info = json.loads(out)
    assert info["skipped"] == 1 and info["train_images"] == 24
    assert (tmp_path / "probe" / "classify_train_config.yaml").is_file()
    code, out, err = _run(capsys, "classify", "eval", "--data", str(tmp_path / "data"),
                          "--probe", str(tmp_path / "probe"), *common)
    assert code == 0, err
    assert json.loads(out)["top1"] == 1.0  # colours are linearly separable even for random CLIP
    code, out, err = _run(capsys, "classify", "infer", "--image",
                          str(tmp_path / "data" / "test" / "blue_thing" / "0.png"),
                          "--probe", str(tmp_path / "probe"), *common)
    assert code == 0, err
    assert json.loads(out)["top"][0]["label"] == "blue thing"


def test_unwritable_out_fails_before_work(tmp_path, capsys, openai_checkpoint):
    ckpt, _ = openai_checkpoint(TINY_VIT)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _run(capsys, "classify", "train", "--data", str(tmp_path), "--out",
                        str(blocker / "sub"), "--backbone", TINY_VIT, "--weights", str(ckpt))
    assert code == 2 and "not writable" in err
