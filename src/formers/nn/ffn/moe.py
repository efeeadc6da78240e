"""Sparsely gated mixture-of-experts feed-forward (registry ffn ``moe``) with expert-choice and
top-k token-choice routing, load statistics, the load-balancing auxiliary loss and analytic
parameter / FLOP counts.

Papers:
  * Expert choice: Zhou et al., "Mixture-of-Experts with Expert Choice Routing" (arXiv 2202.09368,
    §3.1-3.2), the gating that Brainformers use (Zhou et al., "Brainformers: Trading Simplicity for
    Efficiency", arXiv 2306.00008, §3, Table 1; block #1 uses expert choice at capacity factor 1).
    S = softmax(X W_g) over experts, (n, E); each expert e takes its top-c tokens of column e,
    c = n * cf / E; output_i = sum over experts that chose i of S[i, e] * expert_e(x_i). A token no
    expert chose gets 0 (it passes on the residual).
  * Top-k token choice: Shazeer et al. (arXiv 1701.06538), GShard (Lepikhin et al., arXiv
    2006.16668, §2.2 and Algorithm 1: top-2, gates renormalised to sum 1, expert capacity, first
    choices dispatched before second choices, overflow dropped), Switch (Fedus et al., arXiv
    2101.03961, §2.2 eq. 4-6: auxiliary loss alpha * E * sum_e f_e P_e; top-1 keeps the raw
    probability).

Shapes: x (batch, seq_len, d_model) -> (batch, seq_len, d_model). Routing *groups* are each
sequence (``group='sequence'``, default) or the whole batch (``group='batch'``): n is the group's
token count. Experts run as one batched einsum over a (groups, E, capacity, d_model) buffer; tokens
move in and out by gather / index_add (no Python loop over tokens or experts).

Causality (decision): expert choice is not causal (expert e picks among *all* tokens of the group,
so token i's output depends on later tokens), and token choice with a finite capacity is not
either (which assignments overflow depends on the other tokens, and the capacity on the length).
Neither gives cached decoding equal to the full forward. Such a MoE is therefore refused at build
in any model with a causal stack (``arch`` ``decoder`` / ``encoder-decoder``; the layer pattern
is shared by both stacks) and at forward under ``ctx.causal``, unless ``noncausal_ok=True``
declares that the leak is accepted (that is how the papers trained decoders). Dropless top-k
(``capacity_factor=None``) routes every token on its own and is causal and cache-exact.

Auxiliary loss: each forward stores ``module.last_aux_loss`` (a scalar tensor, already multiplied
by ``aux_loss_weight``; zero for expert choice, which is balanced by construction). :func:`aux_loss`
sums them over a model after its forward; a training loss adds it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.registry import Paper, register

ROUTINGS = ("expert_choice", "top_k")
ACTIVATIONS = ("gelu", "relu", "swiglu", "geglu")
GROUPS = ("sequence", "batch")
PAPER = Paper("Mixture-of-Experts with Expert Choice Routing", "2202.09368",
              "§3 (the gating of Brainformers, arXiv 2306.00008 §3); top-k: GShard arXiv "
              "2006.16668 §2.2 Alg. 1, Switch arXiv 2101.03961 eq. 4-6")


def _gated(activation: str) -> bool:
    return activation in ("swiglu", "geglu")


class ExpertLinear(nn.Module):
    """E independent linear maps. weight (E, d_in, d_out); bias stored flat (E * d_out,) so that
    the model initialiser zeroes it like every other bias. x (G, E, C, d_in) -> (G, E, C, d_out)."""

    def __init__(self, n_experts: int, d_in: int, d_out: int, bias: bool) -> None:
        super().__init__()
        self.n_experts, self.d_out = n_experts, d_out
        bound = 1.0 / math.sqrt(d_in)
        self.weight = nn.Parameter(torch.empty(n_experts, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(n_experts * d_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("gecd,edh->gech", x, self.weight)
        if self.bias is not None:
            y = y + self.bias.view(self.n_experts, 1, self.d_out)
        return y


def expert_params(d_model: int, d_ff: int, activation: str = "gelu", bias: bool = True) -> int:
    """Parameters of one expert (= one dense FFN of hidden width d_ff with this activation)."""
    up = d_ff * (2 if _gated(activation) else 1)
    return d_model * up + d_ff * d_model + ((up + d_model) if bias else 0)


def moe_param_counts(d_model: int, d_ff: int, n_experts: int, routing: str = "top_k",
                     top_k: int = 2, capacity_factor: float | None = None,
                     activation: str = "gelu", bias: bool = True) -> dict[str, float]:
    """Analytic sizes of one MoE layer against the dense FFN it replaces.

    Returns ``dense`` (one dense FFN = one expert), ``router`` (d_model * E), ``total`` (router +
    E experts), ``experts_per_token`` (top-k: k, an upper bound when a capacity drops assignments;
    expert choice: E * c / n = capacity_factor on average), ``active`` (parameters used per token:
    router + experts_per_token * dense) and ``flops_per_token`` (forward multiply-adds * 2 of the
    router and the active experts' matrices; biases and activations not counted), next to
    ``dense_flops_per_token``.
    """
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    dense = expert_params(d_model, d_ff, activation, bias)
    matmul = expert_params(d_model, d_ff, activation, False)
    router = d_model * n_experts
    if routing == "top_k":
        per_token = float(top_k)
    else:
        per_token = float(1.0 if capacity_factor is None else capacity_factor)
    return {
        "dense": dense, "router": router, "total": router + n_experts * dense,
        "experts_per_token": per_token, "active": router + per_token * dense,
        "flops_per_token": 2.0 * (router + per_token * matmul),
        "dense_flops_per_token": 2.0 * matmul,
    }


@register("ffn", "moe", paper=PAPER,
          summary="sparsely gated mixture of experts: expert-choice or top-k token-choice routing")
class MoE(nn.Module):
    """Mixture-of-experts FFN. x (batch, seq_len, d_model) -> (batch, seq_len, d_model).

    Args:
        cfg: the model config (d_model, d_ff = each expert's hidden width by default, bias, arch).
        n_experts: E >= 1.
        d_ff: expert hidden width (default ``cfg.ffn_hidden``).
        routing: ``top_k`` (each token picks k experts) or ``expert_choice`` (each expert picks
            c tokens).
        top_k: k for token choice, 1 <= k <= E.
        capacity_factor: expert choice: c = min(n, max(1, ceil(n * cf / E))) tokens per expert
            (None = 1.0, the paper's block #1). Token choice: C = min(n, ceil(k * n * cf / E))
            slots per expert, assignments beyond it are dropped (GShard order: all first choices
            in token order, then all second choices, ...); None = dropless (C = the largest load).
        normalize: token choice: renormalise the k gates to sum 1 (GShard top-2). None = k > 1
            (Switch top-1 keeps the raw probability so that the router gets a gradient).
        activation: ``gelu`` (tanh approximation, as ``mlp``), ``relu``, or gated ``swiglu`` /
            ``geglu`` (Table 1 of Brainformers searches gated and plain activations).
        group: ``sequence`` (each sequence routes on its own; default) or ``batch`` (one group of
            batch * seq_len tokens, as in the expert-choice paper).
        aux_loss_weight: alpha of the Switch load-balancing loss (token choice; default 0.01).
        noncausal_ok: accept a non-causal router in a causal stack (see the module docstring).

    Padding: with ``ctx.key_mask`` of shape (batch, seq_len), padded tokens are never routed,
    take no capacity and get output 0; statistics count real tokens only.

    Recorded each forward in ``last_stats`` (detached): ``tokens_per_expert`` (E,) assignments
    each expert processed; ``dropped`` assignments lost to capacity (token choice);
    ``unrouted`` tokens that no expert processed; ``router_entropy`` mean entropy (nats) of the
    router distribution. With ``ctx.capture``: ``layer{i}.moe.probs`` (batch, seq_len, E) router
    softmax, ``moe.gates`` (batch, seq_len, E) the combine weights actually applied (0 where not
    routed) and the statistics above.

    Deviations: routing groups default to one sequence (the paper groups the batch; a sequence
    keeps a sample independent of its batch mates); no expert dropout, no router z-loss, no
    jitter; dropless token choice by default (GLaM/GShard train with a capacity).
    """

    takes_context = True

    def __init__(self, cfg: ModelConfig, n_experts: int = 8, d_ff: int | None = None,
                 routing: str = "top_k", top_k: int = 2, capacity_factor: float | None = None,
                 normalize: bool | None = None, activation: str = "gelu", group: str = "sequence",
                 aux_loss_weight: float = 0.01, noncausal_ok: bool = False) -> None:
        super().__init__()
        if not isinstance(n_experts, int) or n_experts < 1:
            raise ValueError(f"moe: n_experts must be an int >= 1, got {n_experts!r}")
        if routing not in ROUTINGS:
            raise ValueError(f"moe: routing must be one of {ROUTINGS}, got {routing!r}")
        if routing == "top_k" and (not isinstance(top_k, int) or not 1 <= top_k <= n_experts):
            raise ValueError(f"moe: top_k must be an int in [1, n_experts={n_experts}], got {top_k!r}")
        if capacity_factor is not None and not (isinstance(capacity_factor, (int, float))
                                                and capacity_factor > 0):
            raise ValueError(f"moe: capacity_factor must be > 0 or None, got {capacity_factor!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"moe: activation must be one of {ACTIVATIONS}, got {activation!r}")
        if group not in GROUPS:
            raise ValueError(f"moe: group must be one of {GROUPS}, got {group!r}")
        if aux_loss_weight < 0:
            raise ValueError(f"moe: aux_loss_weight must be >= 0, got {aux_loss_weight}")
        hidden = d_ff or cfg.ffn_hidden
        if hidden <= 0:
            raise ValueError(f"moe: d_ff must be > 0, got {hidden}")
        if routing == "expert_choice" and capacity_factor is None:
            capacity_factor = 1.0
        self.n_experts, self.d_ff, self.routing, self.top_k = n_experts, hidden, routing, top_k
        self.capacity_factor, self.activation, self.group = capacity_factor, activation, group
        self.normalize = top_k > 1 if normalize is None else bool(normalize)
        self.aux_loss_weight, self.noncausal_ok = float(aux_loss_weight), bool(noncausal_ok)
        self.bias = cfg.bias
        self.causal_safe = routing == "top_k" and capacity_factor is None
        if not self.causal_safe and cfg.arch != "encoder" and not noncausal_ok:
            raise ValueError(
                f"moe: routing={routing!r} with capacity_factor={capacity_factor} is not causal "
                f"(the routing of a token depends on the other tokens of its group), so it cannot "
                f"run in a causal stack (arch={cfg.arch!r}). Use routing='top_k' with "
                f"capacity_factor=None (dropless) in decoders, arch='encoder', or noncausal_ok=True "
                f"to accept the leak (cached decoding then differs from the full forward)")
        d = cfg.d_model
        self.router = nn.Linear(d, n_experts, bias=False)
        self.up = ExpertLinear(n_experts, d, hidden * (2 if _gated(activation) else 1), cfg.bias)
        self.down = ExpertLinear(n_experts, hidden, d, cfg.bias)
        self.last_aux_loss: torch.Tensor | None = None
        self.last_stats: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------ experts
    def experts(self, buf: torch.Tensor) -> torch.Tensor:
        """All experts on their buffers at once: (G, E, C, d_model) -> (G, E, C, d_model)."""
        h = self.up(buf)
        if self.activation == "gelu":
            h = F.gelu(h, approximate="tanh")
        elif self.activation == "relu":
            h = F.relu(h)
        else:
            a, b = h.chunk(2, dim=-1)
            h = (F.silu(a) if self.activation == "swiglu" else F.gelu(a, approximate="tanh")) * b
        return self.down(h)

    def capacity(self, n: int) -> int:
        """Slots per expert for a group of n tokens (token choice dropless: decided per call)."""
        e, cf = self.n_experts, self.capacity_factor
        if self.routing == "expert_choice":
            return min(n, max(1, math.ceil(n * cf / e)))
        if cf is None:
            return n
        return min(n, max(1, math.ceil(self.top_k * n * cf / e)))

    def routed_tokens(self, seq_len: int) -> float:
        """Expert evaluations (token, expert) per sequence of ``seq_len`` tokens (group
        ``sequence``): top-k k n (with a capacity at most E C); expert choice E c."""
        n, e = seq_len, self.n_experts
        if self.routing == "expert_choice":
            return float(e * self.capacity(n))
        slots = self.top_k * n
        return float(slots if self.capacity_factor is None else min(slots, e * self.capacity(n)))

    def forward_flops(self, seq_len: int, causal: bool, square: bool) -> float:
        """The router (2 n d_model E) and the **active** experts only: :meth:`routed_tokens` x
        2 x (d_model up + d_ff d_model), up = d_ff (2 d_ff gated). The dropless top-k path pads
        every expert's buffer to the busiest expert's load; that padding is not counted."""
        d = self.router.in_features
        up = self.up.weight.shape[-1]
        per_eval = 2.0 * (d * up + self.d_ff * d)
        return 2.0 * seq_len * d * self.n_experts + self.routed_tokens(seq_len) * per_eval

    def param_counts(self, d_model: int) -> dict[str, float]:
        """:func:`moe_param_counts` for this layer's settings."""
        return moe_param_counts(d_model, self.d_ff, self.n_experts, self.routing, self.top_k,
                                self.capacity_factor, self.activation, self.bias)

    # ------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        b, t, d = x.shape
        if ctx is not None and ctx.causal and not self.causal_safe and not self.noncausal_ok:
            raise ValueError(f"moe: routing={self.routing!r} with capacity_factor="
                             f"{self.capacity_factor} is not causal; refused under a causal mask")
        mask = ctx.key_mask if ctx is not None else None
        valid = mask.bool() if mask is not None and tuple(mask.shape) == (b, t) else \
            torch.ones(b, t, dtype=torch.bool, device=x.device)
        if self.group == "batch":
            xg, valid = x.reshape(1, b * t, d), valid.reshape(1, b * t)
        else:
            xg = x
        probs = torch.softmax(self.router(xg).float(), dim=-1)  # (G, n, E)
        if self.routing == "expert_choice":
            out, comb, stats = self._expert_choice(xg, probs, valid)
        else:
            out, comb, stats = self._token_choice(xg, probs, valid)
        with torch.no_grad():
            p = probs.clamp_min(1e-30)
            ent = -(p * p.log()).sum(-1)
            stats["router_entropy"] = ent[valid].mean() if valid.any() else ent.new_zeros(())
        self.last_stats = {k: v.detach() for k, v in stats.items()}
        if ctx is not None and ctx.capture is not None:
            ctx.record("moe.probs", probs.reshape(b, t, -1))
            ctx.record("moe.gates", comb.reshape(b, t, -1))
            for k, v in self.last_stats.items():
                ctx.record(f"moe.{k}", v)
        return out.reshape(b, t, d)

    def _expert_choice(self, xg, probs, valid):
        g, n, d = xg.shape
        e = self.n_experts
        c = self.capacity(n)
        # padded tokens rank below every real one (probabilities are >= 0) and get gate 0
        scores = probs.masked_fill(~valid[..., None], -1.0).transpose(1, 2)  # (G, E, n)
        top, idx = scores.topk(c, dim=-1)  # (G, E, c)
        keep = top >= 0
        gates = torch.where(keep, top, torch.zeros_like(top)).to(xg.dtype)
        flat = idx.reshape(g, e * c, 1).expand(g, e * c, d)
        buf = torch.gather(xg, 1, flat).view(g, e, c, d)
        y = self.experts(buf) * gates[..., None]
        out = torch.zeros_like(xg).scatter_add(1, flat, y.reshape(g, e * c, d))
        comb = torch.zeros(g, e, n, dtype=probs.dtype, device=xg.device).scatter_add(
            2, idx, gates.to(probs.dtype)).transpose(1, 2)
        with torch.no_grad():
            per_token = torch.zeros(g, n, device=xg.device).scatter_add(
                1, idx.reshape(g, e * c), keep.reshape(g, e * c).float())
            stats = {"tokens_per_expert": keep.sum(dim=(0, 2)),
                     "dropped": torch.zeros((), dtype=torch.long, device=xg.device),
                     "unrouted": ((per_token == 0) & valid).sum()}
        self.last_aux_loss = probs.new_zeros(())
        return out, comb, stats

    def _token_choice(self, xg, probs, valid):
        g, n, d = xg.shape
        e, k = self.n_experts, self.top_k
        top, idx = probs.topk(k, dim=-1)  # (G, n, k)
        gates = top / top.sum(-1, keepdim=True) if self.normalize else top
        # assignments in GShard priority: all first choices in token order, then second, ...
        expert = idx.transpose(1, 2).reshape(g, k * n)
        gate = gates.transpose(1, 2).reshape(g, k * n)
        ok = valid[:, None, :].expand(g, k, n).reshape(g, k * n)
        onehot = F.one_hot(expert, e) * ok[..., None]  # (G, k n, E)
        pos = onehot.cumsum(1).gather(2, expert[..., None]).squeeze(-1) - 1
        load = onehot.sum(1)  # (G, E) assignments asked of each expert
        if self.capacity_factor is None:  # dropless: as many slots as the busiest expert needs
            cap = max(1, int(load.max())) if load.numel() else 1
        else:
            cap = self.capacity(n)
        keep = ok & (pos < cap)
        gi = torch.arange(g, device=xg.device)[:, None]
        slot = ((gi * e + expert) * cap + pos)[keep]
        token = (gi * n + torch.arange(n, device=xg.device).repeat(k)[None, :])
        token = token.expand(g, k * n)[keep]
        xf = xg.reshape(g * n, d)
        buf = xf.new_zeros(g * e * cap, d).index_add(0, slot, xf[token])
        y = self.experts(buf.view(g, e, cap, d)).reshape(g * e * cap, d)
        w = gate[keep]
        out = xf.new_zeros(g * n, d).index_add(0, token, y[slot] * w[:, None].to(xf.dtype))
        comb = probs.new_zeros(g * n * e).index_add(
            0, token * e + expert[keep], w.to(probs.dtype)).view(g, n, e)
        # Switch loss: E * sum_e f_e P_e, f over all k assignments before capacity, P the mean
        # router probability, both over real tokens; = 1 when the router is uniform
        n_real = valid.sum().clamp_min(1)
        f = load.sum(0).to(probs.dtype) / (k * n_real)
        p_mean = (probs * valid[..., None]).sum(dim=(0, 1)) / n_real
        self.last_aux_loss = self.aux_loss_weight * e * (f * p_mean).sum()
        with torch.no_grad():
            kept = F.one_hot(expert, e) * keep[..., None]
            per_token = keep.view(g, k, n).sum(1)
            stats = {"tokens_per_expert": kept.sum(dim=(0, 1)),
                     "dropped": (ok & ~keep).sum(),
                     "unrouted": ((per_token == 0) & valid).sum()}
        return out.view(g, n, d), comb, stats


# ----------------------------------------------------------------------------- model helpers
def moe_layers(model: nn.Module) -> list[MoE]:
    """The MoE FFNs of ``model`` in module order."""
    return [m for m in model.modules() if isinstance(m, MoE)]


def aux_loss(model: nn.Module) -> torch.Tensor:
    """Sum of the auxiliary losses of every MoE layer from the model's *last* forward (a scalar;
    0 when the model has none). Call it right after the forward whose loss it joins:
    ``loss = F.cross_entropy(model(x), y) + aux_loss(model)``."""
    total = None
    for m in moe_layers(model):
        if m.last_aux_loss is not None:
            total = m.last_aux_loss if total is None else total + m.last_aux_loss
    if total is None:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    return total


def moe_stats(model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """``last_stats`` of every MoE layer (module order) from the last forward."""
    return [dict(m.last_stats) for m in moe_layers(model)]


def active_params(model: nn.Module) -> float:
    """Parameters used per token: every parameter, minus the experts a token does not use
    (each MoE layer counts router + experts_per_token experts; see :func:`moe_param_counts`)."""
    total = float(sum(p.numel() for p in model.parameters()))
    for m in moe_layers(model):
        d = m.router.in_features
        c = m.param_counts(d)
        total -= (m.n_experts - c["experts_per_token"]) * c["dense"]
    return total


# ------------------------------------------------------------------------------------ presets
from formers.nn.presets import preset  # noqa: E402  (after the parts)

GLAM = Paper("GLaM: Efficient Scaling of Language Models with Mixture-of-Experts", "2112.06905",
             "§3: every other FFN is a top-2 MoE")
MOE_PRESET_OPTIONS: dict[str, Any] = {"n_experts": 8, "routing": "top_k", "top_k": 2}


@preset("moe", GLAM, "every other FFN (layers 2, 4, ...) a top-2 dropless MoE of 8 experts")
def moe(c: ModelConfig) -> ModelConfig:
    """GLaM-style alternation at the base depth: layers 1, 3, ... keep their FFN, layers 2, 4, ...
    get a top-2, 8-expert MoE with the base FFN's hidden width per expert (GLaM: 64 experts, with a
    capacity; here dropless, so that the preset is causal and cache-exact in every arch)."""
    layers = []
    for i in range(c.n_layers):
        s = c.layer_spec(i)
        if i % 2 == 1:
            s = s.replace(ffn="moe", ffn_options=dict(MOE_PRESET_OPTIONS))
        layers.append(s)
    return c.replace(layers=layers)


__all__ = ["MoE", "ExpertLinear", "active_params", "aux_loss", "expert_params", "moe_layers",
           "moe_param_counts", "moe_stats"]
