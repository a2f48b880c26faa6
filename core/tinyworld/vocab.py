"""The tiny world's fixed vocabulary.

Everything that names a concept (captions, COCO categories, mask ids, zero-shot labels)
reads from here, so the ids in an exported dataset never drift from the generator.
The tuples are immutable on purpose: a category id is `1 + CATEGORIES.index(shape)`
and must mean the same thing in every process and every release.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from clipheads.core.errors import UserError, close_matches

RGB = tuple[int, int, int]

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")

# Saturated, well-separated hues: backgrounds are kept desaturated so these never blend in.
COLOUR_RGB: Mapping[str, RGB] = MappingProxyType({
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (35, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 190),
    "orange": (250, 130, 10),
})

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross")

# Semantic masks are by shape: category id k (1-based) is CATEGORIES[k - 1]; 0 is background.
CATEGORIES: tuple[str, ...] = SHAPES
BACKGROUND_ID: int = 0


def category_id(shape: str) -> int:
    """The 1-based category id of a shape (0 is reserved for background)."""
    return 1 + CATEGORIES.index(check_shape(shape))


def category_name(cat_id: int) -> str:
    """The shape name of a 1-based category id, or 'background' for 0."""
    return "background" if cat_id == BACKGROUND_ID else CATEGORIES[cat_id - 1]


def check_colour(colour: str) -> str:
    """`colour` itself, or a UserError listing the vocabulary."""
    if colour not in COLOUR_RGB:
        raise UserError(f"unknown tiny-world colour {colour!r}{close_matches(colour, COLOURS)}; "
                        f"choose one of: {', '.join(COLOURS)}")
    return colour


def check_shape(shape: str) -> str:
    """`shape` itself, or a UserError listing the vocabulary."""
    if shape not in SHAPES:
        raise UserError(f"unknown tiny-world shape {shape!r}{close_matches(shape, SHAPES)}; "
                        f"choose one of: {', '.join(SHAPES)}")
    return shape
