"""`vild precompute`: the ViLD-image proposal cache is what the frozen CLIP says about
each proposal, sharded and resumable: a run killed with SIGKILL (and a half-written
shard) resumes to exactly the cache of an uninterrupted run; two torchrun ranks split
the shards; a cache from another backbone is refused."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clipheads.core.errors import UserError
from clipheads.core.tinyworld.export import export_tiny_world
from clipheads.tasks.vild.proposal_cache import CacheSpec, ProposalCache


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = export_tiny_world(tmp_path_factory.mktemp("vild_world") / "tw", n_train=12, n_val=1, n_videos=0, size=64)
    anns = json.loads((root / "annotations" / "instances_train.json").read_text())
    rows = []   # proposals: each object's box jittered, plus two background boxes, per image
    rng = np.random.default_rng(0)
    for ann in anns["annotations"]:
        x, y, w, h = ann["bbox"]
        rows.append({"image_id": ann["image_id"], "bbox": [x + rng.normal(), y + rng.normal(), w, h], "score": 0.9})
    for img in anns["images"]:
        rows += [{"image_id": img["id"], "bbox": [0, 0, 20, 20], "score": 0.2},
                 {"image_id": img["id"], "bbox": [30, 30, 40, 40], "score": 0.1}]   # runs off the image: clipped
    (root / "proposals.json").write_text(json.dumps(rows))
    return root


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """One uninterrupted run: (its folder, its summary)."""
    base = tmp_path_factory.mktemp("vild_reference")
    return base / "full", precompute(world, base / "full", base)


def in_process(world: Path, out: Path, monkeypatch, rank: int = 0, world_size: int = 1) -> dict:
    """`vild precompute` through the Python API (what the CLI calls), as rank `rank`."""
    import clipheads
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    task = clipheads.load("vild", device="cpu", out=out, progress=False)
    return task.precompute(world / "annotations" / "instances_train.json", world / "images" / "train",
                           proposals=world / "proposals.json", shard_size=2)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "CLIPHEADS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.update(extra)
    return env


def precompute(world: Path, out: Path, tmp_path: Path, *extra: str, env=None, wait=True):
    argv = [sys.executable, "-m", "clipheads.core.cli", "vild", "precompute", "--data-json",
            str(world / "annotations" / "instances_train.json"), "--images", str(world / "images" / "train"),
            "--proposals", str(world / "proposals.json"), "--shard-size", "2", "--out", str(out),
            "--device", "cpu", "--json", *extra]
    if not wait:
        return subprocess.Popen(argv, env=env or _env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run = subprocess.run(argv, env=env or _env(tmp_path), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def shards(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(str(p)) for p in sorted(folder.glob("shard-*.safetensors"))}


def test_killed_and_resumed_equals_uninterrupted(world, reference, tmp_path):
    full_dir, full = reference
    assert full["images"] == 12 and full["shards"] == 6 and full["written"] == 6 and full["missing_shards"] == 0
    reference = shards(full_dir)
    assert len(reference) == 6

    proc = precompute(world, tmp_path / "killed", tmp_path, wait=False)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "killed").glob("shard-*.safetensors")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = list((tmp_path / "killed").glob("shard-*.safetensors"))
    assert (tmp_path / "killed" / "cache.json").is_file()
    # what a kill in the middle of a write leaves: a stray temporary file, and (worse) a
    # truncated shard under its final name from some other writer
    (tmp_path / "killed" / ".shard-00004.safetensors.1-ab.tmp.safetensors").write_bytes(b"\x00" * 10)
    (tmp_path / "killed" / "shard-00005.safetensors").write_bytes((full_dir / "shard-00005.safetensors")
                                                                   .read_bytes()[:50])
    resumed = precompute(world, tmp_path / "killed", tmp_path)
    assert resumed["written"] == 6 - len([p for p in done if p.name != "shard-00005.safetensors"])
    again = shards(tmp_path / "killed")
    assert again.keys() == reference.keys()
    for name in reference:
        for key in reference[name]:
            assert torch.equal(again[name][key], reference[name][key]), (name, key)
    cache = ProposalCache.open(tmp_path / "killed")
    records = cache.load()
    assert len(records) == 12
    some = next(iter(records.values()))
    assert some.boxes.shape[1] == 4 and some.embeddings.shape[0] == some.boxes.shape[0]
    assert torch.all(some.boxes[:, 2] <= 64) and torch.all(some.boxes[:, 0] >= 0)
    norms = some.embeddings.float().norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=2e-3)   # normalised (stored fp16)


def test_two_ranks_split_the_shards_into_the_same_cache(world, reference, tmp_path, monkeypatch, one_thread):
    runs = [in_process(world, tmp_path / "two", monkeypatch, rank=r, world_size=2) for r in (0, 1)]
    assert [r["written"] for r in runs] == [3, 3] and runs[1]["missing_shards"] == 0
    one, two = shards(reference[0]), shards(tmp_path / "two")
    assert one.keys() == two.keys() and all(torch.equal(one[n][k], two[n][k]) for n in one for k in one[n])


def test_cache_from_another_backbone_or_recipe_is_refused(world, tmp_path):
    spec = CacheSpec("some-other-fingerprint", (1.0, 1.5), 300, "file:x", 12, 2)
    ProposalCache.create_or_resume(tmp_path / "c", spec)
    with pytest.raises(UserError, match="made with backbone some-other-fingerprint"):
        ProposalCache.open(tmp_path / "c", backbone_fingerprint="tiny")
    with pytest.raises(UserError, match="made differently"):
        ProposalCache.create_or_resume(tmp_path / "c", CacheSpec("some-other-fingerprint", (1.0,), 300, "file:x", 12, 2))
    with pytest.raises(UserError, match="incomplete"):
        ProposalCache.open(tmp_path / "c").load()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not a proposal cache"):
        ProposalCache.create_or_resume(tmp_path / "junk", spec)


def test_corrupt_image_is_skipped_and_counted(world, tmp_path, monkeypatch, one_thread):
    import shutil
    copy = tmp_path / "w"
    shutil.copytree(world, copy)
    victim = sorted((copy / "images" / "train").glob("*.jpg"))[3]
    victim.write_bytes(b"not a jpeg")
    result = in_process(copy, tmp_path / "c", monkeypatch)
    assert result["skipped"] == 1 and result["missing_shards"] == 0
    cache = ProposalCache.open(tmp_path / "c")
    assert len(cache.skipped()) == 1
    assert len(cache.load()[cache.skipped()[0]].boxes) == 0
