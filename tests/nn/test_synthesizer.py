"""Synthesizer (arXiv 2005.00743): a hand-computed case, input (in)dependence, fast == reference."""

from __future__ import annotations

import math

import pytest
import torch

from formers.nn import LayerSpec, ModelConfig, build_model
from formers.nn.attention.synthesizer import DenseSynthesizer, RandomSynthesizer, synthesizer_reference
from formers.nn.context import Context

CFG = ModelConfig(arch="decoder", vocab_size=11, d_model=8, n_layers=1, n_heads=2, d_ff=16,
                  max_seq_len=10)


def _ctx(t: int, causal: bool, key_mask=None, capture=None) -> Context:
    return Context(positions=torch.arange(t), causal=causal, key_mask=key_mask, capture=capture)


@pytest.mark.parametrize("causal", [False, True])
def test_random_synthesizer_by_hand(causal):
    cfg = ModelConfig(arch="encoder", vocab_size=5, d_model=2, n_layers=1, n_heads=1, d_ff=4,
                      max_seq_len=2, bias=False)
    m = RandomSynthesizer(cfg, trainable=False)
    with torch.no_grad():
        m.r.copy_(torch.tensor([[[0.0, math.log(3)], [math.log(2), 0.0]]]))
        m.v.weight.copy_(torch.eye(2))
        m.o.weight.copy_(torch.eye(2))
    out = m(torch.eye(2)[None], _ctx(2, causal))[0]
    # row 0: softmax(0, ln 3) = (1/4, 3/4), or (1, 0) when causal; row 1: softmax(ln 2, 0) = (2/3, 1/3)
    row0 = [1.0, 0.0] if causal else [0.25, 0.75]
    torch.testing.assert_close(out, torch.tensor([row0, [2 / 3, 1 / 3]]), atol=1e-6, rtol=0)


def test_random_weights_are_input_independent_and_dense_rows_depend_on_their_token_only():
    torch.manual_seed(0)
    x, y = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    r = RandomSynthesizer(CFG)
    wx, wy = {}, {}
    r(x, _ctx(6, True, capture=wx))
    r(y, _ctx(6, True, capture=wy))
    torch.testing.assert_close(wx["layer0.attn.weights"], wy["layer0.attn.weights"], atol=0, rtol=0)
    d = DenseSynthesizer(CFG)
    z = x.clone()
    z[:, 3] = y[:, 3]                      # change token 3 only
    lx, lz = {}, {}
    d(x, _ctx(6, False, capture=lx))
    d(z, _ctx(6, False, capture=lz))
    a, b = lx["layer0.attn.logits"], lz["layer0.attn.logits"]
    keep = torch.arange(6) != 3
    torch.testing.assert_close(a[:, :, keep], b[:, :, keep], atol=0, rtol=0)
    assert not torch.allclose(a[:, :, 3], b[:, :, 3])
    # the logits are the paper's F(x) = W2 relu(W1 x + b1) + b2, one l-row per head
    full = d.f2(torch.relu(d.f1(x))).view(2, 6, 2, 10)[..., :6].transpose(1, 2)
    torch.testing.assert_close(a, full, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["dense", "random", "random-factorised", "random-fixed"])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_path_equals_plain_reference(kind, causal):
    torch.manual_seed(1)
    cfg = CFG.replace(n_kv_heads=1)
    m = {"dense": lambda: DenseSynthesizer(cfg, hidden=5),
         "random": lambda: RandomSynthesizer(cfg),
         "random-factorised": lambda: RandomSynthesizer(cfg, rank=3),
         "random-fixed": lambda: RandomSynthesizer(cfg, trainable=False, seed=4)}[kind]().double()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    out = m(x, _ctx(7, causal, mask))
    pos = torch.arange(7)
    logits = m.logits(x, pos, pos)
    v = m.v(x).view(2, 7, 1, 4).transpose(1, 2).expand(2, 2, 7, 4)
    ref = synthesizer_reference(logits, v, causal, mask)
    ref = m.o(ref.transpose(1, 2).reshape(2, 7, 8))
    torch.testing.assert_close(out[mask], ref[mask], atol=1e-10, rtol=0)


def test_cached_decoding_equals_full_forward_in_a_model():
    for name in ("synthesizer-dense", "synthesizer-random"):
        torch.manual_seed(0)
        model = build_model(CFG.replace(layers=[LayerSpec(attention=name)])).eval()
        ids = torch.randint(0, 11, (2, 9))
        full = model(ids)
        cache = model.new_cache()
        inc = torch.cat([model(ids[:, :4], cache=cache)] + [model(ids[:, i:i + 1], cache=cache)
                                                           for i in range(4, 9)], 1)
        torch.testing.assert_close(inc, full, atol=1e-6, rtol=0)


def test_fixed_table_is_a_saved_seeded_buffer_and_factorised_is_low_rank():
    a, b = RandomSynthesizer(CFG, trainable=False, seed=3), RandomSynthesizer(CFG, trainable=False, seed=3)
    assert "r" in dict(a.named_buffers()) and "r" in a.state_dict()
    assert not any(n.startswith("r") for n, _ in a.named_parameters())
    torch.testing.assert_close(a.r, b.r, atol=0, rtol=0)
    assert not torch.equal(a.r, RandomSynthesizer(CFG, trainable=False, seed=4).r)
    f = RandomSynthesizer(CFG, rank=2)
    pos = torch.arange(10)
    assert torch.linalg.matrix_rank(f.table(pos, pos)[0]) == 2


def test_option_errors():
    with pytest.raises(ValueError, match="hidden"):
        DenseSynthesizer(CFG, hidden=0)
    with pytest.raises(ValueError, match="rank"):
        RandomSynthesizer(CFG, rank=0)
    with pytest.raises(ValueError, match="trainable"):
        RandomSynthesizer(CFG, trainable="yes")
    with pytest.raises(ValueError, match="cross"):
        RandomSynthesizer(CFG, cross=True)
    with pytest.raises(ValueError, match="max_seq_len"):
        DenseSynthesizer(CFG)(torch.randn(1, 11, 8), _ctx(11, True))
