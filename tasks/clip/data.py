"""Image-text pairs from the tiny-world generator, as a map-style dataset (index -> seed),
so resume and multi-worker loading are exact."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from clipheads.core.tinyworld import COLOURS, SHAPES, make_single, split_seeds
from clipheads.core.tinyworld.pairs import render_pairs


def class_names() -> list[str]:
    """Every colour x shape name ('red circle', ...): the zero-shot label set."""
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]

class TinyWorldPairs(Dataset):
    """(pixels, tokens) pairs rendered once up front (in parallel), then served from memory,
    so training speed is the model's, not the renderer's."""

    def __init__(self, n: int, tokenizer, size: int = 64, single_fraction: float = 0.5,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), split: str = "train", workers: int = 0):
        images, self.captions = render_pairs(n, size, single_fraction, split, workers)
        self.images = torch.from_numpy(images)
        self.tokens = tokenizer(self.captions)
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int):
        pixels = self.images[index].permute(2, 0, 1).float().div_(255)
        return (pixels - self.mean) / self.std, self.tokens[index]


def heldout_singles(per_class: int, size: int = 96) -> list[tuple[object, int]]:
    """Held-out (test-split seeds) single-object images with their class index."""
    names = class_names()
    seeds = split_seeds("test", per_class * len(names))
    out = []
    for i, seed in enumerate(seeds):
        label = i % len(names)
        colour, shape = names[label].split(" ")
        out.append((make_single(seed, colour, shape, size).image, label))
    return out


@torch.no_grad()
def zero_shot_accuracy(encode_image, encode_text, transform, items, device) -> float:
    """Top-1 over all colour x shape names with the 'a photo of a {}.' prompt."""
    prompts = [f"a photo of a {n}." for n in class_names()]
    text = torch.nn.functional.normalize(encode_text(prompts).float(), dim=-1)
    correct = 0
    for i in range(0, len(items), 128):
        chunk = items[i:i + 128]
        pixels = torch.stack([transform(im) for im, _ in chunk]).to(device)
        img = torch.nn.functional.normalize(encode_image(pixels).float(), dim=-1)
        pred = (img @ text.T).argmax(-1).cpu()
        correct += int((pred == torch.tensor([y for _, y in chunk])).sum())
    return correct / len(items)


class Tokenize:
    """caption -> token ids (a class, not a closure, so DataLoader workers can pickle it)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, caption: str) -> torch.Tensor:
        return self.tokenizer([caption])[0]


def shard_pairs(data, transform, tokenizer, seed: int):
    """(pixels, tokens) streamed from webdataset shards (img2dataset layout), split across
    ranks and workers and exactly resumable (`clipheads.core.data.webdataset_pairs`)."""
    from clipheads.core.data.webdataset_pairs import ImageTextStream
    return ImageTextStream(data.shards, transform=transform, text_transform=Tokenize(tokenizer),
                           shuffle=data.shuffle_buffer, seed=seed, num_samples=data.shard_samples)
