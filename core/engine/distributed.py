"""torch.distributed for the trainer: init from `torchrun` env vars, DDP, rank-0 helpers.

Only the trainable module is wrapped in DDP: heads keep their frozen CLIP backbone
outside it, so DDP neither broadcasts nor buckets hundreds of MB of frozen weights.
All state lives in torch.distributed itself; these helpers only read it.
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from clipheads.core.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job, and the device it should use."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one that logs and writes files."""
    return get_rank() == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise UserError(f"environment variable {name}={raw!r} is not an integer; launch with torchrun") from e


def _default_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def init_distributed(backend: Optional[str] = None, device: Optional[str] = None,
                     timeout: datetime.timedelta = datetime.timedelta(minutes=30)) -> DistInfo:
    """Join the process group described by torchrun's RANK/WORLD_SIZE/LOCAL_RANK.

    Without those variables (or with WORLD_SIZE=1) this is a single process and nothing is
    initialised. An already-initialised group is reused. Device: `cuda:LOCAL_RANK` when
    CUDA is available unless `device="cpu"`; backend: nccl on CUDA, gloo on CPU.
    """
    if device not in (None, "cpu", "cuda"):
        raise UserError(f"init_distributed(device={device!r}) is invalid; use None, 'cpu' or 'cuda'")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("init_distributed(device='cuda') but CUDA is not available; use device='cpu'")
    if is_initialized():
        local_rank = _env_int("LOCAL_RANK", dist.get_rank())
        on_cpu = device == "cpu" or dist.get_backend() == "gloo"
        dev = torch.device("cpu") if on_cpu else _default_device(local_rank)
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    dev = torch.device("cpu") if device == "cpu" else _default_device(local_rank)
    if world_size <= 1:
        return DistInfo(0, 1, 0, dev)
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise UserError(
                f"WORLD_SIZE={world_size} is set but {var} is not; launch with "
                "`torchrun --nproc_per_node N ...` (it sets RANK, WORLD_SIZE, MASTER_ADDR/PORT)"
            )
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run one process")
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank,
                            world_size=world_size, timeout=timeout)
    return DistInfo(rank, world_size, local_rank, dev)


def cleanup(together: bool = False) -> None:
    """Leave the process group (call once at the end of a distributed script).

    `together`: wait for every rank first (a run that succeeded everywhere), so no rank
    tears its connections down while another still flushes its output through the group;
    never after a failure, where a peer may be gone."""
    if is_initialized():
        if together and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, indexed by rank (`[obj]` in a single process)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def global_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """`total / count` over the global batch, for losses averaged over a varying number of
    valid elements (pixels not ignored): the count is summed over ranks, and the result is
    scaled by the world size because DDP averages gradients. Equal to the one-process mean
    on the concatenated batch; never divides by zero."""
    count = count.detach().float()
    if not is_initialized() or dist.get_world_size() == 1:
        return total / count.clamp(min=1)
    count = count.clone()
    dist.all_reduce(count)
    return total * dist.get_world_size() / count.clamp(min=1)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over ranks (a detached copy; for logging)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return t.detach()
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` from all ranks along dim 0; only the local slice carries gradient.

    open_clip ClipLoss style: `all_gather` (no autograd), then the own slot is replaced by
    the local tensor so backward reaches this rank's encoder. Every rank must pass a
    tensor of the same shape. Identity in a single process.
    """
    if not is_initialized() or dist.get_world_size() == 1:
        return t
    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, t.detach().contiguous())
    gathered[dist.get_rank()] = t
    return torch.cat(gathered, dim=0)


def wrap_ddp(module: nn.Module, info: DistInfo, **ddp_kwargs: Any) -> nn.Module:
    """DDP around the trainable `module` when distributed, else `module` unchanged."""
    if not info.is_distributed:
        return module
    if info.device.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [info.device.index])
        ddp_kwargs.setdefault("output_device", info.device.index)
    return nn.parallel.DistributedDataParallel(module, **ddp_kwargs)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside DDP (or the module itself)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def find_free_port() -> int:
    """A TCP port free right now on localhost (for local multi-process runs and tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
