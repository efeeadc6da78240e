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


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2)) over :func:`param_groups`, or with
    ``cfg.optimizer == "lbfgs"`` ``LBFGS(lr=cfg.lr, max_iter=cfg.lbfgs_max_iter,
    line_search_fn="strong_wolfe")`` over every trainable parameter (one group, no weight decay).

    AdamW uses the fused CUDA kernel (``fused=True``) when every parameter is on CUDA and this torch
    supports it. The ``names`` entry of each group is kept for inspection (AdamW ignores it).
    Call after moving the model to its device.

    Raises:
        ValueError: the model has no trainable parameters.
    """
    groups = param_groups(model, cfg.weight_decay, cfg.decay_mixing_weights)
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    if cfg.optimizer == "lbfgs":
        return torch.optim.LBFGS(params, lr=cfg.lr, max_iter=cfg.lbfgs_max_iter, line_search_fn="strong_wolfe")
    groups = [g for g in groups if g["params"]]
    kwargs = {"fused": True} if _fused_ok(params) else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **kwargs)


class SAM:
    """Sharpness-aware minimisation around any torch optimizer.

    Paper: Foret, Kleiner, Mobahi, Neyshabur, "Sharpness-Aware Minimization for Efficiently
    Improving Generalization", arXiv 2010.01412, §2 eq. (2) and Algorithm 1. One SAM step at
    weights w with gradient g = ∇L(w):

        ε = ρ · g / ‖g‖₂          (‖·‖₂ the global L2 norm over every parameter with a gradient)
        g' = ∇L(w + ε)            (second forward/backward at the perturbed weights)
        w ← base_step(w, g')      (the wrapped optimizer's update, taken at w, not at w + ε)

    The weights are restored by copying the saved values back (not by subtracting ε), so
    ``rho = 0`` reproduces the base optimizer bit for bit. Non-adaptive SAM (not ASAM).

    Use either ``step(closure)`` (closure: zero-free forward + backward returning the loss; it is
    called twice) or, for gradient accumulation, the parts: first pass backward → ``perturb()`` →
    ``zero_grad()`` → second pass backward → ``restore()`` → ``base.step()``.

    ``param_groups``, ``state``, ``state_dict``, ``load_state_dict`` and ``zero_grad`` are the base
    optimizer's, so learning-rate schedules and checkpoints see the base optimizer.

    Args:
        base: a ``torch.optim.Optimizer`` built over the model's parameters.
        rho: neighbourhood radius ρ >= 0 (SAMformer uses 0.7 on ETTh1; Foret et al. 0.05).
    Raises:
        TypeError: ``base`` is not a torch optimizer.  ValueError: ``rho`` negative or not finite.
        RuntimeError: ``perturb`` twice without ``restore``, or ``restore`` without ``perturb``.
    """

    def __init__(self, base: torch.optim.Optimizer, rho: float = 0.05) -> None:
        import math

        if not isinstance(base, torch.optim.Optimizer):
            raise TypeError(f"SAM: base must be a torch.optim.Optimizer, got {type(base).__name__}")
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho < 0:
            raise ValueError(f"SAM: rho must be a finite number >= 0, got {rho!r}")
        self.base = base
        self.rho = float(rho)
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def param_groups(self) -> list[dict]:
        return self.base.param_groups

    @property
    def state(self):
        return self.base.state

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.base.param_groups for p in g["params"] if p.grad is not None]

    @torch.no_grad()
    def perturb(self) -> torch.Tensor:
        """Move every parameter with a gradient to w + ρ g/‖g‖₂ (global norm); return ‖g‖₂."""
        if self._saved is not None:
            raise RuntimeError("SAM.perturb called twice without restore()")
        params = self._params()
        if not params:
            self._saved = []
            return torch.zeros(())
        dt = torch.float64 if any(p.grad.dtype == torch.float64 for p in params) else torch.float32
        norm = torch.linalg.vector_norm(torch.stack([p.grad.detach().to(dt).norm() for p in params]))
        self._saved = [(p, p.detach().clone()) for p in params]
        if self.rho > 0:
            scale = self.rho / (norm + 1e-12)
            for p in params:
                p.add_(p.grad * scale.to(p.grad.dtype))
        return norm

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the weights saved by :meth:`perturb` back (gradients are left untouched)."""
        if self._saved is None:
            raise RuntimeError("SAM.restore called without perturb()")
        for p, old in self._saved:
            p.copy_(old)
        self._saved = None

    def step(self, closure):
        """One SAM step. ``closure()`` must run forward and backward and return the loss; the
        gradients are zeroed here before each of its two calls. Returns the first (unperturbed) loss."""
        if closure is None:
            raise ValueError("SAM.step needs a closure (forward + backward), it evaluates the loss twice")
        self.zero_grad()
        with torch.enable_grad():
            loss = closure()
        self.perturb()
        self.zero_grad()
        try:
            with torch.enable_grad():
                closure()
        finally:
            self.restore()
        self.base.step()
        return loss
