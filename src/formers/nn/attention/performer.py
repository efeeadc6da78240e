"""Performer / FAVOR+ attention (Choromanski et al., "Rethinking Attention with Performers",
ICLR 2021, arXiv 2009.14794): softmax attention estimated with positive orthogonal random
features.

Softmax kernel (§2.2, Lemma 1): with q, k scaled by d^(-1/4) (so q.k carries the usual 1/sqrt(d)),

    exp(q . k) = E_w[ phi(q) . phi(k) ],   phi(x) = exp(W x - |x|^2 / 2) / sqrt(m),

w_1..w_m ~ N(0, I_d). FAVOR+ (§2.3-2.4) draws W in blocks of d mutually orthogonal rows (QR of a
Gaussian matrix, Haar-corrected signs), each row rescaled by the norm of an independent Gaussian
vector so each row is still marginally N(0, I_d) (the reference's ``scaling=0``); the estimate
stays unbiased and its variance falls (Theorem 2). Attention is then the linear-attention ratio
out_i = phi(q_i)^T sum_j phi(k_j) v_j^T / phi(q_i)^T sum_j phi(k_j), bidirectional or causal
(prefix sums, :func:`~formers.nn.attention.linear.causal_scan`), O(n m d) instead of O(n^2 d).

Random features: ``projection`` (m, head_dim) is a persistent buffer (saved with the model) drawn
by a generator seeded with (``seed``, number of redraws), so it is a pure function of the
module's seed and redraw count: cached decoding uses exactly the features of the full forward, and
:meth:`PerformerAttention.redraw` changes them deterministically. ``redraw_interval`` = r > 0
redraws every r training-mode forward calls (the reference's ``feature_redraw_interval``; never in
eval mode). All heads share one draw (as in the reference code).

Numerical stabilisation (deviation from the reference code, exact in real arithmetic): the
reference subtracts each query's max over features (cancels in the ratio) and, for keys, the max
over *all keys of the sequence*, which makes a causal output depend on future keys through eps and
breaks cached decoding. Here the key exponent is shifted by the data-independent -|w_r|^2 / 4 and
the query exponent by +|w_r|^2 / 4 minus its row max: each product phi_r(q) phi_r(k) is unchanged
up to a per-query factor that cancels between numerator and denominator. No eps is added to the
features; the denominator is only kept away from exact zero (a query that sees no key gives 0).

Options: ``n_features`` m (None = round(head_dim * ln head_dim), Theorem 4's Theta(d log d), as
in the reference), ``orthogonal`` (True; False = iid Gaussian rows), ``redraw_interval`` (0 =
never), ``seed`` (None = drawn from the global torch RNG at construction, so each layer differs
and ``torch.manual_seed`` fixes them), ``chunk_size`` (64), ``backend`` (``auto`` | ``reference``
= the explicit O(n^2) form over the same features).

Positions: RoPE rotates q and k *before* the feature map, so FAVOR+ estimates exactly
softmax-with-RoPE attention (exp(R_i q . R_j k), relative in expectation). Learned / sinusoidal /
none positions are the backbone's; ALiBi is refused (no score matrix). Padding masks zero the
masked keys' features. GQA repeats key/value heads; no attention dropout; no cross-attention.
"""

from __future__ import annotations

import math

import torch

from formers.nn.attention.linear import FeatureAttention
from formers.nn.config import ModelConfig
from formers.nn.presets import preset, with_attention
from formers.registry import Capabilities, Paper, register

PAPER = Paper("Rethinking Attention with Performers", "2009.14794",
              "§2.3-2.4 FAVOR+ (Lemma 1 positive random features, orthogonal features), eq. 4")


