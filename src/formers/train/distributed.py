"""torch.distributed for runs launched by ``torchrun``: set-up, tear-down, DDP, FSDP2, rank-0 helpers.

A process is distributed when ``WORLD_SIZE`` > 1 in its environment (torchrun sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``). The backend is ``nccl`` on
CUDA and ``gloo`` on CPU. No ``NCCL_*`` (nor ``TORCH_SYMM_MEM_*`` / ``NVSHMEM_*``) environment
variable is set or changed here: child processes see the machine's settings unchanged.
Without torchrun every helper degrades to the single-process case (rank 0 of 1).

Two ways to spread the model (``TrainConfig.parallel``):

* ``ddp`` (:func:`wrap_ddp`): every rank holds the whole model and optimiser; gradients are
  averaged in buckets during the backward pass (``gradient_as_bucket_view``: the ``.grad`` of each
  parameter is a view into its communication bucket, saving one copy of the gradients).
* ``fsdp`` (:func:`wrap_fsdp`, FSDP2 = ``torch.distributed.fsdp.fully_shard``): each
  :class:`~formers.nn.block.Block` is one shard group and the root holds the rest (embeddings,
  final norm, head); parameters, gradients and AdamW moments live as 1/world_size shards
  (``DTensor``), and a block's full weights exist only while it runs. With bf16 autocast the
  weights are gathered in bf16 and gradients reduced in fp32.

Batch: ``TrainConfig.batch_size`` is the *global* micro-batch; rank r takes rows
``r::world_size`` (:func:`shard`), so per-rank batch = global / world size and the mean gradient
over ranks equals the single-process gradient of the whole batch.

Checkpoints are portable across world sizes and modes: they always hold the full (unsharded)
weights and optimiser state keyed by parameter index, written by rank 0 (under FSDP the ranks
first gather them: :func:`gather_full_state`; on load every rank reads the full state and keeps
its shard: :func:`load_full_state`). What a resume at another world size keeps: the global step,
the learning-rate schedule, the global batch of every step (it depends only on the task seed,
the step and the micro-batch index), the weights and the optimiser state, hence the same
trajectory up to floating-point summation order. What changes: which rows each rank computes
(the per-rank shard of the same global batch) and, for stochastic layers (dropout), the random
numbers drawn (each rank draws its own stream; rank 0's RNG state is the one saved).
"""

from __future__ import annotations

import inspect
import os
from contextlib import nullcontext
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


def wrap_ddp(model: nn.Module, info: DistInfo, device: torch.device, *,
             bucket_cap_mb: float | None = None, gradient_as_bucket_view: bool = True) -> nn.Module:
    """``model`` wrapped in :class:`DDP` when distributed, else ``model`` unchanged.

    ``bucket_cap_mb``: size of DDP's gradient all-reduce buckets in MiB (None: torch's default, 25);
    ``gradient_as_bucket_view``: gradients are views into the buckets (one copy fewer).
    """
    if not info.enabled:
        return model
    kwargs: dict = {"gradient_as_bucket_view": gradient_as_bucket_view}
    if bucket_cap_mb is not None:
        if not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be > 0, got {bucket_cap_mb}")
        kwargs["bucket_cap_mb"] = bucket_cap_mb
    if device.type == "cuda":
        kwargs["device_ids"] = [device.index if device.index is not None else info.local_rank]
    return DDP(model, **kwargs)


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The submodules FSDP2 shards one by one: every :class:`~formers.nn.block.Block` (outermost
    first, in module order); empty for a model without blocks (then the root is the only unit)."""
    from formers.nn.block import Block

    units: list[nn.Module] = []
    for _, m in model.named_modules():
        if isinstance(m, Block) and not any(m is u or _contains(u, m) for u in units):
            units.append(m)
    return units


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def wrap_fsdp(model: nn.Module, info: DistInfo, device: torch.device,
              param_dtype: torch.dtype | None = None) -> nn.Module:
    """Shard ``model`` in place with FSDP2 (``fully_shard``) over all ranks; returns it.

    Each block of :func:`shard_units` becomes one unit (its weights are all-gathered just before
    its forward and backward and freed after; the last block keeps them between forward and
    backward, which follow each other directly), then the root takes the remaining parameters.
    ``model`` may sit on the CPU: its shards are moved to ``device`` (the full model never needs
    to fit one GPU). ``param_dtype`` = bf16: weights gathered in bf16, gradients reduced in fp32
    (``MixedPrecisionPolicy``); None: both in the parameters' dtype.
    Call before building the optimiser (parameters become ``DTensor`` shards).
    Single process: ``model.to(device)`` unchanged.

    Raises:
        ValueError: the model has no parameters.
    """
    if not info.enabled:
        return model.to(device)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not any(True for _ in model.parameters()):
        raise ValueError("wrap_fsdp: the model has no parameters to shard")
    mesh = init_device_mesh(device.type, (info.world_size,))
    mp = (MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
          if param_dtype is not None else MixedPrecisionPolicy())
    units = shard_units(model)
    for i, unit in enumerate(units):
        fully_shard(unit, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(units) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def is_fsdp(model: nn.Module) -> bool:
    """True when ``model`` (under a ``torch.compile`` wrapper) is sharded by FSDP2."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return False
    return isinstance(unwrap(model), FSDPModule)


