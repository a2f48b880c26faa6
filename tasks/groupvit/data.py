"""Training pairs for GroupViT: (pixels, tokens [1 + P, L], prompt mask [P]).

Row 0 of the tokens is the caption; rows 1..P are noun prompts for the multi-label
loss: up to P nouns of the caption drawn without replacement, each in a template drawn
from the prompt set (ImageNet's 80 in the paper). A caption with fewer nouns leaves
masked rows (the loss skips them). All draws come from a per-sample seeded RNG, so a
resumed or multi-rank run sees the same prompts as one uninterrupted run.
"""
from __future__ import annotations

import random
import re
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from clipheads.core.engine.data import SampleSeeded
from clipheads.core.errors import UserError
from clipheads.core.tinyworld import SHAPES
from clipheads.core.tinyworld.pairs import render_pairs

# the official tagger keeps nouns and verbs (NLTK tags NN, NNS, NNP and VB*)
NLTK_TAGS = ("NN", "NNS", "NNP", "VBG", "VB", "VBD", "VBN", "VBP", "VBZ")
WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


class VocabularyNouns:
    """Nouns = the caption's words found in a fixed vocabulary (first occurrence order)."""

    def __init__(self, words: Sequence[str]):
        if not words:
            raise UserError("data.noun_words is empty; list the nouns to prompt with, or use "
                            "data.nouns=nltk")
        self.words = {w.lower() for w in words}

    def __call__(self, caption: str) -> list[str]:
        seen: list[str] = []
        for w in WORD.findall(caption.lower()):
            if w in self.words and w not in seen:
                seen.append(w)
        return seen


class NltkNouns:
    """The official rule: NLTK word tokenizer + POS tagger, nouns and verbs kept."""

    def __init__(self) -> None:
        try:
            import nltk
            nltk.pos_tag(nltk.word_tokenize("a dog runs"))
        except ImportError as exc:
            raise UserError("data.nouns=nltk needs NLTK: pip install nltk (or use data.nouns=vocabulary)") \
                from exc
        except LookupError as exc:
            raise UserError("NLTK's tokenizer/tagger data is missing: run python -m nltk.downloader punkt_tab "
                            "averaged_perceptron_tagger_eng (or use data.nouns=vocabulary)") from exc
        self.nltk = nltk

    def __call__(self, caption: str) -> list[str]:
        words = self.nltk.word_tokenize(caption)
        return [w for w, tag in self.nltk.pos_tag(words) if tag in NLTK_TAGS] if words else []


def noun_finder(kind: str, words: Sequence[str]) -> Callable[[str], list[str]]:
    return NltkNouns() if kind == "nltk" else VocabularyNouns(words or SHAPES)


def noun_id(noun: str) -> int:
    """A stable 63-bit id of a noun (same word, same id, in every process), so a loss can
    tell which images of a batch share a noun whatever template each prompt used."""
    import hashlib
    return int.from_bytes(hashlib.blake2b(noun.lower().encode(), digest_size=8).digest(), "little") >> 1


class CaptionPrompts:
    """caption -> (tokens [1 + P, L], valid [P], noun ids [P]); picklable for DataLoader workers."""

    def __init__(self, tokenize: Callable[[list[str]], torch.Tensor], nouns: Callable[[str], list[str]],
                 templates: Sequence[str], prompts: int):
        self.tokenize, self.nouns, self.templates, self.prompts = tokenize, nouns, list(templates), prompts

    def __call__(self, caption: str, rng: random.Random | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = rng or random  # the stream seeds the global RNG per sample
        found = self.nouns(caption)
        chosen = rng.sample(found, min(self.prompts, len(found))) if found else []
        texts = [caption] + [rng.choice(self.templates).format(n) for n in chosen]
        tokens = self.tokenize(texts)
        out = torch.zeros(1 + self.prompts, tokens.shape[-1], dtype=tokens.dtype)
        out[: len(texts)] = tokens
        valid = torch.zeros(self.prompts, dtype=torch.bool)
        valid[: len(chosen)] = True
        ids = torch.full((self.prompts,), -1, dtype=torch.int64)
        ids[: len(chosen)] = torch.tensor([noun_id(n) for n in chosen], dtype=torch.int64)
        return out, valid, ids


class TinyWorldCaptioned(SampleSeeded, Dataset):
    """Tiny-world pairs (rendered once, served from memory) with per-sample seeded prompts;
    scenes are drawn at `scene_size` and resized to the model's input by `to_pixels`."""

    def __init__(self, n: int, scene_size: int, single_fraction: float, prompts: CaptionPrompts,
                 to_pixels: Callable[[np.ndarray], torch.Tensor], workers: int = 0, seed: int = 0):
        images, self.captions = render_pairs(n, scene_size, single_fraction, "train", workers)
        self.images = torch.from_numpy(images)
        self.prompts, self.to_pixels, self.seed = prompts, to_pixels, seed

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int):
        rng = random.Random(int(self.sample_generator(index).initial_seed()))
        tokens, valid, ids = self.prompts(self.captions[index], rng)
        return self.to_pixels(self.images[index]), tokens, valid, ids


class ImageToPixels:
    """uint8 HxWx3 tensor -> normalised [3, h, w], resized as inference resizes (bilinear
    without antialiasing, rounded to 0..255, like the official cv2 pipeline); picklable."""

    def __init__(self, size: int | Sequence[int], mean: Sequence[float], std: Sequence[float]):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.mean = torch.tensor(list(mean)).view(3, 1, 1)
        self.std = torch.tensor(list(std)).view(3, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(2, 0, 1).float()
        if tuple(x.shape[-2:]) != self.size:
            x = torch.nn.functional.interpolate(x[None], size=self.size, mode="bilinear",
                                                align_corners=False)[0].round().clamp(0, 255)
        return (x / 255 - self.mean) / self.std


class StreamPrompts:
    """Shard captions -> prompts (the stream seeds the global RNG per sample)."""

    def __init__(self, prompts: CaptionPrompts):
        self.prompts = prompts

    def __call__(self, caption: str):
        return self.prompts(caption)


def collate(batch: list) -> tuple[torch.Tensor, ...] | None:
    """Stack (pixels, tokens, valid, noun ids); samples the stream skipped arrive as None."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    flat = [(b[0], *b[1]) if len(b) == 2 else b for b in batch]   # stream items: (pixels, (tokens, valid, ids))
    return tuple(torch.stack([f[i] for f in flat]) for i in range(4))
