"""Factorised attention on a grid: FactFormer's axial low-rank kernels (chained) and IFactFormer-m's
parallel form.

Papers:
  * Li, Shu, Barati Farimani, "Scalable Transformer for PDE Surrogate Modeling" (FactFormer),
    NeurIPS 2023, arXiv 2305.17560, §3 (factorised kernel integral, eqs. for the axial
    sub-functions and K = K^(1) ⊗ ... ⊗ K^(n)). Reference code read for understanding:
    BaratiLab/FactFormer (MIT) ``libs/factorization_module.py``, ``libs/attention.py``.
  * Yang, Wang, Wang, "Implicit factorized transformer approach to fast prediction of turbulent
    channel flows" (IFactFormer-m), arXiv 2412.18840, §2 (parallel factorised attention).

For u: (batch, n_1, ..., n_D, dim) on a grid with per-axis coordinates x^(a) (physical units):

1. u <- LayerNorm(u);  v = W_v u (heads * head_dim, no bias);  u <- W_in u (no bias).
2. Learnable projection to 1-D sub-functions, one per axis a (:class:`AxialProjection`):
       phi_a(u) = MLP_a(LN(mean over the other axes of W_a u))     (batch, n_a, latent_dim)
   with MLP_a = Linear(dim, 2 dim) -> GEGLU (GELU(first half) * second half) -> Linear(dim, latent).
3. Axial kernels (:class:`AxialKernel`), per head h, no softmax and no 1/n:
       K_a[h, i, j] = s * <R(x_i) q_i, R(x_j) k_j>,  q = W_q phi_a, k = W_k phi_a  (d_k = head_dim * kernel_multiplier)
   R is a rotary embedding of the physical coordinate x (scaled by 1/min_freq = 64, base 10000),
   so with constant sub-functions K_a[i, j] depends only on x_i - x_j. s = 1 unless
   kernel_multiplier > 4, then 1/sqrt(d_k). W_q, W_k: Xavier-uniform, gain 0.02.
4. Kernel integral:
     * ``combine="chained"`` (FactFormer, IFactFormer-o): z = K_D (... (K_2 (K_1 v))) along each
       axis in turn, which equals the dense kernel (K_1 ⊗ ... ⊗ K_D) applied to flattened v
       (:func:`apply_axis`); then a domain-wise GroupNorm (one group per head, statistics over every
       grid point and the head's channels, unbiased variance, eps 1e-8, no affine).
     * ``combine="parallel"`` (IFactFormer-m): z = concat_a(K_a v) per head (heads * D * head_dim
       channels); then InstanceNorm (per channel over the grid, eps 1e-5, no affine).
5. Output: Linear(., dim_out, no bias) -> GELU -> Linear(dim_out, dim_out, no bias).

Cost per block: O(N * sum_a n_a * heads * head_dim) for N = prod n_a points, against O(N^2 ...) for
full softmax attention over all points.

Deviations: none in the computation. The reference's ``LowRankKernel`` options that FactFormer
leaves off (softmax, diagonal residual, dropout, q/k normalisation) are not offered. The chained
-o block uses the domain-wise GroupNorm of FactFormer (notes §3(a)); the 2-D mirror of the
IFactFormer code uses an InstanceNorm there instead.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

_GRID = "ijklmn"


def rotary_angles(coords: torch.Tensor, d: int, min_freq: float = 1 / 64, base: float = 10000.0) -> torch.Tensor:
    """Rotation angles of a 1-D rotary embedding on physical coordinates.

    coords: (n,) positions (any units). Returns (n, d): [t f, t f] with t = coords / min_freq and
    f_i = base^(-2i/d), i < d/2 (the half-split pairing), in float64 for float64 coords, else
    float32. Raises ValueError for odd d."""
    if d % 2:
        raise ValueError(f"rotary_angles: d must be even, got {d}")
    dtype = coords.dtype if coords.dtype in (torch.float32, torch.float64) else torch.float32
    inv = base ** (-torch.arange(0, d, 2, device=coords.device, dtype=dtype) / d)
    f = (coords.to(dtype) / min_freq)[:, None] * inv[None, :]
    return torch.cat((f, f), dim=-1)


def rotate(t: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Apply the rotation: t (..., n, d) with angles (n, d) -> t cos + rot_half(t) sin."""
    t1, t2 = t.chunk(2, dim=-1)
    cos, sin = angles.cos().to(t.dtype), angles.sin().to(t.dtype)
    return t * cos + torch.cat((-t2, t1), dim=-1) * sin


