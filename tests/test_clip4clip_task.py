"""`clipheads clip4clip` end to end on videos the tests draw: index a folder (resumable,
new files only, corrupt ones listed), search it by words and by a video, evaluate with
the official metrics, and refuse bad requests with one line and exit code 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clipheads.core.cli import main
from clipheads.core.data.video import write_video
from clipheads.tasks.clip4clip.index import VideoIndex

from drawings import moving_shape_frames

SMALL = ["--set", "data.n_train=8", "--set", "data.n_val=2", "--set", "data.n_test=12"]


def run(capsys, *argv):
    code = main(["clip4clip", *argv, "--device", "cpu", "--json"])
    out = capsys.readouterr()
    return code, out, [json.loads(line) for line in out.out.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A red circle moving left, a blue square moving right (PIL drawings, 16 s at 1 fps)."""
    folder = tmp_path_factory.mktemp("videos")
    write_video(folder / "red_circle_left.mp4", moving_shape_frames("red", "circle", "left"), fps=1)
    write_video(folder / "blue_square_right.mp4", moving_shape_frames("blue", "square", "right"), fps=1)
    return folder


def test_index_then_search_ranks_the_right_video_first(videos, tmp_path, capsys, one_thread):
    code, out, rows = run(capsys, "index", "--videos", str(videos), "--out", str(tmp_path / "idx"))
    assert code == 0, out.err
    assert rows[0]["added"] == 2 and rows[0]["skipped"] == 0
    queries = {"a red circle moving left": "red_circle_left.mp4", "a blue square moving right": "blue_square_right.mp4"}
    code, out, rows = run(capsys, "infer", "--index", str(tmp_path / "idx"), *sum((["--query", q] for q in queries), []),
                          "--top", "2")
    assert code == 0, out.err
    for row in rows:
        assert [r["rank"] for r in row["results"]] == [1, 2]
        assert Path(row["results"][0]["path"]).name == queries[row["query"]], row
        assert row["results"][0]["score"] > row["results"][1]["score"]
    code, out, rows = run(capsys, "infer", "--index", str(tmp_path / "idx"), "--query-video",
                          str(videos / "blue_square_right.mp4"), "--top", "1")
    assert code == 0 and Path(rows[0]["results"][0]["path"]).name == "blue_square_right.mp4"
    assert rows[0]["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_index_resumes_adds_new_files_only_and_lists_corrupt_ones(videos, tmp_path, capsys, one_thread):
    folder = tmp_path / "vids"
    folder.mkdir()
    for p in videos.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    (folder / "empty.mp4").write_bytes(b"")
    idx = tmp_path / "idx"
    code, out, rows = run(capsys, "index", "--videos", str(folder), "--out", str(idx), "--chunk", "1")
    assert code == 0, out.err
    assert rows[0]["added"] == 2 and rows[0]["skipped"] == 2
    assert sorted(Path(k).name for k in json.loads((idx / "skipped.json").read_text())) == ["broken.mp4", "empty.mp4"]
    chunks = sorted((idx / "chunks").iterdir())
    assert len(chunks) == 2
    # A kill mid-write leaves at most a temporary file: it is never read as a chunk.
    (idx / "chunks" / ".000002.safetensors.tmp-123").write_bytes(b"half a chunk")
    write_video(folder / "green_star_up.mp4", moving_shape_frames("green", "star", "up"), fps=1)
    code, out, rows = run(capsys, "index", "--videos", str(folder), "--out", str(idx))
    assert code == 0, out.err
    assert rows[0]["added"] == 1 and rows[0]["already_indexed"] == 2 and rows[0]["skipped"] == 2
    entries = VideoIndex(idx).entries()
    assert sorted(Path(k.path).name for k in entries.keys) == ["blue_square_right.mp4", "green_star_up.mp4",
                                                               "red_circle_left.mp4"]
    assert entries.frames.shape[1:] == (12, 128) and entries.mask.sum(1).tolist() == [12, 12, 12]


def test_index_embeddings_equal_encoding_the_videos_directly(videos, tmp_path, capsys, one_thread):
    import clipheads
    from clipheads.tasks.clip4clip.encode import encode_videos
    code, out, _ = run(capsys, "index", "--videos", str(videos), "--out", str(tmp_path / "idx"), "--head", "meanP")
    assert code == 0, out.err
    entries = VideoIndex(tmp_path / "idx").entries()
    task = clipheads.load("clip4clip", device="cpu", progress=False)
    enc = next(iter(encode_videos(task.ctx.backbone, [Path(k.path) for k in entries.keys], 12, 2)))
    torch.testing.assert_close(entries.frames, enc.frames)
    model, _ = task.load_head(head="meanP")
    torch.testing.assert_close(entries.video, model.video_embeddings(enc.frames, enc.mask))


def test_eval_reports_official_metrics_on_tiny_world_test_clips(capsys, one_thread):
    code, out, rows = run(capsys, "eval", *SMALL)
    assert code == 0, out.err
    r = rows[0]
    assert r["videos"] == 12 and r["captions"] == 36 and r["head"] == "seqTransf"
    for d in ("t2v", "v2t"):
        assert 0 <= r[d]["R@1"] <= r[d]["R@5"] <= r[d]["R@10"] <= 100 and r[d]["MdR"] >= 1
    assert r["t2v"]["R@5"] > 5 / 12 * 100       # far above chance on 12 videos


def test_bad_requests_fail_with_one_line(videos, tmp_path, capsys):
    idx = tmp_path / "idx"
    assert run(capsys, "index", "--videos", str(videos), "--out", str(idx))[0] == 0
    cases = [
        (["infer", "--index", str(idx), "--query", "  "], "empty --query"),
        (["infer", "--index", str(idx)], "--query"),
        (["infer", "--index", str(tmp_path / "nothing"), "--query", "a cat"], "no index"),
        (["index", "--videos", str(tmp_path / "none*.mp4"), "--out", str(tmp_path / "i2")], "no video files"),
        (["infer", "--index", str(idx), "--query", "x", "--head", "meanP", "--checkpoint", str(tmp_path)], "two heads"),
    ]
    for argv, needle in cases:
        code, out, _ = run(capsys, *argv)
        assert code == 2 and needle in out.err and len(out.err.strip().splitlines()) == 1, (argv, out.err)
    spec = json.loads((idx / "index.json").read_text())
    spec["spec"]["fingerprint"] = "0123456789abcdef"
    (idx / "index.json").write_text(json.dumps(spec))
    code, out, _ = run(capsys, "infer", "--index", str(idx), "--query", "a red circle")
    assert code == 2 and "built with backbone" in out.err


def test_long_captions_are_cut_once_with_a_warning(caplog):
    import clipheads
    from clipheads.tasks.clip4clip.encode import caption_features, tokenize_captions
    task = clipheads.load("clip4clip", device="cpu", progress=False)
    bb = task.ctx.backbone
    long = "a red circle " + "moving left and then " * 10
    tokens, cut = tokenize_captions(bb, [long, "a red circle"], 8)
    assert cut == 1 and int((tokens[0] != 0).sum()) == 8 and int(tokens[0].argmax()) == 7   # EOT kept last
    with caplog.at_level("WARNING"):
        feats = caption_features(bb, [long, long], 8)
    assert feats.shape == (2, bb.embed_dim) and torch.isfinite(feats).all()
    assert sum("cut" in r.message for r in caplog.records) == 1


def test_msrvtt_files_train_list_minus_validation_and_1ka_eval(tmp_path, capsys, one_thread):
    """MSR-VTT layout: the train list comes from the json filtered by a 9k-style csv, the
    'validate' videos are taken out of it for model selection, and eval reads a 1k-A csv."""
    import clipheads
    from clipheads.tasks.clip4clip.tinyworld import tiny_world_videos
    doc = {"videos": [{"video_id": f"video{i}", "split": "validate" if i in (2, 5) else "train"} for i in range(8)],
           "sentences": [{"video_id": f"video{i}", "caption": f"caption {i} {j}"} for i in range(8) for j in range(2)]}
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps(doc))
    (tmp_path / "train.9k.csv").write_text("video_id\n" + "".join(f"video{i}\n" for i in (0, 1, 2, 3, 5, 6)))
    task = clipheads.load("clip4clip", device="cpu", progress=False, overrides=[
        "data.source=msrvtt", f"data.video_dir={tmp_path}", f"data.train_annotations={tmp_path / 'MSRVTT_data.json'}",
        f"data.train_ids={tmp_path / 'train.9k.csv'}", "data.val_split=validate"])
    train, _ = task._split("train")
    val, _ = task._split("val")
    assert [e.video_id for e in train] == ["video0", "video1", "video3", "video6"]
    assert [e.video_id for e in val] == ["video2", "video5"] and val[0].captions == ("caption 2 0", "caption 2 1")
    root = tiny_world_videos(tmp_path / "cache", 2, 6, 96)
    code, out, rows = run(capsys, "eval", "--benchmark", "msrvtt", "--annotations", str(root / "msrvtt_test.csv"),
                          "--video-dir", str(root / "videos"))
    assert code == 0, out.err
    assert rows[0]["videos"] == rows[0]["captions"] == 6 and rows[0]["t2v"]["queries"] == 6


