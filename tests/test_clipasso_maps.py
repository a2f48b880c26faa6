"""`clipasso infer` writes the maps behind the initialisation next to the sketch, lists
them in its JSON result, and refuses mismatched --mask lists and colliding stems."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from clipheads.core.cli import main
from clipheads.core.data.images import load_image_rgba
from clipheads.tasks.clipasso.edges import xdog_official
from clipheads.tasks.clipasso.target import prepare_target

pytestmark = pytest.mark.usefixtures("one_thread")
TINY_MEAN = TINY_STD = (0.5, 0.5, 0.5)  # the bundled tiny CLIP's normalisation


def drawing(path: Path, size=(64, 48)) -> Path:
    img = Image.new("RGB", size, (240, 240, 235))
    w, h = size
    ImageDraw.Draw(img).polygon([(w * 0.2, h * 0.8), (w * 0.5, h * 0.15), (w * 0.8, h * 0.8)], fill=(30, 60, 200))
    img.save(path)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_infer_writes_attention_edges_placement(tmp_path, capsys) -> None:
    img = drawing(tmp_path / "tri.png")
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "clipasso", "infer", "--image", str(img), "--strokes", "5", "--iters", "2",
                            "--seeds", "2", "--set", "strokes.canvas=48", "--set", "output.png_scale=2",
                            "--out", str(out), "--json")
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    for name in ("attention", "edges", "placement"):
        assert result[name] == str(out / f"tri_{name}.png")
        assert Image.open(out / f"tri_{name}.png").size == (48, 36)  # canvas size, aspect kept
    attention = np.asarray(Image.open(out / "tri_attention.png"))
    assert attention.dtype == np.uint8 and attention.min() == 0 and attention.max() == 255
    # edges.png is the official XDoG of the CLIP-normalised canvas, 255 where the map is 1.
    target = prepare_target(load_image_rgba(img), 48)
    pixels = ((target.pixels[0].permute(1, 2, 0).numpy() - TINY_MEAN) / TINY_STD).astype(np.float32)
    expected = (xdog_official(pixels) * 255).astype(np.uint8)
    edges = np.asarray(Image.open(out / "tri_edges.png"))
    assert set(np.unique(edges)) <= {0, 255} and np.array_equal(edges, expected)
    placement = np.asarray(Image.open(out / "tri_placement.png").convert("RGB"))
    red = (placement[..., 0] == 230) & (placement[..., 1] == 0)
    assert red.sum() >= 5  # the 5 chosen starts are marked


def test_random_init_writes_only_the_placement(tmp_path, capsys) -> None:
    img = drawing(tmp_path / "tri.png")
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "clipasso", "infer", "--image", str(img), "--strokes", "3", "--iters", "0",
                            "--seeds", "1", "--set", "strokes.canvas=32", "--set", "init.method=random",
                            "--out", str(out), "--json")
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert "attention" not in result and "edges" not in result
    assert Image.open(result["placement"]).size == (32, 24)


@pytest.mark.parametrize("case", ["masks", "stems"])
def test_mask_count_and_duplicate_stems_exit_2(tmp_path, capsys, case) -> None:
    a = drawing(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    if case == "masks":
        b = drawing(tmp_path / "b.png")
        extra, pattern = ["--mask", str(drawing(tmp_path / "m.png"))], "one mask per image"
    else:
        b = drawing(tmp_path / "sub" / "a.png")
        extra, pattern = [], "stem"
    out = tmp_path / "o"
    code, stdout, err = run(capsys, "clipasso", "infer", "--image", str(a), str(b), "--iters", "0",
                            "--out", str(out), *extra)
    assert code == 2 and pattern in err, err
    assert len(err.strip().splitlines()) == 1 and stdout == ""
    assert not out.exists()  # nothing written


def test_demo_shows_the_maps_beside_each_sketch(tmp_path) -> None:
    from clipheads.core.config import load_config, resolve_config_path
    from clipheads.core.demo import example_images
    from clipheads.core.task import Context
    from clipheads.tasks.clipasso import ClipassoConfig, ClipassoTask
    cfg = load_config(ClipassoConfig, resolve_config_path("clipasso", "tiny_world"), ["optim.iterations=1"])
    items = ClipassoTask(cfg, Context(cfg)).demo(example_images(), tmp_path)
    for item in items:
        strip = Image.open(tmp_path / item.images[2])
        assert item.images[2].endswith("_maps.png") and strip.height > 3 * strip.width  # three stacked maps
        assert any("attention, edges, placement" in line for line in item.lines)
