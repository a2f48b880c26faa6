"""CLIP4Clip frames: the official sampling rule, decord and PyAV agreeing on a real mp4,
and the bad videos a folder of user files holds (each one a CorruptSample, never zeros)."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from clipheads.core.data.errors import CorruptSample, MissingSample
from clipheads.core.data.video import write_video
from clipheads.core.errors import UserError
from clipheads.tasks.clip4clip.frames import FrameTransform, pad_frames, read_clip, sample_indices


def _frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Frame t is a flat grey of value 10 + 4 t, with a coloured bar so pixels are not flat."""
    out = np.stack([np.full((h, w, 3), 10 + 4 * t, np.uint8) for t in range(n)])
    out[:, h // 3: h // 2, :, 0] = 200
    return out


def _index_of(frame: np.ndarray) -> int:
    return int(round((float(np.median(frame[..., 1])) - 10) / 4))


def test_official_rule_one_frame_per_second_then_thinned():
    assert sample_indices(100, 10.0) == list(range(0, 100, 10))          # 10 s: every 10th frame
    assert sample_indices(300, 29.97)[:3] == [0, 29, 58]                 # fps truncated to 29
    kept = list(range(0, 400, 10))                                       # 40 s at 10 fps
    assert sample_indices(400, 10.0, 12, 2) == [kept[i] for i in np.linspace(0, 39, 12, dtype=int)]
    assert sample_indices(400, 10.0, 12, 0) == kept[:12]
    assert sample_indices(400, 10.0, 12, 1) == kept[-12:]
    assert sample_indices(5, 25.0) == [0]                                # shorter than a second
    assert sample_indices(1, 25.0) == [0]                                # one frame
    assert sample_indices(3, 0.5) == [0, 1, 2]                           # fps < 1: every frame
    assert sample_indices(0, 25.0) == []
    with pytest.raises(UserError, match="slice_framepos"):
        sample_indices(10, 1.0, 4, 3)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("c4c") / "clip.mp4"
    write_video(path, _frames(50), fps=3)          # 16.7 s: 17 one-per-second frames -> 12
    return path


def test_decord_and_pyav_pick_the_same_frames_and_pixels(clip):
    frames_d, idx_d = read_clip(clip, 12, 2, backend="decord")
    frames_p, idx_p = read_clip(clip, 12, 2, backend="pyav")
    assert idx_d == idx_p == sample_indices(50, 3.0, 12, 2)
    assert [_index_of(f) for f in frames_p] == idx_p
    t = FrameTransform(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    a, b = t(frames_d), t(frames_p)
    assert a.shape == b.shape == (12, 3, 32, 32)
    assert (a - b).abs().mean() < 0.01 and (a - b).abs().max() < 0.1


def test_transform_resizes_short_side_and_centre_crops():
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[:, :, 10:70] = 255                      # all but the side strips is white
    out = FrameTransform(20, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(frames)
    assert out.shape == (2, 3, 20, 20) and torch.allclose(out, torch.ones_like(out), atol=1e-2)
    clip, mask = pad_frames(out, 5)
    assert clip.shape[0] == 5 and mask.tolist() == [True, True, False, False, False] and clip[2:].abs().sum() == 0


def _audio_only(path):
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for pkt in s.encode(frame):
            c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def _variable_rate(path):
    """Frames at irregular times (pts 0, 1, 2, 10, 11, 30, ... in 1/10 s)."""
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        s.codec_context.time_base = Fraction(1, 10)
        for i, pts in enumerate([0, 1, 2, 10, 11, 30, 31, 45]):
            f = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i, np.uint8), format="rgb24")
            f.pts, f.time_base = pts, Fraction(1, 10)
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


@pytest.mark.parametrize("backend", ["decord", "pyav", None])
def test_bad_and_odd_videos(tmp_path, clip, backend):
    """Bad files fail as CorruptSample with either backend; odd valid ones decode with
    PyAV and with the default (decord, PyAV where decord trips: it fails on tiny frames such as 2x2)."""
    with pytest.raises(MissingSample):
        read_clip(tmp_path / "absent.mp4", backend=backend)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video at all")
    data = clip.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    _audio_only(tmp_path / "audio.mp4")
    for name in ("empty.mp4", "text.mp4", "cut.mp4", "audio.mp4"):
        with pytest.raises(CorruptSample, match=name):
            read_clip(tmp_path / name, backend=backend)
    write_video(tmp_path / "one.mp4", _frames(1), fps=25)
    write_video(tmp_path / "short.mp4", _frames(6), fps=25)       # a quarter of a second
    write_video(tmp_path / "tiny.mp4", _frames(3, 1, 1), fps=1)
    write_video(tmp_path / "wide.mp4", _frames(2, 100, 4000), fps=1)
    for name, n in (("one.mp4", 1), ("short.mp4", 1), ("tiny.mp4", 3), ("wide.mp4", 2)):
        if backend == "decord" and name == "tiny.mp4":
            with pytest.raises(CorruptSample):
                read_clip(tmp_path / name, backend=backend)
            continue
        frames, idx = read_clip(tmp_path / name, backend=backend)
        assert len(frames) == n and idx[0] == 0, name
    _variable_rate(tmp_path / "vfr.mp4")
    frames, idx = read_clip(tmp_path / "vfr.mp4", backend=backend)
    assert len(frames) == len(idx) >= 1 and idx == sorted(set(idx))
