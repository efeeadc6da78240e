"""torch.distributed for runs launched by ``torchrun``: set-up, tear-down, DDP, rank-0 helpers.

A process is distributed when ``WORLD_SIZE`` > 1 in its environment (torchrun sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``). The backend is ``nccl`` on
CUDA and ``gloo`` on CPU. No ``NCCL_*`` environment variable is set or changed here.
Without torchrun every helper degrades to the single-process case (rank 0 of 1).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass
class DistInfo:
    """rank / world_size / local_rank of this process; ``owns_group``: we created the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {v!r}") from None


def launched_distributed() -> bool:
    """True when the environment describes more than one process (``WORLD_SIZE`` > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


def setup(device_type: str) -> DistInfo:
    """Join the process group described by the environment (no-op for a single process).

    ``device_type``: ``cuda`` (backend nccl; also selects ``cuda:LOCAL_RANK``) or ``cpu`` (gloo).
    An already initialised group is reused (and not destroyed by :func:`teardown`).

    Raises:
        ValueError: RANK / WORLD_SIZE are inconsistent.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo()
    rank = _env_int("RANK", -1)
    local_rank = _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < world:
        raise ValueError(f"RANK must be in [0, {world}) when WORLD_SIZE = {world}, got {rank}")
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=False)
    kwargs = {}
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        backend = "nccl"
        if "device_id" in inspect.signature(dist.init_process_group).parameters:
            kwargs["device_id"] = torch.device("cuda", local_rank)  # binds barriers to our GPU
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
    return DistInfo(rank, world, local_rank, owns_group=True)


def teardown(info: DistInfo) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if info.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``x`` over ranks (``x`` itself when not distributed)."""
    if not info.enabled:
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / info.world_size


class DDP(DistributedDataParallel):
    """DistributedDataParallel that forwards unknown attributes (``cfg``, ``new_cache``...) to the
    wrapped module, so task code may treat it like the bare model."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap_ddp(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``model`` wrapped in :class:`DDP` when distributed, else ``model`` unchanged."""
    if not info.enabled:
        return model
    if device.type == "cuda":
        return DDP(model, device_ids=[device.index if device.index is not None else info.local_rank])
    return DDP(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def shard(batch: dict[str, torch.Tensor], info: DistInfo) -> dict[str, torch.Tensor]:
    """Rows ``rank::world_size`` of every tensor of the global micro-batch ``batch``.

    Raises:
        ValueError: a tensor's batch size is not divisible by the world size.
    """
    if not info.enabled:
        return batch
    out = {}
    for k, v in batch.items():
        if v.dim() == 0 or v.shape[0] % info.world_size:
            raise ValueError(f"batch tensor {k!r} of shape {tuple(v.shape)}: its batch dimension must "
                             f"be divisible by the world size {info.world_size}")
        out[k] = v[info.rank::info.world_size]
    return out
