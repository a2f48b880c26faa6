"""`clipheads demo`: the gallery (legends, held-out note, every image present), the
honest clipasso text, thread settings chosen from the idle cores and put back, and no
progress output where stderr is not a terminal."""
from __future__ import annotations

from html.parser import HTMLParser
import numpy as np
import pytest
import torch
from PIL import Image

from clipheads.core import demo as demo_mod
from clipheads.core.demo import GALLERY_IMAGE_HEIGHT, MAX_THREADS, build_gallery, torch_threads
from clipheads.core.errors import UserError
from clipheads.core.segmentation.render import legend, palette
from clipheads.tasks.lseg.weights import bundled_head_dir, read_info

QUICK = {"clipasso": ["demo.iterations=2", "demo.seeds=1", "demo.strokes=4"]}


class Cells(HTMLParser):
    """Gallery cells as (section, title, image sources, text lines)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict] = []
        self.section = ""
        self._tag = ""

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        self._tag = tag
        if tag == "div" and attrs.get("class") == "cell":
            self.cells.append({"section": self.section, "title": "", "images": [], "lines": []})
        elif tag == "img" and self.cells:
            self.cells[-1]["images"].append(attrs["src"])

    def handle_data(self, data: str) -> None:
        if self._tag == "h2" and data.strip():
            self.section = data.strip()
        elif self._tag == "b" and self.cells:
            self.cells[-1]["title"] = data
        elif self._tag == "p" and self.cells and data.strip():
            self.cells[-1]["lines"].append(data)

    def handle_endtag(self, tag: str) -> None:
        self._tag = ""


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """The whole demo once, with a two-iteration clipasso budget and one thread."""
    root = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPHEADS_CACHE", str(root / "cache"))
        threads = torch.get_num_threads()
        run = build_gallery(root / "gallery", overrides=QUICK, threads=1, progress=False)
        assert torch.get_num_threads() == threads, "the demo must put the caller's thread count back"
    parser = Cells()
    parser.feed(run.index.read_text(encoding="utf-8"))
    return run, parser.cells


def test_every_image_in_the_gallery_exists(gallery) -> None:
    run, cells = gallery
    assert {h.name for h in run.heads} >= {"classify", "clipasso", "groupvit", "lseg", "vild"}
    sources = [src for cell in cells for src in cell["images"]]
    assert sources
    for src in sources:
        assert (run.index.parent / src).is_file(), src


def test_every_overlay_has_a_colour_legend(gallery) -> None:
    run, cells = gallery
    overlays = [c for c in cells if any(s.endswith("_overlay.png") for s in c["images"])]
    assert len(overlays) >= 10  # every bundled example
    for cell in overlays:
        legends = [s for s in cell["images"] if s.endswith("_legend.png")]
        assert len(legends) == 1, cell
        image = Image.open(run.index.parent / legends[0])
        assert image.height == GALLERY_IMAGE_HEIGHT  # shown at its own size, text not rescaled


def test_lseg_section_says_which_classes_were_held_out(gallery) -> None:
    _, cells = gallery
    heldout = read_info(bundled_head_dir()).heldout
    assert heldout, "the bundled head records its held-out classes"
    lseg = [c for c in cells if c["section"] == "lseg"]
    note = " ".join(lseg[0]["lines"])
    assert "held out of training" in note and all(name in note for name in heldout)
    assert lseg[0]["images"] and lseg[0]["images"][0].endswith("_legend.png")


def test_clipasso_cells_say_what_was_run(gallery) -> None:
    _, cells = gallery
    sketches = [c for c in cells if c["section"] == "clipasso"]
    assert len(sketches) == 2
    for cell in sketches:
        text = " ".join(cell["lines"])
        assert "4 strokes" in text and "2 iterations" in text and "1 seeds" in text
        assert "demo budget: strokes 4 (config 16), iterations 2 (config 100)" in text


def test_head_timings_are_reported(gallery) -> None:
    run, _ = gallery
    assert set(run.timings()) == {h.name for h in run.heads}
    assert all(h.threads == 1 for h in run.heads)
    assert run.seconds >= sum(h.seconds for h in run.heads)


def test_no_progress_output_without_a_terminal(tmp_path, capsys) -> None:
    build_gallery(tmp_path, heads=["classify"], threads=1)
    out, err = capsys.readouterr()
    assert "demo: classify: 10 results" in out
    assert "demo:" not in err and "%|" not in err


def test_threads_follow_the_idle_cores(monkeypatch) -> None:
    for idle, expected in ((0.0, 1), (0.7, 1), (1.0, 1), (1.6, 1), (1.8, 2), (2.0, 2), (64.0, MAX_THREADS)):
        monkeypatch.setattr(demo_mod, "idle_cores", lambda idle=idle: idle)
        assert demo_mod.demo_threads() == expected, idle


def test_idle_cores_from_cpu_ticks(monkeypatch) -> None:
    samples = iter([{0: (100, 200), 1: (100, 200)}, {0: (110, 210), 1: (101, 210)}])
    monkeypatch.setattr(demo_mod, "_cpu_ticks", lambda cpus: next(samples))
    monkeypatch.setattr(demo_mod, "_cgroup_cpu_limit", lambda: None)
    monkeypatch.setattr(demo_mod, "usable_cpus", lambda: {0, 1})
    assert demo_mod.idle_cores(window_s=0.0) == pytest.approx(1.1)


def test_explicit_and_environment_thread_counts(monkeypatch) -> None:
    assert demo_mod._threads_for_head(3) == 3
    with pytest.raises(UserError, match="threads must be >= 1"):
        demo_mod._threads_for_head(0)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert demo_mod._threads_for_head(None) == torch.get_num_threads()


def test_thread_count_comes_back_after_an_error() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
        raise RuntimeError("head failed")
    assert torch.get_num_threads() == before


def test_unknown_head_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="unknown task 'lsegg'"):
        build_gallery(tmp_path, heads=["lsegg"])
    with pytest.raises(UserError, match="unknown task"):
        build_gallery(tmp_path, heads=["classify"], overrides={"clipaso": ["demo.iterations=1"]})


def test_legend_rows_show_the_palette() -> None:
    names = ["background", "circle", "star (held out)"]
    colours = palette(7)[[0, 1, 4]]
    image = np.asarray(legend(names, colours, height=GALLERY_IMAGE_HEIGHT))
    assert image.shape[0] == GALLERY_IMAGE_HEIGHT
    for colour in colours:  # each swatch is drawn in its label's overlay colour
        assert (image == colour).all(-1).sum() >= 50
    with pytest.raises(ValueError):
        legend(names, colours[:2])


def test_demo_budget_caps_but_keeps_smaller_values() -> None:
    from clipheads.core.config import load_config, resolve_config_path
    from clipheads.core.task import Context
    from clipheads.tasks.clipasso import ClipassoConfig, ClipassoTask
    cfg = load_config(ClipassoConfig, resolve_config_path("clipasso", "tiny_world"))
    cfg.optim.iterations = 3
    run = ClipassoTask(cfg, Context(cfg))._demo_config()
    assert run.optim.iterations == 3 and run.optim.lr == cfg.demo.lr
    assert cfg.optim.lr != cfg.demo.lr  # the task's own config is untouched


def test_groupvit_cells_show_groups_overlay_and_legend(gallery) -> None:
    _, cells = gallery
    cells = [c for c in cells if c["section"] == "groupvit"]
    assert cells, "the groupvit head ran no demo"
    for cell in cells:
        names = [src.rsplit("/", 1)[-1] for src in cell["images"]]
        assert len(names) == 4 and names[1].endswith("_groups.png") and names[2].endswith("_overlay.png")
        assert names[3].endswith("_legend.png") and cell["lines"][0].endswith("groups")


def test_vild_cells_show_boxes_and_named_detections(gallery) -> None:
    _, cells = gallery
    cells = [c for c in cells if c["section"] == "vild"]
    assert cells, "the vild head ran no demo"
    for cell in cells:
        names = [src.rsplit("/", 1)[-1] for src in cell["images"]]
        assert len(names) == 2 and names[1].endswith("_boxes.png")
    lines = [line for c in cells for line in c["lines"]]
    assert all(line == "no detection above 0.3" or ": " in line for line in lines), lines
    assert any(": " in line for line in lines), lines   # something was detected and named
