"""Video reading (decord, else PyAV) with CLIP4Clip's frame sampling, and mp4 writing.

Frames are taken at `fps` frames per second of video time; when that gives more than
`max_frames`, they are thinned uniformly with CLIP4Clip's
`np.linspace(0, n - 1, max_frames, dtype=int)`. Both backends share one selection
function over frame timestamps, so they pick the same frames. A file that cannot be
opened, has no video stream, or stops early raises `CorruptSample` (`MissingSample`
when absent), which datasets skip and count.
"""
from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from clipheads.core.atomic import atomic_path
from clipheads.core.data.errors import CorruptSample, MissingSample
from clipheads.core.errors import UserError

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg")
_TOLERANCE_S = 1e-3
# A container that promised this many frames more than it decoded is truncated.
_TRUNCATION_SLACK = 2


def video_backend() -> str:
    """'decord' when importable (faster random access), else 'pyav'."""
    try:
        import decord  # noqa: F401
    except ImportError:
        return "pyav"
    return "decord"


def select_frames(timestamps: Sequence[float], fps: float | None, max_frames: int) -> list[int]:
    """Indices (in time order) of frames to keep from per-frame timestamps in seconds.

    One frame per 1/fps of video time (the first frame at or after each tick; all frames
    when fps is None), then uniform thinning down to max_frames as in CLIP4Clip.
    """
    if max_frames < 1:
        raise UserError(f"max_frames must be >= 1, got {max_frames}")
    if fps is not None and fps <= 0:
        raise UserError(f"fps must be > 0 (or None for every frame), got {fps}")
    order = sorted(range(len(timestamps)), key=lambda i: timestamps[i])
    if not order:
        return []
    t0 = timestamps[order[0]]
    kept: list[int] = []
    if fps is None:
        kept = order
    else:
        next_tick = 0.0
        for i in order:
            rel = timestamps[i] - t0
            if rel >= next_tick - _TOLERANCE_S:
                kept.append(i)
                next_tick = (math.floor((rel + _TOLERANCE_S) * fps) + 1) / fps
    if len(kept) > max_frames:
        kept = [kept[j] for j in np.linspace(0, len(kept) - 1, num=max_frames, dtype=int)]
    return kept


def _check_file(path: Path) -> None:
    if not path.exists():
        raise MissingSample(path, "video file")
    if not path.is_file():
        raise CorruptSample(path, "is not a file")


# pick(timestamps in seconds, average fps) -> indices into the timestamps, in output order
FramePicker = Callable[[list[float], float], list[int]]


def _read_decord(path: Path, pick: FramePicker) -> tuple[np.ndarray, np.ndarray]:
    import decord

    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        n = len(vr)
        if n == 0:
            raise CorruptSample(path, "video has no frames")
        times = np.asarray(vr.get_frame_timestamp(list(range(n))), dtype=np.float64)[:, 0]
        idx = pick(times.tolist(), float(vr.get_avg_fps()))
        if not idx:
            raise CorruptSample(path, "no frame to sample")
        frames = vr.get_batch(idx).asnumpy()
    except CorruptSample:
        raise
    except Exception as exc:  # decord raises bare RuntimeError/DECORDError subclasses
        raise CorruptSample(path, f"video decoding failed ({exc})") from exc
    return np.ascontiguousarray(frames, dtype=np.uint8), times[idx] - times.min()


def _read_pyav(path: Path, pick: FramePicker) -> tuple[np.ndarray, np.ndarray]:
    import av

    try:
        # Pass 1: demux only (no decoding) to learn every frame's timestamp.
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise CorruptSample(path, "no video stream")
            stream = container.streams.video[0]
            promised = int(stream.frames or 0)
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            pts = [p.pts for p in container.demux(stream) if p.size > 0]
            time_base = float(stream.time_base) if stream.time_base else 1.0 / rate
        if not pts:
            raise CorruptSample(path, "video has no frames")
        by_index = any(p is None for p in pts)
        times = ([i / rate for i in range(len(pts))] if by_index
                 else [float(p) * time_base for p in pts])
        chosen = pick(times, rate)
        if not chosen:
            raise CorruptSample(path, "no frame to sample")
        wanted = set(chosen) if by_index else {pts[i] for i in chosen}
        # Pass 2: decode, keeping only the chosen frames (memory stays at max_frames).
        got: dict[int, np.ndarray] = {}
        decoded = 0
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                decoded += 1
                key = i if by_index else frame.pts
                if key in wanted and key not in got:
                    got[key] = frame.to_ndarray(format="rgb24")
    except CorruptSample:
        raise
    except (av.FFmpegError, OSError, EOFError, ValueError) as exc:
        raise CorruptSample(path, f"video decoding failed ({exc})") from exc
    if promised and decoded + _TRUNCATION_SLACK < promised:
        raise CorruptSample(path, f"truncated video: decoded {decoded} of {promised} frames")
    keys = chosen if by_index else [pts[i] for i in chosen]
    missing = [k for k in keys if k not in got]
    if missing:
        raise CorruptSample(path, f"{len(missing)} sampled frames could not be decoded (truncated?)")
    t0 = min(times)
    return (np.stack([got[k] for k in keys]).astype(np.uint8, copy=False),
            np.asarray([times[i] - t0 for i in chosen], dtype=np.float64))


