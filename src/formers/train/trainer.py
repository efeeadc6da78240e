"""The training loop shared by every task: ``Trainer(task, model_cfg, train_cfg, out_dir).fit()``.

Per optimiser step ``s`` (0-based): the learning rate is :func:`~formers.train.schedule.lr_at`;
``grad_accum`` global micro-batches ``task.train_batch(s, micro, batch_size)`` are drawn (under DDP
each rank keeps rows ``rank::world_size``), ``task.loss / grad_accum`` is back-propagated, the
global gradient norm is clipped, and AdamW steps. With ``sam_rho`` > 0 the step is sharpness-aware
(:class:`~formers.train.optim.SAM`): the same micro-batches are run a second time at the
perturbed weights w + ρ g/‖g‖ and AdamW steps from w with those gradients. With ``optimizer`` =
``lbfgs`` the step is one ``LBFGS.step(closure)`` whose closure re-runs the step's micro-batches at
every line-search evaluation (no clipping). Validation (``task.evaluate``, rank 0 only) runs
every ``eval_every`` steps and at the end; checkpoints every ``checkpoint_every`` steps and at the
end. With ``early_stopping`` = N > 0, training stops once the task's selection metric has not
improved for N evaluations, and the final metrics are measured at the best evaluation's weights
(saved in ``best/`` whenever the selection metric improves).

The run folder ``out_dir`` receives::

    config.yaml     model + train config, task description, seed, device, dtype, torch version,
                    threads, world size, git commit
    metrics.jsonl   one line per step: step, train_loss, lr, grad_norm, tokens, tokens_per_s
                    (+ validation metrics on eval steps)
    summary.json    final validation metrics under their plain names, params, tokens_per_s,
                    peak_mem_mb, wall_time_s, steps, best metric
    loss.png        train and validation curves
    ckpt/           the latest checkpoint (formers.train.checkpoint)

Exact resume: the data of step ``s`` depends only on (task seed, s, micro), and the checkpoint holds
weights, optimiser state and RNG states, so ``resume=True`` continues bit-for-bit on CPU; lines
of ``metrics.jsonl`` after the checkpoint step are dropped and recomputed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from formers.atomic import append_jsonl, atomic_write, write_json, write_text
from formers.nn.config import ModelConfig
from formers.nn.ffn.moe import aux_loss
from formers.train import distributed as D
from formers.train.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from formers.train.config import TrainConfig
from formers.train.optim import SAM, build_optimizer
from formers.train.schedule import lr_at, set_lr
from formers.train.task import Task, check_same_task, task_record


class TaskLoss(torch.nn.Module):
    """``task.loss(model, batch)`` as a module, so that DDP and ``torch.compile`` wrap the model
    *and* its loss: the loss (e.g. the LM head's cross-entropy over (batch x seq, vocab) logits)
    is then compiled with the model instead of running eagerly on full-size fp32 logits."""

    def __init__(self, task: Task, model: torch.nn.Module) -> None:
        super().__init__()
        self.task, self.model = task, model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.task.loss(self.model, batch)


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite; nothing after the last checkpoint is saved."""


class RunExistsError(FileExistsError, ValueError):
    """The output folder already holds a checkpoint and ``resume`` was not asked for."""


# ----------------------------------------------------------------------------------------------
# Helpers


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` if available else ``cpu``; ``cpu``; ``cuda``; ``cuda:N``.

    Raises:
        ValueError: unknown name, or CUDA asked for but absent / index out of range.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"TrainConfig.device = {name!r} is not one of auto, cpu, cuda, cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"TrainConfig.device = {name!r} is not one of auto, cpu, cuda, cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"TrainConfig.device = {name!r} but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"TrainConfig.device = {name!r} but only {torch.cuda.device_count()} "
                             f"CUDA device(s) exist")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 for ``bf16`` and for ``auto`` on CUDA; None (fp32) otherwise."""
    if dtype == "bf16" or (dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def git_commit() -> str | None:
    """The commit of the formers source tree (with ``+dirty`` if modified), or None."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return None
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return commit + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: ``torch.cuda.max_memory_allocated`` on CUDA, else the process max RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux
    except (ImportError, OSError):
        return float("nan")


def _plain(obj: Any) -> Any:
    """``obj`` as plain JSON types (unknown objects become strings)."""
    return json.loads(json.dumps(obj, default=str))


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file, stopping at the first unreadable (partial) line."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if isinstance(rec, dict):
            out.append(rec)
    return out


def plot_curves(records: list[dict], path: str | Path, metric: str | None = None) -> Path:
    """Write a PNG of train loss (and ``val_loss`` / ``metric`` when present) against step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    tr = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    if tr:
        ax.plot(*zip(*tr), label="train loss", lw=1.2)
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", lw=1.5, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    if metric and metric not in ("val_loss", "train_loss"):
        m = [(r["step"], r[metric]) for r in records if metric in r]
        if m:
            ax2 = ax.twinx()
            ax2.plot(*zip(*m), "s--", color="tab:red", label=metric, lw=1.2, ms=3)
            ax2.set_ylabel(metric)
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


# ----------------------------------------------------------------------------------------------
# Trainer


class Trainer:
    """Train ``task``'s model of config ``model_cfg`` under ``train_cfg``, writing to ``out_dir``.

    Args:
        task: the :class:`~formers.train.task.Task` (data, loss, evaluation).
        model_cfg: the model's config (built with ``task.build_model``).
        train_cfg: budget, optimiser, schedule, precision, checkpoints.
        out_dir: the run folder (created if missing).
        resume: continue from the checkpoint in ``out_dir`` (a fresh start when there is none).

    Raises:
        TypeError: arguments of the wrong type.
        RunExistsError (a ``FileExistsError`` and ``ValueError``): ``out_dir`` holds a checkpoint
            and ``resume`` is False.
        ValueError: bad device, a batch size not divisible by the world size, or (resume) a
            checkpoint saved for a different model config or a corrupt checkpoint.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the trainer joins the process group (gloo on CPU,
    nccl on CUDA) and wraps the model in DDP (``train_cfg.parallel = "ddp"``) or shards it with
    FSDP2 (``"fsdp"``, :func:`formers.train.distributed.wrap_fsdp`); only rank 0 writes files.
    Under DDP only rank 0 evaluates; under FSDP every rank runs the evaluation (each forward
    gathers the sharded weights from all ranks) and rank 0 records it. Checkpoints hold the full
    state, so a run may resume at another world size or under the other mode (the global batch,
    step and schedule are kept; see :mod:`formers.train.distributed`).
    """

    def __init__(self, task: Task, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 out_dir: str | os.PathLike, resume: bool = False) -> None:
        if not isinstance(task, Task):
            raise TypeError(f"Trainer: task must be a formers Task, got {type(task).__name__}")
        if not (isinstance(model_cfg, ModelConfig) or callable(getattr(model_cfg, "to_dict", None))):
            raise TypeError(f"Trainer: model_cfg must be a ModelConfig or a config with to_dict() "
                            f"(a task's own model family), got {type(model_cfg).__name__}")
        if not isinstance(train_cfg, TrainConfig):
            raise TypeError(f"Trainer: train_cfg must be a TrainConfig, got {type(train_cfg).__name__}")
        self.task, self.model_cfg, self.cfg = task, model_cfg, train_cfg
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ValueError(f"--out {self.out_dir} is an existing file, not a run folder")
        self.resume = bool(resume)

        device = resolve_device(train_cfg.device)
        self.dist = D.setup(device.type)
        try:
            self._init(device)
        except BaseException:
            D.teardown(self.dist)
            raise

    def _init(self, device: torch.device) -> None:
        cfg, info = self.cfg, self.dist
        if info.enabled and device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
        self.device = device
        self.amp_dtype = resolve_dtype(cfg.dtype, device)
        if cfg.batch_size % info.world_size:
            raise ValueError(f"TrainConfig.batch_size = {cfg.batch_size} must be divisible by the "
                             f"world size {info.world_size} (each rank takes rows rank::world_size)")
        self.console = None
        if info.is_main and not cfg.quiet:
            from rich.console import Console

            self.console = Console(stderr=True)

        ckpt = find_checkpoint(self.out_dir)
        if ckpt is not None and not self.resume:
            step = json.loads((ckpt / "state.json").read_text()).get("step", "?")
            raise RunExistsError(
                f"{self.out_dir} already holds a checkpoint (step {step}); pass --resume "
                f"(resume=True) to continue that run, or choose a new --out folder")

        seed_everything(cfg.seed)
        self.fsdp = info.enabled and cfg.parallel == "fsdp"
        if self.fsdp:  # shards move to the device; the whole model never has to fit one GPU
            self.model = D.wrap_fsdp(self.task.build_model(self.model_cfg), info, device,
                                     param_dtype=self.amp_dtype)
        else:
            self.model = self.task.build_model(self.model_cfg).to(device)
        self.model.train()
        self.optimizer = build_optimizer(self.model, cfg)
        self.sam = SAM(self.optimizer, cfg.sam_rho) if cfg.sam_rho > 0 else None
        self.start_step = 0
        self.best: dict | None = None
        self.tokens_seen = 0
        self.bad_evals = 0            # evaluations since the selection metric last improved
        self.stopped: int | None = None  # the step early stopping ended the run at
        if cfg.init_from is not None and not (self.resume and ckpt is not None):
            load_checkpoint(cfg.init_from, self.model, None, restore_rng=False)
            self._say(f"starting from the weights of {cfg.init_from}")
        if self.resume:
            if ckpt is None:
                print(f"formers: no checkpoint in {self.out_dir}: starting a fresh run", file=sys.stderr)
            else:
                state = load_checkpoint(ckpt, self.model, self.optimizer)
                self.start_step = state["step"]
                self.best = state.get("best")
                self.tokens_seen = int(state.get("extra", {}).get("tokens", 0))
                self.bad_evals = int(state.get("extra", {}).get("bad_evals", 0))
                self.stopped = state.get("extra", {}).get("stopped")
                self._check_resume(state)
                self._say(f"resuming from {ckpt} at step {self.start_step}")

        # train_model(batch) -> loss: model + task loss, under DDP / compile as configured
        if self.fsdp:
            self.ddp = self.model
            if cfg.compile:  # FSDP2 + compile: each block's forward compiled; the all-gather /
                for unit in D.shard_units(self.model):  # reduce-scatter hooks around it stay eager
                    unit.forward = torch.compile(unit.forward)
            self.train_model = TaskLoss(self.task, self.model)
        else:
            self.ddp = D.wrap_ddp(TaskLoss(self.task, self.model), info, device)
            self.train_model = torch.compile(self.ddp) if cfg.compile else self.ddp

    # Fields a resumed run may change: the budget and how the run is watched or executed. Any other
    # change (data, seed, optimiser, batch, ...) would silently make a different run.
    RESUMABLE_CHANGES = frozenset({"max_steps", "eval_every", "eval_batches", "checkpoint_every",
                                   "quiet", "device", "compile", "parallel"})

    def _check_resume(self, state: dict) -> None:
        """Refuse to resume with other data or other training settings than the checkpoint's."""
        # a field added to TrainConfig after the run was saved takes its default there
        old = {**TrainConfig().to_dict(), **dict(state.get("train_config") or {})}
        now = self.cfg.to_dict()
        changed = sorted(k for k in set(old) | set(now)
                         if k not in self.RESUMABLE_CHANGES and old.get(k) != now.get(k))
        if changed:
            diff = "; ".join(f"{k}: run {old.get(k)!r} vs now {now.get(k)!r}" for k in changed)
            raise ValueError(f"cannot resume {self.out_dir} with different training settings ({diff}); "
                             f"only {sorted(self.RESUMABLE_CHANGES)} may change; use a new --out")
        cfg_path = self.out_dir / "config.yaml"
        if cfg_path.is_file():
            import yaml

            saved = (yaml.safe_load(cfg_path.read_text()) or {}).get("task")
            check_same_task(saved, self.task, f"cannot resume {self.out_dir}")

    # ------------------------------------------------------------------------------------------

    def _say(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _task_info(self) -> dict:
        """The ``task:`` section of config.yaml (:func:`formers.train.task.task_record`)."""
        return task_record(self.task)

    def _write_config(self) -> None:
        import yaml

        import formers

        data = {
            "model": self.model_cfg.to_dict(),
            "train": self.cfg.to_dict(),
            "task": self._task_info(),
            "seed": self.cfg.seed,
            "device": str(self.device),
            "device_name": (torch.cuda.get_device_name(self.device)
                            if self.device.type == "cuda" else platform.processor() or platform.machine()),
            "dtype": "bf16" if self.amp_dtype == torch.bfloat16 else "fp32",
            "torch": torch.__version__,
            "formers": getattr(formers, "__version__", None),
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "world_size": self.dist.world_size,
            "git_commit": git_commit(),
            "resumed_from_step": self.start_step if self.start_step else None,
        }
        write_text(self.out_dir / "config.yaml", yaml.safe_dump(_plain(data), sort_keys=False))

    def _prepare_metrics(self) -> None:
        path = self.out_dir / "metrics.jsonl"
        keep = [r for r in read_metrics(path) if r.get("step", 0) <= self.start_step] \
            if self.start_step else []
        write_text(path, "".join(json.dumps(r) + "\n" for r in keep))

    def _evaluate(self, step: int, track: bool = True) -> dict[str, float] | None:
        """Validation metrics on rank 0 (None elsewhere); the training RNG state is untouched.
        ``track``: update the best evaluation (and, with early stopping, ``best/`` and the count
        of evaluations without improvement)."""
        metrics, save_best = None, False
        if self.dist.is_main or self.fsdp:  # FSDP: every rank takes part in each forward
            raw = D.unwrap(self.model)
            raw.eval()
            devices = [self.device.index or 0] if self.device.type == "cuda" else []
            try:
                with torch.random.fork_rng(devices=devices), self._autocast():
                    out = self.task.evaluate(raw, self.cfg.eval_batches, self.cfg.batch_size, self.device)
            finally:
                raw.train()
            if not self.dist.is_main:
                out = None
        if self.dist.is_main:
            if not isinstance(out, dict) or self.task.metric not in out:
                raise ValueError(f"{type(self.task).__name__}.evaluate must return a dict holding "
                                 f"{self.task.metric!r}, got {out!r}")
            metrics = {k: float(v) for k, v in out.items()}
            sel = self.task.selection_metric()
            if sel not in metrics:
                raise ValueError(f"{type(self.task).__name__}.evaluate must return its select_metric "
                                 f"{sel!r}, got {sorted(metrics)}")
            m = metrics[sel]
            better = self.best is None or (m < self.best["value"] if self.task.lower_is_better
                                           else m > self.best["value"])
            if track and better:
                self.best = {"name": sel, "value": m, "step": step}
                self.bad_evals = 0
                save_best = bool(self.cfg.early_stopping)
            elif track:
                self.bad_evals += 1
        if track and self.dist.enabled:  # every rank must agree on stopping (and on saving)
            t = torch.tensor([float(self.bad_evals), float(save_best)], device=self.device)
            torch.distributed.broadcast(t, 0)
            self.bad_evals, save_best = int(t[0].item()), bool(t[1].item())
        if save_best:
            self._save_best()
        D.barrier(self.dist)
        return metrics

    def _save_best(self) -> None:
        """Write the current weights to ``best/`` (rank 0; under FSDP every rank gathers first)."""
        from formers.nn.io import save_model

        folder = self.out_dir / "best"
        if self.fsdp:
            from safetensors.torch import save_file

            weights, _ = D.gather_full_state(self.model, None)
            if self.dist.is_main:
                atomic_write(folder / "model.safetensors", lambda tmp: save_file(weights, tmp))
                write_json(folder / "config.json", D.unwrap(self.model).cfg.to_dict())
        elif self.dist.is_main:
            save_model(D.unwrap(self.model), folder)

    def _load_best(self) -> bool:
        """Load the weights saved at the best evaluation (``best/``) into the model, if any."""
        path = self.out_dir / "best" / "model.safetensors"
        if not path.is_file():
            return False
        if self.fsdp:
            from safetensors.torch import load_file

            D.load_full_state(self.model, None, load_file(str(path)), None)
            return True
        from safetensors.torch import load_model as st_load

        st_load(D.unwrap(self.model), str(path), strict=True, device=str(self.device))
        return True

    def _checkpoint(self, step: int) -> None:
        full: dict = {}
        if self.fsdp:  # a collective: every rank sends its shards, rank 0 receives the full state
            full["weights"], full["optimizer_state"] = D.gather_full_state(self.model, self.optimizer)
        if self.dist.is_main:
            save_checkpoint(
                self.out_dir, self.model, self.optimizer, step=step, train_cfg=self.cfg,
                best=self.best,
                schedule={"kind": self.cfg.schedule, "lr": self.cfg.lr, "warmup_steps": self.cfg.warmup_steps,
                          "max_steps": self.cfg.max_steps, "min_lr_ratio": self.cfg.min_lr_ratio,
                          "next_lr": lr_at(step, self.cfg)},
                extra={"tokens": self.tokens_seen, "world_size": self.dist.world_size,
                       "bad_evals": self.bad_evals, "stopped": self.stopped,
                       "parallel": "fsdp" if self.fsdp else ("ddp" if self.dist.enabled else "none")},
                **full,
            )
        D.barrier(self.dist)

    def _train_step(self, step: int) -> tuple[float, float, int]:
        """One optimiser step; returns (mean train loss over ranks and micro-batches, grad norm, tokens)."""
        cfg, info = self.cfg, self.dist
        set_lr(self.optimizer, lr_at(step, cfg))
        if isinstance(self.optimizer, torch.optim.LBFGS):
            return self._lbfgs_step(step)
        loss_sum = torch.zeros((), device=self.device)
        tokens = 0
        batches = []
        for micro in range(cfg.grad_accum):
            batch = self.task.train_batch(step, micro, cfg.batch_size)
            tokens += int(self.task.tokens_per_batch(batch))
            batch = {k: v.to(self.device, non_blocking=True) for k, v in D.shard(batch, info).items()}
            if self.sam is not None:
                batches.append(batch)
            loss_sum += self._forward_backward(micro, batch)
        if self.sam is not None:  # SAM: the same micro-batches again at w + rho g/|g|, then back to w
            self.sam.perturb()
            self.optimizer.zero_grad(set_to_none=True)
            try:
                for micro, batch in enumerate(batches):
                    self._forward_backward(micro, batch)
            finally:
                self.sam.restore()
        if cfg.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        elif self.fsdp:  # DTensor gradient shards: the norm reduces over ranks
            gnorm = torch.nn.utils.get_total_norm(
                [p.grad for p in self.model.parameters() if p.grad is not None])
        else:
            gnorm = self._grad_norm()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        train_loss = D.all_reduce_mean(loss_sum / cfg.grad_accum, info)
        return float(train_loss.item()), D.to_float(gnorm), tokens

    def _grad_norm(self) -> torch.Tensor:
        """The global L2 norm of the current gradients (0 when there are none)."""
        norms = [p.grad.detach().float().norm() for p in self.model.parameters() if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())

    def _lbfgs_step(self, step: int) -> tuple[float, float, int]:
        """One L-BFGS step (``TrainConfig.optimizer = "lbfgs"``). Its closure, called once per function
        evaluation of the strong-Wolfe line search (at most 1.25 * lbfgs_max_iter times), zeroes the
        gradients, runs forward + backward over every micro-batch of the step and returns the loss
        averaged over micro-batches and ranks, so every rank takes the same step. Returns (the loss
        before the step, the norm of the last evaluated gradient, tokens)."""
        cfg, info = self.cfg, self.dist
        batches, tokens = [], 0
        for micro in range(cfg.grad_accum):
            batch = self.task.train_batch(step, micro, cfg.batch_size)
            tokens += int(self.task.tokens_per_batch(batch))
            batches.append({k: v.to(self.device, non_blocking=True) for k, v in D.shard(batch, info).items()})

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), device=self.device)
            for micro, batch in enumerate(batches):
                total += self._forward_backward(micro, batch)
            return D.all_reduce_mean(total / cfg.grad_accum, info)

        loss = self.optimizer.step(closure)
        gnorm = self._grad_norm()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss), float(gnorm.item()), tokens

    def _forward_backward(self, micro: int, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Forward + backward of one micro-batch (loss / grad_accum); returns the detached loss."""
        cfg = self.cfg
        with D.sync_context(self.ddp, sync=micro == cfg.grad_accum - 1):
            with self._autocast():
                # the model's auxiliary losses (MoE load balancing) join every task's loss
                loss = self.train_model(batch) + aux_loss(self.model)
            (loss / cfg.grad_accum).backward()
        return loss.detach().float()

    # ------------------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to ``max_steps``; return the summary (also written to ``summary.json``).

        The summary holds the final validation metrics under their plain names (e.g. ``val_bpb``;
        on rank 0 only), ``train_loss``, ``steps``, ``params``, ``tokens``, ``tokens_per_s``,
        ``peak_mem_mb``, ``wall_time_s``, ``best``, ``seed``, ``device``, ``dtype``.
        """
        try:
            return self._fit()
        finally:
            D.teardown(self.dist)

    def _fit(self) -> dict[str, Any]:
        from formers.nn.models import count_params

        cfg, info = self.cfg, self.dist
        t0 = time.perf_counter()
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
            self._prepare_metrics()
        D.barrier(info)
        metrics_path = self.out_dir / "metrics.jsonl"
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), disable=cfg.quiet or not info.is_main, transient=False,
        )
        train_time, session_tokens, step_times = 0.0, 0, []
        last_loss, last_eval = float("nan"), None
        with progress:
            bar = progress.add_task("train", total=cfg.max_steps, completed=self.start_step, info="")
            for step in range(self.start_step, cfg.max_steps):
                if self.stopped is not None:
                    break
                ts = time.perf_counter()
                last_loss, gnorm, tokens = self._train_step(step)
                if not (math.isfinite(last_loss) and math.isfinite(gnorm)):
                    # a finite loss with a non-finite gradient (a kernel's backward) is caught here,
                    # one step before the corrupted weights would make the loss NaN too
                    what = (f"train loss is {last_loss}" if not math.isfinite(last_loss)
                            else f"gradient norm is {gnorm} (train loss {last_loss:.4g})")
                    raise TrainingDiverged(
                        f"training diverged: {what} at step {step + 1}; the last "
                        f"checkpoint in {self.out_dir} is kept (lower --lr, or check the data)")
                dt = time.perf_counter() - ts
                train_time += dt
                step_times.append(dt)
                session_tokens += tokens
                self.tokens_seen += tokens
                done = step + 1
                rec: dict[str, Any] = {
                    "step": done, "train_loss": last_loss, "lr": lr_at(step, cfg), "grad_norm": gnorm,
                    "tokens": self.tokens_seen, "tokens_per_s": tokens / dt if dt > 0 else None,
                }
                if done % cfg.eval_every == 0 or done == cfg.max_steps:
                    last_eval = self._evaluate(done)
                    if last_eval is not None:
                        rec.update(last_eval)
                    if self.console is not None and not self.console.is_terminal:  # a log file: no live bar
                        shown = {k: v for k, v in (last_eval or {}).items() if isinstance(v, float)}
                        self._say(f"step {done}/{cfg.max_steps}  train_loss {last_loss:.4g}  " + "  ".join(
                            f"{k} {v:.4g}" for k, v in list(shown.items())[:4]))
                stop = bool(cfg.early_stopping) and self.bad_evals >= cfg.early_stopping
                if stop:
                    self.stopped = done
                    rec["early_stop"] = True
                if info.is_main:
                    append_jsonl(metrics_path, rec)
                if done == cfg.max_steps or stop or (cfg.checkpoint_every
                                                     and done % cfg.checkpoint_every == 0):
                    self._checkpoint(done)
                progress.update(bar, completed=done, info=(
                    f"loss {last_loss:.4f}  {session_tokens / max(train_time, 1e-9):,.0f} tok/s"))

        if cfg.early_stopping:  # report at the best evaluation's weights
            D.barrier(info)
            if self._load_best() or last_eval is None:
                last_eval = self._evaluate(self.stopped or cfg.max_steps, track=False)
                self._say(f"early stopping: weights of step {self.best and self.best['step']} "
                          f"(best {self.task.selection_metric()})")
            if not step_times:
                recs = read_metrics(metrics_path) if info.is_main else []
                last_loss = next((r["train_loss"] for r in reversed(recs) if "train_loss" in r), last_loss)
        elif self.start_step >= cfg.max_steps:  # nothing left to train: report from the last records
            last_eval = self._evaluate(self.start_step)
            recs = read_metrics(metrics_path) if info.is_main else []
            last_loss = next((r["train_loss"] for r in reversed(recs) if "train_loss" in r), last_loss)

        wall = time.perf_counter() - t0
        summary: dict[str, Any] = {
            "task": self._task_info()["task"],
            "metric": self.task.metric,
            **(last_eval or {}),
            "train_loss": last_loss,
            "steps": self.stopped or cfg.max_steps,
            "stopped_early_at": self.stopped,
            "params": count_params(D.unwrap(self.model)),
            "tokens": self.tokens_seen,
            "tokens_per_s": session_tokens / train_time if train_time > 0 else None,
            # the median step time leaves out warm-up and compilation steps
            "step_time_median_s": float(np.median(step_times)) if step_times else None,
            "peak_mem_mb": peak_memory_mb(self.device),
            "wall_time_s": wall,
            "best": self.best,
            "resumed_from_step": self.start_step or None,
            "seed": cfg.seed,
            "device": str(self.device),
            "dtype": "bf16" if self.amp_dtype == torch.bfloat16 else "fp32",
            "world_size": info.world_size,
        }
        recipe = self.task.recipe_record(self.model_cfg, cfg)
        if recipe is not None:
            summary["recipe"] = recipe
        old_summary = self.out_dir / "summary.json"
        if not step_times and old_summary.is_file():  # nothing trained now: keep the run's own speed
            before = json.loads(old_summary.read_text())
            for key in ("tokens_per_s", "step_time_median_s", "peak_mem_mb", "wall_time_s"):
                summary[key] = before.get(key, summary[key])
        summary = _plain(summary)
        if info.is_main:
            write_json(self.out_dir / "summary.json", summary)
            plot_curves(read_metrics(metrics_path), self.out_dir / "loss.png", self.task.metric)
            self._say(f"[green]done[/]: {self.task.metric} = {summary.get(self.task.metric)}  "
                      f"({summary['wall_time_s']:.1f} s)  -> {self.out_dir}")
        D.barrier(info)
        return summary
