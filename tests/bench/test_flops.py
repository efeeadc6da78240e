"""Analytic FLOP counts (formers.bench.flops, formers.nn.flops): every registered mixer / FFN /
residual declares its count; the counts equal torch's FlopCounterMode on real CPU forwards where
torch counts the same matmuls; hand-computed cases (GPT-2 small, causal pairs, MoE, DWA, value
residual); the meta-device build allocates nothing."""

from __future__ import annotations

import inspect
import resource

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import formers.nn  # noqa: F401  (registers the parts)
from formers import registry
from formers.bench.flops import (
    NOT_DECLARED, flop_summary, forward_flops, nanogpt_flops_per_token, nanogpt_params,
    train_flops_per_token,
)
from formers.nn import ModelConfig, build_model, count_params
from formers.nn.attention.sparse import pattern_matrix
from formers.nn.build import build_part
from formers.nn.context import Context
from formers.nn.flops import attention_flops, dense_pairs, module_flops, pattern_pairs

torch.set_num_threads(1)

CFG = ModelConfig(d_model=32, n_heads=4, max_seq_len=96)
N = 80  # not a multiple of the chunk / block sizes below: padding paths are counted too
HOOKS = ("forward_flops", "score_pairs", "feature_dim", "feature_flops", "kernel_flops")


def counted(module, x, causal: bool) -> int:
    """FlopCounterMode's total for one forward of ``module`` on ``x``."""
    ctx = Context(positions=torch.arange(x.shape[1]), causal=causal)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        if getattr(module, "takes_context", False) or "ctx" in inspect.signature(module.forward).parameters:
            module(x, ctx)
        else:
            module(x)
    return fc.get_total_flops()


def part(kind: str, name: str, cfg: ModelConfig = CFG, **options):
    torch.manual_seed(0)
    return build_part(kind, name, cfg, options).eval()