def apply_axis(kernel: torch.Tensor, v: torch.Tensor, axis: int) -> torch.Tensor:
    """Integrate along one axis: out[..., i, ...] = sum_j kernel[b, h, i, j] v[b, h, ..., j, ..., c].

    kernel: (batch, heads, n_a, n_a); v: (batch, heads, n_1, ..., n_D, c); axis in [0, D).
    Returns a tensor of v's shape."""
    g = _GRID[: v.dim() - 3]
    src = g[:axis] + "z" + g[axis + 1:]
    return torch.einsum(f"bh{g[axis]}z,bh{src}c->bh{g}c", kernel, v)


def domain_group_norm(z: torch.Tensor, groups: int, eps: float = 1e-8) -> torch.Tensor:
    """FactFormer's domain-wise GroupNorm: z (batch, *grid, groups * c) normalised per sample and
    group over every grid point and the group's c channels (unbiased variance), no affine."""
    b, c = z.shape[0], z.shape[-1]
    zg = z.reshape(b, -1, groups, c // groups)
    var, mean = torch.var_mean(zg, dim=(1, 3), keepdim=True)
    return ((zg - mean) * torch.rsqrt(var + eps)).reshape(z.shape)


def instance_norm(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-sample, per-channel normalisation over the grid (InstanceNorm, biased variance, no
    affine): z (batch, *grid, c) -> same shape."""
    zf = z.reshape(z.shape[0], -1, z.shape[-1])
    mean = zf.mean(1, keepdim=True)
    var = zf.var(1, keepdim=True, unbiased=False)
    return ((zf - mean) / (var + eps).sqrt()).reshape(z.shape)


class AxialProjection(nn.Module):
    """Learnable projection to a 1-D sub-function (FactFormer's ``PoolingReducer``).

    u: (batch, n_1, ..., n_D, dim) -> (batch, n_axis, latent_dim): Linear(dim, dim, no bias), mean
    over every spatial axis except ``axis``, then LayerNorm -> Linear(dim, 2 dim) -> GEGLU ->
    Linear(dim, latent_dim)."""

    def __init__(self, dim: int, latent_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim, bias=False)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.down = nn.Linear(dim, latent_dim)

    def forward(self, u: torch.Tensor, axis: int) -> torch.Tensor:
        x = self.proj(u)
        others = [1 + a for a in range(u.dim() - 2) if a != axis]
        x = x.mean(dim=others) if others else x
        a, g = self.up(self.norm(x)).chunk(2, dim=-1)
        return self.down(F.gelu(a) * g)


class AxialKernel(nn.Module):
    """One axis's low-rank kernel: phi (batch, n, latent_dim), coords (n,) -> K (batch, heads, n, n),
    K = scaling * (R q)(R k)^T with q, k = W_q phi, W_k phi split into heads of width d_k.
    No softmax, no 1/n quadrature weight (FactFormer's ``LowRankKernel`` with residual=False)."""

    def __init__(self, latent_dim: int, n_heads: int, d_k: int, rope: bool = True,
                 scaling: float = 1.0, min_freq: float = 1 / 64) -> None:
        super().__init__()
        if rope and d_k % 2:
            raise ValueError(f"AxialKernel: rotary position needs an even d_k, got {d_k}")
        self.n_heads, self.d_k, self.rope, self.scaling, self.min_freq = n_heads, d_k, rope, scaling, min_freq
        self.to_q = nn.Linear(latent_dim, n_heads * d_k, bias=False)
        self.to_k = nn.Linear(latent_dim, n_heads * d_k, bias=False)
        nn.init.xavier_uniform_(self.to_q.weight, gain=0.02)
        nn.init.xavier_uniform_(self.to_k.weight, gain=0.02)

    def forward(self, phi: torch.Tensor, coords: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = phi.shape
        q = self.to_q(phi).view(b, n, self.n_heads, self.d_k).transpose(1, 2)
        k = self.to_k(phi).view(b, n, self.n_heads, self.d_k).transpose(1, 2)
        if self.rope:
            if coords is None or coords.shape != (n,):
                raise ValueError(f"AxialKernel: rotary position needs coords of shape ({n},), got "
                                 f"{None if coords is None else tuple(coords.shape)}")
            ang = rotary_angles(coords, self.d_k, self.min_freq)
            q, k = rotate(q, ang), rotate(k, ang)
        return torch.einsum("bhid,bhjd->bhij", q, k) * self.scaling


class FactorizedAttention(nn.Module):
    """Factorised attention block on a 2-D or 3-D grid (FactFormer ``FABlock2D/3D``; IFactFormer
    ``FABlock3D_m`` with ``combine="parallel"``). See the module docstring for the equations.

    u: (batch, n_1, ..., n_D, dim), coords: D tensors (n_a,) of physical coordinates ->
    (batch, n_1, ..., n_D, dim_out).

    Args:
        dim: input width. n_heads, head_dim: value heads (v has n_heads * head_dim channels).
        n_dims: D = 2 or 3. latent_dim: width of the 1-D sub-functions (default dim).
        kernel_multiplier: d_k = head_dim * kernel_multiplier. scaling: kernel scale (default: 1,
            or 1/sqrt(d_k) when kernel_multiplier > 4, as the reference). rope: rotary position.
        combine: ``chained`` (K_D ... K_1 v, FactFormer) or ``parallel`` (concat_a K_a v, IFactFormer-m).
        dim_out: output width (default dim).
    Raises:
        ValueError: bad sizes or combine; at call time, a wrong input shape or wrong coords.
    """

    def __init__(self, dim: int, n_heads: int, head_dim: int, n_dims: int = 2, latent_dim: int | None = None,
                 kernel_multiplier: int = 2, scaling: float | None = None, rope: bool = True,
                 combine: Literal["chained", "parallel"] = "chained", dim_out: int | None = None) -> None:
        super().__init__()
        for name, val in (("dim", dim), ("n_heads", n_heads), ("head_dim", head_dim),
                          ("kernel_multiplier", kernel_multiplier)):
            if not isinstance(val, int) or val <= 0:
                raise ValueError(f"FactorizedAttention: {name} must be an int > 0, got {val!r}")
        if n_dims not in (2, 3):
            raise ValueError(f"FactorizedAttention: n_dims must be 2 or 3, got {n_dims!r}")
        if combine not in ("chained", "parallel"):
            raise ValueError(f"FactorizedAttention: combine must be 'chained' or 'parallel', got {combine!r}")
        latent_dim = latent_dim or dim
        dim_out = dim_out or dim
        d_k = head_dim * kernel_multiplier
        if scaling is None:
            scaling = 1 / math.sqrt(d_k) if kernel_multiplier > 4 else 1.0
        self.n_heads, self.head_dim, self.n_dims, self.combine = n_heads, head_dim, n_dims, combine
        self.in_norm = nn.LayerNorm(dim)
        self.to_v = nn.Linear(dim, n_heads * head_dim, bias=False)
        self.to_in = nn.Linear(dim, dim, bias=False)
        self.projections = nn.ModuleList(AxialProjection(dim, latent_dim) for _ in range(n_dims))
        self.kernels = nn.ModuleList(AxialKernel(latent_dim, n_heads, d_k, rope, scaling) for _ in range(n_dims))
        width = n_heads * head_dim * (n_dims if combine == "parallel" else 1)
        self.out1 = nn.Linear(width, dim_out, bias=False)
        self.out2 = nn.Linear(dim_out, dim_out, bias=False)

    def grid_flops(self, grid: Sequence[int]) -> float:
        """Forward matmul FLOPs (2 per multiply-add) on one sample of grid ``grid`` = (n_1, ...,
        n_D), N = prod(grid) points: W_v, W_in and the two output linears on every point; per axis
        a, the projection's first linear on every point and its MLP on the n_a axis points (after
        the mean), W_q, W_k on n_a points, the kernel (2 h n_a^2 d_k) and its integral along the
        axis (2 h N n_a head_dim): O(N sum_a n_a) instead of full attention's O(N^2). Norms, GELU,
        the mean and the rotary position are not counted (see :mod:`formers.bench.flops`).

        Raises:
            ValueError: ``grid`` not D positive ints.
        """
        if len(grid) != self.n_dims or any(not isinstance(n, int) or n < 1 for n in grid):
            raise ValueError(f"FactorizedAttention.grid_flops: grid must be {self.n_dims} ints >= 1, "
                             f"got {grid!r}")
        points = math.prod(grid)

        def lin(m: nn.Linear, tokens: int) -> float:
            return 2.0 * m.in_features * m.out_features * tokens

        total = sum(lin(m, points) for m in (self.to_v, self.to_in, self.out1, self.out2))
        h, c = self.n_heads, self.head_dim
        for n_a, proj, kern in zip(grid, self.projections, self.kernels):
            total += lin(proj.proj, points) + lin(proj.up, n_a) + lin(proj.down, n_a)
            total += lin(kern.to_q, n_a) + lin(kern.to_k, n_a) + 2.0 * h * n_a * n_a * kern.d_k
            total += 2.0 * h * points * n_a * c
        return total

    def axis_kernels(self, u: torch.Tensor, coords: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """The D kernels (batch, heads, n_a, n_a) of normalised, projected input ``u`` (after W_in)."""
        return [k(p(u, a), coords[a]) for a, (p, k) in enumerate(zip(self.projections, self.kernels))]

    def integrate(self, kernels: Sequence[torch.Tensor], v: torch.Tensor) -> torch.Tensor:
        """Kernel integral of v (batch, *grid, heads * head_dim): chained -> same shape; parallel ->
        (batch, *grid, heads * D * head_dim), per head the D axis results side by side."""
        b, grid = v.shape[0], v.shape[1:-1]
        vh = v.reshape(b, *grid, self.n_heads, self.head_dim).movedim(-2, 1)  # (b, h, *grid, c)
        if self.combine == "chained":
            for a, K in enumerate(kernels):
                vh = apply_axis(K, vh, a)
        else:
            vh = torch.cat([apply_axis(K, vh, a) for a, K in enumerate(kernels)], dim=-1)
        return vh.movedim(1, -2).reshape(b, *grid, -1)

    def forward(self, u: torch.Tensor, coords: Sequence[torch.Tensor | None]) -> torch.Tensor:
        if u.dim() != self.n_dims + 2:
            raise ValueError(f"FactorizedAttention: expected u of shape (batch, {self.n_dims} grid axes, "
                             f"dim), got {tuple(u.shape)}")
        if len(coords) != self.n_dims:
            raise ValueError(f"FactorizedAttention: expected {self.n_dims} coordinate tensors, got {len(coords)}")
        u = self.in_norm(u)
        v = self.to_v(u)
        z = self.integrate(self.axis_kernels(self.to_in(u), coords), v)
        z = domain_group_norm(z, self.n_heads) if self.combine == "chained" else instance_norm(z)
        return self.out2(F.gelu(self.out1(z)))
