"""Rebuild the bundled demo inputs (core/assets/examples/*.png) from the tiny world's
held-out split: deterministic, so the files only change when the generator does.

    python tools/make_examples.py
"""
from __future__ import annotations

from pathlib import Path

from clipheads.core.tinyworld import make_scene, make_single, split_seeds

OUT = Path(__file__).resolve().parents[1] / "core" / "assets" / "examples"
SINGLES = [("red", "circle"), ("blue", "star"), ("green", "triangle"), ("yellow", "square"),
           ("purple", "heart"), ("orange", "cross")]


def write_examples(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    seeds = split_seeds("test", 16, start=900_000)
    for i, (colour, shape) in enumerate(SINGLES):
        make_single(seeds[i], colour, shape, 96).image.save(out / f"single_{colour}_{shape}.png")
    for j in range(4):
        make_scene(seeds[8 + j], 128, n_objects=(2, 3)).image.save(out / f"scene_{j}.png")


def main() -> None:
    write_examples(OUT)
    print(f"wrote {len(list(OUT.glob('*.png')))} images to {OUT}")


if __name__ == "__main__":
    main()