def sync_context(model: nn.Module, sync: bool):
    """Context for one backward pass: with ``sync`` False under DDP, skip the gradient all-reduce
    (gradient accumulation; the last micro-batch syncs). FSDP2 always reduce-scatters (its
    gradients stay sharded, which is the point of sharding), and a single process has nothing
    to sync."""
    if not sync and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return nullcontext()


def to_float(x: torch.Tensor) -> float:
    """A 0-d tensor (or a replicated ``DTensor``, e.g. FSDP's gradient norm) as a Python float."""
    if hasattr(x, "full_tensor"):
        x = x.full_tensor()
    return float(x.item())


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of the optimiser's parameter i (optimiser state-dict order: group by group)."""
    names = {id(p): n for n, p in unwrap(model).named_parameters()}
    out = []
    for g in optimizer.param_groups:
        for p in g["params"]:
            if id(p) not in names:
                raise ValueError("the optimiser holds a parameter that is not in the model")
            out.append(names[id(p)])
    return out


def tied_groups(model: nn.Module) -> list[list[str]]:
    """Names that share one parameter (tied weights), each group sorted; the first is the one a
    checkpoint file holds (safetensors' own choice when it saves a model)."""
    by_id: dict[int, list[str]] = {}
    for n, p in unwrap(model).named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(n)
    return [sorted(v) for v in by_id.values() if len(v) > 1]


def gather_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None
                      ) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Full (unsharded) CPU weights and optimiser state of an FSDP2 model, on rank 0.

    A collective: every rank must call it. Returns ``(weights, optimiser state dict)`` on rank 0,
    ``({}, None)`` elsewhere. Weights are keyed by parameter / buffer name with tied duplicates
    dropped (the names of :func:`tied_groups` after the first); the optimiser state is in
    ``torch.optim.Optimizer.state_dict()`` form (state keyed by parameter index), the same as a
    single process writes, so any world size and mode can load it.
    (``torch.distributed.checkpoint.state_dict`` with ``full_state_dict`` and ``cpu_offload``.)
    """
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    model = unwrap(model)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    if dist.get_rank() != 0:
        return {}, None
    for group in tied_groups(model):
        for name in group[1:]:
            weights.pop(name, None)
    weights = {k: v.contiguous() for k, v in weights.items()}
    if osd is None:
        return weights, None
    names = _param_names(model, optimizer)
    index = {n: i for i, n in enumerate(names)}
    state = {}
    for fqn, st in osd["state"].items():
        if fqn not in index:
            raise ValueError(f"optimiser state for {fqn!r}, which the optimiser does not hold")
        state[index[fqn]] = st
    groups = []
    for g in osd["param_groups"]:
        g = dict(g)
        g["params"] = [index[n] for n in g["params"]]
        groups.append(g)
    return weights, {"state": state, "param_groups": groups}


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    weights: dict[str, torch.Tensor], optim_state: dict | None) -> None:
    """Load full (unsharded) weights and optimiser state into an FSDP2 model; each rank keeps its
    shard. A collective: every rank calls it with the same full state (as read from a checkpoint
    written by any world size: :func:`gather_full_state`'s format).

    Raises:
        ValueError: names or shapes do not match the model, or the optimiser state does not fit.
    """
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    model = unwrap(model)
    weights = dict(weights)
    for group in tied_groups(model):
        src = next((n for n in group if n in weights), None)
        if src is not None:
            for name in group:
                weights.setdefault(name, weights[src])
    expected = set(model.state_dict().keys())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(f"weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    opts = StateDictOptions(full_state_dict=True)
    try:
        set_model_state_dict(model, weights, options=opts)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"weights do not fit the model: {e}") from None
    if optimizer is None or optim_state is None:
        return
    names = _param_names(model, optimizer)
    try:
        state = {names[int(i)]: st for i, st in optim_state["state"].items()}
        groups = []
        for g in optim_state["param_groups"]:
            g = dict(g)
            g["params"] = [names[int(i)] for i in g["params"]]
            groups.append(g)
        set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups},
                                 options=opts)
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"optimiser state does not fit the optimiser: {e}") from None


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
