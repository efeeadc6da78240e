"""The static cache policy (fixed key/value buffers written at a position tensor) and static /
compiled decoding: equal to the full cache and to the full forward, no recompilation per token,
clear errors where it cannot be used (issue 8)."""

from __future__ import annotations

import pytest
import torch

import formers.nn  # noqa: F401  (registers the parts)
from formers.bench.compile_count import CompileCount
from formers.nn import LayerSpec, ModelConfig, build_model
from formers.nn.cache import KVCache, StaticCache
from formers.nn.generate import SamplingConfig, generate
from formers.nn.presets import apply_preset
from formers.registry import entries

torch.set_num_threads(1)
VOCAB = 61


def _cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, max_seq_len=40)
    return ModelConfig(**{**base, **kw})


def _model(cfg: ModelConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def _ids(batch: int, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------- the policy
def test_update_writes_in_place_and_masks_by_position():
    c = StaticCache(max_len=6)
    k = torch.arange(1.0, 4.0).view(1, 1, 3, 1).expand(2, 2, 3, 4).clone()
    kb, vb, pos = c.update(k, -k, torch.tensor([0, 1, 2]))
    assert kb.shape == (2, 2, 6, 4) and pos.tolist() == list(range(6))
    assert kb[0, 0, :, 0].tolist() == [1, 2, 3, 0, 0, 0] and torch.equal(vb, -kb)
    ptr = kb.data_ptr()
    kb2, _, _ = c.update(torch.full((2, 2, 1, 4), 9.0), torch.zeros(2, 2, 1, 4), torch.tensor([3]))
    assert kb2.data_ptr() == ptr and kb2[1, 1, :, 0].tolist() == [1, 2, 3, 9, 0, 0]
    bias = c.key_bias(torch.tensor([2, 3]), pos)  # queries at 2 and 3 over six slots
    inf = float("-inf")
    assert bias.tolist() == [[0, 0, 0, inf, inf, inf], [0, 0, 0, 0, inf, inf]]
    assert c.nbytes() == 2 * (2 * 2 * 6 * 4) * 4 and len(c) == 6


def test_reorder_keeps_addresses():
    c = StaticCache(max_len=4)
    k = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 1).clone()
    kb, _, _ = c.update(k, k, torch.tensor([0, 1]))
    ptr = kb.data_ptr()
    c.reorder(torch.tensor([2, 2, 0]))
    assert c.k.data_ptr() == ptr and c.k[:, 0, 0, 0].tolist() == [2, 2, 0]
    with pytest.raises(ValueError, match="keeps the batch size"):
        c.reorder(torch.tensor([0]))


def test_static_kvcache_position_is_a_tensor():
    cache = KVCache(["static"] * 2, [{"max_len": 8}] * 2)
    assert cache.static and cache.offset == 0
    p = cache.start(torch.device("cpu"))
    cache.advance(3)
    assert p.dim() == 0 and int(p) == 3 and cache.offset == 3 and cache.start("cpu") is p
    cache.reset()
    assert cache.offset == 0
    with pytest.raises(ValueError, match="every layer's policy"):
        KVCache(["static", "full"], [{"max_len": 8}, {}])
    with pytest.raises(ValueError, match="max_len must be an int >= 1"):
        StaticCache(max_len=0)


# ------------------------------------------------------------ static decoding == full forward
def _static_mixers() -> list[str]:
    return sorted(e.name for e in entries("attention")
                  if e.caps.kv_cache and getattr(e.obj, "static_cache", False))


@pytest.mark.parametrize("name", _static_mixers())
def test_static_cache_by_chunks_equals_full_forward(name):
    """Every mixer that declares static_cache: prefill 5 tokens then chunks of 1 and 3 through the
    static cache give the full forward's logits (fp32, 1e-5)."""
    model = _model(_cfg(attention=name))
    x = _ids(2, 14)
    full = model(x)
    cache = model.new_cache(static=True, max_len=16)
    outs, start = [], 0
    for n in (5, 1, 1, 3, 1, 3):
        outs.append(model(x[:, start:start + n], cache=cache))
        start += n
    assert cache.offset == start == 14
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", ["baseline", "rope", "alibi", "sinusoidal", "gqa", "mqa", "llama",
                                    "postnorm", "value-residual", "denseformer"])
