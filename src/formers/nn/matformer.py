"""MatFormer at the model level: choosing granularities, training schedules, extraction of
submodels and their parameter counts (Devvrit, Kudugunta et al., "MatFormer: Nested Transformer
for Elastic Inference", arXiv 2310.07707, §3.2 training, §3.3 Mix'n'Match).

The nested layer itself is :class:`formers.nn.ffn.matformer.MatFormerFFN` (registry ffn
``matformer`` / ``matformer-swiglu``). A *granularity* is an index i into a layer's widths
(m_1 < ... < m_g); ``None`` means the largest, negative indices count from the end. A model-wide
setting is either one index for every nested layer (submodel M_i) or a list with one index per
nested layer in module order (encoder layers before decoder layers), i.e. a Mix'n'Match model.

- :func:`set_granularity` sets the layers' ``granularity`` attributes now and returns a context
  manager that restores the previous ones. The setting is ordinary module state: it persists over
  forward calls (so it is valid over all steps of cached decoding / ``generate``) and is not saved
  with the model (a loaded model runs at the largest granularity). Do not change it in the middle
  of a cached generation: the cache holds keys computed at the old setting.
- :func:`matformer_loss` implements the two schedules found in the reference code: ``joint``
  (sum over all granularities of the loss, one optimiser step; MatFormer-OLMo) and ``sampled``
  (one granularity per step, uniformly at random; devvrit/matformer).
- :func:`extract` copies the prefix slices into an ordinary dense model (``mlp`` / ``swiglu``
  layers with per-layer ``d_ff`` in ``LayerSpec.ffn_options``); :func:`param_counts` and
  :func:`count_params_at` give the submodels' sizes analytically.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from formers.nn.config import LayerSpec, ModelConfig
from formers.nn.ffn.matformer import MatFormerFFN
from formers.nn.models import EncoderDecoder, TransformerLM, build_model, count_params

Granularity = int | None | Sequence[int | None]
SCHEDULES = ("joint", "sampled")


def matformer_layers(model: nn.Module) -> list[MatFormerFFN]:
    """The nested FFNs of ``model`` in module order (encoder before decoder)."""
    return [m for m in model.modules() if isinstance(m, MatFormerFFN)]


def _layers_or_raise(model: nn.Module) -> list[MatFormerFFN]:
    layers = matformer_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no MatFormer FFN layers "
                         f"(use ffn='matformer' or 'matformer-swiglu')")
    return layers


def _per_layer(layers: list[MatFormerFFN], g: Granularity) -> list[int]:
    """One non-negative granularity index per nested layer (validated)."""
    if g is None or isinstance(g, int):
        return [layer.check_granularity(g) for layer in layers]
    if isinstance(g, (str, bytes)) or not isinstance(g, Sequence):
        raise ValueError(f"granularity must be an int, None or a per-layer list, got {g!r}")
    if len(g) != len(layers):
        raise ValueError(f"per-layer granularity has {len(g)} entries; the model has "
                         f"{len(layers)} MatFormer layers")
    return [layer.check_granularity(gi) for layer, gi in zip(layers, g)]


def n_granularities(model: nn.Module) -> int:
    """The number g of granularities, which must be the same in every nested layer."""
    counts = {len(layer.widths) for layer in _layers_or_raise(model)}
    if len(counts) != 1:
        raise ValueError(f"the MatFormer layers have different numbers of granularities {sorted(counts)}")
    return counts.pop()


class _Restore:
    """Returned by :func:`set_granularity`; ``with`` restores the previous setting on exit."""

    def __init__(self, layers: list[MatFormerFFN], old: list[int | None]) -> None:
        self.layers, self.old = layers, old

    def __enter__(self) -> "_Restore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()

    def restore(self) -> None:
        for layer, g in zip(self.layers, self.old):
            layer.granularity = g


def set_granularity(model: nn.Module, granularity: Granularity) -> _Restore:
    """Run ``model`` at ``granularity`` from now on: an int index (submodel M_i), ``None`` (the
    largest) or a per-layer list (Mix'n'Match). Takes effect immediately; use the result as a
    context manager to restore the previous setting::

        with set_granularity(model, 0):      # the smallest submodel, every layer at m_1
            logits = model(ids)
        set_granularity(model, [0, 1, 2, 3]) # stays until changed (valid across decoding steps)

    Raises:
        ValueError: no nested layers, an index out of range, or a list of the wrong length.
    """
    layers = _layers_or_raise(model)
    idx = _per_layer(layers, granularity)
    old = [layer.granularity for layer in layers]
    for layer, i in zip(layers, idx):
        layer.granularity = i
    return _Restore(layers, old)


def sample_granularity(step: int, seed: int, n: int) -> int:
    """The granularity of the ``sampled`` schedule at ``step``: uniform on {0..n-1}, a pure
    function of (seed, step) so resumed and data-parallel runs agree."""
    return int(np.random.default_rng([int(seed), int(step)]).integers(n))


def matformer_loss(model: nn.Module, batch: Any, loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                   schedule: str = "joint", step: int = 0, seed: int = 0,
                   weights: Sequence[float] | None = None) -> torch.Tensor:
    """The MatFormer training loss of one step (back-propagate the result).

    Args:
        model: a model with MatFormer FFNs. batch: whatever ``loss_fn`` takes.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor`` (e.g. a task's ``loss`` method).
        schedule: ``joint``: L = sum_i lambda_i L(M_i) over all granularities (MatFormer-OLMo: the
            gradients of all submodels on the same batch, then one optimiser step);
            ``sampled``: L = L(M_i) for one i drawn by :func:`sample_granularity` (devvrit/matformer).
        step, seed: pick the sampled granularity deterministically.
        weights: lambda_i for ``joint`` (default all 1, as both references).
    Returns:
        The scalar loss. The model's granularity setting is unchanged afterwards.
    Raises:
        ValueError: unknown schedule, or ``weights`` of the wrong length.

    Notes: ``joint`` keeps the g graphs alive until ``backward`` (g times the activation memory;
    MatFormer-OLMo back-propagates each granularity separately, which gives the same gradient).
    With ``sampled``, AdamW weight decay still shrinks the tail units on steps that do not use
    them (decoupled decay acts on every parameter), as in the reference; exclude them from decay
    in the optimiser if that is unwanted.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"matformer_loss: schedule {schedule!r} is not one of {list(SCHEDULES)}")
    n = n_granularities(model)
    if schedule == "sampled":
        with set_granularity(model, sample_granularity(step, seed, n)):
            return loss_fn(model, batch)
    lam = [1.0] * n if weights is None else [float(w) for w in weights]
    if len(lam) != n:
        raise ValueError(f"matformer_loss: {len(lam)} weights for {n} granularities")
    total: torch.Tensor | None = None
    for i, w in enumerate(lam):
        with set_granularity(model, i):
            loss = w * loss_fn(model, batch)
        total = loss if total is None else total + loss
    assert total is not None
    return total


