"""AdamW with decay / no-decay parameter groups.

Weight decay applies to matrices (>= 2-D parameters: linear weights and embeddings); biases, norm
weights and every other 1-D / 0-D parameter get none. Tied weights (the shared embedding / output
projection) are one parameter and appear once.

``TrainConfig.decay_mixing_weights`` also decays the learned mixing scalars of DenseFormer
(``residual.alphas.*``) and value residual (``value_residual.lambdas.*``), as the DenseFormer
reference code does (its alphas are ``nn.Linear`` weights in the decay group); the default keeps
them out, like every other 1-D parameter.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from formers.train.config import TrainConfig


def _is_norm(name: str) -> bool:
    return any("norm" in part.lower() for part in name.split("."))


MIXING_WEIGHTS = ("residual.alphas.", "value_residual.lambdas.")


def param_groups(model: nn.Module, weight_decay: float, decay_mixing_weights: bool = False) -> list[dict]:
    """Two AdamW groups over the trainable parameters of ``model``.

    Returns ``[{"params": decay, "weight_decay": weight_decay, "names": [...]},
    {"params": no_decay, "weight_decay": 0.0, "names": [...]}]``; each distinct parameter appears
    exactly once (``named_parameters`` drops tied duplicates). A parameter decays iff it has at
    least 2 dimensions and does not belong to a norm layer, or, with ``decay_mixing_weights``,
    is a DenseFormer / value-residual mixing weight.
    """
    decay, no_decay, d_names, n_names = [], [], [], []
    for name, p in model.named_parameters():  # remove_duplicate=True: tied weights once
        if not p.requires_grad:
            continue
        mixing = decay_mixing_weights and any(m in name for m in MIXING_WEIGHTS)
        if (p.dim() >= 2 and not _is_norm(name)) or mixing:
            decay.append(p)
            d_names.append(name)
        else:
            no_decay.append(p)
            n_names.append(name)
    return [
        {"params": decay, "weight_decay": weight_decay, "names": d_names},
        {"params": no_decay, "weight_decay": 0.0, "names": n_names},
    ]


def _fused_ok(params: list[torch.Tensor]) -> bool:
    if "fused" not in inspect.signature(torch.optim.AdamW).parameters:
        return False
    return bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2)) over :func:`param_groups`.

    Uses the fused CUDA kernel (``fused=True``) when every parameter is on CUDA and this torch
    supports it. The ``names`` entry of each group is kept for inspection (AdamW ignores it).
    Call after moving the model to its device.

    Raises:
        ValueError: the model has no trainable parameters.
    """
    groups = param_groups(model, cfg.weight_decay, cfg.decay_mixing_weights)
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    groups = [g for g in groups if g["params"]]
    kwargs = {"fused": True} if _fused_ok(params) else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **kwargs)
