"""StreamLoader over ImageTextStream: exact resume, rank/worker splits, skipping, seeded shuffles."""
from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipheads.core.data.webdataset_pairs import ImageTextStream
from clipheads.core.engine.stream import StreamLoader
from clipheads.core.errors import UserError
from clipheads.core.tinyworld.export import export_tiny_world

SIZE = 16


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, n_shards: int, per_shard: int, damage: dict[int, str] | None = None) -> str:
    """Shards `s-00000k.tar` with captions 'caption {key}'; `damage` maps a key to what breaks."""
    damage = damage or {}
    folder.mkdir(parents=True, exist_ok=True)
    key = 0
    for s in range(n_shards):
        with tarfile.open(folder / f"s-{s:06d}.tar", "w") as tar:
            for _ in range(per_shard):
                name, hurt = f"{key:09d}", damage.get(key)
                _add(tar, f"{name}.jpg", b"\xff\xd8\xff\xe0 not a jpeg" if hurt == "jpeg" else _jpeg(key))
                if hurt != "no-txt":
                    _add(tar, f"{name}.txt", b"\xff\xfe bad" if hurt == "utf8" else f"caption {key}".encode())
                key += 1
    return str(folder / f"s-{{000000..{n_shards - 1:06d}}}.tar")


def to_pixels(image: Image.Image) -> torch.Tensor:
    """3x16x16 float pixels plus random noise: augmentation that must replay exactly on resume."""
    image = image.resize((SIZE, SIZE))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255
    return pixels + 0.1 * torch.rand(pixels.shape)


def make(pattern: str, batch_size: int = 2, seed: int = 0, num_workers: int = 0, shuffle: int = 4,
         **dataset_kw) -> StreamLoader:
    ds = ImageTextStream(pattern, to_pixels, shuffle=shuffle, **dataset_kw)
    return StreamLoader(ds, batch_size, seed=seed, num_workers=num_workers)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> str:
    return write_shards(tmp_path_factory.mktemp("clean"), n_shards=3, per_shard=5)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> str:
    """Shard 0: a corrupt JPEG, a sample without .txt, a non-UTF-8 caption; shard 1 truncated."""
    folder = tmp_path_factory.mktemp("damaged")
    pattern = write_shards(folder, n_shards=3, per_shard=5, damage={1: "jpeg", 2: "no-txt", 3: "utf8"})
    shard = folder / "s-000001.tar"
    with tarfile.open(shard) as tar:
        cut = tar.getmember("000000007.jpg").offset_data + 100  # mid-member, not on a block boundary
    shard.write_bytes(shard.read_bytes()[:cut])
    return pattern


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and list(x[1]) == list(y[1])
                                    for x, y in zip(a, b))


def _epochs(loader: StreamLoader) -> list[int]:
    return [p[0] for p in loader.state_dict()["streams"]]


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("data", ["clean", "damaged"])
def test_exact_resume(request, data, num_workers, one_thread):
    pattern = request.getfixturevalue(data)
    k = 9  # odd: with 2 workers the resumed run starts on logical worker 1
    a = make(pattern, num_workers=num_workers)
    first = [a.next() for _ in range(k)]
    at_k = _epochs(a)
    rest = [a.next() for _ in range(k)]
    assert any(e2 > e1 for e1, e2 in zip(at_k, _epochs(a)))  # an epoch boundary inside the resumed part
    b = make(pattern, num_workers=num_workers)
    assert _same([b.next() for _ in range(k)], first)
    state = json.loads(json.dumps(b.state_dict()))  # plain data
    b.close()
    c = make(pattern, num_workers=num_workers)
    c.load_state_dict(state)
    assert c.skipped == b.skipped
    assert _same([c.next() for _ in range(k)], rest)
    assert c.state_dict() == a.state_dict() and c.skipped == a.skipped
    assert all(torch.isfinite(x[0]).all() for x in rest)
    if num_workers == 0:  # the replayed part is neither decoded nor counted again
        assert c.dataset.skips.count == c.skipped - b.skipped
    if data == "damaged":
        assert a.skipped > 0
    a.close()
    c.close()


def _first_epoch(loader: StreamLoader, limit: int = 200) -> list[str]:
    """Keys each stream yields in its epoch 0 (batch_size 1: batch b comes from stream b % W)."""
    keys = []
    for b in range(limit):
        (sample,) = loader.next()
        logical = b % loader.num_streams
        if loader.state_dict()["streams"][logical][0] == 0:
            keys.append(sample[2]["__key__"])
        if min(_epochs(loader)) >= 1:
            return keys
    raise AssertionError("streams did not finish an epoch")


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("layout", ["four shards", "one tiny-world shard"])
def test_ranks_and_workers_split_disjoint_and_complete(tmp_path, layout, num_workers, one_thread):
    if layout == "four shards":  # >= ranks x workers shards: whole shards per stream
        pattern, n = write_shards(tmp_path / "s", n_shards=4, per_shard=3), 12
    else:  # fewer shards than streams: split by sample index modulo
        root = export_tiny_world(tmp_path / "tw", n_train=10, n_val=0, n_videos=0, n_test_videos=0, size=32)
        pattern, n = str(root / "shards" / "train-000000.tar"), 10
    seen = []
    for rank in (0, 1):
        ds = ImageTextStream(pattern, to_pixels, shuffle=3, with_meta=True)
        loader = StreamLoader(ds, 1, seed=5, num_workers=num_workers, world_size=2, rank=rank,
                              collate_fn=list)
        seen.append(_first_epoch(loader))
        loader.close()
    r0, r1 = seen
    assert len(set(r0)) == len(r0) and len(set(r1)) == len(r1)
    assert not set(r0) & set(r1)
    assert len(set(r0) | set(r1)) == n


