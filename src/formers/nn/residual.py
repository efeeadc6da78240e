"""Residual-stream schemes of the backbone loop (registry kind ``residual``): ``plain`` and ``dwa``.

``dwa`` is DenseFormer's depth-weighted averaging:

    Pagliardini, Mohtashami, Fleuret, Jaggi, "DenseFormer: Enhancing Information Flow in
    Transformers via Depth Weighted Averaging", NeurIPS 2024, arXiv 2402.02622, §3 (eq. 1-2, the
    k x p dilation/period variants in §3.2).

With X_0 the embedding (after dropout), X_i = B_i(Y_{i-1}) (Y_0 = X_0) the raw output of block i,
a k x p DenseFormer sets, after every block i that p divides,

    Y_i = sum_{j in S(i)} alpha_{i,j} X_j,    S(i) = { j <= i : j = i (mod k) },

and Y_i = X_i after the other blocks. alpha_i is a plain learned vector of |S(i)| = floor(i/k) + 1
scalars (not per channel, not input dependent) initialised to one-hot on X_i, so at
initialisation the model is exactly the plain transformer. The model output is norm_f(Y_d).

Deviations from the paper / reference code (``epfml/DenseFormer:denseformer/denseformer.py``):
  * The alphas are 1-D ``nn.Parameter`` vectors named ``dwa.alphas.<i>`` (i = 1-based block index),
    not ``nn.Linear(len, 1)`` modules. Consequences: (1) the GPT-2 initialiser of
    :mod:`formers.nn.models` (which only touches >= 2-D weights) cannot destroy their identity
    init (the reference README's pitfall); (2) formers' AdamW grouping
    (:func:`formers.train.optim.param_groups`) puts every 1-D parameter in the **no-decay** group,
    so by default the alphas get no weight decay. The reference code groups them (as Linear
    weights) with the decayed matrices (paper setup: AdamW, weight decay 0.1). Decaying them would
    pull the weights toward 0 and away from the identity init; ``TrainConfig.decay_mixing_weights``
    (``--decay-mixing-weights``) switches to the reference behaviour.
  * The efficient path keeps one pre-allocated buffer per residue class mod k, like the reference,
    but instead of the reference's in-place ``set_`` views it uses a small autograd
    :class:`torch.autograd.Function` whose inputs are the stored states themselves and which reads
    their values from the buffer (no ``torch.stack`` copy per DWA). The naive path
    (``impl='naive'``) stacks; both agree in outputs and gradients (tested, float64 gradcheck).
    Under ``torch.compile`` the naive path is always used (the compiler fuses the stack; the
    buffered Function's side-buffer is opaque to it).
  * Only the states some later DWA reads are stored (the paper stores all; the result is equal).
DWA mixes each position independently, so KV-cached decoding needs no extra state.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.registry import Paper, register

PAPER = Paper(
    "DenseFormer: Enhancing Information Flow in Transformers via Depth Weighted Averaging",
    "2402.02622", "§3, eq. 1-2; k x p dilation / period §3.2",
)


@register("residual", "plain", paper=Paper("Deep Residual Learning for Image Recognition", "1512.03385"),
          summary="ordinary residual stream: each block reads the previous block's output")
class PlainResidual(nn.Module):
    """The ordinary residual stream: Y_i = X_i (each block's output goes straight to the next).

    x: (batch, seq_len, d_model) in and out; no parameters, no state.
    """

    def __init__(self, cfg: ModelConfig, n_layers: int) -> None:
        super().__init__()

    def begin(self, x: torch.Tensor) -> None:
        return None

    def forward_flops(self, seq_len: int, causal: bool, square: bool) -> float:
        """No work beyond the blocks' own residual additions: 0."""
        return 0.0

    def after_block(self, i: int, x: torch.Tensor, state: None, ctx: Context | None = None) -> torch.Tensor:
        return x


def dwa_sources(i: int, k: int) -> list[int]:
    """S(i) = [j <= i with j = i (mod k)], ascending: the block outputs DWA_i averages (X_0 = embedding)."""
    return list(range(i % k, i + 1, k))


def dwa_layers(n_layers: int, k: int, p: int) -> list[int]:
    """The 1-based block indices i <= n_layers after which a DWA sits (p divides i)."""
    return [i for i in range(1, n_layers + 1) if i % p == 0]


def dwa_param_count(n_layers: int, k: int, p: int) -> int:
    """Number of alpha scalars: sum over DWA blocks i of floor(i/k) + 1 (d(d+3)/2 for 1 x 1)."""
    return sum(i // k + 1 for i in dwa_layers(n_layers, k, p))


class _BufferedMix(torch.autograd.Function):
    """Y = sum_j alpha_j X_j where the X_j already sit in ``buf`` (m, *shape).

    The X_j are passed as inputs (so gradients reach them) but their values are read from the
    buffer, which is never written at these slots again; nothing is stacked.
    """

    @staticmethod
    def forward(ctx, alpha: torch.Tensor, holder: list, *xs: torch.Tensor) -> torch.Tensor:
        buf = holder[0]
        ctx.save_for_backward(alpha)
        ctx.holder = holder
        return torch.tensordot(alpha.to(buf.dtype), buf, dims=1)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        (alpha,) = ctx.saved_tensors
        buf = ctx.holder[0]
        g_alpha = None
        if ctx.needs_input_grad[0]:
            g_alpha = torch.tensordot(buf, g, dims=([*range(1, buf.dim())], [*range(g.dim())]))
            g_alpha = g_alpha.to(alpha.dtype)
        a = alpha.to(g.dtype)
        g_xs = [a[j] * g if ctx.needs_input_grad[2 + j] else None for j in range(buf.shape[0])]
        return (g_alpha, None, *g_xs)


@register("residual", "dwa", paper=PAPER,
          summary="DenseFormer depth-weighted averaging of the embedding and past block outputs")
class DepthWeightedAverage(nn.Module):
    """DenseFormer DWA modules for one stack (k = ``cfg.dwa_dilation``, p = ``cfg.dwa_period``).

    Paper: DenseFormer (arXiv 2402.02622) §3 eq. 1-2. After block i (1-based) with i % p == 0:
    Y_i = sum_{j in S(i)} alpha_{i,j} X_j, S(i) = {j <= i, j = i mod k}; X_j: (batch, seq_len,
    d_model) raw block outputs, X_0 the embedding. Parameters: ``alphas[str(i)]`` of shape
    (floor(i/k) + 1,), initialised one-hot on X_i (identity: the plain transformer).

    Use: ``state = dwa.begin(x0)`` then ``x = dwa.after_block(i, x_i, state, ctx)`` for i = 1..d.
    ``impl``: ``buffer`` (default, per-residue buffers, no stacking) or ``naive`` (torch.stack).
    See the module docstring for the deviations from the reference code.
    """

    IMPLS = ("buffer", "naive")

    def __init__(self, cfg: ModelConfig, n_layers: int, impl: str = "buffer") -> None:
        super().__init__()
        if impl not in self.IMPLS:
            raise ValueError(f"DepthWeightedAverage: impl {impl!r} is not one of {list(self.IMPLS)}")
        self.k, self.p, self.n_layers, self.impl = cfg.dwa_dilation, cfg.dwa_period, n_layers, impl
        self.d_model = cfg.d_model
        self.layers = dwa_layers(n_layers, self.k, self.p)
        self.alphas = nn.ParameterDict()
        for i in self.layers:
            a = torch.zeros(i // self.k + 1)
            a[-1] = 1.0
            self.alphas[str(i)] = nn.Parameter(a)
        # States some DWA reads: j needed iff a DWA i >= j with i = j (mod k) exists.
        self.needed = sorted({j for i in self.layers for j in dwa_sources(i, self.k)})
        self.slots = [0] * self.k  # buffer length per residue class
        for j in self.needed:
            self.slots[j % self.k] = max(self.slots[j % self.k], j // self.k + 1)

    def extra_repr(self) -> str:
        return f"k={self.k}, p={self.p}, dwa_after_blocks={self.layers}, impl={self.impl}"

    def forward_flops(self, seq_len: int, causal: bool, square: bool) -> float:
        """The weighted averages: per token, sum over the DWA blocks i of |S(i)| d_model
        multiply-adds (2 FLOPs each), |S(i)| = floor(i / k) + 1 averaged states."""
        states = sum(len(dwa_sources(i, self.k)) for i in self.layers)
        return 2.0 * states * self.d_model * seq_len

    def reset_identity(self) -> None:
        """Set every alpha back to one-hot on its own block output (the identity init)."""
        with torch.no_grad():
            for a in self.alphas.values():
                a.zero_()
                a[-1] = 1.0

    def begin(self, x0: torch.Tensor) -> dict:
        """Start a forward pass with X_0 = ``x0`` (batch, seq_len, d_model); returns the state."""
        state = {"xs": {}, "bufs": [None] * self.k}
        self._store(0, x0, state)
        return state

    def _store(self, j: int, x: torch.Tensor, state: dict) -> None:
        if j not in self.needed:
            return
        state["xs"][j] = x
        if self.impl == "buffer" and not torch.compiler.is_compiling():
            r = j % self.k
            if state["bufs"][r] is None:
                state["bufs"][r] = x.new_empty((self.slots[r], *x.shape))
            with torch.no_grad():
                state["bufs"][r][j // self.k].copy_(x)

    def after_block(self, i: int, x: torch.Tensor, state: dict, ctx: Context | None = None) -> torch.Tensor:
        """Store X_i = ``x`` (output of 1-based block i) and return Y_i (same shape)."""
        self._store(i, x, state)
        if i % self.p:
            return x
        alpha = self.alphas[str(i)]
        src = dwa_sources(i, self.k)
        xs = [state["xs"][j] for j in src]
        if self.impl == "naive" or torch.compiler.is_compiling():  # compile: let the compiler fuse
            y = torch.tensordot(alpha.to(x.dtype), torch.stack(xs), dims=1)
        else:
            buf = state["bufs"][i % self.k][: len(src)]
            y = _BufferedMix.apply(alpha, [buf], *xs)
        if ctx is not None and ctx.capture is not None:
            ctx.record("dwa.alpha", alpha)
            ctx.record("dwa.sources", torch.tensor(src))
        return y


# ------------------------------------------------------------------------------------ presets
from formers.nn.presets import preset  # noqa: E402  (after the parts: presets import nothing of them)


@preset("denseformer", PAPER,
        "1x1 DenseFormer: DWA over the embedding and every past block output after every block")
def denseformer(c: ModelConfig) -> ModelConfig:
    """The full 1 x 1 DenseFormer (paper's best quality). Chosen as the default because formers'
    small LM is shallow (4 blocks): the paper's speed-oriented 4 x 5 would place no DWA at all
    below 5 blocks, and the 1 x 1 overhead at this depth is d(d+3)/2 = 14 scalars."""
    return c.replace(residual="dwa", dwa_dilation=1, dwa_period=1)


@preset("denseformer-4x1", PAPER, "4x1 DenseFormer: DWA after every block over every 4th past output")
def denseformer_4x1(c: ModelConfig) -> ModelConfig:
    return c.replace(residual="dwa", dwa_dilation=4, dwa_period=1)


@preset("denseformer-4x5", PAPER,
        "4x5 DenseFormer (paper's recommended speed/quality point; needs >= 5 blocks to have any DWA)")
def denseformer_4x5(c: ModelConfig) -> ModelConfig:
    return c.replace(residual="dwa", dwa_dilation=4, dwa_period=5)
