"""Streaming (attention sinks + recent window) attention and its sink-window cache."""

from __future__ import annotations

import math

import pytest
import torch

from formers.nn import LayerSpec, ModelConfig, build_model
from formers.nn.attention.streaming import StreamingAttention, streaming_spec, with_streaming_layers
from formers.nn.context import Context
from formers.nn.presets import apply_preset

CFG = ModelConfig(vocab_size=31, d_model=16, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=32,
                  max_seq_len=64, init_std=0.1)


def _model(cfg: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def _ids(n: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (batch, n), generator=torch.Generator().manual_seed(seed))


def test_matches_a_per_query_loop_over_the_allowed_keys():
    """Independent implementation: for each query, softmax over exactly the keys k <= q with
    k < sinks or q - k < window (GQA heads repeated), in float64."""
    torch.manual_seed(0)
    cfg = CFG.replace(init_std=0.3)
    sinks, window, n = 2, 3, 11
    mix = StreamingAttention(cfg, sinks=sinks, window=window).double().eval()
    x = torch.randn(2, n, cfg.d_model, dtype=torch.float64)
    out = mix(x, Context(positions=torch.arange(n)))
    hd, h, hkv = cfg.head_dim, cfg.n_heads, cfg.kv_heads
    q = mix.q(x).view(2, n, h, hd)
    k = mix.k(x).view(2, n, hkv, hd).repeat_interleave(h // hkv, dim=2)
    v = mix.v(x).view(2, n, hkv, hd).repeat_interleave(h // hkv, dim=2)
    heads = torch.zeros(2, n, h, hd, dtype=torch.float64)
    for i in range(n):
        keys = [j for j in range(i + 1) if j < sinks or i - j < window]
        s = torch.einsum("bhd,bkhd->bhk", q[:, i], k[:, keys]) / math.sqrt(hd)
        heads[:, i] = torch.einsum("bhk,bkhd->bhd", s.softmax(-1), v[:, keys])
    torch.testing.assert_close(out, mix.o(heads.reshape(2, n, h * hd)), atol=1e-12, rtol=0)


def test_captured_weights_follow_the_pattern():
    cfg = with_streaming_layers(CFG, [0, 1, 2], sinks=1, window=2)
    cap: dict = {}
    _model(cfg)(_ids(6, batch=1), capture=cap)
    w = cap["layer0.attn.weights"][0, 0]                       # (6, 6)
    allowed = torch.tensor([[j <= i and (j < 1 or i - j < 2) for j in range(6)] for i in range(6)])
    assert torch.all(w[~allowed] == 0) and torch.all(w[allowed] > 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(6))


def test_window_one_without_sinks_attends_to_itself_only():
    torch.manual_seed(0)
    mix = StreamingAttention(CFG, sinks=0, window=1).eval()
    x = torch.randn(1, 5, CFG.d_model)
    v = mix.v(x).view(1, 5, CFG.kv_heads, CFG.head_dim).repeat_interleave(2, dim=2)
    torch.testing.assert_close(mix(x, Context(positions=torch.arange(5))), mix.o(v.reshape(1, 5, -1)))


@pytest.mark.parametrize("position", ["learned", "rope", "alibi"])
def test_reduces_to_full_attention_when_sinks_plus_window_cover_the_sequence(position):
    cfg = CFG.replace(position=position)
    base = _model(cfg)
    for sinks, window in ((0, 12), (4, 8), (11, 1)):          # every key < 12 visible at n = 12
        conv = build_model(with_streaming_layers(cfg, range(3), sinks, window)).eval()
        conv.load_state_dict(base.state_dict())
        torch.testing.assert_close(conv(_ids(12)), base(_ids(12)), atol=1e-6, rtol=0)
    conv = build_model(with_streaming_layers(cfg, range(3), 2, 3)).eval()   # and not otherwise
    conv.load_state_dict(base.state_dict())
    assert not torch.allclose(conv(_ids(12)), base(_ids(12)), atol=1e-3)


@pytest.mark.parametrize("position", ["learned", "rope", "alibi"])
@pytest.mark.parametrize("prefill,chunk", [(1, 1), (6, 1), (5, 3), (9, 4)])
def test_sink_window_cache_decoding_equals_masked_forward(position, prefill, chunk):
    """Evicting keys (sinks=2, window=3: 4 keys kept of up to 20) changes nothing: incremental
    decoding equals the full forward of the same streaming model, and the cache never holds more
    than sinks + window - 1 keys."""
    sinks, window, n = 2, 3, 20
    cfg = with_streaming_layers(CFG.replace(position=position), [0, 2], sinks, window)
    m = _model(cfg)
    x = _ids(n)
    full = m(x)
    cache = m.new_cache()
    assert [type(c).__name__ for c in cache.layers] == ["SinkWindowCache", "FullCache", "SinkWindowCache"]
    outs, start = [], 0
    for size in [prefill] + [chunk] * n:
        if start >= n:
            break
        outs.append(m(x[:, start:start + size], cache=cache))
        start += outs[-1].shape[1]
        assert len(cache.layers[0]) == min(start, sinks + window - 1)
        assert len(cache.layers[1]) == start
        assert cache.layers[0].pos.tolist() == sorted(
            set(range(min(sinks, start))) | set(range(max(0, start - window + 1), start)))
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=0)


def test_full_cache_also_decodes_a_streaming_layer():
    cfg = CFG.replace(layers=[LayerSpec(attention="streaming", attention_options={"sinks": 1, "window": 2})])
    m = _model(cfg)
    x = _ids(10)
    cache = m.new_cache()
    inc = torch.cat([m(x[:, :4], cache=cache)] + [m(x[:, i:i + 1], cache=cache) for i in range(4, 10)], 1)
    torch.testing.assert_close(inc, m(x), atol=1e-5, rtol=0)
    assert len(cache.layers[0]) == 10


def test_options_are_checked():
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        StreamingAttention(CFG, window=0)
    with pytest.raises(ValueError, match="sinks must be an int >= 0"):
        StreamingAttention(CFG, sinks=-1)
    with pytest.raises(ValueError, match="sinks must be an int >= 0"):
        StreamingAttention(CFG, sinks=1.5)
    with pytest.raises(ValueError, match="cross-attention"):
        StreamingAttention(CFG, cross=True)
    with pytest.raises(ValueError, match="causal-only"):
        build_model(CFG.replace(arch="encoder", layers=[LayerSpec(attention="streaming")]))
    with pytest.raises(ValueError, match="only 'softmax'"):
        streaming_spec(LayerSpec(attention="kv"))
    with pytest.raises(ValueError, match="in \\[0, 3\\)"):
        with_streaming_layers(CFG, [3])


def test_cache_policy_must_keep_what_the_pattern_reaches():
    spec = LayerSpec(attention="streaming", attention_options={"sinks": 2, "window": 5},
                     cache="sink-window", cache_options={"sinks": 2, "window": 4})
    with pytest.raises(ValueError, match="evicts keys"):
        _model(CFG.replace(layers=[spec])).new_cache()
    assert StreamingAttention.cache_reach({"sinks": 2, "window": 5}) == (2, 5)
    assert StreamingAttention.cache_reach({}) == (4, 1021)   # the paper's w_sink = 4, w_recent = 1020
    ok = spec.replace(cache_options={"sinks": 2, "window": 5})
    _model(CFG.replace(layers=[ok])).new_cache()


def test_presets():
    cfg = apply_preset("streaming", CFG)
    assert all(cfg.layer_spec(i).attention == "streaming" and cfg.layer_spec(i).cache == "sink-window"
               for i in range(3))
    lt = apply_preset("lighttransfer", CFG.replace(n_layers=4))
    assert [lt.layer_spec(i).attention for i in range(4)] == ["softmax", "streaming"] * 2
    assert lt.layer_spec(1).attention_options == {"sinks": 4, "window": 16}     # max_seq_len / 4
