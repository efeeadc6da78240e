"""Flow-Attention (Wu, Wu, Xu, Wang, Long, "Flowformer: Linearizing Transformers with
Conservation Flows", ICML 2022, arXiv 2202.06258, §3, eq. 3-9; reference code
``thuml/Flowformer@61f5d8c83907`` ``Flow_Attention.py``).

Per head, queries are sinks (n) and keys/values sources (m); phi = sigmoid, eps = 1e-6.

Bidirectional (``Flow_Attention``):

    Qt = phi(Q), Kt = phi(K)
    I_i = 1 / ((Qt_i + eps) . (sum_j Kt_j + eps))              incoming flow of sink i (reciprocal)
    O_j = 1 / ((Kt_j + eps) . (sum_i Qt_i + eps))              outgoing flow of source j (reciprocal)
    Ih_i = (Qt_i + eps) . (sum_j Kt_j O_j + eps)                conserved incoming flow
    Oh_j = clamp((Kt_j + eps) . (sum_i Qt_i I_i + eps), -1, 1)  conserved outgoing flow
    allocation_i = sigmoid(Ih_i * n / m),  competition_j = softmax_j(Oh_j) * m
    out_i = allocation_i * (Qt_i I_i)^T sum_j Kt_j (V_j competition_j)^T

Causal (``Flow_Attention_Causal``): every sum becomes a prefix sum over positions <= i, I and O are
multiplied by normal_i = i + 1 and Ih, Oh divided by it, allocation = sigmoid(Ih) (no n / m),
competition_j = exp(Oh_j) / sum_{s<=j} exp(Oh_s) * normal_j, and the aggregation is
sum_{j<=i} ((Qt_i I_i / normal_i) . Kt_j) V_j competition_j. Every source-side quantity (O_j, Oh_j,
competition_j) depends only on tokens <= j, so the whole layer is an RNN. The reference forms a
(batch, heads, n, d, d) cumsum of Kt V^T (O(n d^2) memory); here the aggregation is the chunked
scan :func:`~formers.nn.attention.linear.causal_scan` carrying the d x d state, and the flows are
O(n d) prefix sums. Decoding keeps ``cache.state`` = {count (batch,), sum_q, sum_k, sum_kO,
sum_qI (batch, heads, d), sum_exp (batch, heads), S (batch, heads, d, d)}: O(d^2) per token.

Flows, reciprocals, the competition and the aggregation are computed in fp32 (float64 kept); the
output is cast back to the input dtype. The eps placements and the clamp are the reference's.

Backends: ``auto`` (prefix sums + chunked scan; bidirectional: sums + two matmuls) and
``reference``: the same formulas with every sum written as an explicit (n x n) visibility matrix
product (O(n^2)) and the aggregation as the explicit (n x n) attention matrix.

Padding (a choice; the reference has no mask): a masked token is removed from the flow network as
if absent: its Qt and Kt are zeroed (it adds nothing to any sum), it gets no competition weight,
``normal`` counts only kept tokens (causal), and n, m count only kept queries / keys
(bidirectional). Outputs at kept positions then equal those of the sequence without the padded
tokens (with learned positions up to their position ids).

Positions: learned / sinusoidal / none are the backbone's. RoPE (a choice, as RoFormer eq. 19
does for linear attention) rotates the feature-mapped queries (Qt I) and keys Kt in the
aggregation only; the flows use the unrotated features, so I, O, allocation and competition stay
the paper's. ALiBi is refused (no score matrix).

Deviations from the reference: the backbone's q/k/v/o projections (bias = ``cfg.bias``; the
reference always has biases) and dropout (the reference: 0.05 after the output projection); GQA
repeats key/value heads; the JAX LRA variant (ReLU features, no clamp, competition over heads) is
not followed (the PyTorch version is the spec); no cross-attention.
"""

from __future__ import annotations

import math

import torch

from formers.nn.attention.linear import (
    FeatureAttention, causal_scan, padding_mask,
)
from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.nn.presets import preset, with_attention
from formers.registry import Capabilities, Paper, register

