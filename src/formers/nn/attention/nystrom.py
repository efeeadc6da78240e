"""Nystromformer: a Nystrom-based approximation of softmax attention (Xiong, Zeng, Chakraborty,
Tan, Fung, Li, Singh, arXiv 2102.03902, §3 eq. 14-15, Algorithm 1; iterative pseudo-inverse of
Razavi et al. 2014, eq. 16).

Per head, with m landmarks Q~, K~ (means of Q and K over m contiguous segments of the sequence):

    out = softmax(Q K~^T / sqrt(d)) pinv(softmax(Q~ K~^T / sqrt(d))) softmax(Q~ K^T / sqrt(d)) V
          [+ DepthwiseConv(V)]

Computation (time O(T m d + m^3), memory O(T d + m^2) per head; no (T, T) or (T, m) matrix is
stored): kernel 3 times V, softmax(Q~ K^T) V, is an attention call of the m landmark queries over
the T keys; W = pinv(kernel 2) (kernel 3 V) is (m, d); the output softmax(Q K~^T) W is an
attention call of the T queries over the m landmark keys with values W. Both calls go through the
one attention core :func:`~formers.nn.attention.core.attend` (SDPA); only the (m, m) kernel 2 and
its pseudo-inverse are explicit (in fp32 at least).

Options:

* ``landmarks`` (m, int >= 1, default 64 as in the paper's experiments). A sequence of T <= m
  tokens gets exact softmax attention through the core (as in xformers: it costs O(T^2) <= O(T m);
  the iterative inverse of the then nearly singular T x T kernel would only add error).
  :meth:`NystromAttention.approximate` with m = T is the formula with one token per landmark, and
  then it *is* exact attention, A pinv(A) A = A for any A (with the exact pseudo-inverse; up to
  the iteration error with the iterative one); the tests check that. Segments: T = q m + r splits into m - r segments of q tokens then r of q + 1
  (the segment layout of xformers' pooling; the paper's code needs m | T).
* ``pinv``: ``iterative`` (default, the paper's eq. 16, Z_0 = A^T / (||A||_1 ||A||_inf),
  Z_{j+1} = Z_j (13 I - A Z_j (15 I - A Z_j (7 I - A Z_j))) / 4) or ``exact``
  (``torch.linalg.pinv``, the reference for tests).
* ``iterations`` (int >= 1, default 6, the paper's choice).
* ``conv_kernel``: None (off) or an odd int: the depthwise convolution of V along the sequence
  (one kernel per head, shared over head_dim, zero "same" padding) added to the output, the skip
  connection of the paper's experiments (default 35; xformers defaults to off).

Padding (``ctx.key_mask``): padded positions are left out of the segment means of both Q and K
(masked means; a segment with no real token gives an *absent* landmark: its column is masked in
kernels 1 and 2 and its rows of kernels 2 and 3 are zero, which the iterative and the exact
pseudo-inverse both respect), padded keys are masked in kernel 3, and padded values are zeroed
before the convolution. So the outputs at real positions do not depend on the padded tokens (they
depend on the padded length through the segment layout). The reference code (mlpen/Nystromformer)
instead multiplies Q and K by the mask before plain segment means, so padded zeros count in the
means' denominators, and masks kernel 3 with -1e9.

Deviations (named): the iterative inverse's initial scale 1 / (||A||_1 ||A||_inf) is computed per
matrix (per batch element and head); the reference takes one max over the whole batch and every
head, which couples the examples of a batch. Not causal (landmarks average over future tokens;
capability ``causal=False``), no KV cache, no ALiBi (``score_bias=False``; kernel 1 and 2 are
against landmarks, not positions). RoPE rotates Q and K before the segment means. GQA: keys and
values are repeated to the query heads first. ``cfg.dropout`` is not applied to the kernels
(the approximate attention matrix is never formed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from formers.nn.attention.core import attend
from formers.nn.attention.softmax import SoftmaxAttention
from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.nn.flops import attention_flops, children_flops
from formers.nn.presets import preset, with_attention
from formers.registry import Capabilities, Paper, register

PAPER = Paper("Nystromformer: A Nystrom-Based Algorithm for Approximating Self-Attention", "2102.03902",
              "§3 eq. 14-16, Algorithm 1 (segment-means landmarks, iterative pseudo-inverse)")
PINV = ("iterative", "exact")


def segments(t: int, m: int, device=None) -> torch.Tensor:
    """(m, t) float 0/1 matrix: row j marks the tokens of segment j (m - t % m segments of t // m
    tokens, then t % m of t // m + 1). Needs 1 <= m <= t."""
    q, r = divmod(t, m)
    sizes = torch.tensor([q] * (m - r) + [q + 1] * r, device=device)
    seg = torch.repeat_interleave(torch.arange(m, device=device), sizes)
    return F.one_hot(seg, m).T.float()


def landmarks(x: torch.Tensor, seg: torch.Tensor, key_mask: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked segment means. x: (batch, heads, t, d); seg: (m, t); key_mask: (batch, t) or None.

    Returns (means (batch, heads, m, d), present (batch, m) bool: the segment has a real token).
    """
    w = seg.to(x.dtype)[None].expand(x.shape[0], -1, -1)
    if key_mask is not None:
        w = w * key_mask[:, None, :].to(x.dtype)
    count = w.sum(-1)                                               # (batch, m)
    means = torch.einsum("bmt,bhtd->bhmd", w, x) / count.clamp(min=1)[:, None, :, None]
    return means, count > 0


def iterative_pinv(a: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of a (..., m, m) by the iteration of the paper's eq. 16.

    Z_0 = A^T / (||A||_1 ||A||_inf) (max column and max row absolute sums, per matrix), then
    Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4, ``iterations`` times.
    """
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    norm1 = a.abs().sum(-2).amax(-1)
    norminf = a.abs().sum(-1).amax(-1)
    z = a.transpose(-1, -2) / (norm1 * norminf).clamp(min=torch.finfo(a.dtype).tiny)[..., None, None]
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def nystrom_kernel2(ql: torch.Tensor, kl: torch.Tensor, present: torch.Tensor, scale: float
                    ) -> torch.Tensor:
    """softmax(Q~ K~^T * scale) over present landmarks, rows of absent landmarks zero: (b, h, m, m)."""
    acc = torch.promote_types(ql.dtype, torch.float32)
    s = (ql.to(acc) @ kl.to(acc).transpose(-1, -2)) * scale
    s = s.masked_fill(~present[:, None, None, :], torch.finfo(acc).min)
    return torch.softmax(s, dim=-1) * present[:, None, :, None].to(acc)


def pseudo_inverse(a: torch.Tensor, method: str, iterations: int) -> torch.Tensor:
    return torch.linalg.pinv(a) if method == "exact" else iterative_pinv(a, iterations)


def nystrom_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_landmarks: int,
                      pinv: str = "exact", iterations: int = 6,
                      key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain Nystrom attention with the three kernels written out (no attention core), for tests.

    q, k, v: (batch, heads, t, d); key_mask: (batch, t) bool or None. Returns (batch, heads, t, d)
    (without the convolution skip).
    """
    t, d = q.shape[-2], q.shape[-1]
    m = min(n_landmarks, t)
    seg = segments(t, m, q.device)
    ql, present = landmarks(q, seg, key_mask)
    kl, _ = landmarks(k, seg, key_mask)
    scale = 1.0 / math.sqrt(d)
    neg = float("-inf")
    k1 = torch.softmax((q @ kl.transpose(-1, -2) * scale).masked_fill(~present[:, None, None, :], neg), -1)
    k2 = nystrom_kernel2(ql, kl, present, scale).to(q.dtype)
    s3 = ql @ k.transpose(-1, -2) * scale
    if key_mask is not None:
        s3 = s3.masked_fill(~key_mask[:, None, None, :], neg)
    k3 = torch.softmax(s3, -1) * present[:, None, :, None].to(q.dtype)
    return k1 @ pseudo_inverse(k2, pinv, iterations) @ k3 @ v


@register(
    "attention",
    "nystromformer",
    paper=PAPER,
    caps=Capabilities(causal=False, bidirectional=True, kv_cache=False, score_bias=False,
                      backend="sdpa for kernels 1 and 3 (landmarks); explicit (m, m) pseudo-inverse; reference"),
    summary="Nystromformer: segment-means landmarks, softmax kernels and an iterative pseudo-inverse",
)
class NystromAttention(SoftmaxAttention):
    """Nystrom approximation of softmax(Q K^T / sqrt(d_h)) V per head, then W_O (arXiv 2102.03902).

    Shapes: x (batch, T, d_model) -> (batch, T, d_model); landmarks Q~, K~: (batch, heads, m, d_h);
    kernel 2 and its pseudo-inverse: (batch, heads, m, m). Time O(T m d_model + heads m^3),
    memory O(T d_model + heads m^2) (see the module docstring for the options and the padding rule).

    Args:
        cfg: the model config. landmarks: m (64). pinv: ``iterative`` | ``exact``.
        iterations: of the iterative inverse (6). conv_kernel: None or odd int (35).
        backend: ``auto`` | ``sdpa`` | ``reference`` (see :func:`attend`).
    Raises:
        ValueError: ``cross=True``, ``own_values=False``, bad options; a causal context at forward.
    """

    supports_value_residual = False

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True, landmarks: int = 64, pinv: str = "iterative",
                 iterations: int = 6, conv_kernel: int | None = 35) -> None:
        if cross:
            raise ValueError("nystromformer: cross-attention is not offered; use 'softmax'")
        if not own_values:
            raise ValueError("nystromformer: own_values=False (SVFormer value sharing) is not supported")
        super().__init__(cfg, cross=False, backend=backend, own_values=True)

        def count(name: str, val) -> int:
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"nystromformer: {name} must be an int >= 1, got {val!r}")
            return val

        self.n_landmarks = count("landmarks", landmarks)
        self.iterations = count("iterations", iterations)
        if pinv not in PINV:
            raise ValueError(f"nystromformer: pinv must be one of {list(PINV)}, got {pinv!r}")
        self.pinv = pinv
        if conv_kernel is not None and (count("conv_kernel", conv_kernel) % 2 == 0):
            raise ValueError(f"nystromformer: conv_kernel must be None or an odd int >= 1, got {conv_kernel!r}")
        self.conv_kernel = conv_kernel
        self.conv = None
        if conv_kernel is not None:
            self.conv = nn.Conv2d(self.n_heads, self.n_heads, (conv_kernel, 1),
                                  padding=(conv_kernel // 2, 0), groups=self.n_heads, bias=False)

    def forward_flops(self, seq_len: int, causal: bool, square: bool) -> float:
        """Projections; for n <= landmarks exact attention (n^2 pairs); else the landmark means
        (2 x 2 m n d), kernel 3 times V (m n pairs), kernel 2 (2 m^2 d), the iterative
        pseudo-inverse (4 m x m products per iteration: 8 m^3 per head; the ``exact`` SVD pinv is
        counted the same), pinv times (K3 V) (2 m^2 d), kernel 1 times that (n m pairs), and the
        depthwise convolution skip (2 conv_kernel n d). m = landmarks, d = d_model here."""
        t, h, hd = seq_len, self.n_heads, self.head_dim
        total = children_flops(self, t, causal, square, skip=("conv",))
        if t <= self.n_landmarks:
            total += attention_flops(float(t * t), h, hd)
        else:
            m = self.n_landmarks
            total += 2 * (2.0 * m * t * hd * h)                       # segment means of q and k
            total += attention_flops(float(m * t), h, hd)              # kernel 3 and its product with V
            total += 2.0 * m * m * hd * h                              # kernel 2 scores
            total += self.iterations * 4 * 2.0 * m ** 3 * h            # iterative pseudo-inverse
            total += 2.0 * m * m * hd * h                              # pinv @ (K3 V)
            total += attention_flops(float(t * m), h, hd)              # kernel 1 and its product
        if self.conv is not None:
            total += 2.0 * self.conv_kernel * t * hd * h
        return total

    def approximate(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    key_mask: torch.Tensor | None, backend: str = "auto", ctx: Context | None = None
                    ) -> torch.Tensor:
        """The Nystrom path with min(landmarks, T) landmarks (without the convolution skip).

        q, k, v: (batch, heads, T, d_h); key_mask: (batch, T) bool or None -> (batch, heads, T, d_h).
        """
        t = q.shape[-2]
        m = min(self.n_landmarks, t)
        seg = segments(t, m, q.device)
        ql, present = landmarks(q, seg, key_mask)
        kl, _ = landmarks(k, seg, key_mask)
        scale = 1.0 / math.sqrt(self.head_dim)
        # kernel 3 times V: landmark queries over all (unpadded) keys -> (b, h, m, d)
        k3v, _ = attend(ql, k, v, key_mask=key_mask, backend=backend)
        k3v = k3v * present[:, None, :, None].to(k3v.dtype)
        # kernel 2 and its pseudo-inverse in fp32 even under autocast (which would run these
        # matmuls in bf16: the iterative inverse loses its accuracy and the mask fill overflows)
        with torch.autocast(q.device.type, enabled=False):
            k2 = nystrom_kernel2(ql, kl, present, scale)
            w = (pseudo_inverse(k2, self.pinv, self.iterations) @ k3v.to(k2.dtype)).to(q.dtype)
        # kernel 1 times W: all queries over the present landmark keys
        out, _ = attend(q, kl, w, key_mask=present, backend=backend)
        if ctx is not None and ctx.capture is not None:
            ctx.record("attn.q_landmarks", ql)
            ctx.record("attn.k_landmarks", kl)
            ctx.record("attn.kernel2", k2)
        return out

    def forward(self, x: torch.Tensor, ctx: Context, cache=None) -> torch.Tensor:
        b, t, _ = x.shape
        if ctx.causal:
            raise ValueError("nystromformer is not causal (landmarks average future tokens); "
                             "use it in encoder layers")
        if cache is not None:
            raise ValueError("nystromformer has no KV cache (it is not causal)")
        q, k, v = self.self_qkv(x, ctx)
        km = ctx.key_mask
        backend = "reference" if ctx.capture is not None else self.backend
        if t <= self.n_landmarks:  # exact attention costs O(T^2) <= O(T m) here (as xformers)
            out, _ = attend(q, k, v, key_mask=km, backend=backend)
        else:
            out = self.approximate(q, k, v, km, backend, ctx)
        if self.conv is not None:
            vv = v if km is None else v * km[:, None, :, None].to(v.dtype)
            out = out + self.conv(vv)
        return self.o(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


@preset("nystromformer", PAPER, "baseline with Nystromformer attention (64 landmarks, 6 pinv iterations, "
        "conv skip 35); encoders only (not causal)")
def nystromformer(c: ModelConfig) -> ModelConfig:
    return with_attention(c, "nystromformer")


__all__ = ["NystromAttention", "iterative_pinv", "landmarks", "nystrom_reference", "segments"]
