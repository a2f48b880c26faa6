"""The tiny world: a deterministic generator of captioned shape scenes and videos.

It is the bundled default dataset (see DESIGN.md, "The embedded default: tiny world"):
every head can be trained and demonstrated on it without downloads, and it is exported
in real dataset formats so the real-data loaders are exercised by the same tests.
"""
from clipheads.core.tinyworld.export import export_tiny_world, read_manifest
from clipheads.core.tinyworld.scene import Scene, SceneObject, make_scene, make_single
from clipheads.core.tinyworld.splits import split_seeds
from clipheads.core.tinyworld.video import VideoClip, make_video
from clipheads.core.tinyworld.vocab import CATEGORIES, COLOUR_RGB, COLOURS, SHAPES

__all__ = ["CATEGORIES", "COLOURS", "COLOUR_RGB", "SHAPES", "Scene", "SceneObject", "VideoClip",
           "export_tiny_world", "make_scene", "make_single", "make_video", "read_manifest",
           "split_seeds"]
