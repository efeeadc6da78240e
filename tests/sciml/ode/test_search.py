"""Token-level decoding: beam search at beam 1 is greedy decoding; wider beams are sorted and
never score below the greedy hypothesis; sampling returns the asked number of sequences."""

from __future__ import annotations

import pytest
import torch

from formers.nn.generate import SamplingConfig, generate
from formers.sciml.ode.model import ODEFormer, variant_config
from formers.sciml.ode.search import beam_search, sample

BOS, EOS = 0, 1


def _model(seed: int, vocab: int) -> ODEFormer:
    torch.manual_seed(seed)
    return ODEFormer(variant_config("odeformer-tiny", input_vocab_size=60, pad_id=59, vocab_size=vocab)).eval()


def _greedy(m, pts, max_len):
    out = generate(m, torch.full((1, 1), BOS), SamplingConfig(max_new_tokens=max_len, temperature=0,
                                                              stop_tokens=[EOS]), src=pts)[0, 1:].tolist()
    return out[:out.index(EOS)] if EOS in out else out


def test_beam_one_is_greedy():
    ended = 0
    for seed in range(6):
        for vocab in (3, 5, 8):
            m = _model(seed, vocab)
            pts = torch.randint(0, 60, (1, 9, 9))
            (score, ids), = beam_search(m, pts, BOS, EOS, beam_size=1, max_len=16)
            assert ids == _greedy(m, pts, 16), (seed, vocab)
            ended += len(ids) < 16
    assert 0 < ended < 18  # some greedy runs ended with EOS, some ran to max_len: both paths checked


def test_wider_beam_sorted_and_scored_by_mean_log_probability():
    m = _model(1, 4)
    pts = torch.randint(0, 60, (1, 9, 9))
    hyps = beam_search(m, pts, BOS, EOS, beam_size=6, max_len=12)
    scores = [s for s, _ in hyps]
    assert len(hyps) == 6 and scores == sorted(scores, reverse=True)
    assert len({tuple(ids) for _, ids in hyps}) == 6  # distinct hypotheses
    # a finished hypothesis' score is its mean log-probability (length penalty 1, EOS counted),
    # recomputed here with a full (uncached) forward pass
    for s, ids in hyps:
        tgt = torch.tensor([[BOS] + ids + [EOS]])
        with torch.no_grad():
            logp = torch.log_softmax(m(pts, tgt[:, :-1]), -1)[0].gather(-1, tgt[0, 1:, None]).sum().item()
        assert s == pytest.approx(logp / (len(ids) + 1), abs=1e-4)


def test_sampling_count_and_errors():
    m = _model(0, 5)
    pts = torch.randint(0, 60, (1, 9, 9))
    g = torch.Generator().manual_seed(0)
    out = sample(m, pts, BOS, EOS, n_samples=7, temperature=1.0, max_len=10, generator=g)
    assert len(out) == 7 and all(EOS not in s and len(s) <= 10 for s in out)
    with pytest.raises(ValueError, match="temperature"):
        sample(m, pts, BOS, EOS, temperature=0.0, max_len=10)
    with pytest.raises(ValueError, match="one trajectory"):
        beam_search(m, pts.expand(2, -1, -1), BOS, EOS, max_len=10)
    with pytest.raises(ValueError, match="max_len"):
        beam_search(m, pts, BOS, EOS, max_len=500)


def test_batched_greedy_equals_beam_one_per_trajectory():
    from formers.sciml.ode.search import greedy

    m = _model(2, 5)
    rows = [torch.randint(0, 60, (n, 9)) for n in (5, 9, 7)]
    pts = torch.full((3, 9, 9), 59)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    for i, r in enumerate(rows):
        pts[i, : len(r)], mask[i, : len(r)] = r, True
    batched = greedy(m, pts, mask, BOS, EOS, max_len=14)
    for r, ids in zip(rows, batched):
        (_, one), = beam_search(m, r[None], BOS, EOS, beam_size=1, max_len=14)
        assert ids == one