# ------------------------------------------------------------------------------- extraction
def _is_nested(name: str) -> bool:
    from formers.registry import get

    obj = get("ffn", name).obj
    return isinstance(obj, type) and issubclass(obj, MatFormerFFN)


def extract_config(model: nn.Module, granularity: Granularity = None) -> ModelConfig:
    """The dense :class:`ModelConfig` of the submodel at ``granularity``: every nested layer
    becomes its dense FFN (``mlp`` / ``swiglu``) with ``ffn_options={'d_ff': m_i}``; the per-layer
    pattern is written out for all ``n_layers`` layers.

    Raises:
        ValueError: see :func:`set_granularity`; a per-layer list for an encoder-decoder whose
        encoder and decoder layers would need different widths (they share ``cfg.layers``).
    """
    if not isinstance(model, (TransformerLM, EncoderDecoder)):
        raise TypeError(f"extract expects a formers TransformerLM or EncoderDecoder, got {type(model).__name__}")
    cfg: ModelConfig = model.cfg
    layers = _layers_or_raise(model)
    idx = _per_layer(layers, granularity)
    widths = {id(layer): layer.widths[i] for layer, i in zip(layers, idx)}
    stacks = [model.stack] if isinstance(model, TransformerLM) else [model.encoder, model.decoder]
    # per spec index: the (dense name, width) every block built from that index must get
    specs: list[LayerSpec | None] = [None] * cfg.n_layers
    for stack in stacks:
        for i, block in enumerate(stack.blocks):
            j = i % cfg.n_layers
            base = cfg.layer_spec(i)
            if isinstance(block.ffn, MatFormerFFN):
                new = base.replace(ffn=block.ffn.dense_name,
                                   ffn_options={"d_ff": widths[id(block.ffn)]},
                                   attention_options=copy.deepcopy(base.attention_options))
            else:
                new = copy.deepcopy(base)
            if specs[j] is not None and specs[j] != new:
                raise ValueError(
                    f"extract: layer {i} of the encoder and the decoder share one LayerSpec but would "
                    f"need different FFNs ({specs[j].ffn} d_ff={specs[j].ffn_options.get('d_ff')} vs "
                    f"{new.ffn} d_ff={new.ffn_options.get('d_ff')}); use one granularity for all layers")
            specs[j] = new
    filled = [s if s is not None else cfg.layer_spec(j) for j, s in enumerate(specs)]
    ffn = filled[0].ffn if _is_nested(cfg.ffn) else cfg.ffn  # dense: every nested layer converted
    return ModelConfig.from_dict(cfg.replace(ffn=ffn, layers=filled).to_dict())