def test_a_tight_head_scores_every_pair_of_an_index(videos, tmp_path, capsys, one_thread):
    """tightTransf has no video embedding: the index keeps frames, infer runs the
    cross-encoder on each (query, video) pair, and --query-video is refused."""
    import clipheads
    from clipheads.tasks.clip4clip.model import Clip4Clip
    from clipheads.tasks.clip4clip.weights import save_head
    task = clipheads.load("clip4clip", device="cpu", progress=False, overrides=["head.sim_header=tightTransf"])
    model = task.build_model()
    save_head(tmp_path / "tight", model.state_dict(), task._info({}, "test"))
    idx = tmp_path / "idx"
    code, out, rows = run(capsys, "index", "--videos", str(videos), "--out", str(idx), "--checkpoint", str(tmp_path / "tight"))
    assert code == 0 and rows[0]["added"] == 2, out.err
    code, out, rows = run(capsys, "infer", "--index", str(idx), "--checkpoint", str(tmp_path / "tight"),
                          "--query", "a red circle", "--query", "a blue square", "--top", "2")
    assert code == 0, out.err
    entries = VideoIndex(idx).entries()
    text = torch.stack([task.ctx.backbone.encode_text([q])[0] for q in ("a red circle", "a blue square")])
    fresh = Clip4Clip(model.spec)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        want = fresh.eval().logits(text, entries.frames, entries.mask)
    for row, scores in zip(rows, want):
        best = int(scores.argmax())
        assert row["results"][0]["path"] == entries.keys[best].path
        assert row["results"][0]["score"] == pytest.approx(float(scores[best]), abs=1e-4)
    code, out, _ = run(capsys, "infer", "--index", str(idx), "--checkpoint", str(tmp_path / "tight"),
                       "--query-video", str(videos / "red_circle_left.mp4"))
    assert code == 2 and "loose head" in out.err
