"""Pathformer: multi-scale transformers with adaptive pathways, as a forecaster.

Paper: Chen, Zhang, Cheng, Shu, Wang, Wen, Yang, Guo, "Pathformer: Multi-scale Transformers with
Adaptive Pathways for Time Series Forecasting", ICLR 2024, arXiv 2402.05956. Section 3.1
(multi-scale division, dual attention: intra-patch and inter-patch), Section 3.2 (adaptive
pathways: multi-scale router with seasonality/trend decomposition, noisy top-k gating, multi-scale
aggregator, load-balancing loss), Section 3 "predictor" (a linear head) and the RevIN input
normalisation. The reference code (``decisionintelligence/pathformer``, commit ea85d82,
``models/PathFormer.py``, ``layers/AMS.py``, ``layers/Layer.py``, ``utils/Other.py``) was read for
the details the paper leaves open; this file is an independent implementation.

Data flow, ``x: (batch, look_back, n_channels)``::

    RevIN(norm) -> Linear(1 -> d_model) per scalar            (B, L, C, d)
    -> n_layers x AMS block:
         router:   x[..., 0] + seasonality(DFT top-f) + trend(multi-kernel moving average)
                   -> Linear(C -> 1) -> (B, L) -> logits = . @ W_gate (+ noise in training)
                   -> keep top-k logits, softmax over them -> gates (B, E), k non-zeros, sum 1
         experts:  one dual-attention transformer layer per patch size P (n = L / P patches)
                   intra: a learnable query per patch attends to that patch's P tokens
                          (keys/values from per-channel generated weights, 2 heads), shared
                          ReLU MLP, then Linear(n -> L) back to time steps
                   inter: patches flattened to P*d tokens, Linear + learned position,
                          multi-head attention (d_model heads of size P) across the n patches
                   out = x + intra + inter -> dropout -> + FF(d -> d_ff -> d, GELU)
         aggregate: sum_e gates_e * expert_e(x)  (+ x if residual_connection)
    -> flatten (L * d) per channel -> Linear -> horizon -> RevIN(denorm)   (B, H, C)

The balance loss of every block (``balance_coef * (cv^2(importance) + cv^2(load))``, importance =
gates summed over the batch, load = the number of samples routed to each expert, or its smooth
noisy-gating estimate in training, Shazeer et al. 2017) is summed over the blocks and returned by
:meth:`Pathformer.aux_loss` after each forward; the training loss is ``prediction + aux_loss()``
(the reference trains with L1 for the prediction).

Decisions and deviations (each is a named config option where the reference differs):

* ``inter_layout`` (the reference's variable/time mixing reshape). The reference reshapes the
  inter-patch output from ``(batch, n_channels, n_patches, P, d)`` straight to
  ``(batch, L, n_channels, d)`` without moving the channel axis, so for ``n_channels > 1`` time
  steps of one channel land on other channels (variables and time are mixed). The paper describes
  per-channel attention over patches of that channel's own series; ``"paper"`` (default) permutes
  back to ``(batch, n_patches, P, n_channels, d)`` before the reshape. ``"reference"`` reproduces
  the raw reshape for comparisons with published numbers. With one channel both agree.
* ``combine`` (how the aggregator mixes expert outputs). The paper's aggregator is the weighted
  sum ``sum_e R_e(X) T_e(X)``; ``"sum"`` (default) does that. The reference's dispatcher (copied
  from a log-space mixture of experts) combines ``log(sum_e g_e exp(T_e(X)))`` with exact zeros
  replaced by float eps before the log; ``"reference_log"`` reproduces it.
* The router reads feature 0 of the ``d_model`` embedding (as the reference does) before the
  decomposition; the gate and noise weights start at zero (as the reference), so at
  initialisation all logits tie and ``topk`` picks the lowest indices in evaluation.
* The inter-patch token flattens each patch as ``(P, d)`` (time-major) on input and output;
  the reference flattens ``(d, P)`` on input and reads ``(P, d)`` on output. The embedding linear
  makes these the same family of functions (a fixed permutation of its weight).
* Per-channel ("distinct") key/value weights of the intra-patch attention are generated from a
  learnable per-channel memory by a small tanh MLP, as in the reference's factorised weight
  generator (memory 16, hidden 64, rank 10); the query is the raw learnable patch embedding.
* BatchNorm (``batch_norm=0`` in the published scripts) is not offered.
* RevIN: ``formers.timeseries.revin.RevIN`` with ``affine=False`` (the reference's ``revin=1``
  with ``affine=False``): statistics per window and channel, population variance, eps 1e-5.
* Initial output scale: untrained, the forecast lies about 4 window standard deviations from the
  window mean (ETTh1 H 96: test MSE about 10, against 1.1 for predicting zero), and the reference
  starts the same way. Every expert adds its input back (``x + intra + inter``) and with
  ``residual_connection`` the block adds it again, so each block doubles the stream (8x over 3
  blocks). An independent rewrite of the reference's forward with its initialisation has the same
  per-block scales over 20 seeds, and with our weights copied in it gives our outputs (to 6e-6)
  under ``inter_layout="reference"``, ``combine="reference_log"``. Training removes it.

Errors (all at construction, from :class:`PathformerConfig`): ``ValueError`` naming the field
and value for a patch size that does not divide ``look_back``, ``k`` outside ``[1, experts]``,
``d_model`` not divisible by ``intra_heads``, non-positive sizes, too many DFT frequencies, and
unknown option names; at call time a ``ValueError`` for an input of the wrong shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from formers.config import check_choice, check_positive
from formers.nn.attention.core import attend
from formers.registry import Paper, register
from formers.timeseries.forecaster import ForecasterConfig, check_input
from formers.timeseries.recipe import ForecastRecipe
from formers.timeseries.revin import RevIN

PAPER = Paper("Pathformer: Multi-scale Transformers with Adaptive Pathways for Time Series Forecasting",
              "2402.05956", "Sections 3.1-3.2 (multi-scale division, dual attention, adaptive pathways)")

# The published ETTh1 patch lists (scripts/multivariate/ETTh1.sh, horizons 96/192/720): 3 layers x 4 experts.
DEFAULT_PATCH_SIZES = ((16, 12, 8, 32), (12, 8, 6, 4), (8, 6, 4, 2))


def _default_patch_sizes() -> list[list[int]]:
    return [list(p) for p in DEFAULT_PATCH_SIZES]


@dataclass
class PathformerConfig(ForecasterConfig):
    """Shape and options of :class:`Pathformer` (defaults: the ETTh1, L = 96, H = 96 script).

    model: the registry name, "pathformer".  look_back: input length L.  horizon: output length H.
    n_channels: variables C.
    patch_sizes: one list per AMS layer, one patch size (expert) per entry; each must divide L.
    k: experts kept per sample by the router (1 <= k <= experts of every layer).
    d_model, d_ff: embedding width per scalar and feed-forward width.
    residual_connection: add the block input to the aggregated expert output.
    revin: reversible instance normalisation (non-affine) around the network.
    noisy_gating, noise_epsilon: Gaussian gate noise with std softplus(x W_noise) + noise_epsilon,
        in training mode only.
    balance_coef: weight of each layer's balance loss (the reference's 1e-2).
    balance_load_term: include cv^2(load) next to cv^2(importance) (the reference does).
    n_frequencies: top DFT frequencies kept by the router's seasonality part.
    trend_kernels: moving-average kernel sizes of the router's trend part.
    intra_heads, intra_query_dim: heads of intra-patch attention; width of the learnable query
        before its per-patch Linear(intra_query_dim -> d_model).
    node_mem_dim, node_hidden, node_rank: per-channel weight generator (memory width, MLP width,
        rank of the generated d x d matrices).
    dropout: after embedding/attention/combination (0.1); ff_dropout: inside the FF (0.2).
    inter_layout: "paper" (default) or "reference" (the variable/time mixing reshape).
    combine: "sum" (paper, default) or "reference_log" (log-space mixture of the reference).
    """

    model: str = "pathformer"
    patch_sizes: list[list[int]] = field(default_factory=_default_patch_sizes)
    k: int = 3
    d_model: int = 4
    d_ff: int = 64
    residual_connection: bool = True
    revin: bool = True
    noisy_gating: bool = True
    noise_epsilon: float = 1e-2
    balance_coef: float = 1e-2
    balance_load_term: bool = True
    n_frequencies: int = 3
    trend_kernels: list[int] = field(default_factory=lambda: [4, 8, 12])
    intra_heads: int = 2
    intra_query_dim: int = 16
    node_mem_dim: int = 16
    node_hidden: int = 64
    node_rank: int = 10
    dropout: float = 0.1
    ff_dropout: float = 0.2
    inter_layout: Literal["paper", "reference"] = "paper"
    combine: Literal["sum", "reference_log"] = "sum"

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        for f in ("k", "d_model", "d_ff", "n_frequencies",
                  "intra_heads", "intra_query_dim", "node_mem_dim", "node_hidden", "node_rank"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"{name}.{f} = {v!r} ({type(v).__name__}) is not a valid int")
        check_positive(name, k=self.k, d_model=self.d_model, d_ff=self.d_ff, n_frequencies=self.n_frequencies,
                       intra_heads=self.intra_heads, intra_query_dim=self.intra_query_dim,
                       node_mem_dim=self.node_mem_dim, node_hidden=self.node_hidden,
                       node_rank=self.node_rank, noise_epsilon=self.noise_epsilon)
        if not self.balance_coef >= 0:
            raise ValueError(f"{name}.balance_coef must be >= 0, got {self.balance_coef!r}")
        for f in ("dropout", "ff_dropout"):
            v = getattr(self, f)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name}.{f} must be in [0, 1), got {v!r}")
        check_choice(name, "inter_layout", self.inter_layout, ("paper", "reference"))
        check_choice(name, "combine", self.combine, ("sum", "reference_log"))
        if not isinstance(self.patch_sizes, (list, tuple)) or not self.patch_sizes:
            raise ValueError(f"{name}.patch_sizes must be a non-empty list of per-layer lists, got {self.patch_sizes!r}")
        for i, layer in enumerate(self.patch_sizes):
            if not isinstance(layer, (list, tuple)):
                raise ValueError(f"{name}.patch_sizes[{i}] = {layer!r} is not a list of patch sizes "
                                 f"(patch_sizes holds one list per layer, e.g. [[16, 12, 8, 32], [12, 8, 6, 4]])")
        self.patch_sizes = [list(layer) for layer in self.patch_sizes]
        for i, layer in enumerate(self.patch_sizes):
            if not layer:
                raise ValueError(f"{name}.patch_sizes[{i}] is empty; every layer needs at least one patch size")
            for p in layer:
                if not isinstance(p, int) or isinstance(p, bool) or p <= 0:
                    raise ValueError(f"{name}.patch_sizes[{i}] holds {p!r}; patch sizes are positive ints")
                if self.look_back % p:
                    raise ValueError(
                        f"{name}.patch_sizes[{i}]: patch size {p} does not divide look_back = {self.look_back}; "
                        f"allowed sizes are the divisors of {self.look_back}: "
                        f"{[q for q in range(1, self.look_back + 1) if self.look_back % q == 0]}")
            if self.k > len(layer):
                raise ValueError(f"{name}.k = {self.k} exceeds the {len(layer)} experts of patch_sizes[{i}] = {layer}")
        if self.d_model % self.intra_heads:
            raise ValueError(f"{name}.d_model = {self.d_model} is not divisible by intra_heads = {self.intra_heads}")
        n_freq = _usable_frequencies(self.look_back)
        if self.n_frequencies > n_freq:
            raise ValueError(f"{name}.n_frequencies = {self.n_frequencies} exceeds the {n_freq} non-constant, "
                             f"non-Nyquist DFT frequencies of look_back = {self.look_back}")
        if not isinstance(self.trend_kernels, (list, tuple)) or not self.trend_kernels:
            raise ValueError(f"{name}.trend_kernels must be a non-empty list of ints, got {self.trend_kernels!r}")
        self.trend_kernels = list(self.trend_kernels)
        for kk in self.trend_kernels:
            if not isinstance(kk, int) or isinstance(kk, bool) or kk <= 0:
                raise ValueError(f"{name}.trend_kernels holds {kk!r}; kernel sizes are positive ints")


def etth1_config(horizon: int = 96, n_channels: int = 7, **overrides) -> PathformerConfig:
    """The published ETTh1 configuration for look-back 96 (``scripts/multivariate/ETTh1.sh``).

    Horizon 96/192: patch lists [16,12,8,32 | 12,8,6,4 | 8,6,4,2], k 3, residual on;
    336: [16,12,8,32 | 12,8,6,16 | 8,6,4,16], k 3, residual off; 720: the first lists, k 2,
    residual off. d_model 4, d_ff 64. The script's training (not part of the config): L1 loss +
    ``aux_loss()``, Adam lr 5e-4 with OneCycleLR (pct_start 0.4), 30 epochs, patience 10,
    batch 128 (H 96/192) or 512 (H 336/720), test loader with ``drop_last=True``.
    Other horizons get the 96 settings. ``overrides`` replace any field.
    """
    fields = dict(look_back=96, horizon=horizon, n_channels=n_channels, **_etth1_fields(horizon))
    fields.update(overrides)
    return PathformerConfig(**fields)


def _etth1_fields(horizon: int) -> dict:
    """The model fields of the published ETTh1 script at ``horizon`` (see :func:`etth1_config`)."""
    sizes: list[list[int]] = _default_patch_sizes()
    k, residual = 3, True
    if horizon == 336:
        sizes, residual = [[16, 12, 8, 32], [12, 8, 6, 16], [8, 6, 4, 16]], False
    elif horizon == 720:
        k, residual = 2, False
    return dict(patch_sizes=sizes, k=k, residual_connection=residual, d_model=4, d_ff=64)


def _usable_frequencies(length: int) -> int:
    """rfft bins of a length-``length`` series without the constant bin and (even length) Nyquist."""
    return length // 2 - 1 if length % 2 == 0 else (length - 1) // 2


# ----------------------------------------------------------------------------------------------
# Router: seasonality and trend decomposition, noisy top-k gating, balance loss
# ----------------------------------------------------------------------------------------------
def seasonality(x: torch.Tensor, n_frequencies: int) -> torch.Tensor:
    """The part of ``x: (batch, time, channels)`` carried by its ``n_frequencies`` strongest DFT
    frequencies (per batch element and channel), the constant and Nyquist bins excluded.

    Paper Section 3.2 (seasonality decomposition: DFT, keep the top-K_f amplitudes, inverse DFT).
    Returns ``(batch, time, channels)``.
    """
    t = x.shape[1]
    spec = torch.fft.rfft(x, dim=1)  # (B, t//2+1, C)
    keep = _usable_frequencies(t)
    band = spec[:, 1:1 + keep]  # drop DC (and Nyquist for even t)
    idx = band.abs().topk(n_frequencies, dim=1).indices  # (B, f, C)
    mask = torch.zeros_like(band.real, dtype=torch.bool).scatter_(1, idx, True)
    kept = torch.zeros_like(spec)
    kept[:, 1:1 + keep] = torch.where(mask, band, torch.zeros_like(band))
    return torch.fft.irfft(kept, n=t, dim=1)


class TrendDecomposition(nn.Module):
    """Multi-kernel moving average (paper Section 3.2, trend decomposition).

    Each kernel size ``s`` averages a window over time with edge replication (``s - 1 - (s-1)//2``
    copies of the first step in front, ``(s-1)//2`` copies of the last at the end, so the output
    keeps the length); the averages are mixed per scalar by softmax(Linear(1 -> n_kernels)(x)).
    ``x: (batch, time, channels) -> (batch, time, channels)``.
    """

    def __init__(self, kernels: list[int]) -> None:
        super().__init__()
        self.kernels = list(kernels)
        self.mix = nn.Linear(1, len(self.kernels))

    def moving_average(self, x: torch.Tensor, s: int) -> torch.Tensor:
        front, end = s - 1 - (s - 1) // 2, (s - 1) // 2
        xp = torch.cat([x[:, :1].expand(-1, front, -1), x, x[:, -1:].expand(-1, end, -1)], dim=1)
        return F.avg_pool1d(xp.transpose(1, 2), kernel_size=s, stride=1).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avgs = torch.stack([self.moving_average(x, s) for s in self.kernels], dim=-1)  # (B, T, C, K)
        w = torch.softmax(self.mix(x.unsqueeze(-1)), dim=-1)
        return (avgs * w).sum(-1)


def cv_squared(v: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation ``var(v) / (mean(v)^2 + 1e-10)`` (unbiased variance, as
    the reference); 0 for a single expert. ``v: (experts,)`` -> scalar."""
    if v.numel() <= 1:
        return v.new_zeros(())
    v = v.float()
    return v.var() / (v.mean() ** 2 + 1e-10)


