"""`clipheads clipasso infer|eval` end to end with the bundled tiny CLIP, and the demo."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from clipheads.core.cli import main
from clipheads.core.config import load_config, resolve_config_path
from clipheads.core.demo import example_images
from clipheads.core.task import Context
from clipheads.tasks.clipasso import ClipassoConfig, ClipassoTask
from clipheads.tasks.clipasso.svg import parse_svg_paths

FAST = ["--set", "strokes.canvas=48", "--set", "output.png_scale=1", "--seeds", "2"]


pytestmark = pytest.mark.usefixtures("one_thread")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def drawing(path: Path, size=(64, 48), mode="RGB") -> Path:
    img = Image.new("RGB", size, (240, 240, 235))
    w, h = size
    ImageDraw.Draw(img).polygon([(w * 0.2, h * 0.8), (w * 0.5, h * 0.15), (w * 0.8, h * 0.8)], fill=(30, 60, 200))
    if mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray((np.asarray(img)[..., 2] > 150).astype(np.uint8) * 255))
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    elif mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


def check_svg(path: Path, strokes: int, size: tuple[int, int]) -> torch.Tensor:
    parsed = parse_svg_paths(path.read_text())
    assert parsed.points.shape == (strokes, 4, 2) and torch.isfinite(parsed.points).all()
    assert (parsed.height, parsed.width) == size
    return parsed.points


def test_infer_writes_svg_png_gif_and_json(tmp_path, capsys) -> None:
    img = drawing(tmp_path / "tri.png")
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "clipasso", "infer", "--image", str(img), "--strokes", "5", "--iters", "4",
                            "--gif", "--set", "output.gif_every=2", *FAST, "--out", str(out), "--json")
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["svg"] == str(out / "tri.svg") and result["png"] == str(out / "tri.png")
    assert result["iterations"] == 4 and len(result["losses"]) == 2 and result["best_seed"] in (0, 1)
    check_svg(out / "tri.svg", 5, (36, 48))  # aspect kept: 64x48 -> 48x36
    assert Image.open(out / "tri.png").size == (48, 36)
    gif = Image.open(out / "tri.gif")
    assert gif.format == "GIF" and gif.n_frames == 3  # iterations 0 and 2, then the best
    assert (out / "clipasso_infer_config.yaml").read_text().count("count: 5") == 1


ODD = [((16, 16), "RGB"), ((1600, 500), "RGB"), ((50, 90), "L"), ((64, 64), "RGBA"), ((64, 64), "P"),
       ((40, 40), "LA")]


def test_odd_images(tmp_path, capsys) -> None:
    """Tiny, huge non-square, grayscale, RGBA, palette and grey+alpha images in one run."""
    paths = [drawing(tmp_path / f"im{i}_{mode}.png", size, mode) for i, (size, mode) in enumerate(ODD)]
    out = tmp_path / "out"
    code, _, err = run(capsys, "clipasso", "infer", "--image", *map(str, paths), "--strokes", "4", "--iters", "2",
                       *FAST, "--out", str(out), "--json")
    assert code == 0, err
    for path, (size, _) in zip(paths, ODD):
        w, h = size
        expected = (48, max(16, round(w * 48 / h))) if h > w else (max(16, round(h * 48 / w)), 48)
        check_svg(out / f"{path.stem}.svg", 4, expected)
        assert Image.open(out / f"{path.stem}.png").size == expected[::-1]


@pytest.mark.parametrize("strokes", [1, 256])
def test_one_and_many_strokes(tmp_path, capsys, strokes) -> None:
    img = drawing(tmp_path / "a.png")
    code, _, err = run(capsys, "clipasso", "infer", "--image", str(img), "--strokes", str(strokes), "--iters", "1",
                       *FAST, "--seeds", "1", "--out", str(tmp_path / "out"))
    assert code == 0, err
    check_svg(tmp_path / "out" / "a.svg", strokes, (36, 48))


def test_zero_iterations_writes_the_initialisation(tmp_path, capsys) -> None:
    img = drawing(tmp_path / "a.png")
    code, stdout, err = run(capsys, "clipasso", "infer", "--image", str(img), "--strokes", "6", "--iters", "0",
                            *FAST, "--out", str(tmp_path / "out"), "--json")
    assert code == 0, err
    best = json.loads(stdout.strip())["best_seed"]
    cfg = load_config(ClipassoConfig, resolve_config_path("clipasso", "tiny_world"),
                      ["strokes.canvas=48", "strokes.count=6", "optim.seeds=2"])
    task = ClipassoTask(cfg, Context(cfg))
    sketcher = task.sketcher()
    target = task.load_target(img)
    init = sketcher.initial(target, sketcher.saliency(target))
    got = check_svg(tmp_path / "out" / "a.svg", 6, (36, 48)).float()
    assert torch.allclose(got, init.points[best], atol=1e-3)


def test_white_image_still_sketches(tmp_path, capsys) -> None:
    img = tmp_path / "white.png"
    Image.new("RGB", (80, 80), "white").save(img)
    code, stdout, err = run(capsys, "clipasso", "infer", "--image", str(img), "--iters", "3", *FAST,
                            "--out", str(tmp_path / "out"), "--json")
    assert code == 0, err
    assert np.isfinite(json.loads(stdout.strip())["loss"])
    check_svg(tmp_path / "out" / "white.svg", 16, (48, 48))


def test_mask_whitens_the_background(tmp_path) -> None:
    img = tmp_path / "a.png"
    Image.new("RGB", (40, 40), (200, 20, 20)).save(img)
    mask = Image.new("L", (80, 80), 0)  # another size: resized to the image
    ImageDraw.Draw(mask).rectangle((0, 0, 39, 79), fill=255)
    mask.save(tmp_path / "m.png")
    cfg = load_config(ClipassoConfig, resolve_config_path("clipasso", "tiny_world"), ["strokes.canvas=40"])
    target = ClipassoTask(cfg, Context(cfg)).load_target(img, tmp_path / "m.png")
    assert target.mask is not None
    px = target.pixels[0]
    assert px[:, 20, 5].tolist() == pytest.approx([200 / 255, 20 / 255, 20 / 255], abs=0.02)
    assert px[:, 20, 35].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)


def test_unwritable_out_fails_before_any_work(tmp_path, capsys, monkeypatch) -> None:
    from clipheads.core.backbone import FrozenCLIP

    def boom(*a, **k):
        raise AssertionError("a backbone was loaded before --out was checked")

    monkeypatch.setattr(FrozenCLIP, "from_spec", classmethod(boom))
    img = drawing(tmp_path / "a.png")
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "clipasso", "infer", "--image", str(img), "--out", str(tmp_path / "file" / "sub"))
    assert code == 2 and "not writable" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, pattern", [
    (["--strokes", "0"], "--strokes: 0 is out of range: must be >= 1"),
    (["--iters", "-1"], "--iters: -1 is out of range: must be >= 0"),
    (["--seeds", "0"], "--seeds: 0 is out of range"),
    (["--set", "strokes.count=0"], "strokes.count"),
    (["--set", "init.temperature=0"], "temperature"),
    (["--set", "strokes.widht=2"], "did you mean: width"),
    (["--set", "strokes.canvas=8"], "canvas"),
    (["--mask", "nope.png"], "nope.png"),
    (["--set", "output.rembg=true"], "rembg"),
])
def test_bad_input_exits_2(tmp_path, capsys, extra, pattern) -> None:
    img = drawing(tmp_path / "a.png")
    code, _, err = run(capsys, "clipasso", "infer", "--image", str(img), "--out", str(tmp_path / "o"), *extra)
    assert code == 2 and pattern in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing created for a refused run


def test_output_never_overwrites_the_input(tmp_path, capsys) -> None:
    img = drawing(tmp_path / "a.png")
    before = img.read_bytes()
    code, _, err = run(capsys, "clipasso", "infer", "--image", str(img), "--out", str(tmp_path))
    assert code == 2 and "overwrite" in err and img.read_bytes() == before


def test_bad_image_exits_2(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code, _, err = run(capsys, "clipasso", "infer", "--image", str(bad), "--out", str(tmp_path / "o"))
    assert code == 2 and "bad.png" in err


def test_eval_reports_accuracies(tmp_path, capsys) -> None:
    code, stdout, err = run(capsys, "clipasso", "eval", "--per-shape", "1", "--iters", "1", "--seeds", "1",
                            "--strokes", "4", "--set", "strokes.canvas=32", "--json")
    assert code == 0, err
    report = json.loads(stdout.strip())
    assert report["images"] == 6 and report["chance"] == pytest.approx(1 / 6)
    for key in ("sketch_top1", "init_top1", "random_top1", "target_top1"):
        assert 0.0 <= report[key] <= 1.0


def test_demo_sketches_two_examples(tmp_path) -> None:
    cfg = load_config(ClipassoConfig, resolve_config_path("clipasso", "tiny_world"))
    cfg.optim.iterations = 3  # the demo's own length is measured by tools/bench_clipasso.py
    task = ClipassoTask(cfg, Context(cfg))
    items = task.demo(example_images(), tmp_path)
    assert len(items) == 2
    for item in items:
        assert all((tmp_path / name).is_file() for name in item.images)
        assert any("strokes" in line for line in item.lines)
        svg = tmp_path / item.images[1].replace(".png", ".svg")
        assert parse_svg_paths(svg.read_text()).points.shape == (cfg.strokes.count, 4, 2)