def test_static_generate_equals_full_cache(preset):
    """Greedy decoding with the static cache gives the full cache's tokens, token for token."""
    cfg = apply_preset(preset, _cfg())  # every preset listed exists: a renamed one fails here
    model = _model(cfg)
    x = _ids(3, 6)
    s = SamplingConfig(max_new_tokens=24, temperature=0)
    want = generate(model, x, s)
    got = generate(model, x, s, static_cache=True)
    assert got.shape == (3, 30) and torch.equal(got, want)


def test_static_sampling_and_stop_tokens_equal_full_cache():
    model = _model(_cfg())
    x = _ids(4, 5, seed=3)
    s = SamplingConfig(max_new_tokens=30, temperature=0.9, top_k=20, top_p=0.95)
    want = generate(model, x, s, generator=torch.Generator().manual_seed(5))
    got = generate(model, x, s, static_cache=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(got, want)
    # stop tokens: take tokens the greedy run emits, so rows stop at different steps; the host
    # checks every 4 steps but the output is cut where the last row stopped
    g = generate(model, x, SamplingConfig(max_new_tokens=30, temperature=0))
    stop = sorted({int(g[0, 9]), int(g[1, 12])})
    s = SamplingConfig(max_new_tokens=30, temperature=0, stop_tokens=stop)
    want = generate(model, x, s)
    for kw in ({}, {"static_cache": True}, {"static_cache": True, "check_every": 4}):
        got = generate(model, x, s, **kw)
        assert torch.equal(got, want), kw
    for row in want[:2]:  # rows 0 and 1 stop, then repeat their stop token
        cols = [c for c in range(5, row.shape[0]) if int(row[c]) in stop]
        assert cols and (row[cols[0]:] == row[cols[0]]).all()


def test_static_session_is_reused_between_calls():
    model = _model(_cfg())
    s = SamplingConfig(max_new_tokens=8, temperature=0)
    generate(model, _ids(2, 4), s, static_cache=True)
    sess = model.__dict__["_formers_static"]
    ptr = sess.cache.layers[0].k.data_ptr()
    a = generate(model, _ids(2, 4, seed=9), s, static_cache=True)
    assert model.__dict__["_formers_static"] is sess and sess.cache.layers[0].k.data_ptr() == ptr
    assert torch.equal(a, generate(model, _ids(2, 4, seed=9), s))
    # a shorter generation fits in the kept buffers and reuses them; another batch size does not
    generate(model, _ids(2, 3), SamplingConfig(max_new_tokens=2, temperature=0), static_cache=True)
    assert model.__dict__["_formers_static"] is sess
    generate(model, _ids(3, 3), SamplingConfig(max_new_tokens=2, temperature=0), static_cache=True)
    assert model.__dict__["_formers_static"] is not sess
    # an explicit cache_len sizes the buffers
    got = generate(model, _ids(3, 3), s, static_cache=True, cache_len=37)
    assert model.__dict__["_formers_static"].cache.layers[0].k.shape[2] == 37
    assert torch.equal(got, generate(model, _ids(3, 3), s))


# ------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("cfg,match", [
    (dict(layers=[LayerSpec(attention="local", attention_options={"window": 4}, cache="window",
                            cache_options={"window": 4})]), "static cache needs policy 'full'"),
    (dict(attention="linear"), "static cache needs policy 'full'"),
    (dict(attention="reformer"), "does not support the static cache"),
    (dict(value_residual="shared"), "SVFormer"),
])
def test_static_cache_refused_with_a_clear_error(cfg, match):
    model = _model(_cfg(**cfg))
    with pytest.raises(ValueError, match=match):
        generate(model, _ids(1, 3), SamplingConfig(max_new_tokens=2, temperature=0), static_cache=True)


