"""Linear attention (Katharopoulos, Vyas, Pappas, Fleuret, "Transformers are RNNs: Fast
Autoregressive Transformers with Linear Attention", ICML 2020, arXiv 2006.16236), and the causal
machinery shared by the kernelised / recurrent mixers (:mod:`~formers.nn.attention.performer`,
:mod:`~formers.nn.attention.flow`).

Per head, with a positive feature map phi (here phi(x) = elu(x) + 1, paper §3.2 eq. 7):

    out_i = phi(q_i)^T S_i / (phi(q_i)^T z_i + eps),
    S_i = sum_{j in J(i)} phi(k_j) v_j^T   (feature_dim x head_dim),   z_i = sum_{j in J(i)} phi(k_j)

with J(i) every key (bidirectional, eq. 5) or the keys j <= i (causal, eq. 8-10 / §3.4: an RNN
whose state is (S, z)). ``eps`` = 1e-6 in the denominator as in the reference code
(idiap/fast-transformers ``LinearAttention``); there is no 1/sqrt(d) scale (it would cancel only
for a homogeneous feature map, which elu + 1 is not; the paper has none).

Shared causal machinery (used by all three mixers):

- :func:`causal_scan` computes num_i = a_i^T (S_0 + sum_{j<=i} b_j v_j^T) by a chunked prefix-sum
  scan: inside a chunk of C positions the masked (C x C) product, across chunks the running
  (F x E) state. Time O(n C (F + E) + n F E), memory O(n (C + F E / C)): the (batch, heads, n, F, E)
  tensor of the naive cumsum is never formed. Results do not depend on C (tested).
- :func:`prefix_normaliser` gives den_i = a_i^T (z_0 + sum_{j<=i} b_j) by a cumsum (O(n F)).
- :func:`explicit_kernel_attention` is the plain O(n^2) reference: the (n x n) matrix a b^T,
  masked, times v.
- :class:`FeatureAttention` is the mixer skeleton: projections, heads (GQA by repeating key/value
  heads), padding, the recurrent decoding cache and the two backends; a subclass gives the feature
  map. Decoding keeps only ``cache.state`` = {"S": (batch, heads, F, E), "z": (batch, heads, F)}
  (cache policy ``recurrent``), so each new token costs O(F E) time and memory, independent of
  how many tokens came before.

Options (``LayerSpec.attention_options``): ``chunk_size`` (int >= 1, default 64), ``eps`` (float
>= 0, default 1e-6), ``backend`` (``auto`` = chunked scan for causal, two matmuls otherwise;
``reference`` = the explicit O(n^2) form; a cached call adds the carried state to the explicit form
of the new chunk).

Positions. Learned / sinusoidal / none positions are the backbone's (added to the embeddings).
RoPE follows RoFormer §3.4.3 (arXiv 2104.09864, eq. 19) for linear attention: the rotation is
applied to the *feature-mapped* queries and keys in the numerator only,
out_i = sum_j (R_i phi(q_i))^T (R_j phi(k_j)) v_j / sum_j phi(q_i)^T phi(k_j), so the numerator
depends on positions only through i - j and the denominator stays positive. ALiBi is refused at
build time (no score matrix; ``score_bias=False``).

Padding: ``ctx.key_mask`` (batch, seq_len) zeroes the masked keys' features, so they add nothing
to S or z. Deviations from the paper / reference: GQA repeats key/value heads (the state is per
query head); the backbone's dropout acts after the output projection, there is no attention
dropout; cross-attention is not offered.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.nn.flops import children_flops
from formers.nn.presets import preset, with_attention
from formers.registry import Capabilities, Paper, register

PAPER = Paper("Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention",
              "2006.16236", "§3.2 eq. 4-7 (elu+1), §3.4 eq. 16-20 (causal RNN form)")
BACKENDS = ("auto", "reference")


# ----------------------------------------------------------------------------- shared machinery
def causal_scan(a: torch.Tensor, b: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None = None,
                chunk_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal linear-attention numerator by a chunked prefix-sum scan.

    num_i = a_i^T (state + sum_{j <= i} b_j v_j^T).

    Args:
        a: (batch, heads, n, F) query features; b: (batch, heads, n, F) key features;
        v: (batch, heads, n, E) values; state: (batch, heads, F, E) the sum over earlier tokens
            (None = zeros); chunk_size: positions per chunk (the result does not depend on it).
    Returns:
        num (batch, heads, n, E) and the new state (batch, heads, F, E) = state + sum_j b_j v_j^T.
    Memory: the chunk products (n C) and one (F x E) state per chunk (n F E / C); never n F E.
    """
    if chunk_size < 1:
        raise ValueError(f"causal_scan: chunk_size must be >= 1, got {chunk_size}")
    bsz, h, n, f = a.shape
    e = v.shape[-1]
    s0 = a.new_zeros(bsz, h, f, e) if state is None else state
    if n == 0:
        return a.new_zeros(bsz, h, 0, e), s0
    c = min(chunk_size, n)
    nc = -(-n // c)
    pad = nc * c - n
    if pad:  # zero rows add nothing to the state and their outputs are dropped
        a, b, v = (F.pad(t, (0, 0, 0, pad)) for t in (a, b, v))
    a = a.reshape(bsz, h, nc, c, f)
    b = b.reshape(bsz, h, nc, c, f)
    v = v.reshape(bsz, h, nc, c, e)
    tril = torch.ones(c, c, dtype=torch.bool, device=a.device).tril()
    intra = (a @ b.transpose(-1, -2)).masked_fill(~tril, 0.0) @ v          # (B,H,nc,C,E)
    per_chunk = b.transpose(-1, -2) @ v                                      # (B,H,nc,F,E)
    csum = per_chunk.cumsum(dim=2)
    before = torch.cat([torch.zeros_like(csum[:, :, :1]), csum[:, :, :-1]], dim=2) + s0[:, :, None]
    num = intra + a @ before                                                 # (B,H,nc,C,E)
    num = num.reshape(bsz, h, nc * c, e)[:, :, :n]
    return num, s0 + csum[:, :, -1]


def prefix_normaliser(a: torch.Tensor, b: torch.Tensor, z: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """den_i = a_i^T (z + sum_{j <= i} b_j).  a, b: (batch, heads, n, F); z: (batch, heads, F).
    Returns den (batch, heads, n) and the new z."""
    zc = b.cumsum(dim=2)
    if z is not None:
        zc = zc + z[:, :, None]
    z_new = zc[:, :, -1] if b.shape[2] else (torch.zeros_like(a[:, :, 0]) if z is None else z)
    return (a * zc).sum(-1), z_new


def explicit_kernel_attention(a: torch.Tensor, b: torch.Tensor, v: torch.Tensor, causal: bool,
                              state: torch.Tensor | None = None) -> torch.Tensor:
    """The plain O(n^2) form: (a b^T masked) v (+ a state). a, b: (B,H,n,F), v: (B,H,n,E)."""
    scores = a @ b.transpose(-1, -2)
    if causal:
        n = a.shape[2]
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool, device=a.device).tril(), 0.0)
    out = scores @ v
    return out if state is None else out + a @ state