def random_projection(m: int, d: int, seed: int, orthogonal: bool = True) -> torch.Tensor:
    """(m, d) float64 random feature matrix, a pure function of (m, d, seed, orthogonal).

    Orthogonal: ceil(m / d) blocks, each the Q of a QR decomposition of a d x d Gaussian matrix
    (signs fixed by diag(R) so Q is Haar distributed), rows kept in order and cut to m; every row
    then scaled by the norm of an independent N(0, I_d) vector (so each row is marginally
    N(0, I_d) and rows within a block are exactly orthogonal). iid: plain Gaussian rows.
    """
    g = torch.Generator().manual_seed(int(seed) % (2 ** 63))
    if not orthogonal:
        return torch.randn(m, d, generator=g, dtype=torch.float64, device="cpu")
    gauss = torch.randn(-(-m // d), d, d, generator=g, dtype=torch.float64, device="cpu")
    qm, r = torch.linalg.qr(gauss)                                   # one QR per block
    qm = qm * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    w = qm.transpose(-1, -2).reshape(-1, d)[:m]
    norms = torch.randn(m, d, generator=g, dtype=torch.float64, device="cpu").norm(dim=1, keepdim=True)
    return w * norms


def softmax_kernel_features(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The unbiased positive random features phi(x) = exp(W x - |x|^2/2) / sqrt(m), so that
    E[phi(x) . phi(y)] = exp(x . y) (Lemma 1). x: (..., d), w: (m, d) -> (..., m)."""
    m = w.shape[0]
    return torch.exp(x @ w.T.to(x.dtype) - 0.5 * (x * x).sum(-1, keepdim=True)) / math.sqrt(m)


def _mix_seed(seed: int, count: int) -> int:
    return (int(seed) * 0x9E3779B97F4A7C15 + int(count) * 0xBF58476D1CE4E5B9 + 1) % (2 ** 63)


@register(
    "attention",
    "performer",
    paper=PAPER,
    caps=Capabilities(kv_cache=True, state_cache=True, score_bias=False,
                      backend="FAVOR+ features; chunked prefix-sum scan (causal), two matmuls "
                              "(bidirectional); reference: explicit O(n^2) form"),
    summary="Performer FAVOR+: positive orthogonal random features for softmax, redraw, O(1) decoding",
)
class PerformerAttention(FeatureAttention):
    """FAVOR+ softmax-kernel attention (arXiv 2009.14794 §2.3-2.4).

    Shapes: x (batch, seq_len, d_model) -> (batch, seq_len, d_model); per head q, k, v (batch,
    n_heads, seq_len, head_dim); features (batch, n_heads, seq_len, m); ``projection`` (m,
    head_dim); decoding state S (batch, n_heads, m, head_dim), z (batch, n_heads, m).
    Complexity: time O(n m d), memory O(n m + n m d / C) (C = chunk_size); decoding O(m d) per
    token. The explicit reference is O(n^2 m).

    Methods: :meth:`redraw` draws the next feature matrix (deterministic in (seed, redraw count)).
    Options: ``n_features``, ``orthogonal``, ``redraw_interval``, ``seed``, ``chunk_size``,
    ``backend`` (see the module docstring, which also states the deviations).
    """

    name = "performer"

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True, n_features: int | None = None, orthogonal: bool = True,
                 redraw_interval: int = 0, seed: int | None = None, chunk_size: int = 64) -> None:
        super().__init__(cfg, cross=cross, backend=backend, own_values=own_values,
                         chunk_size=chunk_size)
        d = cfg.head_dim
        if n_features is None:
            n_features = max(1, round(d * math.log(d)))
        if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
            raise ValueError(f"performer: n_features must be an int >= 1 or None, got {n_features!r}")
        if not isinstance(orthogonal, bool):
            raise ValueError(f"performer: orthogonal must be True or False, got {orthogonal!r}")
        if isinstance(redraw_interval, bool) or not isinstance(redraw_interval, int) or redraw_interval < 0:
            raise ValueError(f"performer: redraw_interval must be an int >= 0 (0 = never), "
                             f"got {redraw_interval!r}")
        if seed is None:
            seed = int(torch.randint(0, 2 ** 62, (1,), device="cpu"))
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"performer: seed must be an int >= 0 or None, got {seed!r}")
        self.n_features, self.orthogonal, self.redraw_interval = n_features, orthogonal, redraw_interval
        self.register_buffer("seed", torch.tensor(seed, dtype=torch.int64))
        self.register_buffer("n_redraws", torch.tensor(0, dtype=torch.int64))
        # drawn from the int seed (not the buffer), so the module also builds on the meta device
        self.register_buffer("projection", random_projection(
            n_features, d, _mix_seed(seed, 0), orthogonal).float())
        self._calls = 0

    def _draw(self, count: int) -> torch.Tensor:
        return random_projection(self.n_features, self.head_dim, _mix_seed(int(self.seed), count),
                                 self.orthogonal)

    @torch.no_grad()
    def redraw(self) -> None:
        """Draw the next feature matrix: projection = f(seed, n_redraws + 1). Deterministic, so two
        modules with the same seed that redraw equally often hold the same features. A decoding
        cache built with the old features is stale after a redraw."""
        self.n_redraws += 1
        self.projection.copy_(self._draw(int(self.n_redraws)).to(self.projection))

    def features(self, q, k, pos, ctx):
        if ctx.position is not None:  # RoPE before the feature map (identity for other schemes)
            q, k = ctx.position.rotate(q, pos), ctx.position.rotate(k, pos)
        if self.training and self.redraw_interval:
            self._calls += 1
            if self._calls % self.redraw_interval == 0:
                self.redraw()
        scale = self.head_dim ** -0.25
        q, k = q * scale, k * scale
        w = self.projection.to(q.dtype)
        shift = 0.25 * (w * w).sum(-1)                                    # |w_r|^2 / 4, (m,)
        pq = q @ w.T - 0.5 * (q * q).sum(-1, keepdim=True) + shift
        pq = pq - pq.amax(-1, keepdim=True).detach()                      # cancels in the ratio
        pk = k @ w.T - 0.5 * (k * k).sum(-1, keepdim=True) - shift
        inv = 1.0 / math.sqrt(self.n_features)
        fq, fk = torch.exp(pq) * inv, torch.exp(pk) * inv
        return fq, fk, fq, fk

    def divide(self, num, den):
        return num / den.clamp_min(torch.finfo(den.dtype).tiny)[..., None]

    def feature_dim(self) -> int:
        return self.n_features

    def feature_flops(self, seq_len: int) -> float:
        """q W^T and k W^T: 2 x 2 n m head_dim per head."""
        return 4.0 * seq_len * self.n_features * self.head_dim * self.n_heads

    def extra_repr(self) -> str:
        return (f"n_features={self.n_features}, orthogonal={self.orthogonal}, "
                f"redraw_interval={self.redraw_interval}, seed={int(self.seed)}")


@preset("performer", PAPER, "baseline with Performer FAVOR+ attention in every layer")
def performer_preset(c: ModelConfig) -> ModelConfig:
    return with_attention(c, "performer")


__all__ = ["PerformerAttention", "random_projection", "softmax_kernel_features"]
