"""Painter's-order "over" compositing with an O(pixels x strokes) backward.

Autograd through a Python loop of ``out = out * (1 - a) + c * a`` keeps a full RGB
image per stroke. The closed form of the gradient needs only the per-stroke
transmittance behind each pixel (computed straight into the output gradient buffer)
and one scalar per pixel replayed forward, so memory stays at one extra [B, S, N]
tensor and the per-stroke work of the backward pass is mostly single-channel.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable


class OverComposite(torch.autograd.Function):
    """out[B, 3, N] = strokes' colours painted in order with alpha[B, S, N] over background[B, 3]."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, alpha: torch.Tensor, colours: torch.Tensor, background: torch.Tensor
    ) -> torch.Tensor:
        b, s, n = alpha.shape
        out = background[:, :, None].expand(b, 3, n).clone()
        for i in range(s):
            out += alpha[:, i, None, :] * (colours[:, i, :, None] - out)
        ctx.save_for_backward(alpha, colours, background)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        alpha, colours, background = ctx.saved_tensors
        b, s, n = alpha.shape
        # Transmittance of everything painted after stroke i: T_i = prod_{j > i} (1 - a_j),
        # written into the gradient buffer and overwritten in place below.
        grad_alpha = torch.empty_like(alpha)
        trans = alpha.new_ones(b, n)
        for i in range(s - 1, -1, -1):
            grad_alpha[:, i] = trans
            trans = trans * (1 - alpha[:, i])
        grad_bg = (grad * trans[:, None, :]).sum(-1) if ctx.needs_input_grad[2] else None
        grad_col = alpha.new_zeros(b, s, 3) if ctx.needs_input_grad[1] else None
        # d out / d a_i = T_i (c_i - out_{i-1}). Only grad . out_{i-1} is needed, and that
        # scalar obeys the same recurrence as out itself: u_i = u_{i-1} + a_i (grad . c_i - u_{i-1}).
        u = torch.einsum("bcn,bc->bn", grad, background)
        for i in range(s):
            a = alpha[:, i]
            t = grad_alpha[:, i]
            if grad_col is not None:
                grad_col[:, i] = torch.bmm(grad, (t * a).unsqueeze(-1)).squeeze(-1)
            gc = torch.bmm(colours[:, i, None, :], grad).squeeze(1)
            gc -= u
            u.addcmul_(a, gc)
            grad_alpha[:, i] = t * gc
        return grad_alpha, grad_col, grad_bg


def composite_over(alpha: torch.Tensor, colours: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """[B, 3, N] image: ``colours[B, S, 3]`` with coverage ``alpha[B, S, N]`` over ``background[B, 3]``."""
    return OverComposite.apply(alpha, colours, background)
