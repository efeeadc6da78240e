"""MemoryFormer (arXiv 2411.12992): hashing memory layers, Memory Block, memory attention, FLOPs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from formers.nn import LayerSpec, ModelConfig, build_model
from formers.nn.attention.core import attend
from formers.nn.attention.memory import MemoryAttention
from formers.nn.context import Context
from formers.nn.ffn.memory import (
    MemoryFFN, MemoryLayer, code_probs, dense_block_flops, dense_linear_flops, hash_codes,
    memory_block_flops, memory_block_table_entries, memory_layer_flops,
)
from formers.nn.presets import apply_preset

CFG = ModelConfig(vocab_size=37, d_model=16, n_layers=2, n_heads=4, max_seq_len=32)


def _away_from_zero(shape, seed=0, lo=0.2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g, dtype=dtype)
    return torch.sign(z) * (z.abs() + lo)


# ----------------------------------------------------------------------------------- hashing
def test_hash_index_hand_case():
    # chunk entries are bits 0..tau-1, least significant first; zero counts as a 1 bit
    z = torch.tensor([[0.5, -1.0, 0.0, -0.2], [-0.1, -0.3, -2.0, -1.0], [1.0, 2.0, 3.0, 0.0]])
    assert hash_codes(z).tolist() == [1 + 4, 0, 15]
    layer = MemoryLayer(8, 3, tau=4)
    codes, p = layer.hash(torch.tensor([0.5, -1.0, 0.0, -0.2, 1.0, 1.0, -1.0, 1.0]))
    assert codes.tolist() == [5, 1 + 2 + 8]
    assert p.shape == (2,)


@pytest.mark.parametrize("t", [1.0, 0.5, 3.0])
def test_closed_form_equals_softmax_over_codes(t):
    """p(z) = exp(<z, sign z>/t) / sum_c exp(<z, c>/t) over all 2^tau sign codes, and the argmax
    code is sign(z), whose index is the hash."""
    tau = 5
    z = torch.randn(7, tau, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    codes = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=tau)), dtype=torch.float64)
    codes = codes.flip(-1)  # row c has bit i = entry i, so row index = sum_i [c_i > 0] 2^i
    logits = z @ codes.T / t
    soft = torch.softmax(logits, dim=-1)
    torch.testing.assert_close(soft.sum(-1), torch.ones(7, dtype=torch.float64))
    idx = hash_codes(z)
    assert torch.equal(soft.argmax(-1), idx)
    torch.testing.assert_close(code_probs(z, t).double(), soft.gather(1, idx[:, None])[:, 0],
                               atol=1e-7, rtol=1e-6)


def test_soft_weights_shape_range_and_reference_score():
    z = torch.randn(3, 5, 6, 8)
    p = code_probs(z)
    assert p.shape == (3, 5, 6) and p.dtype == torch.float32
    assert (p > 2.0 ** -8).all() and (p <= 1).all()
    assert code_probs(torch.zeros(2, 8)).tolist() == [2.0 ** -8] * 2  # all codes equally likely
    torch.testing.assert_close(code_probs(z, score="reference"), z.abs().sum(-1) * p)
    # the reference formula of the official code: |z|_1 / prod(1 + exp(-2|z|))
    ref = z.abs().sum(-1) / torch.prod(1 + torch.exp(-2 * z.abs()), dim=-1)
    torch.testing.assert_close(code_probs(z, score="reference"), ref)
    # stable: no overflow for huge inputs, hard lookup as t -> 0
    assert code_probs(torch.full((1, 8), 1e4)).item() == 1.0
    assert code_probs(_away_from_zero((3, 8), lo=0.01), temperature=1e-3).min() > 0.99
    assert code_probs(z, temperature=1e6).sub(2.0 ** -8).abs().max() < 1e-6  # uniform as t -> inf


# ------------------------------------------------------------------------------- memory layer
def test_layer_equals_explicit_loop_hand_tables():
    torch.manual_seed(0)
    layer = MemoryLayer(6, 4, tau=3).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    y = layer(x)
    torch.testing.assert_close(y, layer.forward_reference(x))
    # from scratch: two chunks of three bits
    expected = torch.zeros(2, 5, 4, dtype=torch.float64)
    for b, s in itertools.product(range(2), range(5)):
        for k in range(2):
            z = x[b, s, 3 * k:3 * k + 3]
            row = sum(int(z[i] >= 0) << i for i in range(3))
            p = math.prod(1 / (1 + math.exp(-2 * abs(float(v)))) for v in z)
            expected[b, s] += p * layer.tables[k, row]
    torch.testing.assert_close(y, expected + layer.bias, atol=1e-6, rtol=1e-6)


def test_gradcheck_tables_and_input():
    torch.manual_seed(0)
    layer = MemoryLayer(8, 3, tau=4).double()
    x = _away_from_zero((5, 8)).requires_grad_(True)  # finite differences never flip a bit
    tables = layer.tables.detach().clone().requires_grad_(True)
    bias = layer.bias.detach().clone().requires_grad_(True)

    def f(x, tables, bias):
        return torch.func.functional_call(layer, {"tables": tables, "bias": bias}, (x,))

    assert torch.autograd.gradcheck(f, (x, tables, bias))
    layer.score = "reference"
    assert torch.autograd.gradcheck(f, (x, tables, bias))


def test_gradient_reaches_hit_rows_and_input():
    torch.manual_seed(0)
    layer = MemoryLayer(8, 3, tau=4)
    x = torch.randn(6, 8, requires_grad=True)
    layer(x).pow(2).sum().backward()
    codes, _ = layer.hash(x)
    hit = torch.zeros(2, 16, dtype=torch.bool)
    for k in range(2):
        hit[k, codes[:, k]] = True
    g = layer.tables.grad
    assert (g[hit].abs().sum(-1) > 0).all()
    assert (g[~hit] == 0).all()
    assert x.grad is not None and x.grad.abs().sum() > 0  # through p(z)
    # the forward in float32 agrees with the float64 differentiable path
    x64 = x.detach().double().requires_grad_(True)
    layer64 = MemoryLayer(8, 3, tau=4).double()
    layer64.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    layer64(x64).pow(2).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-5, rtol=1e-4)


def test_layer_errors():
    with pytest.raises(ValueError, match="divide"):
        MemoryLayer(10, 4, tau=4)
    with pytest.raises(ValueError, match="tau"):
        MemoryLayer(34, 4, tau=17)
    with pytest.raises(ValueError, match="score"):
        MemoryLayer(8, 4, tau=4, score="l1")
    with pytest.raises(ValueError, match="temperature"):
        MemoryLayer(8, 4, tau=4, temperature=0.0)
    with pytest.raises(ValueError, match="divide"):
        build_model(CFG.replace(layers=[LayerSpec(ffn="memory", ffn_options={"tau": 5})]))
    with pytest.raises(ValueError, match="extra_bits"):
        build_model(CFG.replace(layers=[LayerSpec(ffn="memory", ffn_options={"extra_bits": -1})]))
    with pytest.raises(ValueError, match="cross"):
        MemoryAttention(CFG, cross=True)


# -------------------------------------------------------------------------------- the block
def test_memory_block_shapes_and_table_entries():
    """Tiny model: d 512, K 64, tau 8: 512 -> 640 -> 512; tables 2^8 K 640 + 2^10 K 512."""
    cfg = ModelConfig(d_model=512, n_heads=8)
    with torch.device("meta"):
        ffn = MemoryFFN(cfg)
    assert (ffn.ml1.in_features, ffn.ml1.out_features, ffn.ml2.out_features) == (512, 640, 512)
    assert (ffn.ml1.K, ffn.ml1.tau, ffn.ml2.K, ffn.ml2.tau) == (64, 8, 64, 10)
    n_tables = ffn.ml1.tables.numel() + ffn.ml2.tables.numel()
    assert n_tables == 2 ** 8 * 64 * 640 + 2 ** 10 * 64 * 512 == memory_block_table_entries(512)
    small = MemoryFFN(CFG)
    y = small(torch.randn(2, 5, 16))
    assert y.shape == (2, 5, 16)


def test_memory_ffn_is_ml2_norm_ml1_without_activation():
    torch.manual_seed(0)
    ffn = MemoryFFN(CFG, tau=4, extra_bits=1)
    x = torch.randn(2, 3, 16)
    h = ffn.ml1.forward_reference(x)
    h = torch.nn.functional.layer_norm(h, (h.shape[-1],), ffn.norm.weight, ffn.norm.bias, CFG.norm_eps)
    torch.testing.assert_close(ffn(x), ffn.ml2.forward_reference(h), atol=1e-6, rtol=1e-5)
    assert ffn.ml1.out_features == 4 * 5 and ffn.ml2.tau == 5


def test_memory_attention_shared_hash_and_no_output_projection(monkeypatch):
    torch.manual_seed(0)
    att = MemoryAttention(CFG, tau=4).eval()
    for layer in (att.q, att.k, att.v):  # give the tables some scale
        torch.nn.init.normal_(layer.tables, std=0.5)
    x = torch.randn(2, 7, 16)
    ctx = Context(positions=torch.arange(7), causal=True)
    calls = []
    orig = MemoryLayer.hash
    monkeypatch.setattr(MemoryLayer, "hash", lambda self, x: calls.append(1) or orig(self, x))
    out = att(x, ctx)
    assert len(calls) == 1  # Q, K and V share one hashing
    monkeypatch.setattr(MemoryLayer, "hash", orig)
    assert att._shared.x is None  # nothing kept after the call
    # by hand: separate lookups, softmax attention, heads concatenated, no W_O
    heads = [ml.forward_reference(x).view(2, 7, 4, 4).transpose(1, 2) for ml in (att.q, att.k, att.v)]
    o, _ = attend(*heads, causal=True, backend="reference")
    torch.testing.assert_close(out, o.transpose(1, 2).reshape(2, 7, 16), atol=1e-6, rtol=1e-5)
    assert not any("o." in n for n, _ in att.named_parameters())


def test_memoryformer_preset_model():
    cfg = apply_preset("memoryformer", CFG)
    m = build_model(cfg)
    blk = m.stack.blocks[0]
    assert isinstance(blk.mixer, MemoryAttention) and isinstance(blk.ffn, MemoryFFN)
    assert not any(isinstance(mod, torch.nn.Linear) for mod in blk.modules())  # no FC layer left
    # with a pattern in the base, every spec is replaced
    cfg2 = apply_preset("memoryformer", CFG.replace(layers=[LayerSpec(), LayerSpec(ffn="swiglu")]))
    assert all(s.attention == "memory-attention" and s.ffn == "memory" for s in cfg2.layers)
    # the model learns: a few SGD steps lower the loss (gradients reach tables through p)
    torch.manual_seed(0)
    x = torch.randint(0, 37, (4, 12), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(m.parameters(), lr=3e-2)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(m(x[:, :-1]).reshape(-1, 37), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# ------------------------------------------------------------------------------------ FLOPs
def test_flop_formula_hand_case():
    # memory layer 16 -> 10, tau 4: K = 4; per token 16 (hash) + 4 * 10 (rows) = 56
    assert memory_layer_flops(16, 10, 4, tokens=3) == 3 * 56
    assert memory_layer_flops(16, 10, 4, tokens=3, hashing=False) == 3 * 40
    assert dense_linear_flops(16, 10, tokens=3) == 3 * 160
    # block, d 16, tau 4 (K 4, h 24), s 3: attention 2*9*16; QKV 16 + 3*4*16; ML_1 16 + 4*24;
    # ML_2 (24 in, tau 6, K 4) 24 + 4*16
    mb = memory_block_flops(16, 3, tau=4)
    assert mb["attention"] == 288
    assert mb["projections"] == 3 * ((16 + 192) + (16 + 96) + (24 + 64))
    assert mb["paper_formula"] == 288 + 6 * 4 * 3 * 16
    assert dense_block_flops(16, 3)["projections"] == 12 * 3 * 16 * 16


@pytest.mark.parametrize("d,k,dense_g,mf_g", [(512, 64, 10.7, 4.7), (768, 96, 20.9, 7.4),
                                              (1024, 128, 34.4, 10.2)])
def test_flops_reproduce_paper_table1(d, k, dense_g, mf_g):
    """Table 1 (seq 2048): Pythia block 2 s^2 d + 12 s d^2 and MemoryFormer 2 s^2 d + 6 K s d;
    our exact count of the memory layers is within 2% of the paper's approximation."""
    s = 2048
    assert round(dense_block_flops(d, s)["total"] / 1e9, 1) == dense_g
    mb = memory_block_flops(d, s, tau=8)
    # the paper prints 7.4 G for MF-small, where 2 s^2 d + 6 K s d = 7.35 G
    assert d // 8 == k and abs(mb["paper_formula"] / 1e9 - mf_g) < 0.06
    assert abs(mb["total"] / mb["paper_formula"] - 1) < 0.02
    if d == 512:  # excluding attention: 6.4 G -> 0.4 G
        assert round(dense_block_flops(d, s)["projections"] / 1e9, 1) == 6.4
        assert round(mb["projections"] / 1e9, 1) == 0.4
