"""The geometry of LayerNorm in attention (Brody, Alon, Yahav, "On the Expressivity Role of
LayerNorm in Transformers' Attention", ACL Findings 2023, arXiv 2305.02582).

LayerNorm factors as LN = affine o S o Pi (§2):

- **projection** Pi(x) = x - (x . 1 / d) 1 puts every key on the hyperplane orthogonal to the
  all-ones vector, so a query q proportional to 1 gives q . k = 0 for every key: *uniform*
  attention, which makes averaging (e.g. the majority task) easy to express (§3);
- **scaling** S(y) = sqrt(d) y / ||y|| puts every key on a sphere, so every key is an extreme
  point of the key set and can receive the top attention score of some query: no key is
  *unselectable* (§4).

The norms themselves live in :mod:`formers.nn.norm` (``FactorizedLayerNorm``, registry norms
``layernorm-projection-only`` and ``layernorm-scale-only``; ``layernorm`` is both plus the affine).
This module holds the functional components, the unselectable-key diagnostic (a linear program
per key, solved with SciPy's HiGHS, extra ``[sci]``), the "query angle to 1" diagnostic of the
majority experiment, and two model presets:

- ``ln-no-projection``: every LayerNorm replaced by ``layernorm-scale-only`` (the paper's
  WITHOUT_PROJ majority arm);
- ``ln-no-scale``: every LayerNorm replaced by ``layernorm-projection-only`` (the paper's
  "without scaling" GPT-2 arm).

Deviation (presets): the paper changes only the attention's pre-norm (``norm1`` /``ln_1``); a
preset changes ``ModelConfig.norm``, i.e. every norm of the model (attention and feed-forward
pre-norms and the final norm). The attention's input, which is what the paper's claims are about,
is affected the same way.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from formers.nn.config import ModelConfig
from formers.nn.norm import _LN_GEOMETRY
from formers.nn.presets import preset


def project_out_ones(x: torch.Tensor) -> torch.Tensor:
    """Pi(x) = x - mean(x) 1: the projection onto the hyperplane orthogonal to the all-ones
    vector. x (..., d) -> (..., d)."""
    return x - x.mean(-1, keepdim=True)


def scale_to_sphere(y: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """S(y) = sqrt(d) y / sqrt(||y||^2 + d eps) (= y / sqrt(mean(y^2) + eps)); with eps = 0 the
    output has norm sqrt(d). y (..., d) -> (..., d)."""
    return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)


class Unselectable(NamedTuple):
    """Result of :func:`unselectable_keys`: ``count`` of unselectable keys and ``mask`` (n,) bool
    (True = unselectable)."""

    count: int
    mask: np.ndarray


def _linprog():
    try:
        from scipy.optimize import linprog
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("unselectable_keys needs SciPy: pip install 'formers[sci]'") from e
    return linprog


def is_selectable(keys: np.ndarray, i: int) -> bool:
    """Whether key i can receive the strictly largest score q . k_i > q . k_j (all j != i) for
    some query q: the LP feasibility problem (arXiv 2305.02582, §4)

        find q in R^d  such that  q . (k_i - k_j) >= 1  for every j != i

    (zero objective, q unbounded; the margin 1 fixes the scale of the homogeneous strict system).
    Feasible <=> k_i is a vertex of the convex hull of the keys (not in the hull of the others).
    """
    k = np.asarray(keys, dtype=np.float64)
    n, d = k.shape
    if n == 1:
        return True
    others = np.delete(k, i, axis=0)
    # linprog form: A_ub q <= b_ub with A_ub = k_j - k_i and b_ub = -1
    res = _linprog()(c=np.zeros(d), A_ub=others - k[i], b_ub=-np.ones(n - 1),
                     bounds=[(None, None)] * d, method="highs")
    if res.status == 0:
        return True
    if res.status == 2:  # infeasible
        return False
    raise RuntimeError(f"is_selectable: the LP for key {i} ended with status {res.status}: {res.message}")


def unselectable_keys(keys: torch.Tensor | np.ndarray) -> Unselectable:
    """Count the keys that cannot receive the top attention score for any query.

    A key is unselectable iff it lies in the convex hull of the other keys (arXiv 2305.02582, §4,
    Tables 1-2); each key is decided by the LP of :func:`is_selectable` (SciPy HiGHS).

    Args:
        keys: (n, d) keys (a tensor is detached and moved to the CPU; computed in float64).
    Returns:
        :class:`Unselectable` (count, mask of shape (n,)).
    Raises:
        ValueError: ``keys`` not 2-D, empty, or not finite.
        ImportError: SciPy missing (extra ``[sci]``).

    Notes: exact duplicates of a key are all unselectable (no query puts one strictly above its
    copy); deduplicate first to ask about distinct vectors. The reference
    (tech-srl/layer_norm_expressivity_role, ``stollen_prob_search.py``, Gurobi) solves a Chebyshev
    variant with q bounded to [-100, 100]^d, which can also call a barely-extreme key unselectable;
    this LP has no bound on q.
    """
    if isinstance(keys, torch.Tensor):
        keys = keys.detach().to("cpu", torch.float64).numpy()
    k = np.asarray(keys, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] == 0:
        raise ValueError(f"unselectable_keys: keys must be (n, d) with n >= 1, got shape {k.shape}")
    if not np.isfinite(k).all():
        raise ValueError("unselectable_keys: keys must be finite")
    mask = np.array([not is_selectable(k, i) for i in range(k.shape[0])], dtype=bool)
    return Unselectable(int(mask.sum()), mask)


def query_angle_to_ones(queries: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor) -> torch.Tensor:
    """The angle (degrees, in [0, 90]) between each query *as seen by the keys* and the all-ones
    vector: a = q W_Q^T W_K (so q_proj . k_proj = a . x_key), angle = 90 - |acos(cos(a, 1)) - 90|.
    The majority experiment's diagnostic (arXiv 2305.02582, §3, Fig. 2; reference
    ``majority_exp.py``): with the projection the angle converges towards 0 (uniform attention).

    Args:
        queries: (..., d) normalised inputs of the attention. w_q, w_k: (d_head_total, d) weights
            of the query and key projections (``nn.Linear.weight``).
    Returns:
        (...,) angles in degrees.
    """
    a = queries @ w_q.T @ w_k
    cos = torch.nn.functional.cosine_similarity(a, torch.ones_like(a), dim=-1)
    ang = torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))
    return 90.0 - (ang - 90.0).abs()


@preset("ln-no-projection", _LN_GEOMETRY,
        "every LayerNorm without its projection (norm 'layernorm-scale-only'; LN paper's WITHOUT_PROJ)")
def ln_no_projection(c: ModelConfig) -> ModelConfig:
    return c.replace(norm="layernorm-scale-only")


@preset("ln-no-scale", _LN_GEOMETRY,
        "every LayerNorm without its scaling (norm 'layernorm-projection-only')")
def ln_no_scale(c: ModelConfig) -> ModelConfig:
    return c.replace(norm="layernorm-projection-only")


__all__ = ["Unselectable", "is_selectable", "project_out_ones", "query_angle_to_ones",
           "scale_to_sphere", "unselectable_keys"]
