"""Linformer (arXiv 2006.04768): reduction to softmax attention, the reference form, options."""

from __future__ import annotations

import pytest
import torch

from formers.nn import LayerSpec, ModelConfig, build_model
from formers.nn.attention.linformer import LinformerAttention, linformer_reference
from formers.nn.attention.softmax import SoftmaxAttention
from formers.nn.context import Context

CFG = ModelConfig(arch="encoder", vocab_size=11, d_model=16, n_layers=1, n_heads=4, d_ff=32,
                  max_seq_len=12)


def _ctx(t: int, key_mask=None) -> Context:
    return Context(positions=torch.arange(t), causal=False, key_mask=key_mask)


@pytest.mark.parametrize("sharing", ["none", "headwise", "key-value"])
def test_k_equals_n_with_identity_projections_is_softmax_attention(sharing):
    torch.manual_seed(0)
    n = CFG.max_seq_len
    lin = LinformerAttention(CFG, k=n, sharing=sharing).double()
    soft = SoftmaxAttention(CFG).double()
    soft.load_state_dict({k: v for k, v in lin.state_dict().items() if not k.startswith("proj.")})
    with torch.no_grad():
        for p in (lin.proj.e, lin.proj.f):
            if p is not None:
                p.copy_(torch.eye(n).expand_as(p))
    x = torch.randn(2, n, 16, dtype=torch.float64)
    torch.testing.assert_close(lin(x, _ctx(n)), soft(x, _ctx(n)), atol=1e-12, rtol=0)


def test_forward_equals_plain_reference_with_padding_and_gqa():
    torch.manual_seed(1)
    cfg = CFG.replace(n_kv_heads=2)
    m = LinformerAttention(cfg, k=5, sharing="none").double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    out = m(x, _ctx(9, mask))
    b = 2
    q = m.q(x).view(b, 9, 4, 4).transpose(1, 2)
    k = m.k(x).view(b, 9, 2, 4).transpose(1, 2).repeat_interleave(2, 1)
    v = m.v(x).view(b, 9, 2, 4).transpose(1, 2).repeat_interleave(2, 1)
    ref = linformer_reference(q, k, v, m.proj.e, m.proj.f, mask)
    ref = m.o(ref.transpose(1, 2).reshape(b, 9, 16))
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    # padded tokens do not matter at all (their keys and values are zeroed before E, F)
    y = x.clone()
    y[1, 6:] = torch.randn(3, 16, dtype=torch.float64)
    torch.testing.assert_close(m(y, _ctx(9, mask))[mask], out[mask], atol=1e-12, rtol=0)


def test_short_input_first_columns_equal_zero_padding_to_n():
    """The xformers reference zero-pads to n; using E[:, :T] is the same computation."""
    torch.manual_seed(2)
    n, t = 12, 7
    q, k, v = (torch.randn(1, 2, t, 4, dtype=torch.float64) for _ in range(3))
    e, f = torch.randn(2, 3, n, dtype=torch.float64), torch.randn(2, 3, n, dtype=torch.float64)
    pad = lambda z: torch.cat([z, z.new_zeros(1, 2, n - t, 4)], 2)  # noqa: E731
    short = linformer_reference(q, k, v, e, f)
    padded = linformer_reference(pad(q), pad(k), pad(v), e, f)[:, :, :t]
    torch.testing.assert_close(short, padded, atol=1e-12, rtol=0)


def test_sharing_parameter_counts_and_init():
    n, k = CFG.max_seq_len, 3
    counts = {s: sum(p.numel() for p in LinformerAttention(CFG, k=k, sharing=s).proj.parameters())
              for s in ("none", "headwise", "key-value")}
    assert counts == {"none": 2 * 4 * k * n, "headwise": 2 * k * n, "key-value": k * n}
    torch.manual_seed(0)
    model = build_model(CFG.replace(layers=[LayerSpec(attention="linformer")]))
    e = model.stack.blocks[0].mixer.proj.e
    assert e.abs().max() <= 1 / n ** 0.5 and e.std() > 0.1  # U(-1/sqrt(n), 1/sqrt(n)), not N(0, 0.02)


def test_options_and_refusals():
    with pytest.raises(ValueError, match="k must be"):
        LinformerAttention(CFG, k=0)
    with pytest.raises(ValueError, match="layerwise"):
        LinformerAttention(CFG, sharing="layerwise")
    with pytest.raises(ValueError, match="sharing must be"):
        LinformerAttention(CFG, sharing="heads")
    with pytest.raises(ValueError, match="cross"):
        LinformerAttention(CFG, cross=True)
    with pytest.raises(ValueError, match="cannot run causally"):
        build_model(CFG.replace(arch="decoder", layers=[LayerSpec(attention="linformer")]))
    m = LinformerAttention(CFG)
    assert m.k_proj == CFG.max_seq_len // 4
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        m(torch.randn(1, 13, 16), _ctx(13))
    with pytest.raises(ValueError, match="not causal"):
        m(torch.randn(1, 3, 16), Context(positions=torch.arange(3), causal=True))


def test_cost_is_linear_in_length_at_fixed_k():
    """The score matrix is (T, k): doubling T doubles the attention weights' size."""
    m = LinformerAttention(CFG.replace(max_seq_len=64), k=4)
    sizes = []
    for t in (16, 32, 64):
        cap = {}
        ctx = Context(positions=torch.arange(t), causal=False, capture=cap)
        m(torch.randn(1, t, 16), ctx)
        sizes.append(cap["layer0.attn.weights"].numel())
    assert sizes[1] == 2 * sizes[0] and sizes[2] == 2 * sizes[1]
