"""The frozen CLIP backbone every head stands on."""
from .frozen_clip import FrozenCLIP, Intermediates
from .spec import BackboneSpec, list_backbones, parse_spec

__all__ = ["FrozenCLIP", "Intermediates", "BackboneSpec", "parse_spec", "list_backbones"]