@torch.no_grad()
def extract(model: nn.Module, granularity: Granularity = None) -> nn.Module:
    """An ordinary dense model equal to ``model`` at ``granularity`` (int, None = largest, or a
    per-layer list for Mix'n'Match): the nested FFNs' prefix slices ``up/gate[:m_i]``,
    ``down[:, :m_i]`` (``down`` bias shared, kept whole) are copied into ``mlp`` / ``swiglu``
    layers of width m_i; every other weight is copied as is. The result has the source's device,
    dtype and train/eval mode, and its forward equals the nested forward at that granularity.
    """
    cfg = extract_config(model, granularity)
    layers = _layers_or_raise(model)
    idx = _per_layer(layers, granularity)
    width_of = {id(layer): layer.widths[i] for layer, i in zip(layers, idx)}
    prefix_width = {name: width_of[id(mod)] for name, mod in model.named_modules()
                    if isinstance(mod, MatFormerFFN)}
    p0 = next(model.parameters())
    with torch.random.fork_rng(devices=[]):  # the throw-away init must not move the global RNG
        dense = build_model(cfg).to(device=p0.device, dtype=p0.dtype)
    src = model.state_dict()
    out = {}
    for key in dense.state_dict():
        prefix, _, leaf = key.rpartition(".")
        owner, _, lin = prefix.rpartition(".")
        t = src[key]
        m = prefix_width.get(owner)
        if m is not None:
            if lin in ("up", "gate"):
                t = t[:m]
            elif lin == "down" and leaf == "weight":
                t = t[:, :m]
        out[key] = t.clone()
    dense.load_state_dict(out, strict=True)
    dense.train(model.training)
    return dense


def count_params_at(model: nn.Module, granularity: Granularity = None) -> int:
    """Parameters of the submodel at ``granularity`` (int, None or per-layer list), computed
    analytically: the full count minus each nested layer's unused tail (equals
    ``count_params(extract(model, granularity))``)."""
    layers = _layers_or_raise(model)
    idx = _per_layer(layers, granularity)
    total = count_params(model)
    return total - sum(layer.n_params(-1) - layer.n_params(i) for layer, i in zip(layers, idx))


def param_counts(model: nn.Module) -> dict[int, int]:
    """{granularity index i: parameters of submodel M_i (every layer at m_i)}."""
    return {i: count_params_at(model, i) for i in range(n_granularities(model))}


__all__ = [
    "count_params_at", "extract", "extract_config", "matformer_layers", "matformer_loss",
    "n_granularities", "param_counts", "sample_granularity", "set_granularity",
]
