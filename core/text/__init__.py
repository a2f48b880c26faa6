"""Prompt templates and the cached text bank."""
from .bank import TextBank, check_labels, default_cache_dir
from .templates import TEMPLATE_SETS, get_templates, render

__all__ = ["TextBank", "check_labels", "default_cache_dir", "TEMPLATE_SETS", "get_templates", "render"]