class MultiScaleRouter(nn.Module):
    """Noisy top-k router over the patch sizes of one AMS layer (paper Section 3.2).

    ``forward(x: (batch, L, C, d))`` returns ``(gates, load)``: gates ``(batch, experts)`` with
    exactly ``k`` non-zeros per row summing to 1 (softmax over the top-k logits); load
    ``(experts,)``: samples per expert, or in training with noise the smooth estimate
    sum_b P(expert in top-k | other noise) of Shazeer et al. (2017).
    Noise is drawn only when ``self.training`` and ``noisy_gating``; evaluation is deterministic.
    """

    def __init__(self, look_back: int, n_channels: int, n_experts: int, k: int, *, noisy_gating: bool,
                 noise_epsilon: float, n_frequencies: int, trend_kernels: list[int]) -> None:
        super().__init__()
        self.k, self.n_experts = k, n_experts
        self.noisy_gating, self.noise_epsilon, self.n_frequencies = noisy_gating, noise_epsilon, n_frequencies
        self.trend = TrendDecomposition(trend_kernels)
        self.channel_pool = nn.Linear(n_channels, 1)
        self.w_gate = nn.Parameter(torch.zeros(look_back, n_experts))
        self.w_noise = nn.Parameter(torch.zeros(look_back, n_experts))

    def decompose(self, x: torch.Tensor) -> torch.Tensor:
        """x_trans = x + seasonality(x) + trend(x) on feature 0: (B, L, C, d) -> (B, L, C)."""
        s = x[..., 0]
        return s + seasonality(s, self.n_frequencies) + self.trend(s)

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(clean, noisy or None, noise std or None), each (batch, experts)."""
        h = self.channel_pool(self.decompose(x)).squeeze(-1)  # (B, L)
        clean = h @ self.w_gate
        if self.noisy_gating and self.training:
            std = F.softplus(h @ self.w_noise) + self.noise_epsilon
            return clean, clean + torch.randn_like(clean) * std, std
        return clean, None, None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clean, noisy, std = self.logits(x)
        logits = clean if noisy is None else noisy
        m = min(self.k + 1, self.n_experts)
        top_vals, top_idx = logits.topk(m, dim=1)
        gates = torch.zeros_like(logits).scatter(1, top_idx[:, :self.k], torch.softmax(top_vals[:, :self.k], dim=1))
        if noisy is not None and self.k < self.n_experts:
            load = self._prob_in_top_k(clean, noisy, std, top_vals).sum(0)
        else:
            load = (gates > 0).sum(0).to(gates.dtype)
        return gates, load

    def _prob_in_top_k(self, clean: torch.Tensor, noisy: torch.Tensor, std: torch.Tensor,
                       top_vals: torch.Tensor) -> torch.Tensor:
        # An expert inside the top-k stays in if its clean logit + fresh noise beats the (k+1)-th
        # noisy logit; one outside gets in if it beats the k-th.
        thr_in = top_vals[:, self.k:self.k + 1]
        thr_out = top_vals[:, self.k - 1:self.k]
        normal = torch.distributions.Normal(clean.new_zeros(()), clean.new_ones(()))
        p_in = normal.cdf((clean - thr_in) / std)
        p_out = normal.cdf((clean - thr_out) / std)
        return torch.where(noisy > thr_in, p_in, p_out)


# ----------------------------------------------------------------------------------------------
# Dual attention (one expert per patch size)
# ----------------------------------------------------------------------------------------------
class ChannelWeightGenerator(nn.Module):
    """``count`` per-channel d x d weights and d biases generated from a learnable channel memory.

    memory m_c (mem_dim) -> tanh MLP -> M_c (rank x rank); W_c = P M_c Q, b_c = vec(M_c) B.
    Returns (weights: (count, C, d, d), biases: (count, C, d)).
    """

    def __init__(self, d: int, n_channels: int, count: int, mem_dim: int, hidden: int, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.memory = nn.Parameter(torch.randn(n_channels, mem_dim))
        self.mlp = nn.Sequential(nn.Linear(mem_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, rank * rank))
        self.P = nn.Parameter(torch.empty(count, d, rank))
        self.Q = nn.Parameter(torch.empty(count, rank, d))
        self.B = nn.Parameter(torch.empty(count, rank * rank, d))
        for t in (self.P, self.Q, self.B):
            for i in range(count):
                nn.init.kaiming_uniform_(t.data[i], a=math.sqrt(5))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        mem = self.mlp(self.memory)  # (C, r*r)
        bias = torch.einsum("cs,nsd->ncd", mem, self.B)
        m = mem.view(-1, self.rank, self.rank)
        weight = torch.einsum("nir,crs,nsj->ncij", self.P, m, self.Q)
        return weight, bias


class DualAttentionLayer(nn.Module):
    """One expert: intra-patch and inter-patch attention at patch size ``patch`` (paper Section 3.1).

    ``forward(x: (batch, L, C, d)) -> (batch, L, C, d)``. ``intra(x)`` and ``inter(x)`` expose the
    two paths (same shapes) for tests and the explainer.
    """

    def __init__(self, cfg: PathformerConfig, patch: int) -> None:
        super().__init__()
        L, C, d = cfg.look_back, cfg.n_channels, cfg.d_model
        self.patch, self.n_patches, self.d, self.heads = patch, L // patch, d, cfg.intra_heads
        self.inter_layout = cfg.inter_layout
        n = self.n_patches
        # intra-patch: a learnable query per (patch, channel), mapped by a per-patch Linear(q -> d)
        self.query_seed = nn.Parameter(torch.rand(n, C, cfg.intra_query_dim))
        bound = 1.0 / math.sqrt(cfg.intra_query_dim)
        self.query_w = nn.Parameter(torch.empty(n, cfg.intra_query_dim, d).uniform_(-bound, bound))
        self.query_b = nn.Parameter(torch.empty(n, d).uniform_(-bound, bound))
        self.kv_weights = ChannelWeightGenerator(d, C, 2, cfg.node_mem_dim, cfg.node_hidden, cfg.node_rank)
        self.intra_mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.intra_to_time = nn.Linear(n, L)
        # inter-patch: PatchTST-style attention over the n patches, d heads of size P
        width = patch * d
        self.inter_embed = nn.Linear(width, width)
        self.inter_pos = nn.Parameter(torch.empty(n, width).uniform_(-0.02, 0.02))
        self.inter_qkv = nn.Linear(width, 3 * width)
        self.inter_out = nn.Linear(width, width)
        self.drop = nn.Dropout(cfg.dropout)
        self.ff = nn.Sequential(nn.Linear(d, cfg.d_ff), nn.GELU(), nn.Dropout(cfg.ff_dropout), nn.Linear(cfg.d_ff, d))

    def queries(self) -> torch.Tensor:
        """The learnable intra-patch queries, (n_patches, C, d)."""
        return torch.einsum("ncq,nqd->ncd", self.query_seed, self.query_w) + self.query_b[:, None, :]

    def intra(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C, d = x.shape
        n, P, h = self.n_patches, self.patch, self.heads
        q = self.queries()  # (n, C, d)
        w, b = self.kv_weights()  # (2, C, d, d), (2, C, d): key and value maps per channel
        # the tokens of patch i are [query_i, its P steps]; the query's key and value do not depend
        # on the sample, so they are computed once, and keys and values in one contraction each
        kv_q = torch.einsum("ncd,kcde->knce", q, w) + b[:, None]  # (2, n, C, d)
        kv_x = torch.einsum("bnpcd,kcde->kbncpe", x.reshape(B, n, P, C, d), w) + b[:, None, None, :, None]
        kv = torch.cat([kv_q[:, None, :, :, None].expand(2, B, n, C, 1, d), kv_x], dim=4)  # (2, B, n, C, P+1, d)
        hd = d // h
        # -> (B*n*C, heads, tokens, hd)
        qh = q.expand(B, n, C, d).reshape(B * n * C, 1, h, hd).transpose(1, 2)
        kh = kv[0].reshape(B * n * C, P + 1, h, hd).transpose(1, 2)
        vh = kv[1].reshape(B * n * C, P + 1, h, hd).transpose(1, 2)
        # one query per patch over P + 1 keys with heads of d / 2 (= 2): the explicit path of
        # ``attend`` is 2x faster than SDPA's kernels at this shape on CPU (same softmax)
        out, _ = attend(qh, kh, vh, backend="reference")  # (B*n*C, h, 1, hd)
        out = self.intra_mlp(out.transpose(1, 2).reshape(B, n, C, d))
        return self.intra_to_time(out.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)  # (B, L, C, d)

    def inter(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C, d = x.shape
        n, P = self.n_patches, self.patch
        width, heads = P * d, d
        z = x.reshape(B, n, P, C, d).permute(0, 3, 1, 2, 4).reshape(B * C, n, width)
        z = self.drop(self.inter_embed(z) + self.inter_pos)
        q, k, v = self.inter_qkv(z).view(B * C, n, 3, heads, P).permute(2, 0, 3, 1, 4)
        out, _ = attend(q, k, v)  # (B*C, heads, n, P)
        out = self.drop(self.inter_out(out.transpose(1, 2).reshape(B * C, n, width)))
        if self.inter_layout == "reference":
            return out.reshape(B, L, C, d)  # (B, C, n, P, d) memory read as (B, L, C, d): mixes C and time
        return out.view(B, C, n, P, d).permute(0, 2, 3, 1, 4).reshape(B, L, C, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(x + self.intra(x) + self.inter(x))
        return out + self.ff(out)


class AdaptiveMultiScaleBlock(nn.Module):
    """Router + one :class:`DualAttentionLayer` per patch size + aggregator (paper Section 3.2).

    ``forward(x: (batch, L, C, d)) -> (out: (batch, L, C, d), balance_loss: scalar)``. Only the
    samples a router sends to an expert are run through it. ``last_gates`` keeps the gates.
    """

    def __init__(self, cfg: PathformerConfig, patch_sizes: list[int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_sizes = list(patch_sizes)
        self.router = MultiScaleRouter(cfg.look_back, cfg.n_channels, len(patch_sizes), cfg.k,
                                       noisy_gating=cfg.noisy_gating, noise_epsilon=cfg.noise_epsilon,
                                       n_frequencies=cfg.n_frequencies, trend_kernels=cfg.trend_kernels)
        self.experts = nn.ModuleList(DualAttentionLayer(cfg, p) for p in patch_sizes)
        self.last_gates: torch.Tensor | None = None

    def balance_loss(self, gates: torch.Tensor, load: torch.Tensor) -> torch.Tensor:
        loss = cv_squared(gates.sum(0))
        if self.cfg.balance_load_term:
            loss = loss + cv_squared(load)
        return self.cfg.balance_coef * loss

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gates, load = self.router(x)
        self.last_gates = gates.detach()
        log_space = self.cfg.combine == "reference_log"
        acc = x.new_zeros(x.shape)
        for e, expert in enumerate(self.experts):
            idx = torch.nonzero(gates[:, e] > 0).squeeze(1)
            if idx.numel() == 0:
                continue
            y = expert(x.index_select(0, idx))
            g = gates.index_select(0, idx)[:, e].view(-1, 1, 1, 1)
            acc = acc.index_add(0, idx, g * (y.exp() if log_space else y))
        if log_space:
            acc = torch.where(acc == 0, torch.full_like(acc, torch.finfo(acc.dtype).eps), acc).log()
        if self.cfg.residual_connection:
            acc = acc + x
        return acc, self.balance_loss(gates, load)


@register("forecaster", "pathformer", config=PathformerConfig, paper=PAPER,
          summary="Pathformer: multi-scale patches, dual attention, adaptive pathways (noisy top-k router)")
class Pathformer(nn.Module):
    """Pathformer forecaster (Chen et al., ICLR 2024, arXiv 2402.05956).

    ``forward(x: (batch, look_back, n_channels)) -> (batch, horizon, n_channels)``;
    ``aux_loss()`` -> the summed, weighted balance loss of the last forward (a scalar tensor,
    0 before any forward); ``last_gates()`` -> the gates (batch, experts) of each layer.
    Raises ``ValueError`` for an input whose shape is not ``(batch, look_back, n_channels)``.
    See the module docstring for the architecture and the deviations from the reference code.
    """

    @staticmethod
    def recipe(horizon: int) -> ForecastRecipe:
        """The published ETTh1 script at ``horizon`` (other horizons get the 96 settings)."""
        return ForecastRecipe(
            source="decisionintelligence/pathformer scripts/multivariate/ETTh1.sh and exp_main.py "
                   "(commit ea85d82): L1 loss + balance loss, Adam lr 5e-4 with OneCycleLR (pct_start "
                   "0.4, stepped every batch), batch 128 (H 96/192) or 512 (H 336/720), 30 epochs, "
                   "early stopping patience 10 on the validation L1 loss, look-back 96, test loader "
                   "drop_last=True",
            batch_size=512 if horizon in (336, 720) else 128, lr=5e-4, epochs=30, patience=10,
            loss="mae", schedule="one_cycle", pct_start=0.4, min_lr_ratio=1 / (25 * 1e4),
            look_back=96, drop_last=True, model=_etth1_fields(horizon),
            choices="the last incomplete training batch of an epoch is kept (smaller), the reference "
                    "drops it; OneCycleLR's beta1 cycling (0.85-0.95) is not done (beta1 0.9); the "
                    "test set is scored in full, with the drop_last numbers beside it")

    def __init__(self, cfg: PathformerConfig) -> None:
        super().__init__()
        if not isinstance(cfg, PathformerConfig):
            raise TypeError(f"Pathformer expects a PathformerConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.revin = RevIN(cfg.n_channels, affine=False) if cfg.revin else None
        self.embed = nn.Linear(1, cfg.d_model)
        self.blocks = nn.ModuleList(AdaptiveMultiScaleBlock(cfg, sizes) for sizes in cfg.patch_sizes)
        self.head = nn.Linear(cfg.look_back * cfg.d_model, cfg.horizon)
        self._aux: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        check_input(self, x)
        if self.revin is not None:
            x, stats = self.revin(x)
        h = self.embed(x.unsqueeze(-1))  # (B, L, C, d)
        aux = h.new_zeros(())
        for block in self.blocks:
            h, loss = block(h)
            aux = aux + loss
        self._aux = aux
        B = h.shape[0]
        y = self.head(h.permute(0, 2, 1, 3).reshape(B, cfg.n_channels, -1)).transpose(1, 2)  # (B, H, C)
        if self.revin is not None:
            y = self.revin.inverse(y, stats)
        return y

    def aux_loss(self) -> torch.Tensor:
        if self._aux is None:
            return self.head.weight.new_zeros(())
        return self._aux

    def last_gates(self) -> list[torch.Tensor | None]:
        return [b.last_gates for b in self.blocks]