PAPER = Paper("Flowformer: Linearizing Transformers with Conservation Flows", "2202.06258",
              "§3.2-3.3 eq. 3-9 (flow conservation, competition, allocation); causal: reference code")

STATE_KEYS = ("count", "sum_q", "sum_k", "sum_kO", "sum_qI", "sum_exp", "S")


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1)


def flow_bidirectional(qf: torch.Tensor, kf: torch.Tensor, v: torch.Tensor,
                       keep: torch.Tensor | None, eps: float = 1e-6, explicit: bool = False,
                       rotate=None, key_keep: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Non-causal flow attention of n sinks over m sources (n = m for self-attention).

    qf: (B, H, n, d), kf: (B, H, m, d) sigmoid features; v: (B, H, m, E); keep: (B, n) bool kept
    queries, key_keep: (B, m) kept keys (None = ``keep`` when n = m, else all); None = all kept.
    ``explicit``: every sum as an explicit visibility-matrix product ((n x m) and (m x n)) and the
    aggregation through the (n x m) attention matrix. ``rotate(x)``: RoPE for the aggregation
    features (or None; self-attention only). Returns out (B, H, n, E) and the intermediates
    {incoming (B,H,n), outgoing (B,H,m), conserved_sink, conserved_source, allocation,
    competition}.
    """
    bsz, _, n, _ = qf.shape
    m = kf.shape[2]
    if key_keep is None and n == m:
        key_keep = keep
    qkeep = torch.ones(bsz, n, dtype=qf.dtype, device=qf.device) if keep is None else keep.to(qf.dtype)
    kkeep = torch.ones(bsz, m, dtype=qf.dtype, device=qf.device) if key_keep is None \
        else key_keep.to(qf.dtype)
    qf, kf = qf * qkeep[:, None, :, None], kf * kkeep[:, None, :, None]
    if explicit:
        see_k = kkeep[:, None, None, :].expand(bsz, 1, n, m)          # sink i sees source j
        see_q = qkeep[:, None, None, :].expand(bsz, 1, m, n)          # source j reaches sink i

        def over_k(x):  # sum over kept sources, written out as a matrix product
            return see_k @ x

        def over_q(x):
            return see_q @ x
    else:
        def over_k(x):
            return x.sum(2, keepdim=True)
        over_q = over_k
    n_q = qkeep.sum(-1)[:, None, None]                                  # kept sinks, (B,1,1)
    m_k = kkeep.sum(-1)[:, None, None]                                  # kept sources
    incoming = 1.0 / _dot(qf + eps, over_k(kf) + eps)
    outgoing = 1.0 / _dot(kf + eps, over_q(qf) + eps)
    conserved_sink = _dot(qf + eps, over_k(kf * outgoing[..., None]) + eps)
    conserved_source = _dot(kf + eps, over_q(qf * incoming[..., None]) + eps).clamp(-1.0, 1.0)
    allocation = torch.sigmoid(conserved_sink * (n_q / m_k.clamp_min(1.0)))
    logits = conserved_source.masked_fill(kkeep[:, None, :] == 0, float("-inf"))
    competition = torch.softmax(logits, dim=-1).nan_to_num(0.0) * m_k
    a = qf * incoming[..., None]
    b = kf
    if rotate is not None:
        a, b = rotate(a), rotate(b)
    vc = v * competition[..., None]
    if explicit:
        agg = (a @ b.transpose(-1, -2)) @ vc
    else:
        agg = a @ (b.transpose(-1, -2) @ vc)
    out = agg * allocation[..., None]
    return out, dict(incoming=incoming, outgoing=outgoing, conserved_sink=conserved_sink,
                     conserved_source=conserved_source, allocation=allocation, competition=competition)


def flow_causal(qf: torch.Tensor, kf: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None,
                state: dict[str, torch.Tensor] | None = None, eps: float = 1e-6,
                explicit: bool = False, chunk_size: int = 64, rotate=None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Causal flow attention over a chunk of n new tokens, continuing from ``state``.

    qf, kf: (B, H, n, d) sigmoid features; v: (B, H, n, E); keep: (B, n) bool or None;
    state: the running sums of the tokens before (see the module docstring; None = empty).
    ``explicit``: prefix sums as explicit lower-triangular (n x n) products and the aggregation
    through the (n x n) causal attention matrix; otherwise cumsums and the chunked scan.
    Returns out (B, H, n, E), the new state, and the intermediates (as in
    :func:`flow_bidirectional`, plus ``normal``).
    """
    bsz, h, n, d = qf.shape
    e = v.shape[-1]
    dt, dev = qf.dtype, qf.device
    keepf = torch.ones(bsz, n, dtype=dt, device=dev) if keep is None else keep.to(dt)
    km = keepf[:, None, :, None]
    qf, kf = qf * km, kf * km
    st = state or {}

    def get(name, shape):
        return st[name] if name in st else torch.zeros(shape, dtype=dt, device=dev)

    count0 = get("count", (bsz,))
    sums0 = {name: get(name, (bsz, h, d)) for name in ("sum_q", "sum_k", "sum_kO", "sum_qI")}
    exp0 = get("sum_exp", (bsz, h))
    if explicit:
        tril = torch.ones(n, n, dtype=dt, device=dev).tril()

        def prefix(x, x0):  # sum over tokens <= i, written out as (lower-triangular W) x
            return tril @ x + x0[:, :, None]

        normal = (tril @ keepf[:, :, None])[..., 0] + count0[:, None]
    else:
        def prefix(x, x0):
            return x.cumsum(2) + x0[:, :, None]

        normal = keepf.cumsum(-1) + count0[:, None]
    normal = normal[:, None, :]                                          # (B,1,n) kept tokens <= i
    nrm = normal.clamp_min(1.0)                                          # padded heads of rows
    cum_k, cum_q = prefix(kf, sums0["sum_k"]), prefix(qf, sums0["sum_q"])
    incoming = nrm / _dot(qf + eps, cum_k + eps)
    outgoing = nrm / _dot(kf + eps, cum_q + eps)
    kO, qI = kf * outgoing[..., None], qf * incoming[..., None]
    cum_kO, cum_qI = prefix(kO, sums0["sum_kO"]), prefix(qI, sums0["sum_qI"])
    conserved_sink = _dot(qf + eps, cum_kO + eps) / nrm
    conserved_source = (_dot(kf + eps, cum_qI + eps) / nrm).clamp(-1.0, 1.0)
    allocation = torch.sigmoid(conserved_sink)
    ex = torch.exp(conserved_source) * keepf[:, None, :]
    if explicit:
        cum_exp = (tril @ ex[..., None])[..., 0] + exp0[:, :, None]
    else:
        cum_exp = ex.cumsum(-1) + exp0[:, :, None]
    competition = ex / cum_exp.clamp_min(torch.finfo(dt).tiny) * normal
    a = qf * (incoming / nrm)[..., None]
    b = kf
    if rotate is not None:
        a, b = rotate(a), rotate(b)
    vc = v * competition[..., None]
    s0 = st.get("S")
    if explicit:
        agg = ((a @ b.transpose(-1, -2)) * tril) @ vc
        if s0 is not None:
            agg = agg + a @ s0
        s1 = (s0 if s0 is not None else torch.zeros(bsz, h, d, e, dtype=dt, device=dev)) \
            + b.transpose(-1, -2) @ vc
    else:
        agg, s1 = causal_scan(a, b, vc, s0, chunk_size)
    out = agg * allocation[..., None]
    new_state = dict(count=count0 + keepf.sum(-1), sum_q=sums0["sum_q"] + qf.sum(2),
                     sum_k=sums0["sum_k"] + kf.sum(2), sum_kO=sums0["sum_kO"] + kO.sum(2),
                     sum_qI=sums0["sum_qI"] + qI.sum(2), sum_exp=exp0 + ex.sum(-1), S=s1)
    return out, new_state, dict(incoming=incoming, outgoing=outgoing, conserved_sink=conserved_sink,
                                conserved_source=conserved_source, allocation=allocation,
                                competition=competition, normal=normal)


@register(
    "attention",
    "flowformer",
    paper=PAPER,
    caps=Capabilities(kv_cache=True, state_cache=True, score_bias=False,
                      backend="flow prefix sums + chunked scan (causal), two matmuls "
                              "(bidirectional); reference: explicit O(n^2) form"),
    summary="Flowformer flow-conservation attention (sigmoid features, competition/allocation), "
            "O(1) decoding",
)
class FlowAttention(FeatureAttention):
    """Flow-Attention (arXiv 2202.06258 §3), bidirectional and causal.

    Shapes: x (batch, seq_len, d_model) -> (batch, seq_len, d_model); per head Qt, Kt, V (batch,
    n_heads, seq_len, head_dim); flows (batch, n_heads, seq_len); decoding state as in the module
    docstring (the d x d ``S`` dominates).
    Complexity: bidirectional O(n d^2) time, O(n d) memory; causal O(n d^2 + n C d) time,
    O(n d + n d^2 / C) memory (C = chunk_size); never the reference's (batch, heads, n, d, d).
    Decoding O(d^2) per token. The explicit reference is O(n^2 d).

    Options: ``chunk_size`` (64), ``eps`` (1e-6, the reference's), ``backend`` (``auto`` |
    ``reference``). See the module docstring for padding, RoPE and deviations.
    """

    name = "flowformer"

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True, chunk_size: int = 64, eps: float = 1e-6) -> None:
        super().__init__(cfg, cross=cross, backend=backend, own_values=own_values, chunk_size=chunk_size)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0 \
                or not math.isfinite(eps):
            raise ValueError(f"flowformer: eps must be a finite float > 0, got {eps!r}")
        self.eps = float(eps)

    def kernel_flops(self, seq_len: int, causal: bool) -> float:
        """The aggregation's matmuls, as linear attention's (F = head_dim; the flows, their
        prefix sums and the competition are element-wise and not counted)."""
        return super().kernel_flops(seq_len, causal)

    def forward(self, x: torch.Tensor, ctx: Context, cache=None) -> torch.Tensor:
        bsz, t, _ = x.shape
        acc = torch.promote_types(x.dtype, torch.float32)  # flows in fp32 at least
        qf = torch.sigmoid(self._heads(self.q(x), self.n_heads).to(acc))
        kf = torch.sigmoid(self._heads(self.k(x), self.n_kv_heads).to(acc))
        v = self._heads(self.v(x), self.n_kv_heads).to(acc)
        keep = padding_mask(ctx, bsz, t, x.device)
        pos = ctx.positions
        rotate = None
        if ctx.position is not None:  # RoPE on the aggregation features (identity otherwise)
            def rotate(z):
                return ctx.position.rotate(z, pos)
        explicit = self.backend == "reference"
        if not ctx.causal:
            if cache is not None:
                raise ValueError("flowformer: a decoding cache needs causal self-attention")
            out, inter = flow_bidirectional(qf, kf, v, keep, self.eps, explicit, rotate)
        else:
            state = cache.state if cache is not None else None
            out, new_state, inter = flow_causal(qf, kf, v, keep, state, self.eps, explicit,
                                                self.chunk_size, rotate)
            if cache is not None:
                cache.state.update(new_state)
        if ctx.capture is not None:
            for name in ("allocation", "competition", "incoming", "outgoing"):
                ctx.record(f"flow.{name}", inter[name])
        return self.o(out.to(x.dtype).transpose(1, 2).reshape(bsz, t, self.n_heads * self.head_dim))


@preset("flowformer", PAPER, "baseline with Flowformer flow attention in every layer")
def flowformer_preset(c: ModelConfig) -> ModelConfig:
    return with_attention(c, "flowformer")


__all__ = ["STATE_KEYS", "FlowAttention", "flow_bidirectional", "flow_causal"]
