"""LightTransfer (arXiv 2410.13846): lazy ratio (LSE form == explicit attention, scale and causal
mask applied), the capacity-P max-priority queue, prefill with online cuts, conversion, KV bytes."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from formers.nn import LayerSpec, ModelConfig, build_model
from formers.nn.lighttransfer import (
    LazyLayerQueue, convert, convert_config, count_lazy, kv_bytes_saved, kv_cache_bytes, lazy_ratio,
    lazy_ratio_explicit, lazy_ratios, prefill, select_lazy_layers,
)

CFG = ModelConfig(vocab_size=31, d_model=16, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=32,
                  max_seq_len=64, position="rope", init_std=0.1)


def _model(cfg: ModelConfig = CFG, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def _ids(n: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (batch, n), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- lazy ratio
@pytest.mark.parametrize("n,sinks,recent,last", [(20, 4, 6, 5), (20, 0, 3, 8), (20, 2, 1, 1),
                                                 (9, 4, 8, 9), (33, 1, 0, 16)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_lse_form_equals_explicit_attention(n, sinks, recent, last, with_bias):
    g = torch.Generator().manual_seed(n + sinks + recent)
    q = torch.randn(2, 4, n, 8, generator=g, dtype=torch.float64) * 2
    k = torch.randn(2, 2, n, 8, generator=g, dtype=torch.float64) * 2     # GQA: 2 key heads
    bias = None
    if with_bias:                                                          # ALiBi-like
        slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625], dtype=torch.float64)
        pos = torch.arange(n)
        bias = -slopes[:, None, None] * (pos[:, None] - pos[None, :]).abs()
    ref = lazy_ratio_explicit(q, k, sinks, recent, last, bias=bias)
    b_last = None if bias is None else bias[:, n - last:]
    fast = lazy_ratio(q[:, :, n - last:], k, sinks, recent, bias=b_last)
    assert fast.shape == (2, 4)
    torch.testing.assert_close(fast, ref, atol=1e-12, rtol=0)
    # with the log-normaliser handed in (as a FlashAttention kernel returns it): the same
    s = torch.einsum("bhqd,bhkd->bhqk", q[:, :, n - last:], k.repeat_interleave(2, 1)) / math.sqrt(8)
    s = s + (0 if b_last is None else b_last)
    causal = torch.arange(n)[None, :] <= torch.arange(n - last, n)[:, None]
    lse = s.masked_fill(~causal, float("-inf")).logsumexp(-1)
    torch.testing.assert_close(lazy_ratio(q[:, :, n - last:], k, sinks, recent, bias=b_last, lse=lse),
                               ref, atol=1e-12, rtol=0)


def test_ratio_by_hand_needs_the_scale_and_the_causal_mask():
    """n = 4 keys, one head, head_dim 4, the last 2 queries, sinks = 1, recent = 1 (keys 0 and 3).
    Query 2 cannot see key 3, so its mass is on key 0 only; query 3 sees keys 0 and 3."""
    q = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    k = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    q[..., 2, 0], q[..., 3, 0] = 2.0, 4.0
    k[..., :, 0] = torch.tensor([1.0, 0.0, 2.0, 3.0])          # scores q.k / sqrt(4) = q0 * k0 / 2
    s2 = [2 * x / 2 for x in (1.0, 0.0, 2.0)]                  # query 2 over keys 0..2
    s3 = [4 * x / 2 for x in (1.0, 0.0, 2.0, 3.0)]             # query 3 over keys 0..3
    r2 = math.exp(s2[0]) / sum(map(math.exp, s2))
    r3 = (math.exp(s3[0]) + math.exp(s3[3])) / sum(map(math.exp, s3))
    got = lazy_ratio(q[:, :, 2:], k, sinks=1, recent=1)
    assert got.item() == pytest.approx((r2 + r3) / 2, abs=1e-14)
    # the paper's listing (no scale, no mask) gives another number
    s = q[0, 0, 2:] @ k[0, 0].T
    listing = (s[:, [0, 3]].logsumexp(-1) - s.logsumexp(-1)).exp().mean()
    assert abs(listing.item() - got.item()) > 0.05


def test_ratio_is_one_when_every_key_is_kept():
    q, k = torch.randn(1, 4, 3, 8), torch.randn(1, 4, 10, 8)
    torch.testing.assert_close(lazy_ratio(q, k, sinks=4, recent=6), torch.ones(1, 4))


# -------------------------------------------------------------------------- priority queue
def test_queue_keeps_the_p_least_lazy_layers_online():
    q = LazyLayerQueue(3)
    pops = [q.push(i, r) for i, r in enumerate([0.9, 0.2, 0.5, 0.95, 0.1, 0.6])]
    assert pops == [None, None, None, 3, 0, 5]                 # popped as soon as the queue overflows
    assert q.kept == [1, 2, 4] and sorted(q.lazy) == [0, 3, 5] and len(q) == 3
    assert select_lazy_layers([0.3, 0.3, 0.3], 1) == [1, 2]   # ties: the later layer is lazy first
    assert select_lazy_layers([0.1, 0.9], 2) == [] and select_lazy_layers([0.1, 0.9], 0) == [0, 1]


def test_queue_equals_sorting_on_random_ratios():
    rng = random.Random(0)
    for _ in range(200):
        L = rng.randint(1, 12)
        P = rng.randint(0, L)
        r = [rng.random() for _ in range(L)]
        top = sorted(range(L), key=lambda i: r[i], reverse=True)[:L - P]
        assert select_lazy_layers(r, P) == sorted(top)


def test_queue_errors():
    with pytest.raises(ValueError, match="capacity"):
        LazyLayerQueue(-1)
    q = LazyLayerQueue(1)
    q.push(0, 0.5)
    with pytest.raises(ValueError, match="twice"):
        q.push(0, 0.4)
    with pytest.raises(ValueError, match="NaN"):
        q.push(1, float("nan"))


# ----------------------------------------------------------------------- prefill + convert
def test_prefill_ratios_equal_explicit_attention_of_each_layer():
    m = _model()
    x = _ids(24, batch=2)
    out = prefill(m, x, capacity=2, sinks=2, window=5, last=6)
    cap: dict = {}
    m(x, capture=cap)
    for i in range(4):
        ref = lazy_ratio_explicit(cap[f"layer{i}.attn.q"], cap[f"layer{i}.attn.k"], 2, 4, 6)
        torch.testing.assert_close(out.head_ratios[i], ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.ratios, out.head_ratios.mean(dim=(1, 2)))
    assert out.lazy == select_lazy_layers(out.ratios.tolist(), 2) and len(out.lazy) == 2
    torch.testing.assert_close(out.logits, m(x))               # the prefill itself is full attention
    for i, c in enumerate(out.cache.layers):                   # lazy caches cut during the prefill
        assert len(c) == (2 + 5 - 1 if i in out.lazy else 24)
    assert lazy_ratios(m, x, 2, 5, 6).tolist() == out.ratios.tolist()


def test_prefill_with_alibi_matches_explicit():
    m = _model(CFG.replace(position="alibi"))
    x = _ids(16)
    out = prefill(m, x, capacity=4, sinks=1, window=4, last=4)
    cap: dict = {}
    m(x, capture=cap)
    pos = torch.arange(16)
    bias = m.embed.position.bias(pos, pos)
    for i in range(4):
        ref = lazy_ratio_explicit(cap[f"layer{i}.attn.q"], cap[f"layer{i}.attn.k"], 1, 3, 4, bias=bias)
        torch.testing.assert_close(out.head_ratios[i], ref, atol=1e-6, rtol=0)


def test_decoding_from_the_cut_cache_is_exact_and_kv_bytes_match_the_formula():
    """After the prefill, decoding with the converted model from the cut cache equals decoding from
    the uncut (full) cache, since the streaming pattern never reads the evicted keys; the cache's
    bytes after decoding equal the formula."""
    sinks, window, n_prompt, n_new = 2, 4, 20, 9
    m = _model()
    x = _ids(n_prompt + n_new)
    out = prefill(m, x[:, :n_prompt], capacity=2, sinks=sinks, window=window)
    uncut = m.new_cache()
    m(x[:, :n_prompt], cache=uncut)
    a = torch.cat([out.model(x[:, i:i + 1], cache=out.cache) for i in range(n_prompt, n_prompt + 5)]
                  + [out.model(x[:, n_prompt + 5:], cache=out.cache)], 1)
    b = out.model(x[:, n_prompt:], cache=uncut)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    n = n_prompt + n_new
    assert out.cache.nbytes() == kv_cache_bytes(CFG, n, out.lazy, sinks, window)
    expected = 2 * CFG.kv_heads * CFG.head_dim * 4 * (2 * n + 2 * (sinks + window - 1))
    assert out.cache.nbytes() == expected
    assert uncut.nbytes() - out.cache.nbytes() == kv_bytes_saved(CFG, n, 2, sinks, window)


def test_no_lazy_layer_reproduces_standard_decoding_bit_for_bit():
    m = _model()
    x = _ids(18)
    out = prefill(m, x[:, :12], capacity=4, sinks=1, window=2)
    assert out.lazy == [] and all(s.attention == "softmax" for s in out.model.cfg.layers)
    ref_cache = m.new_cache()
    ref = torch.cat([m(x[:, :12], cache=ref_cache), m(x[:, 12:], cache=ref_cache)], 1)
    got = torch.cat([out.logits, out.model(x[:, 12:], cache=out.cache)], 1)
    assert torch.equal(got, ref)


def test_conversion_keeps_weights_and_changes_only_the_chosen_layers():
    m = _model()
    conv = convert(m, [3, 1], sinks=2, window=6)
    assert m.cfg.layers is None                                 # the input is untouched
    assert conv.cfg == convert_config(CFG, [1, 3], 2, 6)
    for i in range(4):
        spec = conv.cfg.layer_spec(i)
        if i in (1, 3):
            assert (spec.attention, spec.cache) == ("streaming", "sink-window")
            assert spec.attention_options == spec.cache_options == {"sinks": 2, "window": 6}
        else:
            assert spec == LayerSpec()
    assert {k: v for k, v in conv.cfg.to_dict().items() if k != "layers"} == \
        {k: v for k, v in CFG.to_dict().items() if k != "layers"}
    sd, sd2 = m.state_dict(), conv.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    x = _ids(8)                                                 # 8 <= sinks + window: same outputs
    torch.testing.assert_close(conv(x), m(x), atol=1e-6, rtol=0)
    assert not torch.allclose(conv(_ids(30)), m(_ids(30)), atol=1e-4)


def test_train_variant_fine_tunes_the_converted_config_from_the_weights():
    m = _model()
    cfg = convert_config(CFG, [0, 2], 1, 3)
    student = build_model(cfg)
    student.load_state_dict(m.state_dict())
    x = _ids(20, batch=2)
    loss = torch.nn.functional.cross_entropy(student(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())


def test_count_lazy_picks_l_minus_p_layers():
    m = _model()
    prompts = [_ids(20, seed=s) for s in range(3)]
    lazy, counts = count_lazy(m, prompts, capacity=1, sinks=2, window=4, last=4)
    assert len(lazy) == 3 and sum(counts) == 9
    assert all(counts[i] >= counts[j] for i in lazy for j in set(range(4)) - set(lazy))


def test_errors():
    m = _model()
    with pytest.raises(ValueError, match="capacity"):
        prefill(m, _ids(8), capacity=5)
    with pytest.raises(ValueError, match="last"):
        prefill(m, _ids(8), capacity=2, last=0)
    with pytest.raises(ValueError, match="already streaming"):
        prefill(convert(m, [0], 1, 2), _ids(8), capacity=2)
    with pytest.raises(ValueError, match="only softmax attention"):
        prefill(_model(CFG.replace(n_kv_heads=None, layers=[LayerSpec(attention="kv")])), _ids(8), capacity=2)
    with pytest.raises(ValueError, match="repeat"):
        convert(m, [1, 1])
    with pytest.raises(ValueError, match="must divide"):
        lazy_ratio(torch.randn(1, 3, 2, 4), torch.randn(1, 2, 5, 4), 1, 1)
    for P, L in itertools.product(range(3), [2]):
        assert len(select_lazy_layers([0.5] * L, P)) == max(0, L - P)
