"""CLIP4Clip heads against hand computation and independent reference modules: meanP over
the frozen backbone, seqTransf reducing to meanP, the temporal block equal to open_clip's
block with the official LayerNorm/activation, padding that never leaks into real frames."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from clipheads.core.backbone import FrozenCLIP
from clipheads.tasks.clip4clip.encode import frame_features
from clipheads.tasks.clip4clip.heads import QuickGELU, TemporalBlock, padding_mask
from clipheads.tasks.clip4clip.model import Clip4Clip, HeadSpec


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return FrozenCLIP.from_spec("tiny-world", device="cpu")


def video_batch(v: int = 3, t: int = 5, size: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(v, t, 3, size, size, generator=g)
    mask = torch.ones(v, t, dtype=torch.bool)
    mask[1, 3:] = False        # video 1 has 3 real frames
    mask[2, 1:] = False        # video 2 has 1
    pixels[~mask] = 0
    return pixels, mask


def spec(kind: str, backbone) -> HeadSpec:
    m = backbone.model
    return HeadSpec(kind, backbone.embed_dim, 4, m.transformer.resblocks[0].attn.num_heads,
                    m.positional_embedding.shape[0])


def test_meanp_equals_hand_computed_mean_of_normalised_frames(backbone):
    pixels, mask = video_batch()
    feats = frame_features(backbone, pixels, mask)
    got = Clip4Clip(spec("meanP", backbone)).video_embeddings(feats, mask)
    with torch.no_grad():
        for i in range(len(pixels)):
            frames = [backbone.model.encode_image(pixels[i, j:j + 1])[0] for j in range(int(mask[i].sum()))]
            hand = torch.stack([f / f.norm() for f in frames]).mean(0)
            torch.testing.assert_close(got[i], hand / hand.norm(), rtol=1e-5, atol=1e-6)
    assert torch.all(feats[~mask] == 0)


def test_seqtransf_with_zeroed_outputs_ranks_like_meanp(backbone):
    pixels, mask = video_batch(v=4, t=6)
    mask[3, 4:] = False
    feats = frame_features(backbone, pixels, mask)
    seq = Clip4Clip(spec("seqTransf", backbone))
    seq.init_from_clip_text(backbone.model)
    with torch.no_grad():
        seq.temporal.transformer.position_embeddings.weight.zero_()
        for block in seq.temporal.transformer.blocks:
            for lin in (block.attn.out_proj, block.mlp.c_proj):
                lin.weight.zero_()
                lin.bias.zero_()
    mean = Clip4Clip(spec("meanP", backbone))
    text = backbone.encode_text(["a red circle moving left", "a blue star", "a green square moving up"])
    with torch.no_grad():
        a, b = seq.logits(text, feats, mask), mean.logits(text, feats, mask)
    assert torch.equal(a.argsort(dim=1), b.argsort(dim=1))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_heads_start_from_the_clip_text_tower(backbone):
    m = backbone.model
    for kind in ("seqTransf", "tightTransf"):
        head = Clip4Clip(spec(kind, backbone))
        head.init_from_clip_text(m)
        body = head.cross.transformer if kind == "tightTransf" else head.temporal.transformer
        torch.testing.assert_close(body.position_embeddings.weight, m.positional_embedding)
        n = len(m.transformer.resblocks)
        for i, block in enumerate(body.blocks):       # the tiny text tower has 3 blocks: the 4th repeats it
            text = m.transformer.resblocks[min(i, n - 1)].state_dict()
            for name, value in block.state_dict().items():
                torch.testing.assert_close(value, text[name])


def test_temporal_block_equals_open_clip_block_with_the_official_norm_and_activation():
    """The official block: CLIP's, but TF LayerNorm eps 1e-12 and QuickGELU, sequence-first."""
    from open_clip.transformer import LayerNorm, ResidualAttentionBlock
    torch.manual_seed(0)
    ours = TemporalBlock(32, 4)
    ref = ResidualAttentionBlock(32, 4, act_layer=QuickGELU, norm_layer=functools.partial(LayerNorm, eps=1e-12),
                                 batch_first=False)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 7, 32)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 5:] = False
    additive = padding_mask(mask, x.dtype)
    got = ours(x, additive)
    want = ref(x.transpose(0, 1), attn_mask=additive.repeat_interleave(4, dim=0)).transpose(0, 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["seqLSTM", "seqTransf"])
def test_padded_frames_never_change_a_video(backbone, kind):
    torch.manual_seed(0)
    head = Clip4Clip(spec(kind, backbone)).eval()
    feats = torch.randn(2, 6, backbone.embed_dim)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    noisy = feats.clone()
    noisy[0, 4:] = torch.randn(2, backbone.embed_dim) * 100
    with torch.no_grad():
        a, b = head.video_embeddings(feats, mask), head.video_embeddings(noisy, mask)
        alone = head.video_embeddings(feats[:1, :4], mask[:1, :4])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[:1], alone, rtol=1e-5, atol=1e-6)


def test_tight_cross_encoder_scores_every_pair_and_ignores_padding(backbone):
    torch.manual_seed(0)
    head = Clip4Clip(spec("tightTransf", backbone))
    head.init_from_clip_text(backbone.model)
    head.eval()
    text = torch.randn(3, backbone.embed_dim)
    feats = torch.randn(4, 5, backbone.embed_dim)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[2, 2:] = False
    with torch.no_grad():
        logits = head.logits(text, feats, mask)
        perm = torch.tensor([3, 0, 2, 1])
        torch.testing.assert_close(head.logits(text, feats[perm], mask[perm]), logits[:, perm])
        noisy = feats.clone()
        noisy[2, 2:] += 50
        torch.testing.assert_close(head.logits(text, noisy, mask), logits)
        one = head.logits(text[1:2], feats[3:4], mask[3:4])
    assert logits.shape == (3, 4)
    torch.testing.assert_close(one[0, 0], logits[1, 3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["meanP", "seqLSTM", "seqTransf", "tightTransf"])
def test_every_head_trains(backbone, kind):
    torch.manual_seed(0)
    head = Clip4Clip(spec(kind, backbone), logit_scale=2.0)
    head.train()
    text = torch.randn(4, backbone.embed_dim)
    feats = torch.randn(4, 5, backbone.embed_dim)
    mask = torch.ones(4, 5, dtype=torch.bool)
    out = head(text, feats, mask)
    logits = out["logits"] if "logits" in out else out["scale"] * out["text"] @ out["video"].t()
    labels = torch.arange(4)
    (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)).backward()
    grads = {n: p.grad for n, p in head.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), kind
    if kind == "meanP":
        assert list(grads) == ["logit_scale"]
    else:
        assert any(g.abs().sum() > 0 for n, g in grads.items() if n != "logit_scale")
    with torch.no_grad():
        head.logit_scale.fill_(10.0)
    assert float(head.scale()) == pytest.approx(100.0)     # clamped to ln 100
