"""Parity with lang-seg's own network, by its outputs. tests/fixtures/lseg/official_logits.npz
holds the logits of isl-org/lang-seg's `LSegNet` (modules/models/lseg_net.py, clip_vitb32_384,
arch_option 0, and 1 with block_depth 1) run outside this repository (docs/lseg.md): every
float parameter and buffer filled by `formula` below from its name and shape alone, the CLIP
text tower then cast to fp16 as `clip.load(..., device='cuda')` does (convert_weights), and
`net(x, labelset=labels)` on `image()` (labels tokenised as-is, no template; CPU run). It also
holds the official fp16 text features. Here the same formula fills the official layout
(tests/fixtures/lseg/official_lsegnet_keys.json.gz), `convert` maps it, and our LSegNet with
text from our open_clip ViT-B-32-quickgelu text tower must give those logits.

The official text tower and `logit_scale * image.half() @ text.t()` run in fp16; we are fp32.
Measured (logits span -0.28..0.94, spatial std ~0.12 per label): ours vs official at most
9.9e-4 (arch 0) and 1.7e-3 (arch 1), ~0.15% of the range; our text features vs the official
fp16 ones: cosine 0.999999, max diff 1.3e-3 of their largest entry; the official fp16 text
and fp16 product replayed on our pixel embeddings: 3.8e-4 / 3.9e-4, under fp16's spacing of
4.9e-4 in [0.5, 1). Asserted: 6e-3 end to end (~3.5x the measured fp16 effect), 1e-3 for the
replay, and the same argmax wherever the official top two labels are more than 6e-3 apart."""
from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from clipheads.core.backbone.weights import guess_openai_arch
from clipheads.tasks.lseg.convert import convert
from clipheads.tasks.lseg.encoders import TimmViTEncoder
from clipheads.tasks.lseg.model import LSegNet
from clipheads.tasks.lseg.weights import check_state

FIX = Path(__file__).parent / "fixtures" / "lseg"
KEYS = FIX / "official_lsegnet_keys.json.gz"
LOGITS = FIX / "official_logits.npz"
TOL = 6e-3
TOL_REPLAY = 1e-3


