"""`clipheads clip train` end to end at toy scale: trains, resumes, exports a folder that
loads back as a backbone with `local-dir:`."""
from __future__ import annotations

import json

import torch

from clipheads.core.backbone import FrozenCLIP
from clipheads.core.cli import main

TOY = ["--set", "train.steps=4", "--set", "train.batch_size=8", "--set", "data.n_train=32",
       "--set", "data.render_workers=0", "--set", "data.eval_per_class=1", "--set", "train.eval_every=2",
       "--set", "train.ckpt_every=2", "--set", "train.warmup_steps=1",
       "--set", "model.vision_cfg.layers=1", "--set", "model.text_cfg.layers=1"]


def test_train_resume_export_and_load(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["clip", "train", "--out", str(out), "--json", *TOY]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 4
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert summary["zero_shot_top1"] == evals[-1]["zero_shot_top1"]  # the last evaluation is reported
    assert (out / "metrics.jsonl").is_file() and (out / "clip_train_config.yaml").is_file()
    # a finished run resumes as a no-op at the same step instead of training again
    assert main(["clip", "train", "--out", str(out), "--resume", "--json", *TOY]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 4
    # a fresh run into a used folder is refused
    assert main(["clip", "train", "--out", str(out), *TOY]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err

    bb = FrozenCLIP.from_spec(f"local-dir:{out / 'export'}")
    emb = bb.encode_text(["a photo of a red circle."], normalize=True)
    assert emb.shape == (1, 128) and torch.isfinite(emb).all()
    table = bb.model.token_embedding.weight
    used = bb.tokenize(["a photo of a red circle."])[0]
    assert table[used].abs().sum(-1).gt(0).all()  # tokens the captions use are kept
    assert (table.abs().sum(-1) == 0).sum() > 40000  # never-seen tokens are zeroed
    assert main(["clip", "eval", "--backbone", f"local-dir:{out / 'export'}", "--json",
                 "--set", "data.eval_per_class=1"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 36


def test_bad_local_dir(tmp_path, capsys):
    assert main(["clip", "eval", "--backbone", f"local-dir:{tmp_path}"]) == 2
    assert "no open_clip_config.json" in capsys.readouterr().err
