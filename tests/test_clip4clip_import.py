"""Official CLIP4Clip checkpoints into head folders: every key of the real layouts (key
lists read from the official modules: tests/fixtures/clip4clip) lands in our modules with
its shape, and a small checkpoint in the official format gives the official seqTransf
forward (an independent transcription below) after `tools/convert_clip4clip.py`."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clipheads.core.errors import UserError
from clipheads.tasks.clip4clip.importers import convert, load_checkpoint
from clipheads.tasks.clip4clip.model import Clip4Clip

from conftest import TINY_VIT, random_clip

FIXTURES = Path(__file__).parent / "fixtures" / "clip4clip"
TOOL = Path(__file__).parents[1] / "tools" / "convert_clip4clip.py"


def meta_state(fixture: str) -> dict[str, torch.Tensor]:
    keys = json.loads((FIXTURES / fixture).read_text())["keys"]
    return {k: torch.empty(shape, device="meta") for k, shape in keys.items()}


@pytest.mark.parametrize("fixture,kind", [("official_keys_meanP.json", "meanP"),
                                          ("official_keys_seqLSTM.json", "seqLSTM"),
                                          ("official_keys_seqTransf.json", "seqTransf"),
                                          ("official_keys_tightTransf.json", "tightTransf"),
                                          ("mmaction2_meanp_keys.json", "meanP")])
def test_every_official_key_lands_in_our_modules(fixture, kind):
    imported = convert(meta_state(fixture))
    assert imported.spec.sim_header == kind
    assert (imported.spec.dim, imported.spec.heads, imported.spec.positions) == (512, 8, 77)
    with torch.device("meta"):
        ours = Clip4Clip(imported.spec).state_dict()
    assert {k: tuple(v.shape) for k, v in imported.head_state.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    assert len(imported.clip_state) == sum(k.startswith("clip.") for k in meta_state(fixture))
    assert list(imported.dropped) == (["frame_position_embeddings.weight"] if kind == "seqLSTM" else [])


def official_seqtransf_video(state: dict[str, torch.Tensor], frames: torch.Tensor, mask: torch.Tensor,
                             layers: int, heads: int) -> torch.Tensor:
    """The official seqTransf + meanP, transcribed from its description: position
    embeddings, blocks of (TF LayerNorm eps 1e-12, attention with the -1e6 padding mask,
    QuickGELU MLP), residual to the input, normalise, masked mean, normalise."""
    def ln(x, p):
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        return state[p + ".weight"] * (x - u) / torch.sqrt(s + 1e-12) + state[p + ".bias"]

    b, t, d = frames.shape
    x = frames + state["frame_position_embeddings.weight"][:t]
    add = ((1.0 - mask.float())[:, None, :] * -1000000.0).expand(b, t, t).repeat_interleave(heads, 0)
    x = x.transpose(0, 1)
    for i in range(layers):
        p = f"transformerClip.resblocks.{i}."
        h = ln(x, p + "ln_1")
        att, _ = F.multi_head_attention_forward(
            h, h, h, d, heads, state[p + "attn.in_proj_weight"], state[p + "attn.in_proj_bias"], None, None, False,
            0.0, state[p + "attn.out_proj.weight"], state[p + "attn.out_proj.bias"], need_weights=False, attn_mask=add)
        x = x + att
        h = ln(x, p + "ln_2") @ state[p + "mlp.c_fc.weight"].t() + state[p + "mlp.c_fc.bias"]
        x = x + (h * torch.sigmoid(1.702 * h)) @ state[p + "mlp.c_proj.weight"].t() + state[p + "mlp.c_proj.bias"]
    x = x.transpose(0, 1) + frames
    x = x / x.norm(dim=-1, keepdim=True)
    m = mask.float()[..., None]
    v = (x * m).sum(1) / m.sum(1)
    return v / v.norm(dim=-1, keepdim=True)


def official_checkpoint(path: Path, layers: int = 2) -> dict[str, torch.Tensor]:
    """A seqTransf checkpoint in the official layout on the small test CLIP (width 32, so
    one head as width // 64 rounds up to 1), linear weights in fp16 as the official saves."""
    torch.manual_seed(0)
    clip = random_clip(TINY_VIT).state_dict()
    state = {f"clip.{k}": (v.half() if v.ndim == 2 and "weight" in k else v) for k, v in clip.items()}
    d, n_pos = clip["text_projection"].shape[1], clip["positional_embedding"].shape[0]
    state["frame_position_embeddings.weight"] = torch.randn(n_pos, d)
    for i in range(layers):
        p = f"transformerClip.resblocks.{i}."
        shapes = {"attn.in_proj_weight": (3 * d, d), "attn.in_proj_bias": (3 * d,), "attn.out_proj.weight": (d, d),
                  "attn.out_proj.bias": (d,), "ln_1.weight": (d,), "ln_1.bias": (d,), "mlp.c_fc.weight": (4 * d, d),
                  "mlp.c_fc.bias": (4 * d,), "mlp.c_proj.weight": (d, 4 * d), "mlp.c_proj.bias": (d,),
                  "ln_2.weight": (d,), "ln_2.bias": (d,)}
        for name, shape in shapes.items():
            state[p + name] = torch.randn(shape) * (0.2 if len(shape) == 2 else 0.1) + (1.0 if "ln" in name and
                                                                                        "weight" in name else 0.0)
    torch.save(state, path)
    return state


def test_converted_checkpoint_gives_the_official_seqtransf_forward(tmp_path, capsys, one_thread):
    state = official_checkpoint(tmp_path / "pytorch_model.bin.4")
    report = runpy.run_path(str(TOOL))["main"]([str(tmp_path / "pytorch_model.bin.4"), "--out", str(tmp_path / "head")])
    assert report["sim_header"] == "seqTransf" and report["clip_arch"] == TINY_VIT and report["dropped"] == {}
    meta = json.loads((tmp_path / "head" / "clip4clip_head.json").read_text())
    assert meta["backbone_weights"] == "clip.safetensors" and meta["spec"]["layers"] == 2

    import clipheads
    task = clipheads.load("clip4clip", device="cpu", progress=False)
    model, info = task.load_head(tmp_path / "head")
    assert task.cfg.backbone == TINY_VIT                    # the head's own (fine-tuned) CLIP was picked up
    ref_clip = {k[5:]: v.float() for k, v in state.items() if k.startswith("clip.")}
    ours_clip = task.ctx.backbone.model.state_dict()
    for k, v in ref_clip.items():
        torch.testing.assert_close(ours_clip[k], v)
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(3, 6, 32, generator=g)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    with torch.no_grad():
        ours = model.video_embeddings(frames, mask)
    want = official_seqtransf_video({k: v.float() for k, v in state.items()}, frames, mask, 2, 1)
    torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.logit_scale, state["clip.logit_scale"].float())


def test_not_a_clip4clip_checkpoint(tmp_path):
    torch.save({"model.weight": torch.zeros(2)}, tmp_path / "x.bin")
    with pytest.raises(UserError, match="no 'clip"):
        load_checkpoint(tmp_path / "x.bin")
    with pytest.raises(UserError, match="unexpected keys"):
        convert({**meta_state("official_keys_meanP.json"), "bert.pooler.weight": torch.empty(2, device="meta")})
