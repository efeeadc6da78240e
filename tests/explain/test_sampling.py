"""The explainer's sampling semantics, with numbers computed by hand."""

import math

import pytest
import torch

from formers.explain.sampling import distribution, sample
from formers.nn.generate import filter_logits


def reference_case() -> torch.Tensor:
    # 60 tokens; the five largest logits 3.0, 2.2, 1.4, 0.6, -0.2 sit at ids 7, 3, 41, 12, 55,
    # every other logit is below -1
    logits = torch.linspace(-5.0, -1.5, 60)
    for tok, val in zip((7, 3, 41, 12, 55), (3.0, 2.2, 1.4, 0.6, -0.2)):
        logits[tok] = val
    return logits


# At T = 0.8 the five logits scale to 3.75, 2.75, 1.75, 0.75, -0.25: steps of exactly 1, so
# p_r = e^-r / (1 + e^-1 + e^-2 + e^-3 + e^-4), r = 0..4 (sum 1.5713174...)
HAND = [0.6364086465588308, 0.23412165725273662, 0.08612854443626873, 0.031684920796124276,
        0.011656230956039609]


@pytest.mark.parametrize("mode", ["full", "top50"])
def test_top_k_5_at_temperature_0_8_by_hand(mode):
    d = distribution(reference_case(), temperature=0.8, top_k=5, mode=mode)
    assert d.ids[:5].tolist() == [7, 3, 41, 12, 55]
    assert d.scaled[:5].tolist() == pytest.approx([3.75, 2.75, 1.75, 0.75, -0.25], abs=1e-6)
    assert d.probs[:5].tolist() == pytest.approx(HAND, abs=1e-6)
    assert d.probs[5:].sum() == 0 and d.kept.sum() == 5
    assert len(d.ids) == (60 if mode == "full" else 50)


def test_top_p_full_vocabulary_vs_top50_approximation():
    # 100 equal logits, p = 0.9: over the vocabulary 90 tokens reach 0.9 (1/90 each); over the
    # reference tool's 50 only 45 are kept (1/45 each): its renormalisation over the top 50
    logits = torch.zeros(100)
    full = distribution(logits, temperature=1.0, top_p=0.9, mode="full")
    approx = distribution(logits, temperature=1.0, top_p=0.9, mode="top50")
    assert int(full.kept.sum()) == 90 and full.probs[full.kept] == pytest.approx([1 / 90] * 90)
    assert int(approx.kept.sum()) == 45 and approx.probs[approx.kept] == pytest.approx([1 / 45] * 45)


def test_full_mode_is_the_generation_rule():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(259, generator=g) * 3
    d = distribution(logits, temperature=0.7, top_k=20, top_p=0.8)
    expect = torch.softmax(filter_logits(logits[None] / 0.7, 20, 0.8)[0], -1)
    torch.testing.assert_close(d.probs, expect[d.ids])
    assert math.isclose(float(d.probs.sum()), 1.0, rel_tol=1e-6)


def test_greedy_and_sample():
    logits = reference_case()
    d = distribution(logits, temperature=0.0)
    assert d.probs[0] == 1 and sample(d) == 7
    d = distribution(logits, temperature=0.8, top_k=2)
    draws = {sample(d, torch.Generator().manual_seed(s)) for s in range(40)}
    assert draws == {7, 3}


@pytest.mark.parametrize("kw,match", [({"temperature": -1}, "temperature"), ({"top_k": -2}, "top_k"),
                                      ({"top_p": 0}, "top_p"), ({"mode": "top5"}, "mode")])
def test_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        distribution(torch.zeros(10), **kw)