def read_video_frames(path: str | os.PathLike[str], fps: float | None = 1.0, max_frames: int = 12,
                      pick: FramePicker | None = None, backend: str | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 frames T x H x W x 3 in RGB, float64 timestamps in seconds from the first frame).

    Frames follow `select_frames(fps, max_frames)` unless `pick` chooses them (e.g.
    CLIP4Clip's index rule). `backend` None: decord when importable, PyAV for what decord
    cannot read (PyAV has the last word); 'decord' or 'pyav' forces one."""
    p = Path(path)
    _check_file(p)
    pick = pick or (lambda times, rate: select_frames(times, fps, max_frames))
    if backend not in (None, "decord", "pyav"):
        raise UserError(f"video backend {backend!r}: use 'decord' or 'pyav'")
    if backend == "decord":
        return _read_decord(p, pick)
    if backend is None and video_backend() == "decord":
        try:
            return _read_decord(p, pick)
        except CorruptSample:   # decord 0.6 fails on some valid files (tiny frames: 48x32, 2x2)
            pass
    return _read_pyav(p, pick)


def _even(frames: np.ndarray) -> np.ndarray:
    """Edge-pad H and W to even sizes (yuv420p needs them)."""
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frames


# Byte-reproducible mp4s (same frames + same PyAV/FFmpeg build -> same bytes):
# - one encoder thread (x264 with threads=1 also runs one lookahead thread, no sliced threads);
# - x264 `mbtree=0`: with the macroblock tree on, x264 (core 165, PyAV 18.1 wheels) gave
#   different first-frame bits for the same input now and then (4 of 40 random tiny-world
#   clips over 4 re-encodes in one process; the result depended on what earlier encodes had
#   left in memory), which made the exported tiny world flaky. With mbtree off: 0 of 220;
# - `bitexact` for the encoder and the muxer: no "Lavc…"/"Lavf…" version strings in the file.
#   The mp4 muxer writes no creation_time unless asked to.
_BITEXACT = {"threads": "1", "flags": "+bitexact"}
_ENCODER_OPTIONS = {
    "libx264": {**_BITEXACT, "crf": "18", "mbtree": "0",
                "x264-params": "sliced-threads=0:lookahead-threads=1"},
}
_MUXER_OPTIONS = {"fflags": "+bitexact"}


def write_video(path: str | os.PathLike[str], frames: np.ndarray | Sequence[np.ndarray], fps: float,
                codecs: Sequence[str] = ("libx264", "mpeg4")) -> str:
    """Encode uint8 RGB frames (T x H x W x 3) to an mp4; returns the codec used.

    Tries `codecs` in order (h264 first, mpeg4 where the FFmpeg build lacks x264), writes
    to a temporary name and renames, so a crash never leaves a half-written video.
    Odd frame sizes are edge-padded by one pixel. The same frames give the same bytes on
    the same PyAV/FFmpeg build (single-threaded bit-exact encoding, no timestamps in the
    file); other builds may encode differently.
    """
    import av

    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or len(arr) == 0:
        raise UserError(f"write_video expects uint8 frames of shape (T, H, W, 3), got {arr.dtype} "
                        f"{arr.shape}; convert to RGB uint8 first")
    arr = _even(arr)
    out = Path(path)
    errors = []
    for codec in codecs:
        try:
            with atomic_path(out) as tmp, av.open(str(tmp), "w", format="mp4",
                                                  options=_MUXER_OPTIONS) as container:
                stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001),
                                              options=dict(_ENCODER_OPTIONS.get(codec, _BITEXACT)))
                stream.width, stream.height = arr.shape[2], arr.shape[1]
                stream.pix_fmt = "yuv420p"
                if codec == "mpeg4":
                    stream.bit_rate = 2_000_000
                for frame in arr:
                    for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
        except (av.FFmpegError, ValueError) as exc:  # codec missing from this FFmpeg build
            errors.append(f"{codec}: {exc}")
            continue
        return codec
    raise UserError(f"cannot encode {out}: no usable video codec ({'; '.join(errors)}); "
                    f"install an FFmpeg build of PyAV with libx264 or mpeg4")
