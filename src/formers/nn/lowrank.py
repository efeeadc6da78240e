"""Low-rank linear layers: the Low-Rank Transformer (LRT) of Greenformers.

Papers: Samuel Cahyawijaya, "Greenformers: Improving Computation and Memory Efficiency in
Transformer Models via Low-Rank Approximation" (MPhil thesis, HKUST 2021, arXiv 2108.10808),
ch. 3 (LRT); the Low-Rank Transformer itself is Winata, Cahyawijaya, Lin, Liu, Fung, "Lightweight
and Efficient End-to-End Speech Recognition Using Low-Rank Transformer" (ICASSP 2020).
Reference code read: ``SamuelCahyawijaya/greenformer@154ca1faf274`` (``lr_module.py``,
``auto_fact.py``).

The idea. A linear map y = W x + b with W in R^{out x in} becomes a "linear encoder-decoder"
(LED) unit

    y = D (E x) + b,     E in R^{r x in} (no bias),  D in R^{out x r},

with r(in + out) weights and 2 r (in + out) FLOPs per token instead of in*out and 2 in*out. It
saves parameters and FLOPs iff r < in*out / (in + out), the *limit rank* (:func:`limit_rank`).

What is here:

* :class:`LowRankLinear` -- the LED unit; ``LowRankLinear.from_linear(linear, rank)`` initialises
  it from a dense layer by truncated SVD, W ~ (U_r S_r) V_r^T, i.e. D = U_r S_r and E = V_r^T.
* Registry parts that build a model with low-rank linears *by config* ("factorization by
  design"): attention ``lowrank-softmax`` (softmax attention whose Q/K/V/O projections are LED
  units) and feed-forwards ``lowrank-mlp`` / ``lowrank-swiglu`` (every FFN linear an LED unit, the
  activation between them as usual). They take two options, given per layer in
  ``LayerSpec.attention_options`` / ``LayerSpec.ffn_options``:

  - ``rank``: an ``int`` r (the same absolute rank for every linear of the part; ValueError
    outside [1, min(in, out)]) or a ``float`` f in (0, 1]: a fraction of each linear's limit
    rank, r = max(1, round(f * in*out/(in+out))) -- so f is the fraction of the dense layer's
    parameters and FLOPs that remain (Greenformer's ``auto_fact`` reads ``rank < 1`` the same way).
  - ``skip_unprofitable``: keep a linear dense (an ordinary ``nn.Linear``) where r >= its limit
    rank, as ``auto_fact`` does. Default False: such a linear is factorised anyway (a warning is
    issued by :func:`factorize`, which is how it is reached in practice).

* :func:`factorize` -- post-training factorisation of a dense model: returns a new model (its
  config names the low-rank parts, so it saves and loads like any model) plus a
  :class:`FactorizeReport` (per-linear relative Frobenius error, parameter and FLOP savings, limit
  rank).
* Preset ``lowrank``: every attention and FFN linear at half its limit rank (``rank=0.5``), i.e.
  half the parameters of each replaced linear. For the small LM of the ``lm`` task (d_model 128,
  d_ff 512) that is r = 32 for the 128 x 128 attention projections and r = 51 for the 128 x 512
  FFN linears (the LRT paper reports about 50% fewer parameters at comparable quality).

Deviations from the paper / reference code:

* SVD is the exact ``torch.linalg.svd`` (computed in float64), not the randomised
  ``torch.svd_lowrank`` of ``auto_fact``, so the factorisation is deterministic and optimal
  (Eckart-Young). The NMF / SNMF solvers and the convolutional CED unit are not implemented.
* The bias of a factorised layer is copied, never shared with the dense model (``auto_fact`` with
  ``deepcopy=False`` shares the bias Parameter object).
* ``LowRankLinear`` works on non-contiguous inputs (the reference's ``LED.forward`` uses ``.view``).
* Initialisation when training from scratch: each LED unit draws both factors from
  N(0, sqrt(s / sqrt(r))), so every entry of D E has the std s the dense layer would get from the
  backbone's GPT-2 init (``init_std``, scaled by 1/sqrt(2L) for ``o`` / ``down``); drawing each
  factor from N(0, init_std) instead would start D E at init_std^2 sqrt(r), several times too
  small, which slows training markedly. Greenformer's random solver uses ``nn.Linear``'s default
  (Kaiming-uniform) init per factor; the paper does not specify one.
* Cross-attention in encoder-decoder models is always the backbone's dense ``softmax`` part
  (``Block`` builds it by name), so neither the config route nor :func:`factorize` makes it
  low-rank; the report lists it as left dense.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from formers.nn.attention.softmax import SoftmaxAttention
from formers.nn.config import LayerSpec, ModelConfig
from formers.nn.ffn.mlp import MLP, SwiGLU
from formers.nn.presets import preset
from formers.registry import Capabilities, Paper, register

PAPER = Paper(
    "Greenformers: Improving Computation and Memory Efficiency in Transformer Models via "
    "Low-Rank Approximation", "2108.10808",
    "ch. 3, Low-Rank Transformer (LED units; Winata et al., ICASSP 2020)",
)


# ------------------------------------------------------------------------------ rank helpers
def limit_rank(in_features: int, out_features: int) -> float:
    """in*out / (in + out): a rank r saves parameters and FLOPs iff r < this value."""
    return in_features * out_features / (in_features + out_features)


def resolve_rank(rank: int | float, in_features: int, out_features: int) -> int:
    """The absolute rank of one linear (in -> out) from an ``int`` rank or a ``float`` fraction of
    its limit rank (see the module docstring).

    Raises:
        ValueError: a non-number, an int outside [1, min(in, out)], a float outside (0, 1].
    """
    top = min(in_features, out_features)
    if isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise ValueError(f"lowrank: rank must be an int in [1, {top}] or a float fraction of the "
                         f"limit rank in (0, 1], got {rank!r}")
    if isinstance(rank, float):
        if not 0.0 < rank <= 1.0:
            raise ValueError(f"lowrank: a fractional rank must lie in (0, 1], got {rank}")
        r = max(1, int(round(rank * limit_rank(in_features, out_features))))
        return min(r, top)
    if not 1 <= rank <= top:
        raise ValueError(f"lowrank: rank {rank} of a {in_features} -> {out_features} linear must "
                         f"lie in [1, min(in, out) = {top}]")
    return int(rank)


def lowrank_params(in_features: int, out_features: int, rank: int, bias: bool = True) -> int:
    """Parameters of an LED unit: r (in + out) (+ out for the bias)."""
    return rank * (in_features + out_features) + (out_features if bias else 0)


# ---------------------------------------------------------------------------------- LED unit
class LowRankLinear(nn.Module):
    """LED unit y = D (E x) + b (Greenformers arXiv 2108.10808, ch. 3; LRT, Winata et al. 2020).

    x: (..., in_features) -> y: (..., out_features). E = ``self.E`` (``nn.Linear(in, rank,
    bias=False)``), D = ``self.D`` (``nn.Linear(rank, out, bias=bias)``).

    Raises:
        ValueError: rank outside [1, min(in, out)].
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        rank = resolve_rank(rank, in_features, out_features)
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.E = nn.Linear(in_features, rank, bias=False)
        self.D = nn.Linear(rank, out_features, bias=bias)

    @property
    def weight(self) -> torch.Tensor:
        """The equivalent dense weight D E: (out_features, in_features)."""
        return self.D.weight @ self.E.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.D.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.D(self.E(x))

    @torch.no_grad()
    def init_like_dense(self, std: float) -> None:
        """Draw both factors from N(0, sqrt(std / sqrt(rank))) so that every entry of D E has
        std ``std``, as the dense layer it replaces (var of a sum of r products = r s^4)."""
        s = math.sqrt(std / math.sqrt(self.rank))
        nn.init.normal_(self.E.weight, std=s)
        nn.init.normal_(self.D.weight, std=s)
        if self.D.bias is not None:
            nn.init.zeros_(self.D.bias)

    @torch.no_grad()
    def load_svd(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Set D = U_r S_r, E = V_r^T from the exact SVD of ``weight`` (out, in) (computed in
        float64) and copy ``bias``. Returns the singular values of ``weight`` (float64)."""
        if weight.shape != (self.out_features, self.in_features):
            raise ValueError(f"LowRankLinear.load_svd: weight shape {tuple(weight.shape)} != "
                             f"{(self.out_features, self.in_features)}")
        u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
        r = self.rank
        self.D.weight.copy_((u[:, :r] * s[:r]).to(self.D.weight))
        self.E.weight.copy_(vh[:r].to(self.E.weight))
        if self.D.bias is not None:
            if bias is None:
                self.D.bias.zero_()
            else:
                self.D.bias.copy_(bias)
        return s

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int | float) -> "LowRankLinear":
        """The truncated-SVD LED unit of a dense ``nn.Linear`` (same dtype and device)."""
        out_f, in_f = linear.weight.shape
        r = resolve_rank(rank, in_f, out_f)
        led = cls(in_f, out_f, r, bias=linear.bias is not None).to(linear.weight)
        led.load_svd(linear.weight, linear.bias)
        return led

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, bias={self.D.bias is not None}")


def make_linear(in_features: int, out_features: int, rank: int | float, bias: bool,
                skip_unprofitable: bool = False) -> nn.Module:
    """An LED unit of the resolved rank, or a dense ``nn.Linear`` when ``skip_unprofitable`` and
    the rank is at or above the limit rank."""
    r = resolve_rank(rank, in_features, out_features)
    if skip_unprofitable and r >= limit_rank(in_features, out_features):
        return nn.Linear(in_features, out_features, bias=bias)
    return LowRankLinear(in_features, out_features, r, bias=bias)


def _check_skip(skip_unprofitable: Any) -> None:
    if not isinstance(skip_unprofitable, bool):
        raise ValueError(f"lowrank: skip_unprofitable must be a bool, got {skip_unprofitable!r}")


# ------------------------------------------------------------------------------ registry parts
@register(
    "attention",
    "lowrank-softmax",
    paper=PAPER,
    caps=Capabilities(kv_cache=True, cross=True, backend="sdpa (flash / mem-efficient / math); reference"),
    summary="softmax attention with low-rank (LED) Q/K/V/O projections (LRT)",
)
class LowRankSoftmaxAttention(SoftmaxAttention):
    """Softmax attention whose Q, K, V and O projections are LED units y = D(E x) + b
    (Greenformers arXiv 2108.10808 ch. 3, "low-rank multi-head attention").

    Shapes: x (batch, seq_len, d_model) -> (batch, seq_len, d_model), exactly as
    :class:`~formers.nn.attention.softmax.SoftmaxAttention` (GQA, caches, RoPE/ALiBi, value
    residual and the SDPA fast path are inherited; only the four linears change).

    Args: as SoftmaxAttention, plus ``rank`` (int, or float fraction of each projection's limit
    rank; default 0.5) and ``skip_unprofitable`` (keep projections with rank >= limit dense).
    """

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True, rank: int | float = 0.5,
                 skip_unprofitable: bool = False) -> None:
        super().__init__(cfg, cross=cross, backend=backend, own_values=own_values)
        _check_skip(skip_unprofitable)
        d, hd = cfg.d_model, cfg.head_dim

        def lin(i: int, o: int) -> nn.Module:
            return make_linear(i, o, rank, cfg.bias, skip_unprofitable)

        self.q = lin(d, self.n_heads * hd)
        self.k = lin(d, self.n_kv_heads * hd)
        self.v = lin(d, self.n_kv_heads * hd) if own_values else None
        self.o = lin(self.n_heads * hd, d)


@register(
    "ffn",
    "lowrank-mlp",
    paper=PAPER,
    summary="GELU MLP whose two linears are low-rank LED units (LRT)",
)
class LowRankMLP(MLP):
    """D_2(E_2 GELU(D_1(E_1 x) + b_1)) + b_2: the GELU MLP with both linears LED units
    (Greenformers arXiv 2108.10808 ch. 3, "low-rank feed-forward"). x: (batch, seq_len, d_model)
    -> same shape. Options: ``d_ff``, ``rank`` (default 0.5 of the limit rank), ``skip_unprofitable``.
    """

    def __init__(self, cfg: ModelConfig, d_ff: int | None = None, rank: int | float = 0.5,
                 skip_unprofitable: bool = False) -> None:
        super().__init__(cfg, d_ff=d_ff)
        _check_skip(skip_unprofitable)
        hidden = self.up.out_features
        self.up = make_linear(cfg.d_model, hidden, rank, cfg.bias, skip_unprofitable)
        self.down = make_linear(hidden, cfg.d_model, rank, cfg.bias, skip_unprofitable)


@register(
    "ffn",
    "lowrank-swiglu",
    paper=PAPER,
    summary="SwiGLU whose three linears are low-rank LED units (LRT)",
)
class LowRankSwiGLU(SwiGLU):
    """W2 (SiLU(W x) * V x) with W, V, W2 LED units (Greenformers arXiv 2108.10808 ch. 3 applied to
    the SwiGLU FFN; the thesis factorises plain FFNs). x: (batch, seq_len, d_model) -> same shape.
    Options: ``d_ff``, ``rank`` (default 0.5 of the limit rank), ``skip_unprofitable``.
    """

    def __init__(self, cfg: ModelConfig, d_ff: int | None = None, rank: int | float = 0.5,
                 skip_unprofitable: bool = False) -> None:
        super().__init__(cfg, d_ff=d_ff)
        _check_skip(skip_unprofitable)
        hidden = self.up.out_features
        self.gate = make_linear(cfg.d_model, hidden, rank, cfg.bias, skip_unprofitable)
        self.up = make_linear(cfg.d_model, hidden, rank, cfg.bias, skip_unprofitable)
        self.down = make_linear(hidden, cfg.d_model, rank, cfg.bias, skip_unprofitable)


LOWRANK_ATTENTION = {"softmax": "lowrank-softmax"}
LOWRANK_FFN = {"mlp": "lowrank-mlp", "swiglu": "lowrank-swiglu"}
WHICH = ("all", "attention", "ffn")


def lowrank_spec(spec: LayerSpec, rank: int | float, which: str = "all",
                 skip_unprofitable: bool = False) -> LayerSpec:
    """``spec`` with its softmax attention and/or mlp/swiglu FFN replaced by the low-rank parts
    (options kept, ``rank`` / ``skip_unprofitable`` added).

    Raises:
        ValueError: ``which`` unknown, or a part asked for has no low-rank version.
    """
    if which not in WHICH:
        raise ValueError(f"lowrank: which = {which!r} is not one of {list(WHICH)}")
    opts = {"rank": rank, "skip_unprofitable": skip_unprofitable}
    if which in ("all", "attention"):
        if spec.attention not in LOWRANK_ATTENTION:
            raise ValueError(
                f"lowrank: attention {spec.attention!r} has no low-rank version (supported: "
                f"{sorted(LOWRANK_ATTENTION)}); use which='ffn' to factorise only the FFNs")
        spec = spec.replace(attention=LOWRANK_ATTENTION[spec.attention],
                            attention_options={**spec.attention_options, **opts})
    if which in ("all", "ffn"):
        if spec.ffn not in LOWRANK_FFN:
            raise ValueError(
                f"lowrank: ffn {spec.ffn!r} has no low-rank version (supported: "
                f"{sorted(LOWRANK_FFN)}); use which='attention' to factorise only the attention")
        spec = spec.replace(ffn=LOWRANK_FFN[spec.ffn], ffn_options={**spec.ffn_options, **opts})
    return spec


def lowrank_config(cfg: ModelConfig, rank: int | float, which: str = "all",
                   skip_unprofitable: bool = False) -> ModelConfig:
    """``cfg`` with every layer's parts made low-rank (see :func:`lowrank_spec`)."""
    pattern = cfg.layers or [LayerSpec(attention=cfg.attention, ffn=cfg.ffn)]
    layers = [lowrank_spec(s, rank, which, skip_unprofitable) for s in pattern]
    return ModelConfig.from_dict(cfg.replace(layers=layers).to_dict())


# ---------------------------------------------------------------------------------- factorize
@dataclass
class LinearReport:
    """One factorised linear: its module path, shape, rank, limit rank, relative Frobenius error
    ||W - D E||_F / ||W||_F, parameters and FLOPs per token (2 per multiply-add) before/after."""

    name: str
    in_features: int
    out_features: int
    rank: int
    limit_rank: float
    rel_error: float
    params_dense: int
    params_lowrank: int
    flops_dense: int
    flops_lowrank: int
    kept_dense: bool = False

    @property
    def saves(self) -> bool:
        return self.rank < self.limit_rank


@dataclass
class FactorizeReport:
    """What :func:`factorize` did: one :class:`LinearReport` per converted linear, the model's
    parameter counts before and after, linears left dense (and why) and warnings issued."""

    layers: list[LinearReport] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    left_dense: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def param_saving(self) -> float:
        """Fraction of the whole model's parameters removed (negative if it grew)."""
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    @property
    def flops_dense(self) -> int:
        return sum(r.flops_dense for r in self.layers)

    @property
    def flops_lowrank(self) -> int:
        return sum(r.flops_lowrank for r in self.layers)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(param_saving=self.param_saving, flops_dense=self.flops_dense,
                 flops_lowrank=self.flops_lowrank)
        return d

    def table(self) -> str:
        """A markdown table of the converted linears."""
        rows = ["| linear | in x out | rank | limit rank | rel. error | params | FLOPs/token |",
                "|---|---|---|---|---|---|---|"]
        for r in self.layers:
            rows.append(
                f"| {r.name} | {r.in_features} x {r.out_features} | {r.rank}"
                f"{' (dense)' if r.kept_dense else ''} | {r.limit_rank:.1f} | {r.rel_error:.3g} | "
                f"{r.params_dense} -> {r.params_lowrank} | {r.flops_dense} -> {r.flops_lowrank} |")
        rows.append(f"\nmodel parameters {self.params_before} -> {self.params_after} "
                    f"({100 * self.param_saving:.1f}% saved)")
        return "\n".join(rows)


def _linears_to_factorise(new: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    """(path, module) of every linear slot inside a low-rank part of ``new``."""
    for path, mod in new.named_modules():
        if isinstance(mod, (LowRankSoftmaxAttention, LowRankMLP, LowRankSwiGLU)):
            for slot in ("q", "k", "v", "o", "gate", "up", "down"):
                sub = getattr(mod, slot, None)
                if isinstance(sub, (LowRankLinear, nn.Linear)):
                    yield f"{path}.{slot}", sub


@torch.no_grad()
def factorize(model: nn.Module, rank: int | float, which: str = "all",
              skip_unprofitable: bool = False) -> tuple[nn.Module, FactorizeReport]:
    """Post-training factorisation (Greenformers ch. 3): every attention projection and/or FFN
    linear W of ``model`` becomes an LED unit initialised by truncated SVD, W ~ (U_r S_r) V_r^T.

    Args:
        model: a formers model (``TransformerLM`` / ``EncoderDecoder``) with ``softmax`` attention
            and ``mlp`` / ``swiglu`` FFNs in the layers asked for. It is not modified.
        rank: int (absolute, every linear) or float in (0, 1] (fraction of each limit rank).
        which: ``all`` | ``attention`` | ``ffn``.
        skip_unprofitable: keep linears with rank >= limit rank dense (``auto_fact``'s rule).
    Returns:
        (new_model, report). The new model's config names the low-rank parts (``lowrank_config``),
        so ``save_model`` / ``load_model`` round-trip it. Every other weight is copied.
    Raises:
        ValueError: rank outside [1, min(in, out)] for some linear, fraction outside (0, 1],
        unknown ``which``, or a part without a low-rank version. Warns (``UserWarning``, also in
        ``report.warnings``) for each linear factorised at rank >= its limit rank (no saving).
    """
    from formers.nn.models import build_model, count_params

    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, ModelConfig):
        raise ValueError("factorize: expects a formers model with a ModelConfig in .cfg")
    new_cfg = lowrank_config(cfg, rank, which, skip_unprofitable)
    new = build_model(new_cfg).to(next(model.parameters()))
    new.train(model.training)
    old_sd = model.state_dict()
    report = FactorizeReport(params_before=count_params(model))
    new_sd = {}
    filled: set[str] = set()
    for path, sub in _linears_to_factorise(new):
        dense = model.get_submodule(path)
        w, b = dense.weight, dense.bias
        out_f, in_f = w.shape
        lim = limit_rank(in_f, out_f)
        bias = b is not None
        if isinstance(sub, LowRankLinear):
            s = sub.load_svd(w, b)
            err = float(torch.linalg.matrix_norm(w.double() - sub.weight.double())
                        / torch.linalg.matrix_norm(w.double())) if s.sum() > 0 else 0.0
            r, kept = sub.rank, False
            for n, p in sub.state_dict(prefix=path + ".").items():
                new_sd[n] = p
                filled.add(n)
        else:  # kept dense by skip_unprofitable
            r, err, kept = resolve_rank(rank, in_f, out_f), 0.0, True
        rep = LinearReport(
            name=path, in_features=in_f, out_features=out_f, rank=r, limit_rank=lim,
            rel_error=err, params_dense=in_f * out_f + (out_f if bias else 0),
            params_lowrank=(in_f * out_f + (out_f if bias else 0)) if kept
            else lowrank_params(in_f, out_f, r, bias),
            flops_dense=2 * in_f * out_f, flops_lowrank=2 * in_f * out_f if kept
            else 2 * r * (in_f + out_f), kept_dense=kept)
        report.layers.append(rep)
        if not kept and r >= lim:
            msg = (f"factorize: {path} ({in_f} -> {out_f}) at rank {r} >= limit rank {lim:.1f} "
                   f"saves nothing ({rep.params_dense} -> {rep.params_lowrank} parameters)")
            report.warnings.append(msg)
            warnings.warn(msg, stacklevel=2)
    for n in new.state_dict():
        if n in filled:
            continue
        if n not in old_sd:
            raise ValueError(f"factorize: no source for new parameter {n!r}")  # a bug, not input
        new_sd[n] = old_sd[n]
    new.load_state_dict(new_sd, strict=True)
    for path, mod in new.named_modules():
        if path.endswith(".cross") and isinstance(mod, SoftmaxAttention) \
                and not isinstance(mod, LowRankSoftmaxAttention):
            report.left_dense.append(f"{path} (cross-attention is always the dense softmax part)")
    report.params_after = count_params(new)
    return new, report


# ------------------------------------------------------------------------------------ presets
@preset("lowrank", PAPER,
        "LRT: every attention projection and FFN linear low-rank at half its limit rank")
def lowrank(c: ModelConfig) -> ModelConfig:
    """Low-Rank Transformer: ``rank=0.5`` (half of each linear's limit rank in*out/(in+out), so
    half its parameters): r = 32 / 51 for the attention / FFN linears of the d=128 ``lm`` model."""
    return lowrank_config(c, 0.5, "all")


__all__ = [
    "FactorizeReport", "LinearReport", "LowRankLinear", "LowRankMLP", "LowRankSoftmaxAttention",
    "LowRankSwiGLU", "factorize", "limit_rank", "lowrank_config", "lowrank_params", "lowrank_spec",
    "make_linear", "resolve_rank",
]
