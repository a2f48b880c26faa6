"""Synchronised BatchNorm for every backend, so a head with BN trains the same on 1 or N ranks.

torch's `SyncBatchNorm` runs only on CUDA; under gloo (CPU ranks) each rank would
normalise with its own slice's statistics and the run would differ from the one-process
run with the same global batch. `CrossRankBatchNorm` computes the batch statistics over
all ranks with an autograd-aware all-reduce, so forward and
backward equal BatchNorm over the concatenated batch. On CUDA, torch's fused
`SyncBatchNorm` is used instead.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of each rank's input is the sum of all ranks' gradients
    (every rank's loss depends on every rank's statistics)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(t)


class CrossRankBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the whole global batch (any backend)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(x)  # plain BatchNorm: one process, or evaluation
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        count = _all_reduce_sum(x.new_tensor([float(x.numel() // channels)]))
        mean = _all_reduce_sum(x.sum(dims)) / count          # two passes: numerically like BN
        centred = x - mean.view(shape)
        var = _all_reduce_sum((centred * centred).sum(dims)) / count
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), float(count))
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    def _momentum(self) -> float:
        if self.momentum is None:  # cumulative moving average, as BatchNorm does
            return 1.0 / float(self.num_batches_tracked + 1)
        return self.momentum

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        m = self._momentum()
        self.num_batches_tracked.add_(1)
        unbiased = var * count / max(count - 1.0, 1.0)
        self.running_mean.mul_(1 - m).add_(mean, alpha=m)
        self.running_var.mul_(1 - m).add_(unbiased, alpha=m)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm in `module` synchronised across ranks (parameters and buffers kept)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, CrossRankBatchNorm):
        out = CrossRankBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        if module.track_running_stats:
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out
