"""Cache policies: full, window, sink-window, recurrent (keys kept, eviction, options, checks)."""

from __future__ import annotations

import pytest
import torch

from formers.nn import LayerSpec, ModelConfig, build_model
from formers.nn.cache import KVCache, RecurrentCache, SinkWindowCache, WindowCache


def _kv(start: int, n: int):
    pos = torch.arange(start, start + n)
    k = pos.float().view(1, 1, n, 1).expand(2, 3, n, 4).clone()
    return k, -k, pos


def test_window_keeps_what_the_next_query_needs():
    c = WindowCache(window=4)
    k, v, pos = c.update(*_kv(0, 6))
    assert pos.tolist() == list(range(6)) and k.shape == (2, 3, 6, 4)  # the chunk sees everything
    assert c.pos.tolist() == [3, 4, 5] and len(c) == 3                  # window - 1 kept
    k, v, pos = c.update(*_kv(6, 1))
    assert pos.tolist() == [3, 4, 5, 6]                                 # query 6 sees 3..6
    assert torch.equal(k[0, 0, :, 0], pos.float()) and torch.equal(v, -k)
    assert c.nbytes() == 2 * (2 * 3 * 3 * 4) * 4


def test_sink_window_keeps_sinks_and_tail():
    c = SinkWindowCache(sinks=2, window=3)
    c.update(*_kv(0, 7))
    assert c.pos.tolist() == [0, 1, 5, 6]
    _, _, pos = c.update(*_kv(7, 2))
    assert pos.tolist() == [0, 1, 5, 6, 7, 8]
    assert c.pos.tolist() == [0, 1, 7, 8]


def test_reorder_keeps_positions():
    c = WindowCache(window=3)
    c.update(*_kv(0, 5))
    c.reorder(torch.tensor([1, 1, 0]))
    assert c.k.shape[0] == 3 and c.pos.tolist() == [3, 4]


def test_recurrent_holds_state_only():
    c = RecurrentCache()
    c.state["s"] = torch.zeros(2, 4, 8, 8)
    assert c.nbytes() == 2 * 4 * 8 * 8 * 4
    with pytest.raises(ValueError, match="recurrent"):
        c.update(*_kv(0, 1))


@pytest.mark.parametrize("policy,options,match", [
    ("window", {}, "window must be an int >= 1"),
    ("window", {"window": 0}, "window must be an int >= 1"),
    ("sink-window", {"window": 4, "sinks": -1}, "sinks must be an int >= 0"),
    ("window", {"window": 4, "size": 3}, "unknown options"),
])
def test_bad_options_fail_at_build(policy, options, match):
    cfg = ModelConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, max_seq_len=16,
                      layers=[LayerSpec(cache=policy, cache_options=options)])
    with pytest.raises(ValueError, match=match):
        build_model(cfg)
    with pytest.raises(ValueError, match=match):
        KVCache([policy], [options])


def test_window_policy_refused_for_a_mixer_that_sees_every_key():
    cfg = ModelConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, max_seq_len=16,
                      layers=[LayerSpec(cache="window", cache_options={"window": 4})])
    with pytest.raises(ValueError, match="evicts keys"):
        build_model(cfg).new_cache()


def test_recurrent_policy_refused_for_softmax():
    cfg = ModelConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, max_seq_len=16,
                      layers=[LayerSpec(cache="recurrent")])
    with pytest.raises(ValueError, match="needs cache policy full"):
        build_model(cfg).new_cache()


def test_auto_policy_is_full_for_softmax():
    cfg = ModelConfig(vocab_size=11, d_model=8, n_layers=2, n_heads=2, max_seq_len=16)
    assert cfg.layer_spec(0).cache == "auto"
    cache = build_model(cfg).new_cache()
    assert all(type(c).__name__ == "FullCache" for c in cache.layers)