def check_chunk_size(owner: str, chunk_size: Any) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{owner}: chunk_size must be an int >= 1, got {chunk_size!r}")
    return chunk_size


def check_backend(owner: str, backend: Any) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"{owner}: backend {backend!r} is not one of {list(BACKENDS)}")
    return backend


def padding_mask(ctx: Context, b: int, t: int, device: torch.device) -> torch.Tensor | None:
    """The key mask of the current tokens (batch, t) bool, or None. A mask that also covers
    earlier (cached) tokens is cut to its last t columns: earlier keys are already in the state."""
    km = ctx.key_mask
    if km is None:
        return None
    if km.dim() != 2 or km.shape[0] != b or km.shape[1] < t:
        raise ValueError(f"key_mask must be (batch={b}, >= {t}) bool, got {tuple(km.shape)}")
    return km[:, km.shape[1] - t:].to(device=device, dtype=torch.bool)



# ------------------------------------------------------------------------------------ the mixer
class FeatureAttention(nn.Module):
    """Skeleton of a kernelised attention out_i = sum_j (a_i . b_j) v_j / sum_j (c_i . d_j):
    q/k/v/o projections (with ``cfg.bias``), heads, padding, two backends and the recurrent cache.

    x: (batch, seq_len, d_model) -> (batch, seq_len, d_model). Subclasses implement
    :meth:`features` returning (a, b, c, d): numerator query/key features and denominator
    query/key features, each (batch, heads, seq_len, F) in the accumulation dtype (fp32 at
    least), and :meth:`divide` (num, den) -> out.
    """

    name = "feature-attention"

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True, chunk_size: int = 64) -> None:
        super().__init__()
        if cross:
            raise ValueError(f"{self.name}: cross-attention is not offered (use 'softmax')")
        if not own_values:
            raise ValueError(f"{self.name}: needs its own value projection (own_values=True); "
                             "value-residual sharing is not supported")
        self.backend = check_backend(self.name, backend)
        self.chunk_size = check_chunk_size(self.name, chunk_size)
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        d, hd = cfg.d_model, cfg.head_dim
        self.q = nn.Linear(d, self.n_heads * hd, bias=cfg.bias)
        self.k = nn.Linear(d, self.n_kv_heads * hd, bias=cfg.bias)
        self.v = nn.Linear(d, self.n_kv_heads * hd, bias=cfg.bias)
        self.o = nn.Linear(self.n_heads * hd, d, bias=cfg.bias)

    def _heads(self, t: torch.Tensor, n: int) -> torch.Tensor:
        b, s, _ = t.shape
        t = t.view(b, s, n, self.head_dim).transpose(1, 2)
        return t.repeat_interleave(self.n_heads // n, dim=1) if n != self.n_heads else t

    def feature_dim(self) -> int:
        """F, the width of the feature map (head_dim unless a subclass maps to more features)."""
        return self.head_dim

    def feature_flops(self, seq_len: int) -> float:
        """Matmul FLOPs of the feature map for one sequence (0 for element-wise maps)."""
        return 0.0

    def kernel_flops(self, seq_len: int, causal: bool) -> float:
        """The matmuls of the default (``auto``) path per sequence, over n_heads heads, with
        F = :meth:`feature_dim`, E = head_dim: bidirectional a (b^T v), 2 x 2 n F E; causal,
        the chunked scan (c = min(chunk_size, n), n padded to a multiple of c): intra-chunk
        (a b^T) v, 2 n c (F + E), plus the per-chunk states b^T v and a @ state, 2 x 2 n F E.
        The normaliser (element-wise) is not counted."""
        f, e, n = self.feature_dim(), self.head_dim, seq_len
        if not causal:
            per_head = 4.0 * n * f * e
        else:
            c = min(self.chunk_size, n)
            npad = -(-n // c) * c
            per_head = 2.0 * npad * c * (f + e) + 4.0 * npad * f * e
        return per_head * self.n_heads

    def forward_flops(self, seq_len: int, causal: bool, square: bool) -> float:
        """Projections + feature map + :meth:`kernel_flops`: linear in n (:mod:`formers.nn.flops`)."""
        return (children_flops(self, seq_len, causal, square) + self.feature_flops(seq_len)
                + self.kernel_flops(seq_len, causal))

    def features(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, ctx: Context):
        raise NotImplementedError

    def divide(self, num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, ctx: Context, cache=None) -> torch.Tensor:
        bsz, t, _ = x.shape
        acc = torch.promote_types(x.dtype, torch.float32)
        q = self._heads(self.q(x), self.n_heads).to(acc)
        k = self._heads(self.k(x), self.n_kv_heads).to(acc)
        v = self._heads(self.v(x), self.n_kv_heads).to(acc)
        a, b, c, d = self.features(q, k, ctx.positions, ctx)
        keep = padding_mask(ctx, bsz, t, x.device)
        if keep is not None:  # masked keys add nothing to the numerator or the normaliser
            m = keep[:, None, :, None].to(acc)
            b, d = b * m, d * m
        if cache is not None and not ctx.causal:
            raise ValueError(f"{self.name}: a decoding cache needs causal self-attention")
        s0 = z0 = None
        if cache is not None:
            s0, z0 = cache.state.get("S"), cache.state.get("z")
        if not ctx.causal:
            if self.backend == "reference":
                num = explicit_kernel_attention(a, b, v, causal=False)
                den = (c @ d.transpose(-1, -2)).sum(-1)
            else:
                num = a @ (b.transpose(-1, -2) @ v)
                den = (c * d.sum(2, keepdim=True)).sum(-1)
        elif self.backend == "reference":
            num = explicit_kernel_attention(a, b, v, causal=True, state=s0)
            scores = (c @ d.transpose(-1, -2)).masked_fill(
                ~torch.ones(t, t, dtype=torch.bool, device=x.device).tril(), 0.0)
            den = scores.sum(-1) + ((c * z0[:, :, None]).sum(-1) if z0 is not None else 0.0)
            if cache is not None:
                cache.state["S"] = (s0 if s0 is not None else 0.0) + b.transpose(-1, -2) @ v
                cache.state["z"] = (z0 if z0 is not None else 0.0) + d.sum(2)
        else:
            num, s1 = causal_scan(a, b, v, s0, self.chunk_size)
            den, z1 = prefix_normaliser(c, d, z0)
            if cache is not None:
                cache.state["S"], cache.state["z"] = s1, z1
        out = self.divide(num, den)
        if ctx.capture is not None:
            ctx.record("attn.q", a)
            ctx.record("attn.k", b)
            ctx.record("attn.v", v)
        return self.o(out.to(x.dtype).transpose(1, 2).reshape(bsz, t, self.n_heads * self.head_dim))


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1 > 0 (Katharopoulos et al. eq. 7)."""
    return F.elu(x) + 1.0


@register(
    "attention",
    "linear",
    paper=PAPER,
    caps=Capabilities(kv_cache=True, state_cache=True, score_bias=False,
                      backend="chunked prefix-sum scan (causal), two matmuls (bidirectional); "
                              "reference: explicit O(n^2) form"),
    summary="linear transformer: elu(x)+1 features, causal RNN state (O(1) per decoded token)",
)
class LinearAttention(FeatureAttention):
    """Linear attention, phi(x) = elu(x) + 1 (arXiv 2006.16236 §3.2 eq. 7, causal §3.4).

    Shapes: x (batch, seq_len, d_model) -> (batch, seq_len, d_model); per head
    q, k, v: (batch, n_heads, seq_len, head_dim); decoding state S (batch, n_heads, head_dim,
    head_dim), z (batch, n_heads, head_dim).
    Complexity: time O(n d^2) (+ O(n C d) inside chunks), memory O(n d + n d^2 / C); decoding
    O(d^2) per token. The explicit reference is O(n^2 d).

    Options: ``chunk_size`` (64), ``eps`` (1e-6, added to the denominator as in the reference),
    ``backend`` (``auto`` | ``reference``). RoPE rotates phi(q), phi(k) in the numerator only
    (RoFormer eq. 19). See the module docstring for the full statement and deviations.
    """

    name = "linear"

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True, chunk_size: int = 64, eps: float = 1e-6) -> None:
        super().__init__(cfg, cross=cross, backend=backend, own_values=own_values,
                         chunk_size=chunk_size)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0 \
                or not math.isfinite(eps):
            raise ValueError(f"linear: eps must be a finite float >= 0, got {eps!r}")
        self.eps = float(eps)

    def features(self, q, k, pos, ctx):
        fq, fk = elu_feature_map(q), elu_feature_map(k)
        if ctx.position is not None:  # identity unless RoPE
            return ctx.position.rotate(fq, pos), ctx.position.rotate(fk, pos), fq, fk
        return fq, fk, fq, fk

    def divide(self, num, den):
        return num / (den[..., None] + self.eps)


@preset("linear", PAPER, "baseline with linear attention (elu+1 features) in every layer")
def linear_preset(c: ModelConfig) -> ModelConfig:
    return with_attention(c, "linear")


__all__ = ["FeatureAttention", "LinearAttention", "causal_scan", "elu_feature_map",
           "explicit_kernel_attention", "prefix_normaliser"]
