"""The core runtime under a real `torchrun` (2 CPU processes, gloo): `lseg`, `clip`,
`groupvit` and `clip4clip train` end equal to one process with the same global batch, with one export and one
summary; a run killed with SIGKILL resumes bit-identically on webdataset shards.

SGD keeps the comparison about gradients: Adam divides by sqrt(v), which turns the float
rounding of near-zero gradients (summation order differs across ranks) into 1e-4 updates.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clipheads.core.backbone import FrozenCLIP

LSEG = ["--set", "data.n_train=16", "--set", "data.n_val=4", "--set", "eval.n_scenes=4",
        "--set", "train.steps=3", "--set", "train.batch_size=4", "--set", "train.eval_every=2",
        "--set", "train.ckpt_every=3", "--set", "train.warmup_steps=1", "--set", "data.render_workers=0",
        "--set", "data.scene_size=64", "--set", "augment.base_size=64", "--set", "augment.crop_size=48",
        "--set", "train.optimizer=sgd", "--set", "train.lr=0.01"]
CLIP = ["--set", "train.steps=4", "--set", "train.batch_size=8", "--set", "data.n_train=32",
        "--set", "data.render_workers=0", "--set", "data.eval_per_class=1", "--set", "train.eval_every=2",
        "--set", "train.ckpt_every=4", "--set", "train.warmup_steps=1", "--set", "model.vision_cfg.layers=1",
        "--set", "model.text_cfg.layers=1", "--set", "train.optimizer=sgd", "--set", "train.lr=0.05"]


GROUPVIT = ["--set", "train.steps=3", "--set", "train.batch_size=8", "--set", "data.n_train=32",
            "--set", "data.render_workers=0", "--set", "data.n_val=2", "--set", "data.n_test=2",
            "--set", "train.eval_every=3", "--set", "train.ckpt_every=3", "--set", "train.warmup_steps=1",
            "--set", "train.optimizer=sgd", "--set", "train.lr=0.05", "--set", "group_noun_weight=1.0",
            "--set", "gumbel_noise=false"]   # Gumbel draws come from each rank's generator
CLIP4CLIP = ["--set", "data.n_train=16", "--set", "data.n_val=4", "--set", "data.n_test=4",
             "--set", "train.steps=3", "--set", "train.batch_size=8", "--set", "train.eval_every=3",
             "--set", "train.ckpt_every=3", "--set", "train.warmup_steps=1", "--set", "train.optimizer=sgd",
             "--set", "train.lr=0.05"]


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CLIPHEADS_CACHE=str(tmp_path / "cache"))


def clipheads(tmp_path: Path, *argv: str, nproc: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                str(nproc), "-m", "clipheads.core.cli"] if nproc > 1 else [sys.executable, "-m", "clipheads.core.cli"]
    run = subprocess.run([*launcher, *argv, "--json", "--device", "cpu"], env=_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def summaries(run: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def model_state(out: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / f"step_{step:08d}.pt", weights_only=True)["model"]


def assert_equal_states(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"2-process run differs from 1 process by {worst}"


def no_leftovers(out: Path) -> None:
    hidden = [p for p in out.rglob(".*") if p.is_file()]
    assert not hidden, f"temporary files left behind: {hidden}"


def test_groupvit_torchrun_equals_one_process(tmp_path):
    """The grouping head (the tiny_world config: k-means stage, MIL loss on): gathered
    InfoNCE + multi-label + group-noun + MIL losses and the group count every rank must
    share: 2 ranks = 1 process. (The official model's 2-rank run
    still differs, by 1e-4 in BatchNorm statistics and stage-2 weights: open, docs/groupvit.md.)"""
    model, extra = "head", GROUPVIT
    one = clipheads(tmp_path, "groupvit", "train", "--out", str(tmp_path / "one"), *extra)
    two = clipheads(tmp_path, "groupvit", "train", "--out", str(tmp_path / "two"), *extra, nproc=2)
    assert [s["world_size"] for s in summaries(two)] == [2]
    assert_equal_states(model_state(tmp_path / "one", 3), model_state(tmp_path / "two", 3))
    head = tmp_path / "two" / "head"
    assert sorted(p.name for p in head.iterdir()) == ["groupvit_head.json", "groupvit_head.safetensors"]
    assert json.loads((head / "groupvit_head.json").read_text())["model"] == model
    no_leftovers(tmp_path / "two")


@pytest.mark.parametrize("unlock", [False, True], ids=["frozen", "unlocked_last_block"])
def test_lseg_torchrun_equals_one_process(tmp_path, unlock):
    extra = ["--set", "model.unlock=[visual.last:1]"] if unlock else []
    one = clipheads(tmp_path, "lseg", "train", "--out", str(tmp_path / "one"), *LSEG, *extra)
    two = clipheads(tmp_path, "lseg", "train", "--out", str(tmp_path / "two"), *LSEG, *extra, nproc=2)
    assert [s["world_size"] for s in summaries(one)] == [1]
    assert [s["world_size"] for s in summaries(two)] == [2]  # rank 0 alone reports
    a, b = model_state(tmp_path / "one", 3), model_state(tmp_path / "two", 3)
    assert_equal_states(a, b)
    head = tmp_path / "two" / "head"
    assert sorted(p.name for p in head.iterdir()) == ["lseg_head.json", "lseg_head.safetensors"]
    assert json.loads((head / "lseg_head.json").read_text())["metrics"]["scenes"] == 4
    assert (tmp_path / "two" / "lseg_train_config.yaml").is_file()
    no_leftovers(tmp_path / "two")
    if unlock:  # the unlocked block really trained, identically on both
        key = "encoder.visual.transformer.resblocks.3.mlp.c_fc.weight"
        frozen = FrozenCLIP.from_spec("tiny-world").model.state_dict()["visual.transformer.resblocks.3.mlp.c_fc.weight"]
        assert (b[key] - frozen).abs().max() > 1e-6


def test_clip_torchrun_equals_one_process(tmp_path):
    one = clipheads(tmp_path, "clip", "train", "--out", str(tmp_path / "one"), *CLIP)
    two = clipheads(tmp_path, "clip", "train", "--out", str(tmp_path / "two"), *CLIP, nproc=2)
    assert len(summaries(one)) == len(summaries(two)) == 1
    assert_equal_states(model_state(tmp_path / "one", 4), model_state(tmp_path / "two", 4))
    export = tmp_path / "two" / "export"
    assert sorted(p.name for p in export.iterdir()) == ["SHA256SUMS", "open_clip_config.json",
                                                       "open_clip_model.safetensors"]
    no_leftovers(tmp_path / "two")


def test_clip4clip_torchrun_equals_one_process(tmp_path):
    """seqTransf on precomputed frame features, the loss over text/video embeddings
    gathered from both ranks (local gradient): 2 ranks = 1 process, one exported head."""
    one = clipheads(tmp_path, "clip4clip", "train", "--out", str(tmp_path / "one"), *CLIP4CLIP)
    two = clipheads(tmp_path, "clip4clip", "train", "--out", str(tmp_path / "two"), *CLIP4CLIP, nproc=2)
    assert [s["world_size"] for s in summaries(two)] == [2] and "val_t2v_R@1" in summaries(two)[0]
    a, b = model_state(tmp_path / "one", 3), model_state(tmp_path / "two", 3)
    assert_equal_states(a, b)
    assert any(k.startswith("temporal.transformer.blocks.3.") for k in b)
    head = tmp_path / "two" / "head"
    assert sorted(p.name for p in head.iterdir()) == ["clip4clip_head.json", "clip4clip_head.safetensors"]
    no_leftovers(tmp_path / "two")


def test_global_batch_must_divide_over_ranks(tmp_path):
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "clipheads.core.cli", "clip", "train", "--out", str(tmp_path / "x"), *CLIP,
            "--set", "train.batch_size=7", "--device", "cpu"]
    run = subprocess.run(args, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "train.batch_size=7 (the global batch) is not divisible by 2 process(es)" in run.stderr


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    from clipheads.core.tinyworld.export import export_tiny_world
    root = export_tiny_world(tmp_path_factory.mktemp("tw") / "world", n_train=96, n_val=8, n_videos=2,
                             n_test_videos=1, video_frames=4)
    return str(root / "shards" / "train-000000.tar")


def test_clip_on_shards_killed_and_resumed_is_bit_identical(tmp_path, shards):
    args = ["clip", "train", *CLIP, "--set", "data.source=shards", "--set", f"data.shards={shards}",
            "--set", "data.shuffle_buffer=16", "--set", "train.num_workers=2", "--set", "train.steps=40",
            "--set", "train.ckpt_every=3", "--set", "train.eval_every=0", "--set", "train.keep_last=null"]
    straight = tmp_path / "straight"
    clipheads(tmp_path, *args, "--out", str(straight))

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "clipheads.core.cli", *args, "--out", str(killed), "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "checkpoints" / "step_00000003.pt"
    deadline = time.monotonic() + 240
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "checkpoints" / "step_00000040.pt").exists()

    resumed = clipheads(tmp_path, *args, "--out", str(killed), "--resume")
    assert summaries(resumed)[0]["steps"] == 40
    a = torch.load(straight / "checkpoints" / "step_00000040.pt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "step_00000040.pt", weights_only=True)
    for key in ("model", "optimizer"):
        flat_a, flat_b = _tensors(a[key]), _tensors(b[key])
        assert flat_a.keys() == flat_b.keys()
        for name in flat_a:
            assert torch.equal(flat_a[name], flat_b[name]), f"{key}.{name} differs after resume"
    assert a["data"] == b["data"]


def _tensors(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _tensors(sub, f"{prefix}.{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in _tensors(sub, f"{prefix}.{i}").items()}
    return {}


def test_killed_rank_stops_the_others_with_one_line_and_resume_continues(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "clipheads.core.cli", "clip", "train", "--out", str(out), *CLIP, "--set", "train.steps=30",
            "--set", "train.ckpt_every=3", "--set", "train.eval_every=0", "--device", "cpu"]
    proc = subprocess.Popen(args, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = out / "checkpoints" / "step_00000003.pt"
    deadline = time.monotonic() + 240
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    ranks = subprocess.run(["pgrep", "-f", f"clipheads.core.cli clip train --out {out}"],
                           capture_output=True, text=True).stdout.split()
    workers = [int(p) for p in ranks if int(p) != proc.pid]
    assert len(workers) == 2, ranks
    os.kill(max(workers), signal.SIGKILL)          # the later-started worker: rank 1
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0
    ours = [line for line in err.splitlines() if "clipheads: error:" in line]
    assert ours and all("--resume" in line for line in ours), err[-2000:]
    assert not (out / "checkpoints" / "step_00000030.pt").exists()
    resumed = subprocess.run(args[:-2] + ["--resume", "--json", "--device", "cpu"], env=_env(tmp_path),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert summaries(resumed)[0]["steps"] == 30
