"""Video reading/writing: CLIP4Clip sampling, timestamps, corrupt and truncated files."""
from __future__ import annotations

import av
import numpy as np
import pytest

from clipheads.core.data.errors import CorruptSample, MissingSample
from clipheads.core.data.video import read_video_frames, select_frames, write_video
from clipheads.core.errors import UserError


def _frames(n: int, h: int = 32, w: int = 48) -> np.ndarray:
    """Frame t is a flat grey of value 10 + 12 t: decoded frames reveal their index."""
    return np.stack([np.full((h, w, 3), 10 + 12 * t, np.uint8) for t in range(n)])


def _index_of(frame: np.ndarray) -> int:
    return int(round((float(frame.mean()) - 10) / 12))


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("vid") / "clip.mp4"
    assert write_video(path, _frames(20), fps=4) in ("libx264", "mpeg4")
    return path


def test_select_frames_rules():
    ts = [i / 10 for i in range(100)]  # 10 s at 10 fps
    assert select_frames(ts, 1.0, 100) == list(range(0, 100, 10))
    assert select_frames(ts, 2.0, 100) == list(range(0, 100, 5))
    assert select_frames(ts, None, 5) == list(np.linspace(0, 99, 5, dtype=int))
    # More ticks than max_frames: CLIP4Clip's uniform thinning of the 1 fps picks.
    assert select_frames(ts, 1.0, 4) == [0, 30, 60, 90]
    # Asking for more fps than the video has keeps every frame once.
    assert select_frames(ts, 50.0, 1000) == list(range(100))
    # Unsorted timestamps (B-frame order) are handled by time, not position.
    assert select_frames([0.2, 0.0, 1.1, 0.5], 1.0, 10) == [1, 2]
    assert select_frames([], 1.0, 10) == []
    with pytest.raises(UserError):
        select_frames(ts, 0.0, 10)
    with pytest.raises(UserError):
        select_frames(ts, 1.0, 0)


def test_read_samples_by_fps(clip_path):
    frames, times = read_video_frames(clip_path, fps=1.0, max_frames=12)
    assert frames.dtype == np.uint8 and frames.shape == (5, 32, 48, 3)
    assert times.tolist() == pytest.approx([0, 1, 2, 3, 4])
    assert [_index_of(f) for f in frames] == [0, 4, 8, 12, 16]


def test_read_all_frames_uniformly_thinned(clip_path):
    frames, times = read_video_frames(clip_path, fps=None, max_frames=6)
    expected = np.linspace(0, 19, 6, dtype=int).tolist()
    assert [_index_of(f) for f in frames] == expected
    assert times.tolist() == pytest.approx([i / 4 for i in expected])
    everything, _ = read_video_frames(clip_path, fps=None, max_frames=100)
    assert len(everything) == 20


def test_odd_sizes_are_padded(tmp_path):
    p = tmp_path / "odd.mp4"
    write_video(p, _frames(3, 31, 45), fps=2)
    frames, _ = read_video_frames(p, fps=None)
    assert frames.shape == (3, 32, 46, 3)


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_write_is_byte_reproducible(tmp_path, codec):
    """Same frames, same bytes, whatever earlier encodes left behind in the process.

    x264 with its macroblock tree on changed the first frame's bits now and then; the
    noise encodes in between are what used to expose it.
    """
    from clipheads.core.tinyworld.video import make_video

    clips = [make_video(seed, n_frames=12, size=64).frames for seed in (1, 7, 23)]
    rng = np.random.default_rng(0)
    seen: list[set[bytes]] = [set() for _ in clips]
    for rep in range(3):
        for k, frames in enumerate(clips):
            noise = rng.integers(0, 256, (int(rng.integers(2, 9)), 64, 64, 3), dtype=np.uint8)
            assert write_video(tmp_path / "noise.mp4", noise, fps=4, codecs=(codec,)) == codec
            write_video(tmp_path / f"c{k}_{rep}.mp4", frames, fps=4, codecs=(codec,))
            seen[k].add((tmp_path / f"c{k}_{rep}.mp4").read_bytes())
    assert [len(s) for s in seen] == [1] * len(clips)
    data = next(iter(seen[0]))
    assert b"Lavf" not in data and b"Lavc" not in data  # no library version strings


def test_write_rejects_bad_frames(tmp_path):
    with pytest.raises(UserError):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8), np.uint8), fps=2)
    with pytest.raises(UserError):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32), fps=2)
    assert not list(tmp_path.iterdir())


def test_missing_and_garbage(tmp_path):
    with pytest.raises(MissingSample, match="nope.mp4"):
        read_video_frames(tmp_path / "nope.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(CorruptSample, match="bad.mp4"):
        read_video_frames(bad)


def test_truncated_mp4_is_corrupt(clip_path, tmp_path):
    data = clip_path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # index (moov) at the end: lost
    with pytest.raises(CorruptSample, match="cut.mp4"):
        read_video_frames(cut)


def test_truncated_faststart_mp4_is_corrupt(tmp_path):
    """Index first (faststart): the container still opens, but frames are missing."""
    full = tmp_path / "fast.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(full), "w", format="mp4", options={"movflags": "faststart"}) as c:
        s = c.add_stream("mpeg4", rate=8)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for _ in range(24):
            img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    assert len(read_video_frames(full, fps=None, max_frames=100)[0]) == 24
    data = full.read_bytes()
    cut = tmp_path / "fastcut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(CorruptSample, match="fastcut.mp4"):
        read_video_frames(cut, fps=None, max_frames=100)
