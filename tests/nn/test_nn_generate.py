"""Sampling and generation (formers.nn.generate)."""

from __future__ import annotations

import math

import pytest
import torch

from formers.nn import LayerSpec, ModelConfig, SamplingConfig, build_model, generate
from formers.nn.generate import filter_logits, next_token

NEG = float("-inf")


def logits_of(probs):
    return torch.tensor([[math.log(p) for p in probs]])


def kept(logits):
    return torch.isfinite(logits)[0].tolist()


def test_top_p_hand_cases():
    lg = logits_of([0.5, 0.3, 0.15, 0.05])
    assert kept(filter_logits(lg, top_p=0.8)) == [True, True, False, False]
    assert kept(filter_logits(lg, top_p=0.5)) == [True, False, False, False]
    assert kept(filter_logits(lg, top_p=0.81)) == [True, True, True, False]
    assert kept(filter_logits(lg, top_p=0.1)) == [True, False, False, False]  # top token always kept
    assert kept(filter_logits(lg, top_p=1.0)) == [True] * 4


def test_top_p_is_order_independent_and_keeps_values():
    lg = logits_of([0.15, 0.05, 0.5, 0.3])
    out = filter_logits(lg, top_p=0.8)
    assert kept(out) == [False, False, True, True]
    torch.testing.assert_close(out[0, 2:], lg[0, 2:])


def test_top_k_hand_cases():
    lg = torch.tensor([[1.0, 4.0, 3.0, 2.0], [0.0, -1.0, 5.0, 2.0]])
    out = filter_logits(lg, top_k=2)
    assert torch.isfinite(out).tolist() == [[False, True, True, False], [False, False, True, True]]
    torch.testing.assert_close(filter_logits(lg, top_k=0), lg)
    torch.testing.assert_close(filter_logits(lg, top_k=10), lg)
    assert kept(filter_logits(lg[:1], top_k=1)) == [False, True, False, False]


def test_top_k_then_top_p():
    lg = logits_of([0.4, 0.3, 0.2, 0.1])
    # top_k=3 leaves (0.4, 0.3, 0.2) renormalised to (4/9, 3/9, 2/9); top_p=0.7 keeps the first two
    assert kept(filter_logits(lg, top_k=3, top_p=0.7)) == [True, True, False, False]


def test_sampling_respects_filter():
    g = torch.Generator().manual_seed(0)
    lg = logits_of([0.5, 0.3, 0.15, 0.05]).repeat(400, 1)
    toks = next_token(lg, SamplingConfig(top_p=0.8), g)
    assert set(toks.tolist()) == {0, 1}
    toks = next_token(lg, SamplingConfig(top_k=1, temperature=5.0), g)
    assert set(toks.tolist()) == {0}
    assert next_token(torch.tensor([[0.1, 3.0, 2.0]]), SamplingConfig(temperature=0)).tolist() == [1]


def _lm(**over):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=23, d_model=16, n_heads=4, n_layers=2, max_seq_len=40, init_std=0.3,
                      **over)
    return build_model(cfg).eval()


def _greedy_by_hand(model, prompt, n):
    out = prompt
    for _ in range(n):
        out = torch.cat([out, model(out)[:, -1].argmax(-1, keepdim=True)], 1)
    return out


@pytest.mark.parametrize("position", ["learned", "rope", "alibi"])
def test_temperature_zero_is_argmax_decoding(position):
    m = _lm(position=position)
    prompt = torch.randint(0, 23, (3, 4), generator=torch.Generator().manual_seed(1))
    s = SamplingConfig(max_new_tokens=10, temperature=0)
    expect = _greedy_by_hand(m, prompt, 10)
    assert torch.equal(generate(m, prompt, s), expect)
    assert torch.equal(generate(m, prompt, s, use_cache=False), expect)


def test_cache_equals_no_cache_gqa_swiglu():
    m = _lm(n_kv_heads=2, position="rope",
            layers=[LayerSpec(ffn="mlp"), LayerSpec(ffn="swiglu")])
    prompt = torch.randint(0, 23, (2, 5), generator=torch.Generator().manual_seed(2))
    s = SamplingConfig(max_new_tokens=12, temperature=0)
    assert torch.equal(generate(m, prompt, s), generate(m, prompt, s, use_cache=False))


def test_seeded_sampling_is_reproducible_and_cache_independent():
    m = _lm()
    prompt = torch.zeros(2, 1, dtype=torch.long)
    s = SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=5)
    a = generate(m, prompt, s, generator=torch.Generator().manual_seed(3))
    b = generate(m, prompt, s, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(a, b) and a.shape == (2, 9)


def test_stop_tokens_end_rows():
    m = _lm()
    prompt = torch.randint(0, 23, (4, 3), generator=torch.Generator().manual_seed(4))
    free = generate(m, prompt, SamplingConfig(max_new_tokens=10, temperature=0))
    stop = int(free[0, 5])  # the third generated token of row 0
    out = generate(m, prompt, SamplingConfig(max_new_tokens=10, temperature=0, stop_tokens=[stop]))
    for r in range(4):
        gen = out[r, 3:].tolist()
        ref = free[r, 3:].tolist()
        if stop in ref[:len(gen)]:
            i = ref.index(stop)
            assert gen[:i + 1] == ref[:i + 1]            # same tokens up to the stop token
            assert all(t == stop for t in gen[i:])      # then the stop token repeats
        else:
            assert gen == ref[:len(gen)]
    assert out.shape[1] <= free.shape[1]


def test_generation_stops_when_all_rows_stop():
    m = _lm()
    prompt = torch.randint(0, 23, (1, 3), generator=torch.Generator().manual_seed(5))
    free = generate(m, prompt, SamplingConfig(max_new_tokens=10, temperature=0))
    first = int(free[0, 3])
    out = generate(m, prompt, SamplingConfig(max_new_tokens=10, temperature=0, stop_tokens=[first]))
    assert out.tolist() == free[:, :4].tolist()


def test_too_long_and_bad_prompts_raise():
    m = _lm()
    with pytest.raises(ValueError, match="max_seq_len = 40"):
        generate(m, torch.zeros(1, 30, dtype=torch.long), SamplingConfig(max_new_tokens=11))
    generate(m, torch.zeros(1, 30, dtype=torch.long), SamplingConfig(max_new_tokens=10, temperature=0))
    with pytest.raises(ValueError, match="prompt"):
        generate(m, torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="prompt"):
        generate(m, torch.zeros(3, dtype=torch.long))


def test_zero_new_tokens_and_training_flag_restored():
    m = _lm().train()
    p = torch.zeros(2, 3, dtype=torch.long)
    assert torch.equal(generate(m, p, SamplingConfig(max_new_tokens=0)), p)
    assert m.training


def test_seq2seq_generate_cache_equals_no_cache():
    torch.manual_seed(0)
    m = build_model(ModelConfig(arch="encoder-decoder", vocab_size=23, d_model=16, n_heads=4,
                                n_layers=2, max_seq_len=40, init_std=0.3, position="rope")).eval()
    src = torch.randint(0, 23, (2, 7), generator=torch.Generator().manual_seed(6))
    start = torch.zeros(2, 1, dtype=torch.long)
    s = SamplingConfig(max_new_tokens=9, temperature=0)
    a = generate(m, start, s, src=src)
    b = generate(m, start, s, src=src, use_cache=False)
    assert torch.equal(a, b) and a.shape == (2, 10)
    memory = m.encode(src)
    out = start
    for _ in range(9):
        out = torch.cat([out, m.decode(out, memory)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(a, out)