def test_generate_argument_errors():
    model = _model(_cfg())
    s = SamplingConfig(max_new_tokens=2, temperature=0)
    with pytest.raises(ValueError, match="needs static_cache=True"):
        generate(model, _ids(1, 3), s, compile=True)
    with pytest.raises(ValueError, match="needs use_cache=True"):
        generate(model, _ids(1, 3), s, static_cache=True, use_cache=False)
    for bad in (4, 41):  # shorter than prompt + new tokens, longer than max_seq_len
        with pytest.raises(ValueError, match="cache_len needs static_cache=True and an int in"):
            generate(model, _ids(1, 3), s, static_cache=True, cache_len=bad)
    with pytest.raises(ValueError, match="cache_len needs static_cache=True"):
        generate(model, _ids(1, 3), s, cache_len=8)
    with pytest.raises(ValueError, match="check_every"):
        generate(model, _ids(1, 3), s, check_every=0)
    with pytest.raises(ValueError, match=r"max_len must be an int in \[1, max_seq_len"):
        model.new_cache(static=True, max_len=41)


# ------------------------------------------------------------------------------- compiled
@pytest.mark.parametrize("preset", ["baseline", "rope", "alibi"])
def test_compiled_static_decode_does_not_recompile_per_token(preset):
    """torch.compile of the decoding step (aot_eager backend: the graph count is dynamo's, the
    same for every backend): one graph for 20 tokens, none for a second prompt of the same shape,
    and the tokens of eager decoding."""
    torch._dynamo.reset()
    model = _model(apply_preset(preset, _cfg()))
    s = SamplingConfig(max_new_tokens=20, temperature=0)
    opts = {"backend": "aot_eager"}
    with CompileCount() as first:
        got = generate(model, _ids(2, 5), s, static_cache=True, compile=opts)
    with CompileCount() as second:
        got2 = generate(model, _ids(2, 5, seed=4), SamplingConfig(max_new_tokens=20, temperature=0),
                        static_cache=True, compile=opts)
    assert first.graphs is not None and 1 <= first.graphs <= 2, first.reasons
    assert second.graphs == 0, second.reasons
    assert torch.equal(got, generate(model, _ids(2, 5), s))
    assert torch.equal(got2, generate(model, _ids(2, 5, seed=4), s))


@pytest.mark.slow
def test_compiled_static_decode_default_backend():
    """The same with torch.compile's default backend (inductor, C++ on CPU): at most 2 graphs
    for 20 tokens and the eager tokens."""
    torch._dynamo.reset()
    model = _model(_cfg(d_model=16, n_layers=1, n_heads=2))
    s = SamplingConfig(max_new_tokens=20, temperature=0)
    with CompileCount() as cc:
        got = generate(model, _ids(2, 5), s, static_cache=True, compile=True)
    assert cc.graphs is not None and 1 <= cc.graphs <= 2, cc.reasons
    assert torch.equal(got, generate(model, _ids(2, 5), s))


def test_static_generate_encoder_decoder_equals_full_cache():
    model = _model(_cfg(arch="encoder-decoder"))
    src, start = _ids(2, 7, seed=5), torch.zeros(2, 1, dtype=torch.long)
    s = SamplingConfig(max_new_tokens=12, temperature=0)
    want = generate(model, start, s, src=src)
    assert torch.equal(generate(model, start, s, src=src, static_cache=True), want)
    # a second source: the cross-attention keys are recomputed, not kept from the first call
    src2 = _ids(2, 7, seed=6)
    assert torch.equal(generate(model, start, s, src=src2, static_cache=True), generate(model, start, s, src=src2))