def test_corrupt_and_truncated_samples_are_skipped_and_counted(damaged, caplog, one_thread):
    caplog.set_level(logging.DEBUG, logger="clipheads.data")
    loader = make(damaged, batch_size=1, shuffle=0)
    batches = [loader.next() for _ in range(30)]  # the 15 raw samples hold at most 10 readable ones
    assert min(_epochs(loader)) >= 2
    assert all(torch.isfinite(b[0]).all() for b in batches)
    reasons = loader.dataset.skips.reasons
    assert reasons.get("broken shard", 0) >= 2 and reasons.get("corrupt", 0) >= 6
    assert loader.skipped == loader.dataset.skips.count  # one process: both see every skip
    captions = {b[1][0] for b in batches}
    assert not captions & {"caption 1", "caption 2", "caption 3"}
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert any("rest of shard skipped" in line for line in lines)


def test_broken_shard_counted_once_per_epoch_when_every_stream_reads_it(damaged, one_thread):
    """4 ranks > 3 shards: all streams read every shard, only the shard's owner counts it."""
    broken = 0
    for rank in range(4):
        ds = ImageTextStream(damaged, to_pixels, shuffle=0)
        loader = StreamLoader(ds, 1, seed=0, num_workers=0, world_size=4, rank=rank)
        while min(_epochs(loader)) < 2:  # epochs 0 and 1 read in full, epoch 2 begun
            loader.next()
        broken += ds.skips.reasons.get("broken shard", 0)
    assert broken in (2, 3)


def test_stream_without_readable_samples_is_a_one_line_user_error(tmp_path, one_thread):
    pattern = write_shards(tmp_path, n_shards=1, per_shard=1)  # one sample, two worker streams
    loader = make(pattern, batch_size=1, num_workers=2)
    loader.next()
    with pytest.raises(UserError, match="no readable sample") as info:
        loader.next()
    assert "\n" not in str(info.value)


def test_user_errors(tmp_path, clean):
    with pytest.raises(UserError, match="shard not found"):
        ImageTextStream(str(tmp_path / "none-{000000..000003}.tar"))
    with pytest.raises(UserError, match="no webdataset shards"):
        ImageTextStream([])
    with pytest.raises(UserError, match="shuffle"):
        ImageTextStream(clean, shuffle=-1)
    ds = ImageTextStream(clean)
    for bad in ({"batch_size": 0}, {"num_workers": -1}, {"rank": 2, "world_size": 2}):
        args = {"batch_size": 2, "num_workers": 0, "world_size": 1, "rank": 0, **bad}
        with pytest.raises(UserError):
            StreamLoader(ds, args.pop("batch_size"), seed=0, **args)
    with pytest.raises(UserError, match="not a resumable stream"):
        StreamLoader([1, 2, 3], 2, seed=0, num_workers=0)
    loader = StreamLoader(ds, 2, seed=0, num_workers=0)
    with pytest.raises(UserError, match="num_streams=3"):
        loader.load_state_dict({**loader.state_dict(), "num_streams": 3, "streams": [[0, 0, 0]] * 3})
    with pytest.raises(UserError, match="not a StreamLoader state"):
        loader.load_state_dict({"epoch": 1, "batch": 3})


def _captions(loader: StreamLoader, n: int) -> list[str]:
    return [loader.next()[1][0] for _ in range(n)]


def test_shuffle_reproducible_and_differs_between_epochs(tmp_path, one_thread):
    pattern = write_shards(tmp_path, n_shards=4, per_shard=5)
    a = _captions(make(pattern, batch_size=1, seed=3, shuffle=8), 40)
    b = _captions(make(pattern, batch_size=1, seed=3, shuffle=8), 40)
    other = _captions(make(pattern, batch_size=1, seed=4, shuffle=8), 40)
    assert a == b
    assert sorted(a[:20]) == sorted(a[20:]) == sorted(f"caption {k}" for k in range(20))
    assert a[:20] != a[20:]
    assert a != other


def test_epoch_float(tmp_path, clean):
    loader = make(clean, batch_size=3)
    assert loader.epoch_float == 0.0  # epoch size unknown: whole epochs of the streams
    for _ in range(6):
        loader.next()
    assert loader.epoch_float == 1.0
    sized = make(clean, batch_size=3, num_samples=15)
    for _ in range(2):
        sized.next()
    assert sized.epoch_float == pytest.approx(0.4)
    folder = tmp_path / "stats"
    pattern = write_shards(folder, n_shards=2, per_shard=3)
    for s in range(2):  # img2dataset writes <shard>_stats.json next to each shard
        (folder / f"s-{s:06d}_stats.json").write_text(json.dumps({"successes": 3, "count": 3}))
    assert ImageTextStream(pattern).num_samples == 6