def x_in(n: int = N, d: int = 32) -> torch.Tensor:
    return torch.randn(1, n, d, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------ every entry declares or says why
@pytest.mark.parametrize("kind", ["attention", "ffn", "residual"])
def test_every_registered_part_declares_its_count(kind):
    for entry in registry.entries(kind):
        if (kind, entry.name) in NOT_DECLARED:
            assert NOT_DECLARED[(kind, entry.name)].strip(), f"{kind} {entry.name}: empty reason"
            continue
        cls = entry.obj
        assert callable(getattr(cls, "forward_flops", None)), \
            f"{kind} {entry.name!r} declares no forward_flops and is not in NOT_DECLARED"
        # a class that overrides forward must also override a counting hook: an inherited count
        # would otherwise describe its parent's computation
        for c in cls.__mro__:
            if "forward_flops" in vars(c):
                break
            if "forward" in vars(c):
                assert any(h in vars(c) for h in HOOKS), (
                    f"{kind} {entry.name!r}: {c.__name__} overrides forward but inherits its FLOP count")


# ------------------------------------------------------------------ equality with torch's counter
EXACT = [  # (kind, name, options, causal): reference / default paths whose matmuls torch sees
    ("attention", "softmax", {"backend": "reference"}, False),
    ("attention", "softmax", {"backend": "reference"}, True),
    ("attention", "kv", {"backend": "reference"}, True),
    ("attention", "kv-pos", {"backend": "reference"}, False),
    ("attention", "lowrank-softmax", {"backend": "reference"}, True),
    ("attention", "linformer", {"backend": "reference", "k": 12}, False),
    ("attention", "nystromformer", {"backend": "reference", "landmarks": 8, "iterations": 2}, False),
    ("attention", "nystromformer", {"backend": "reference"}, False),  # n <= landmarks: exact
    ("attention", "sinkhorn", {"backend": "reference", "block": 16}, False),
    ("attention", "sinkhorn", {"backend": "reference", "block": 16, "sortcut": 2}, False),
    ("attention", "synthesizer-dense", {"backend": "reference"}, True),
    ("attention", "synthesizer-random", {"backend": "reference", "rank": 4}, False),
    ("attention", "linear", {}, False),
    ("attention", "linear", {"chunk_size": 16}, True),
    ("attention", "performer", {}, True),
    ("attention", "performer", {}, False),
    ("attention", "flowformer", {}, True),
    ("attention", "flowformer", {}, False),
    ("ffn", "mlp", {}, False),
    ("ffn", "swiglu", {}, False),
    ("ffn", "lowrank-mlp", {"rank": 5}, False),
    ("ffn", "lowrank-swiglu", {}, False),
    ("ffn", "matformer", {}, False),
    ("ffn", "matformer-swiglu", {}, False),
    ("ffn", "moe", {"routing": "expert_choice", "noncausal_ok": True, "capacity_factor": 1.5}, False),
]


@pytest.mark.parametrize("kind,name,options,causal", EXACT,
                         ids=[f"{k}-{n}-{'causal' if c else 'bidir'}-{i}" for i, (k, n, o, c) in enumerate(EXACT)])
def test_analytic_equals_flop_counter(kind, name, options, causal):
    m = part(kind, name, **options)
    # the full-square convention is what the reference path (and torch's SDPA formula) computes
    assert module_flops(m, N, causal, True) == counted(m, x_in(), causal)


def test_matformer_counts_the_current_granularity():
    m = part("ffn", "matformer")
    for g in range(len(m.widths)):
        m.granularity = g
        expected = 2 * 2 * 32 * m.widths[g] * N
        assert module_flops(m, N, False, True) == expected == counted(m, x_in(), False)


def test_memory_layers_add_the_paper_lookup_count_to_the_counted_matmuls():
    from formers.nn.ffn.memory import memory_layer_flops

    m = part("attention", "memory-attention", backend="reference")
    d, k = 32, 32 // 8
    lookups = 2 * (memory_layer_flops(d, d, 8, N) + 2 * memory_layer_flops(d, d, 8, N, hashing=False))
    assert lookups == 2 * N * (d + k * d + 2 * k * d)  # one shared hash, three table reads
    assert module_flops(m, N, True, True) == counted(m, x_in(), True) + lookups
    ffn = part("ffn", "memory")
    assert counted(ffn, x_in(), False) == 0  # table lookups only: the counter sees no matmul
    assert module_flops(ffn, N, False, True) == 2 * (memory_layer_flops(d, 40, 8, N)
                                                      + memory_layer_flops(40, d, 10, N))


@pytest.mark.parametrize("name,options", [
    ("local", {"window": 8}), ("longformer", {"window": 6, "n_global": 2, "dilation": 2}),
    ("bigbird", {"block": 8}), ("block-sparse", {"block": 16}), ("sparse-strided", {"stride": 8}),
    ("sparse-fixed", {"stride": 16, "c": 2}), ("streaming", {"sinks": 3, "window": 10}),
])
def test_pattern_mixers_count_the_pairs_their_pattern_allows(name, options):
    causal_modes = (True,) if name == "streaming" else (False, True)
    for causal in causal_modes:
        m = part("attention", name, backend="reference", **options)
        pattern = m.attention_pattern(Context(positions=torch.arange(N), causal=causal), N)
        pairs = int(pattern_matrix(pattern, N, causal).sum())
        assert m.score_pairs(N, causal, True) == pairs < N * N
        # the reference path computes the dense square: swap its attention term for the pairs
        dense = attention_flops(N * N, 4, 8)
        assert module_flops(m, N, causal, True) == counted(m, x_in(), causal) - dense + \
            attention_flops(pairs, 4, 8)


def test_local_window_pairs_by_hand():
    from formers.nn.attention.sparse import LocalPattern

    n, w = 10, 3
    assert pattern_pairs(LocalPattern(w), n, True) == sum(min(i + 1, w) for i in range(n))
    assert pattern_pairs(LocalPattern(w), n, False, rows=3) == \
        sum(min(n - 1, i + w - 1) - max(0, i - w + 1) + 1 for i in range(n))


def test_reformer_counts_the_paper_pairs_a_lower_bound_of_the_padded_kernel():
    m = part("attention", "reformer", chunk=16)  # 8 buckets, 2 rounds
    a, c = module_flops(m, N, True, True), counted(m, x_in(), True)
    nominal = 2 * N * 2 * 16                     # rounds x queries x (own + previous chunk)
    upper = 2 * (N // 16 + 8) * 16 * 2 * 16      # every bucket may leave one chunk part-filled
    assert a <= c <= a - attention_flops(nominal, 4, 8) + attention_flops(upper, 4, 8), (a, c)


def test_moe_top_k_counts_active_experts_only():
    cfg = ModelConfig(d_model=32, n_heads=4, max_seq_len=96, arch="encoder")
    m = part("ffn", "moe", cfg, n_experts=8, top_k=2)
    d, h, e = 32, 128, 8
    per_eval = 2 * (d * h + h * d)
    router = 2 * N * d * e
    analytic = module_flops(m, N, False, True)
    assert analytic == router + 2 * N * per_eval                     # k = 2 experts per token
    dense_ffn = module_flops(part("ffn", "mlp", cfg), N, False, True)
    assert analytic == router + 2 * dense_ffn                        # = two dense FFNs + router
    # the dropless kernel pads each expert's buffer to the busiest expert's load: torch counts
    # that padded work, the analytic count does not
    c = counted(m, x_in(), False)
    busiest = int(m.last_stats["tokens_per_expert"].max())
    assert c == router + e * busiest * per_eval >= analytic


def test_value_residual_and_dwa_extras_by_hand():
    base = ModelConfig(d_model=32, n_heads=4, n_layers=6, max_seq_len=96, vocab_size=50)

    def f(cfg):
        with torch.device("meta"):
            return forward_flops(build_model(cfg), N)

    plain = f(base)
    assert f(base.replace(value_residual="mix")) - plain == 4 * 32 * N * 5      # layers 2..6
    assert f(base.replace(value_residual="learned")) - plain == 4 * 32 * N * 5
    # SVFormer: no W_V in layers 2..6, no mixing
    assert plain - f(base.replace(value_residual="shared")) == 2 * 32 * 32 * N * 5
    # DenseFormer 1 x 1: DWA after block i averages i + 1 states; 2 x 3: after blocks 3, 6 over
    # S(3) = {1, 3}, S(6) = {0, 2, 4, 6}
    assert f(base.replace(residual="dwa")) - plain == 2 * 32 * N * sum(i + 1 for i in range(1, 7))
    assert f(base.replace(residual="dwa", dwa_dilation=2, dwa_period=3)) - plain == 2 * 32 * N * (2 + 4)


def _on_reference_path(m):
    """``m`` with every attention on its reference path (explicit matmuls the counter sees)."""
    for mod in m.modules():
        if getattr(mod, "backend", None) in ("auto", "sdpa"):
            mod.backend = "reference"
    return m


def test_whole_models_equal_the_counter_on_the_reference_path():
    base = ModelConfig(d_model=32, n_heads=4, n_layers=3, max_seq_len=96, vocab_size=100)
    for name in ("baseline", "denseformer", "svformer", "llama", "lowrank", "gqa", "kv-attention"):
        cfg = registry.get("model", name).obj(base)
        torch.manual_seed(0)
        m = _on_reference_path(build_model(cfg).eval())
        ids = torch.randint(0, 100, (1, N), generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            m(ids)
        assert forward_flops(m, N) == fc.get_total_flops(), name


# ------------------------------------------------------------------ conventions and hand-computed cases
def test_causal_convention_counts_half_the_square_plus_the_diagonal():
    assert dense_pairs(5, 5, True, False) == 15 and dense_pairs(5, 5, True, True) == 25
    assert dense_pairs(1, 7, True, False) == 7 and dense_pairs(3, 9, True, False) == 7 + 8 + 9
    cfg = ModelConfig(d_model=64, n_heads=4, n_layers=2, max_seq_len=128, vocab_size=100)
    with torch.device("meta"):
        m = build_model(cfg)
    n = 128
    full, causal = forward_flops(m, n), forward_flops(m, n, causal=True)
    assert full - causal == 2 * 2 * 64 * (n * n - n * (n + 1) // 2) * 2     # L = 2 layers
    assert forward_flops(m, n, causal=False) == full
    enc = build_model(cfg.replace(arch="encoder"))
    assert forward_flops(enc, n, causal=True) == full   # an encoder stack is never causal


def gpt2_small() -> ModelConfig:
    return ModelConfig(d_model=768, n_layers=12, n_heads=12, max_seq_len=1024, vocab_size=50304)


def test_gpt2_small_against_the_nanogpt_formula():
    cfg = gpt2_small()
    with torch.device("meta"):
        m = build_model(cfg)
    n_params = count_params(m) - m.embed.position.table.weight.numel()   # nanoGPT: minus wpe
    assert nanogpt_params(m) == n_params and 123e6 < n_params < 125e6
    nano = nanogpt_flops_per_token(n_params, 12, 768, 1024)
    assert nano == 6 * n_params + 12 * 12 * 768 * 1024
    assert 0.84e9 < nano < 0.86e9                                        # ~0.85 GFLOP / token
    ours = train_flops_per_token(cfg, 1024)
    # matmul weights only (no biases / norms) and the same full-square attention term
    matmuls = 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 768 * 50304
    assert ours == 3 * (2 * matmuls + 4 * 12 * 768 * 1024)
    assert abs(ours - nano) / nano < 0.002
    summary = flop_summary(cfg, 1024)
    assert summary["train_flops_per_token"] == ours and summary["nanogpt_flops_per_token"] == nano
    # causal pairs: the attention term shrinks from T^2 to T (T + 1) / 2
    assert ours - summary["train_flops_per_token_causal"] == 3 * 4 * 12 * 768 * (1024 - 1025 / 2)


def test_meta_build_allocates_nothing():
    # ~6.5e9 parameters: 26 GB in fp32 if anything were allocated
    cfg = ModelConfig(d_model=4096, n_layers=32, n_heads=32, max_seq_len=2048, vocab_size=32000,
                      position="rope", norm="rmsnorm", ffn="swiglu", bias=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    f = train_flops_per_token(cfg, 2048)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, grown_mb
    assert 6 * 6.4e9 < f < 6 * 7.5e9


def test_bad_arguments():
    m = build_model(ModelConfig(n_layers=1))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="seq_len"):
            forward_flops(m, bad)
    with pytest.raises(ValueError, match="causal"):
        forward_flops(m, 8, causal="yes")


def test_encoder_decoder_counts_both_stacks_and_cross_attention():
    cfg = ModelConfig(arch="encoder-decoder", d_model=32, n_heads=4, n_layers=2, max_seq_len=96,
                      vocab_size=100)
    torch.manual_seed(0)
    m = _on_reference_path(build_model(cfg).eval())
    ids = torch.randint(0, 100, (1, N), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(ids, ids)  # seq_len source and seq_len target tokens
    assert forward_flops(m, N) == fc.get_total_flops()
    # causal pairs shrink the decoder's self-attention only (2 layers), never cross-attention
    assert forward_flops(m, N) - forward_flops(m, N, causal=True) == \
        2 * (attention_flops(N * N, 4, 8) - attention_flops(N * (N + 1) // 2, 4, 8))


@pytest.mark.parametrize("combine,grid", [("chained", (12, 10)), ("parallel", (6, 5, 4)),
                                          ("chained", (6, 5, 4))])
def test_factorised_axial_attention_equals_the_counter(combine, grid):
    from formers.sciml.pde.factorized import FactorizedAttention

    torch.manual_seed(0)
    m = FactorizedAttention(16, 2, 8, n_dims=len(grid), combine=combine)
    u = torch.randn(1, *grid, 16)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(u, [torch.linspace(0, 1, n) for n in grid])
    assert m.grid_flops(grid) == fc.get_total_flops()
    if grid == (12, 10):  # by hand: dim 16, 2 heads of 8, d_k 16, latent 16, N = 120 points
        n_pts = 120
        dense = 2 * n_pts * 4 * 16 * 16                                   # W_v, W_in, out1, out2
        per_axis = sum(2 * n_pts * 16 * 16 + 2 * a * 16 * 32 + 2 * a * 16 * 16   # projection
                       + 2 * 2 * a * 16 * 32 + 2 * 2 * a * a * 16                 # W_q, W_k, kernel
                       + 2 * 2 * n_pts * a * 8 for a in grid)                     # axial integral
        assert m.grid_flops(grid) == dense + per_axis
    with pytest.raises(ValueError, match="grid"):
        m.grid_flops((4,) * (len(grid) + 1))
