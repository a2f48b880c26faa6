"""Corrupt and missing samples are skipped, logged once each and counted, never turned into NaN."""
from __future__ import annotations

import io
import logging
import shutil
import tarfile

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from clipheads.core.data.coco import CocoDetection
from clipheads.core.data.errors import CorruptSample, MissingSample
from clipheads.core.data.masks import SegmentationFolder
from clipheads.core.data.msrvtt import MsrvttDataset, collate_clips
from clipheads.core.data.skipping import SkipCounter, SkippingDataset, drop_none, skip_none_collate
from clipheads.core.data.webdataset_pairs import ImageTextShards
from clipheads.core.errors import UserError
from clipheads.core.tinyworld.export import export_tiny_world

LOGGER = "clipheads.data"


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    return export_tiny_world(tmp_path_factory.mktemp("w") / "tw", n_train=8, n_val=4, n_videos=3)


@pytest.fixture
def world(small_world, tmp_path):
    """A private copy each test may damage."""
    return shutil.copytree(small_world, tmp_path / "tw")


def _skip_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and "skipped" in r.getMessage()]


def test_skip_counter_warns_once_then_counts(caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    sc = SkipCounter("demo")
    assert sc.attempt("a", lambda: 3) == 3
    assert sc.attempt("b", lambda: (_ for _ in ()).throw(CorruptSample("b.jpg", "bad bytes"))) is None
    assert sc.attempt("c", lambda: (_ for _ in ()).throw(MissingSample("c.jpg"))) is None
    with pytest.raises(ValueError):  # only sample errors are skipped; bugs still surface
        sc.attempt("d", lambda: (_ for _ in ()).throw(ValueError("bug")))
    assert sc.count == 2 and sc.keys == ("b", "c")
    assert sc.reasons == {"corrupt": 1, "missing": 1}
    lines = _skip_lines(caplog)
    assert len(lines) == 2 and "b.jpg" in lines[0] and "c.jpg" in lines[1]
    assert "2 skipped so far" in lines[1]
    levels = [r.levelno for r in caplog.records if r.name == LOGGER]
    assert levels == [logging.WARNING, logging.DEBUG]  # one line on the console, the rest with -v
    assert sc.summary() == ("demo: skipped 2 samples (1 corrupt, 1 missing); first: b (cannot read b.jpg: "
                            "bad bytes; re-download or remove it)")
    assert SkipCounter("x").summary() == "x: no samples skipped"


def test_counters_are_per_instance():
    a, b = SkipCounter("a"), SkipCounter("b")
    a.skip("k", "r")
    assert (a.count, b.count) == (1, 0)


class _Flaky(Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        if i in (1, 4):
            raise CorruptSample(f"item{i}.jpg", "corrupt")
        return torch.full((2,), float(i))


def test_wrapper_and_collate_drop_bad_samples_without_nan():
    ds = SkippingDataset(_Flaky(), source="flaky")
    loader = DataLoader(ds, batch_size=3, collate_fn=skip_none_collate)
    batches = list(loader)
    assert [b.shape[0] for b in batches] == [2, 2]
    assert all(torch.isfinite(b).all() for b in batches)
    assert torch.cat(batches)[:, 0].tolist() == [0, 2, 3, 5]
    assert ds.skips.count == 2
    assert skip_none_collate([None, None]) is None
    assert drop_none([1, None, 2]) == [1, 2]


def _jpeg_bytes(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_corrupt_jpg_in_shard_is_skipped_and_counted(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    shard = tmp_path / "train-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(6):
            key = f"{i:09d}"
            jpg = _jpeg_bytes(i)
            if i == 2:
                jpg = b"\xff\xd8\xff\xe0 this is not a jpeg"
            if i == 4:
                jpg = jpg[: len(jpg) // 2]  # truncated download
            _add(tar, f"{key}.jpg", jpg)
            if i != 5:  # sample 5 has no caption
                _add(tar, f"{key}.txt", f"caption {i}".encode())
    ds = ImageTextShards(shard)
    pairs = list(ds)
    assert [c for _, c in pairs] == ["caption 0", "caption 1", "caption 3"]
    assert ds.skips.count == 3
    lines = _skip_lines(caplog)
    assert len(lines) == 3
    assert "000000002" in lines[0] and "000000004" in lines[1] and "000000005" in lines[2]


def test_broken_tar_does_not_kill_the_stream(world, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    shard = world / "shards" / "train-000000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # shard cut mid-member
    ds = ImageTextShards([shard, world / "shards" / "val-000000.tar"])
    pairs = list(ds)
    assert 4 <= len(pairs) < 12  # the val shard and the intact part of train survive
    assert ds.skips.count == 1 and ds.skips.reasons == {"broken shard": 1}
    (line,) = _skip_lines(caplog)
    assert str(shard) in line and "rest of shard skipped" in line
    list(ds)  # a second pass reports the shard again
    assert ds.skips.count == 2


def test_missing_shard_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="shard not found"):
        ImageTextShards(str(tmp_path / "s-{000000..000001}.tar"))


def test_coco_missing_and_corrupt_images(world, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    images = sorted((world / "images" / "train").iterdir())
    images[1].unlink()
    images[5].write_bytes(images[5].read_bytes()[:200])
    ds = CocoDetection(world / "images" / "train", world / "annotations" / "instances_train.json")
    loader = DataLoader(ds, batch_size=4, collate_fn=lambda b: drop_none(b))
    sizes = [len(b) for b in loader]
    assert sizes == [3, 3]
    assert ds.skips.count == 2 and ds.skips.reasons == {"missing": 1, "corrupt": 1}
    assert len(_skip_lines(caplog)) == 2


def test_coco_bad_annotation_file(tmp_path, world):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json"):
        CocoDetection(world / "images" / "train", bad)
    with pytest.raises(UserError, match="not found"):
        CocoDetection(world / "images" / "train", tmp_path / "none.json")


def test_masks_missing_annotation_counted_and_size_mismatch_named(world, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    anns = sorted((world / "annotations" / "train").iterdir())
    anns[0].unlink()
    ds = SegmentationFolder(world / "images" / "train", world / "annotations" / "train")
    assert len(ds) == 7 and ds.skips.count == 1 and ds.skips.reasons == {"missing": 1}
    assert len(_skip_lines(caplog)) == 1

    from PIL import Image

    Image.new("L", (50, 40)).save(anns[3])
    with pytest.raises(UserError, match=anns[3].name):
        ds[2]
    Image.new("RGB", (96, 96)).save(anns[4])  # colour-coded mask: skipped, not misread
    assert ds[3] is None and ds.skips.count == 2


def test_msrvtt_truncated_and_missing_videos(world, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    vids = world / "videos"
    data = (vids / "video0.mp4").read_bytes()
    (vids / "video0.mp4").write_bytes(data[: len(data) // 2])
    (vids / "video2.mp4").unlink()
    ds = MsrvttDataset(vids, world / "msrvtt_train.json", max_frames=4)
    loader = DataLoader(ds, batch_size=3, collate_fn=collate_clips)
    (batch,) = list(loader)
    assert batch["video_id"] == ["video1"] and batch["index"] == [1]
    assert torch.isfinite(batch["frames"].float()).all()
    assert ds.skips.count == 2 and ds.skips.reasons == {"corrupt": 1, "missing": 1}
    lines = _skip_lines(caplog)
    assert len(lines) == 2 and "video0" in lines[0] and "video2" in lines[1]
    assert collate_clips([None]) is None
