"""Prompt-template sets, as published by the papers that use them.

A template is a format string with one `{}` slot for the label (ViLD's also use
`{article}`). Each set is a tuple so it cannot be changed at run time; `render` turns a
set and a label into the prompts that get encoded and averaged.
"""
from __future__ import annotations

from typing import Sequence

from open_clip import OPENAI_IMAGENET_TEMPLATES

from ..errors import UserError, close_matches

SINGLE: tuple[str, ...] = ("a photo of a {}.",)

# CLIP's 80 ImageNet templates (open_clip keeps them as callables; we keep strings).
IMAGENET80: tuple[str, ...] = tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)

# CLIP's 18 CIFAR-10/100 templates.
CIFAR18: tuple[str, ...] = (
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.",
    "a photo of the {}.", "a blurry photo of the {}.", "a black and white photo of the {}.",
    "a low contrast photo of the {}.", "a high contrast photo of the {}.",
    "a bad photo of the {}.", "a good photo of the {}.", "a photo of the small {}.",
    "a photo of the big {}.",
)

# ViLD's 63 templates (tensorflow/tpu vild), with {article} filled per label and the
# "This is " prefix ViLD adds to prompts starting with "a" or "the".
VILD63: tuple[str, ...] = (
    "There is {article} {} in the scene.", "There is the {} in the scene.",
    "a photo of {article} {} in the scene.", "a photo of the {} in the scene.",
    "a photo of one {} in the scene.", "itap of {article} {}.", "itap of my {}.",
    "itap of the {}.", "a photo of {article} {}.", "a photo of my {}.",
    "a photo of the {}.", "a photo of one {}.", "a photo of many {}.",
    "a good photo of {article} {}.", "a good photo of the {}.",
    "a bad photo of {article} {}.", "a bad photo of the {}.",
    "a photo of a nice {}.", "a photo of the nice {}.", "a photo of a cool {}.",
    "a photo of the cool {}.", "a photo of a weird {}.", "a photo of the weird {}.",
    "a photo of a small {}.", "a photo of the small {}.", "a photo of a large {}.",
    "a photo of the large {}.", "a photo of a clean {}.", "a photo of the clean {}.",
    "a photo of a dirty {}.", "a photo of the dirty {}.",
    "a bright photo of {article} {}.", "a bright photo of the {}.",
    "a dark photo of {article} {}.", "a dark photo of the {}.",
    "a photo of a hard to see {}.", "a photo of the hard to see {}.",
    "a low resolution photo of {article} {}.", "a low resolution photo of the {}.",
    "a cropped photo of {article} {}.", "a cropped photo of the {}.",
    "a close-up photo of {article} {}.", "a close-up photo of the {}.",
    "a jpeg corrupted photo of {article} {}.", "a jpeg corrupted photo of the {}.",
    "a blurry photo of {article} {}.", "a blurry photo of the {}.",
    "a pixelated photo of {article} {}.", "a pixelated photo of the {}.",
    "a black and white photo of the {}.", "a black and white photo of {article} {}.",
    "a plastic {}.", "the plastic {}.", "a toy {}.", "the toy {}.",
    "a plushie {}.", "the plushie {}.", "a cartoon {}.", "the cartoon {}.",
    "an embroidered {}.", "the embroidered {}.", "a painting of the {}.",
    "a painting of a {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "single": SINGLE,
    "imagenet80": IMAGENET80,
    "cifar18": CIFAR18,
    "vild63": VILD63,
}


def get_templates(name: str) -> tuple[str, ...]:
    """The template tuple for a set name; unknown names are a UserError with suggestions."""
    if name not in TEMPLATE_SETS:
        raise UserError(
            f"unknown template set '{name}'{close_matches(name, TEMPLATE_SETS)}; "
            f"choose one of: {', '.join(TEMPLATE_SETS)}")
    return TEMPLATE_SETS[name]


def check_template(template: str, where: str = "--templates") -> str:
    """A prompt template must hold exactly one '{}' slot for the label (plus, optionally,
    '{article}'), so a typo is one clear line instead of a str.format traceback."""
    import string
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(template.replace("{article}", "a"))
                  if f is not None or spec or conv]
    except ValueError as exc:
        raise UserError(f"{where}: template {template!r} is not a valid format string ({exc}); "
                        "write literal braces as '{{' and '}}'") from exc
    if fields != [""]:
        raise UserError(f"{where}: template {template!r} must contain exactly one '{{}}' for the label "
                        f"(and optionally '{{article}}'); it has {len(fields)} other field(s) or slots")
    return template


def resolve_templates(spec: str | Sequence[str], where: str = "--templates") -> tuple[str, ...]:
    """A template-set name, one format string with '{}' (e.g. LSeg's '{}'), or a list of them."""
    if isinstance(spec, str):
        if "{" not in spec and "}" not in spec:
            return get_templates(spec)
        return (check_template(spec, where),)
    templates = tuple(check_template(t, where) for t in spec)
    if not templates:
        raise UserError(f"{where}: the template list is empty; give a set name such as 'single'")
    return templates


def _article(label: str) -> str:
    return "an" if label[:1].lower() in "aeiou" else "a"


def render(templates: Sequence[str], label: str, this_is: bool | None = None) -> list[str]:
    """All prompts for one label. ViLD-style sets (with `{article}`) get ViLD's prefix."""
    name = label.replace("_", " ").replace("/", " or ").strip()
    vild_style = any("{article}" in t for t in templates) if this_is is None else this_is
    prompts = []
    for t in templates:
        text = t.replace("{article}", _article(name)).format(name)
        if vild_style and (text.startswith("a ") or text.startswith("the ")):
            text = "This is " + text
        prompts.append(text)
    return prompts
