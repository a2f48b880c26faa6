"""Our own fuzz of the CLI: every bad input exits 2 with exactly one stderr line
(`clipheads: error: ...`), no traceback, and nothing created in --out; odd-but-valid inputs
work. Cases run in this process (the CLI is a function), so the suite stays fast."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from clipheads.core.cli import main
from clipheads.core.tinyworld import make_single

GOOD = "good.png"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Inputs of every kind, made once: a good image, broken ones, odd paths."""
    root = tmp_path_factory.mktemp("inputs")
    make_single(3, "red", "circle", 64).image.save(root / GOOD)
    data = (root / GOOD).read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "text.png").write_text("not an image")
    (root / "empty.bin").write_bytes(b"")
    (root / "binary.yaml").write_bytes(b"\x00\xff\xfe\x00")
    (root / "a_dir").mkdir()
    os.mkfifo(root / "fifo.png")
    probe = root / "bad_probe"
    probe.mkdir()
    (probe / "probe.json").write_text("{}")
    (probe / "probe.safetensors").write_bytes(b"")
    return root


def _case(*argv: str) -> tuple[str, ...]:
    return argv


# (id, argv) with {in} = the inputs folder and {out} = a fresh output folder
BAD = [
    ("device-cuda", _case("classify", "infer", "--image", "{in}/good.png", "--labels", "a,b", "--device", "cuda")),
    ("device-cuda99", _case("lseg", "infer", "--image", "{in}/good.png", "--labels", "a,b", "--out", "{out}",
                            "--device", "cuda:99")),
    ("device-mps", _case("classify", "infer", "--image", "{in}/good.png", "--labels", "a", "--device", "mps")),
    ("device-empty", _case("classify", "infer", "--image", "{in}/good.png", "--labels", "a", "--device", "")),
    ("demo-device", _case("demo", "--out", "{out}", "--device", "cuda")),
    ("config-binary", _case("classify", "infer", "--image", "{in}/good.png", "--labels", "a",
                            "--config", "{in}/binary.yaml")),
    ("config-missing", _case("lseg", "infer", "--image", "{in}/good.png", "--labels", "a", "--out", "{out}",
                             "--config", "nope")),
    ("set-bad-yaml", _case("clip", "train", "--out", "{out}", "--set", "train.lr=[1,")),
    ("set-unknown-key", _case("clip", "train", "--out", "{out}", "--set", "train.lrr=1")),
    ("set-model-layers", _case("clip", "train", "--out", "{out}", "--set", "model.vision_cfg.layers=abc")),
    ("set-eval-per-class", _case("clip", "train", "--out", "{out}", "--set", "data.eval_per_class=0")),
    ("set-embed-dim", _case("clip", "train", "--out", "{out}", "--set", "model.embed_dim=0")),
    ("set-batch", _case("clip", "train", "--out", "{out}", "--set", "train.batch_size=0")),
    ("set-mean-length", _case("clip", "train", "--out", "{out}", "--set", "preprocess.mean=[0.5,0.5]")),
    ("set-n-train", _case("lseg", "train", "--out", "{out}", "--set", "data.n_train=0")),
    ("set-shards-missing", _case("clip", "train", "--out", "{out}", "--set", "data.source=shards")),
    ("set-shards-nothing", _case("clip", "train", "--out", "{out}", "--set", "data.source=shards",
                                 "--set", "data.shards={in}/none-{000..003}.tar")),
    ("set-top-k", _case("classify", "infer", "--image", "{in}/good.png", "--labels", "a", "--set", "top_k=0")),
    ("top-0", _case("classify", "infer", "--image", "{in}/good.png", "--labels", "a", "--top", "0")),
    ("val-fraction", _case("classify", "train", "--data", "{in}", "--out", "{out}", "--set", "probe.val_fraction=2")),
    ("c-steps", _case("classify", "train", "--data", "{in}", "--out", "{out}", "--set", "probe.c_steps=0")),
    ("lseg-size-0", _case("lseg", "infer", "--image", "{in}/good.png", "--labels", "a,b", "--out", "{out}",
                          "--size", "0")),
    ("lseg-limit-neg", _case("lseg", "eval", "--set", "eval.limit=-1")),
    ("lseg-n-scenes", _case("lseg", "eval", "--set", "eval.n_scenes=0")),
    ("lseg-folds", _case("lseg", "eval", "--set", "eval.folds=[7]")),
    ("templates-two-slots", _case("classify", "infer", "--image", "{in}/good.png", "--labels", "a",
                                  "--templates", "{} {}")),
    ("templates-unbalanced", _case("lseg", "infer", "--image", "{in}/good.png", "--labels", "a,b",
                                   "--out", "{out}", "--templates", "a {} {")),
    ("templates-named", _case("classify", "infer", "--image", "{in}/good.png", "--labels", "a",
                              "--templates", "{x} {}")),
    ("image-missing", _case("classify", "infer", "--image", "{in}/missing.png", "--labels", "a")),
    ("image-dir", _case("lseg", "infer", "--image", "{in}/a_dir", "--labels", "a,b", "--out", "{out}")),
    ("image-fifo", _case("classify", "infer", "--image", "{in}/fifo.png", "--labels", "a")),
    ("image-text", _case("lseg", "infer", "--image", "{in}/text.png", "--labels", "a,b", "--out", "{out}")),
    ("image-truncated-second", _case("lseg", "infer", "--image", "{in}/good.png", "{in}/truncated.png",
                                     "--labels", "a,b", "--out", "{out}")),
    ("labels-empty", _case("classify", "infer", "--image", "{in}/good.png", "--labels", ",,")),
    ("labels-dupe", _case("lseg", "infer", "--image", "{in}/good.png", "--labels", "a,a", "--out", "{out}")),
    ("weights-empty", _case("classify", "infer", "--image", "{in}/good.png", "--labels", "a",
                            "--backbone", "ViT-B-32", "--weights", "{in}/empty.bin")),
    ("weights-no-arch", _case("classify", "infer", "--image", "{in}/good.png", "--labels", "a",
                              "--weights", "{in}/empty.bin")),
    ("probe-incomplete", _case("classify", "infer", "--image", "{in}/good.png", "--probe", "{in}/bad_probe")),
    ("out-is-file", _case("lseg", "infer", "--image", "{in}/good.png", "--labels", "a,b", "--out",
                          "{in}/good.png/sub")),
    ("clipasso-strokes", _case("clipasso", "infer", "--image", "{in}/good.png", "--out", "{out}", "--strokes", "0")),
    ("clipasso-iters", _case("clipasso", "infer", "--image", "{in}/good.png", "--out", "{out}", "--iters", "-1")),
    ("clipasso-seeds", _case("clipasso", "infer", "--image", "{in}/good.png", "--out", "{out}", "--seeds", "0")),
    ("resume-missing-ckpt", _case("clip", "train", "--out", "{out}", "--resume", "{in}/missing.pt")),
    ("clip-eval-per-class", _case("clip", "eval", "--set", "data.eval_per_class=0")),
    ("clip-eval-local-dir", _case("clip", "eval", "--backbone", "local-dir:{in}/a_dir")),
    ("clipasso-eval-per-shape", _case("clipasso", "eval", "--per-shape", "0")),
    ("clipasso-eval-sheet-in-file", _case("clipasso", "eval", "--sheet", "{in}/good.png/sheet.png")),
    ("classify-eval-no-data", _case("classify", "eval", "--data", "{in}/missing")),
    ("classify-eval-dataset", _case("classify", "eval", "--data", "{in}", "--dataset", "cifar11")),
    ("lseg-eval-pascal-no-data", _case("lseg", "eval", "--protocol", "pascal5i")),
    ("lseg-train-install-folder", _case("lseg", "train", "--data", "{in}", "--out", "{out}", "--install")),
    ("groupvit-image-text", _case("groupvit", "infer", "--image", "{in}/text.png", "--labels", "a,b",
                                  "--out", "{out}")),
    ("groupvit-labels-dupe", _case("groupvit", "infer", "--image", "{in}/good.png", "--labels", "a,a",
                                   "--out", "{out}")),
    ("groupvit-only-background", _case("groupvit", "infer", "--image", "{in}/good.png", "--labels",
                                       "background", "--out", "{out}")),
    ("groupvit-groups-too-many", _case("groupvit", "infer", "--image", "{in}/good.png", "--labels", "a,b",
                                       "--out", "{out}", "--groups", "99")),
    ("groupvit-groups-0", _case("groupvit", "infer", "--image", "{in}/good.png", "--labels", "a,b",
                                "--out", "{out}", "--groups", "0")),
    ("groupvit-bg-thresh", _case("groupvit", "infer", "--image", "{in}/good.png", "--labels", "a,b",
                                 "--out", "{out}", "--bg-thresh", "1.5")),
    ("groupvit-short-side", _case("groupvit", "infer", "--image", "{in}/good.png", "--labels", "a,b",
                                  "--out", "{out}", "--short-side", "-3")),
    ("groupvit-checkpoint-missing", _case("groupvit", "infer", "--image", "{in}/good.png", "--labels", "a,b",
                                          "--out", "{out}", "--checkpoint", "{in}/nope.pth")),
    ("groupvit-checkpoint-not-head", _case("groupvit", "infer", "--image", "{in}/good.png", "--labels", "a,b",
                                           "--out", "{out}", "--checkpoint", "{in}/text.png")),
    ("groupvit-official-corrupt", _case("groupvit", "infer", "--image", "{in}/good.png", "--labels", "a,b",
                                        "--out", "{out}", "--set", "model=official", "--checkpoint",
                                        "{in}/truncated.png")),
    ("groupvit-official-no-checkpoint", _case("groupvit", "eval", "--set", "model=official")),
    ("groupvit-head-broken", _case("groupvit", "infer", "--image", "{in}/good.png", "--labels", "a,b",
                                   "--out", "{out}", "--checkpoint", "{in}/bad_probe")),
    ("groupvit-stages", _case("groupvit", "train", "--out", "{out}", "--set", "head.num_output_groups=[8,4]")),
    ("groupvit-groups-min", _case("groupvit", "train", "--out", "{out}", "--set", "head.groups_min=99")),
    ("groupvit-stride", _case("groupvit", "eval", "--set", "segment.crop=64", "--set", "segment.stride=128")),
    ("groupvit-eval-no-data", _case("groupvit", "eval", "--benchmark", "voc")),
    ("groupvit-eval-bad-root", _case("groupvit", "eval", "--benchmark", "context", "--data", "{in}")),
    ("groupvit-nltk-missing", _case("groupvit", "train", "--out", "{out}", "--set", "data.nouns=nltk")),
    ("groupvit-install-official", _case("groupvit", "train", "--out", "{out}", "--set", "model=official",
                                        "--install")),
    ("unknown-task", _case("lsge", "infer")),
    ("missing-out", _case("lseg", "infer", "--image", "{in}/good.png", "--labels", "a,b")),
]


@pytest.mark.parametrize("argv", [c[1] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_exit_2_one_line_nothing_written(argv, files, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setenv("CLIPHEADS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    args = [a.replace("{in}", str(files)).replace("{out}", str(out)) for a in argv]
    with caplog.at_level(logging.WARNING):
        code = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("clipheads: error: "), err
    assert "Traceback" not in err and not warnings, (err, warnings)
    assert not out.exists(), f"{out} was created: {sorted(p.name for p in out.rglob('*'))}"


def test_odd_but_valid_inputs_work(files, tmp_path, capsys, monkeypatch):
    """A single-slot literal template, an empty CLIPHEADS_CACHE (means the default, never
    the working directory), duplicate-free labels with spaces, a 1x1 image."""
    import json

    from PIL import Image
    monkeypatch.setenv("CLIPHEADS_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "dot.png")
    code = main(["classify", "infer", "--image", str(files / GOOD), str(tmp_path / "dot.png"),
                 "--labels", " red circle , blue square ", "--templates", "a photo of a {}.", "--json"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    first = json.loads(out[0])
    assert first["top"][0]["label"] == "red circle" and len(out) == 2
    assert (tmp_path / "home" / ".cache" / "clipheads").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dot.png", "home"]
