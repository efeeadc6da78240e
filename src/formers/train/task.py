"""The task interface: data + model family + loss + metrics + default budget, under a name.

A task is registered under registry kind ``task``. The trainer only talks to this interface, so
every domain (text, time series, PDEs, ...) trains, resumes, evaluates and compares the same way.

Determinism contract: ``train_batch(step, micro)`` must depend only on the task's seed, ``step``
and ``micro``. The trainer therefore resumes exactly (the data position *is* the step) and DDP
ranks take disjoint rows of the same global micro-batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from formers.nn.config import ModelConfig
from formers.train.config import TrainConfig


class Task(ABC):
    """Base class of registered tasks.

    Class attributes:
        metric: the name of the main metric in ``evaluate``'s result (e.g. ``val_bpb``); the
            number ``formers compare`` tabulates.
        lower_is_better: direction of ``metric`` (and of ``select_metric``).
        select_metric: the metric that picks the best evaluation (early stopping, ``best``);
            None = ``metric``. A task that reports a held-out test number as ``metric`` selects
            on validation here (e.g. forecasting: ``metric = test_mse``, ``select_metric = val_mse``).
        report_metrics: further metrics ``formers compare`` tabulates beside ``metric`` (mean ± std).
        default_models: the variants ``formers compare TASK`` runs when none are named.
        model_kind: the registry kind of the task's model variants (e.g. ``surrogate``) when the
            task's constructor does costly work (loading or generating data): :func:`check_variant`
            then rejects an unknown ``--model`` before the task is built. None: not checked early.
    """

    metric: ClassVar[str] = "val_loss"
    lower_is_better: ClassVar[bool] = True
    select_metric: ClassVar[str | None] = None
    report_metrics: ClassVar[tuple[str, ...]] = ()
    default_models: ClassVar[tuple[str, ...]] = ("baseline",)
    model_kind: ClassVar[str | None] = None

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    @abstractmethod
    def model_config(self, variant: str = "baseline") -> Any:
        """The config of model ``variant`` at this task's size: a :class:`ModelConfig` (a registered
        ``model`` preset) by default; a task with its own model family returns its own config
        dataclass (with ``to_dict``/``from_dict``) and overrides :meth:`build_model`,
        :meth:`config_from_dict` and :meth:`load_model`."""

    def build_model(self, cfg: Any) -> nn.Module:
        """The module of config ``cfg``; it must keep ``cfg`` as ``.cfg`` (checkpoints save it)."""
        from formers.nn.models import build_model

        return build_model(cfg)

    def config_from_dict(self, data: dict[str, Any]) -> Any:
        """Rebuild a model config from its ``to_dict()`` (compare's worker processes, checkpoints)."""
        return ModelConfig.from_dict(data)

    def load_model(self, folder: Any) -> nn.Module:
        """A saved model folder (``config.json`` + ``model.safetensors``) of this task's family."""
        from formers.nn.io import load_model

        return load_model(folder)

    def selection_metric(self) -> str:
        """``select_metric`` or, when None, ``metric``."""
        return self.select_metric or self.metric

    def default_train(self) -> TrainConfig:
        """The task's default budget (overridden field by field from the CLI)."""
        return TrainConfig()

    # Per-model training recipes (optional). A task whose model family trains each model its own
    # way (e.g. forecasting: every forecaster with its paper's optimiser, batch and look-back)
    # overrides these three; ``formers train`` / ``formers compare`` then train each variant with
    # its recipe under the user's flags and options, on the same data, splits, seeds and metrics.
    @classmethod
    def recipe_options(cls, variant: str, options: dict[str, Any]) -> dict[str, Any]:
        """Task options model ``variant``'s recipe sets (``options``: the user's, which win over
        these; see :func:`make_task_for`). Default: none."""
        return {}

    def recipe_train(self, variant: str) -> TrainConfig:
        """The budget model ``variant`` trains with by default. Default: :meth:`default_train`."""
        return self.default_train()

    def plot_examples(self, models: dict[str, tuple["Task", nn.Module]], path: Any) -> Any:
        """Optional: write a PNG of each model's predictions on a few held-out examples to
        ``path`` and return the path. ``models`` maps a name to (the task that model was trained
        on, the trained model). ``formers compare`` calls it when a task overrides it."""
        return None

    def recipe_record(self, model_cfg: Any, train_cfg: TrainConfig) -> dict[str, Any] | None:
        """What a run records about the recipe it trained with (``summary.json``'s ``recipe``:
        the declared recipe, its source, the fields changed by the user); None: nothing."""
        return None

    @abstractmethod
    def train_batch(self, step: int, micro: int, batch_size: int) -> dict[str, torch.Tensor]:
        """The global micro-batch ``micro`` of optimiser step ``step``: tensors with batch dim first."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar mean training loss of ``batch``. The trainer adds the model's auxiliary losses
        (:func:`formers.nn.ffn.moe.aux_loss`) and back-propagates the sum."""

    @abstractmethod
    def evaluate(self, model: nn.Module, n_batches: int, batch_size: int,
                 device: torch.device) -> dict[str, float]:
        """Validation metrics under their plain names; must include ``self.metric``."""

    def describe(self) -> dict[str, Any]:
        """Facts about the data recorded with a run (sizes, checksums, origin, licence)."""
        return {}

    def tokens_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        """Units counted for throughput (tokens for LMs); default: elements of the first tensor."""
        first = next(iter(batch.values()))
        return int(first.numel())


def configure_model(task: Task, variant: str, overrides: dict[str, Any] | None = None) -> Any:
    """``task.model_config(variant)`` with ``overrides`` (``--set``) applied on top.

    Raises ValueError when an override changes the depth or context length of a variant whose
    per-layer pattern (``layers``) was built for the task's size (MASFormer, LightTransfer,
    Brainformer ...): the pattern would be tiled or cut wrongly; set the size as a task option
    (``--opt n_layers=N``) so that the variant is built for it.
    """
    cfg = task.model_config(variant)
    if not overrides:
        return cfg
    resized = sorted(set(overrides) & {"n_layers", "max_seq_len"})
    if resized and "layers" not in overrides and getattr(cfg, "layers", None) is not None:
        raise ValueError(f"--set {', '.join(f'{k}={overrides[k]}' for k in resized)}: model {variant!r} "
                         f"built its per-layer pattern for n_layers = {cfg.n_layers}, max_seq_len = "
                         f"{cfg.max_seq_len}; set the size as a task option instead (e.g. --opt "
                         f"n_layers=... / seq_len=...) so the pattern is built for it")
    return type(cfg).from_dict({**cfg.to_dict(), **overrides})


def task_record(task: Task) -> dict[str, Any]:
    """What a run records about its task (config.yaml's ``task:`` section), as plain JSON types:
    ``task.describe()`` at the top level, plus ``task`` (registry name), ``options``, ``class``,
    ``seed``, ``metric`` and ``lower_is_better`` where describe() does not give them. A run folder
    rebuilds its task from ``task`` and ``options``."""
    import json

    from formers.registry import get_kind

    info = dict(task.describe() or {})
    names = [n for n, e in get_kind("task").items() if e.obj is type(task)]
    info.setdefault("task", names[0] if names else type(task).__name__)
    if isinstance(getattr(task, "options", None), dict):
        info.setdefault("options", task.options)
    info.setdefault("class", f"{type(task).__module__}.{type(task).__qualname__}")
    info.setdefault("seed", task.seed)
    info.setdefault("metric", task.metric)
    info.setdefault("lower_is_better", task.lower_is_better)
    return json.loads(json.dumps(info, default=str))


def check_same_task(saved: dict[str, Any] | None, task: Task, what: str) -> None:
    """Raise ValueError (starting with ``what``) when a run's recorded task differs from ``task``
    (another task, other options, or data whose size or sha256 changed). None passes."""
    if saved is None:
        return
    now = task_record(task)
    keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if keys:
        raise ValueError(f"{what}: the run was made with a different task or data (differs in {keys}: "
                         f"run {[saved.get(k) for k in keys]!r:.300}); its numbers would not be comparable")


def check_variant(name: str, variant: str) -> None:
    """Raise ``ValueError`` (naming the registered ones) when task ``name`` declares a
    ``model_kind`` and ``variant`` is not registered under it; cheap, before any data is read."""
    from formers.registry import get

    kind = get("task", name).obj.model_kind
    if kind is not None:
        get(kind, variant)


def make_task_for(name: str, seed: int, options: dict[str, Any] | None, variant: str) -> Task:
    """:func:`make_task` for training model ``variant``: the task class's
    :meth:`Task.recipe_options` for the variant, with the user's ``options`` on top. An unknown
    ``variant`` of a task with a ``model_kind`` raises ``ValueError`` before the task is built."""
    from formers.registry import get

    check_variant(name, variant)
    options = dict(options or {})
    return make_task(name, seed, {**get("task", name).obj.recipe_options(variant, options), **options})


def make_task(name: str, seed: int = 0, options: dict[str, Any] | None = None) -> Task:
    """Build registered task ``name`` with keyword ``options`` (names checked first).

    Raises ValueError for an unknown task or an option the task does not take.
    """
    from formers.config import check_options
    from formers.registry import get

    cls = get("task", name).obj
    options = dict(options or {})
    check_options(f"task {name!r}", cls.__init__, options, reserved=("seed",))
    return cls(seed=seed, **options)