def formula(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The value of official tensor `name` (its lang-seg state-dict name) of `shape`: a
    multiplicative hash of the flat index and crc32(name), scaled by the tensor's role."""
    n = int(np.prod(shape)) if len(shape) else 1
    i = np.arange(n, dtype=np.int64)
    u = ((i * 2654435761 + zlib.crc32(name.encode())) % (1 << 32)).astype(np.float64) / 2.0**32 - 0.5
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        v = 1.0 + 0.5 * np.abs(u)
    elif leaf == "running_mean":
        v = 0.2 * u
    elif len(shape) == 1 and leaf == "weight":            # LayerNorm / BatchNorm gains
        v = 1.0 + 0.4 * u
    elif len(shape) >= 2:
        fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[-1]
        v = u * 6.0 / np.sqrt(fan_in)                     # std 1.73/sqrt(fan_in)
    else:                                                   # biases, class_embedding, scalars
        v = 0.04 * u
    return v.astype(np.float32).reshape(shape)


def image(h: int, w: int) -> torch.Tensor:
    """The official run's input, already normalised with mean = std = 0.5."""
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    c = np.arange(3)[:, None, None]
    img = 0.5 + 0.45 * np.sin(0.11 * xx[None] * (c + 1) + 0.07 * yy[None] * (3 - c) + c)
    return torch.from_numpy(((img - 0.5) / 0.5).astype(np.float32)[None])


def official_state(variant: str) -> dict[str, torch.Tensor]:
    keys = json.loads(gzip.decompress(KEYS.read_bytes()))["variants"][variant]
    state = {}
    for k, shape in keys:
        if k.endswith("num_batches_tracked"):
            state[k] = torch.zeros((), dtype=torch.long)
        else:
            state[k] = torch.from_numpy(formula(k, tuple(shape)))
    return state


def official_fp16_logits(net, emb, text16):
    """LSeg.forward's last steps on our pixel embeddings, in its dtypes: text normalised in
    fp16, `logit_scale * image_features.half() @ text_features.t()` in fp16, then fp32."""
    scale = (torch.ones([]) * np.log(1 / 0.07)).exp()          # fp32 tensor, promoted to fp16
    text16 = text16 / text16.norm(dim=-1, keepdim=True)
    b, d, h, w = emb.shape
    logits = (scale * emb.permute(0, 2, 3, 1).reshape(-1, d).half() @ text16.t()).float()
    logits = logits.view(b, h, w, -1).permute(0, 3, 1, 2)
    if net.head.spatial is not None:
        for _ in range(net.head.block_depth - 1):
            logits = net.head.spatial(logits)
        logits = net.head.spatial(logits, activate=False)
    return logits


def _clip_cfg():
    c = open_clip.get_model_config("ViT-B-32-quickgelu")
    return {"embed_dim": c["embed_dim"], "vision_cfg": c["vision_cfg"], "text_cfg": c["text_cfg"]}


@pytest.mark.parametrize("arch,depth", [(0, None), (1, 1)])
def test_logits_match_lang_segs_own_network(arch, depth):
    fx = np.load(LOGITS)
    labels = json.loads(str(fx["labels"]))
    step = int(fx["pixel_step"])
    expected = torch.from_numpy(fx[f"arch{arch}_logits"])
    conv = convert(official_state(f"clip_vitb32_384/arch{arch}"), arch_option=arch or None, block_depth=depth)
    assert guess_openai_arch(conv.clip_state) == "ViT-B-32-quickgelu"
    net = LSegNet(TimmViTEncoder(conv.model.timm.name, conv.model.layers), conv.model, conv.text_dim).eval()
    check_state(net.state_dict(), conv.head_state, "formula")
    net.load_state_dict(conv.head_state, strict=True)
    clip = open_clip.CLIP(**_clip_cfg(), quick_gelu=True).eval()
    clip.load_state_dict(conv.clip_state, strict=True)
    tokens = open_clip.get_tokenizer("ViT-B-32-quickgelu")(labels)    # official: labels as-is
    x = image(*[int(s) for s in fx["input_shape"][2:]])
    with torch.no_grad():
        ours = net(x, clip.encode_text(tokens))[..., ::step, ::step]
    assert ours.shape == expected.shape
    assert expected.std(dim=(2, 3)).min() > 10 * TOL      # the image path matters, per label
    diff = (ours - expected).abs().max().item()
    span = (expected.max() - expected.min()).item()
    print(f"arch{arch}: max |ours - official| = {diff:.2e} ({diff / span:.2%} of the logit range {span:.3f})")
    assert diff < TOL
    top2 = expected.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > TOL
    assert clear.float().mean() > 0.5
    assert torch.equal(ours.argmax(1)[clear], expected.argmax(1)[clear])
    # the text tower alone: ours (fp32) against the official fp16 one
    text16 = torch.from_numpy(fx[f"arch{arch}_text_fp16"]).half()
    with torch.no_grad():
        text = clip.encode_text(tokens)
    cos = F.cosine_similarity(text, text16.float(), dim=-1).min().item()
    rel = ((text - text16.float()).abs().max() / text16.float().abs().max()).item()
    print(f"arch{arch}: text features: min cosine {cos:.6f}, max |diff| {rel:.1e} of their largest value")
    assert cos > 0.9999 and rel < 5e-3
    # the image path alone: the official text and fp16 product applied to our pixel embeddings
    with torch.no_grad():
        emb = net.pixel_embeddings(x)
        replay = official_fp16_logits(net, emb, text16)
        replay = F.interpolate(replay, size=x.shape[-2:], mode="bilinear", align_corners=True)[..., ::step, ::step]
    d16 = (replay - expected).abs().max().item()
    print(f"arch{arch}: with the official fp16 text and product replayed: {d16:.2e}")
    assert d16 < TOL_REPLAY
