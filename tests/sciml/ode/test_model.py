"""ODEFormer model: the point embedder's shapes, no positional information on the encoder (its
output is permutation-equivariant over time points), padding, save/load, config validation."""

from __future__ import annotations

import pytest
import torch

from formers.nn.io import save_model
from formers.sciml.ode.model import (ODEFormer, ODEFormerConfig, PointEmbedder, load_odeformer,
                                     variant_config)


def tiny(**kw) -> ODEFormerConfig:
    return variant_config("odeformer-tiny", input_vocab_size=60, pad_id=59, vocab_size=40, **kw)


def test_point_embedder_shapes_and_paper_width():
    cfg = tiny()
    emb = PointEmbedder(cfg)
    pts = torch.randint(0, 60, (3, 11, cfg.point_tokens))
    assert cfg.point_tokens == (1 + 2) * 3
    assert emb(pts).shape == (3, 11, cfg.d_model)
    # the paper's embedder: D_max 6 -> 21 tokens of width 64 -> 1344 -> 1344 -> 512
    paper = variant_config("odeformer-paper", input_vocab_size=60, pad_id=59, vocab_size=40)
    e = PointEmbedder(paper)
    assert paper.point_tokens == 21
    assert [tuple(m.weight.shape) for m in e.mlp if hasattr(m, "weight")] == [(1344, 1344), (512, 1344)]
    with pytest.raises(ValueError, match="tokens per point"):
        emb(torch.zeros(1, 4, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 60\)"):
        emb(torch.full((1, 4, 9), 60))


def test_encoder_is_permutation_equivariant_over_points():
    m = ODEFormer(tiny()).eval()
    pts = torch.randint(0, 60, (2, 13, 9))
    perm = torch.randperm(13)
    with torch.no_grad():
        a, b = m.encode(pts), m.encode(pts[:, perm])
        assert torch.allclose(a[:, perm], b, atol=1e-5)
        # and so the decoder's logits do not depend on the order of the points
        tgt = torch.randint(0, 40, (2, 6))
        assert torch.allclose(m(pts, tgt), m(pts[:, perm], tgt), atol=1e-5)
        # while the decoder does see token order (learned positions)
        assert not torch.allclose(m(pts, tgt)[:, -1], m(pts, tgt.flip(1))[:, -1], atol=1e-4)


def test_padded_points_are_ignored():
    m = ODEFormer(tiny()).eval()
    pts = torch.randint(0, 60, (1, 5, 9))
    padded = torch.cat([pts, torch.randint(0, 60, (1, 3, 9))], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    tgt = torch.randint(0, 40, (1, 4))
    with torch.no_grad():
        assert torch.allclose(m(pts, tgt), m(padded, tgt, mask), atol=1e-5)


def test_save_load_round_trip(tmp_path):
    m = ODEFormer(tiny()).eval()
    save_model(m, tmp_path / "m")
    back = load_odeformer(tmp_path / "m")
    pts, tgt = torch.randint(0, 60, (2, 7, 9)), torch.randint(0, 40, (2, 5))
    with torch.no_grad():
        assert torch.equal(m(pts, tgt), back(pts, tgt))
    assert back.cfg == m.cfg


@pytest.mark.parametrize("field,value,match", [
    ("d_model", 33, "divisible"), ("max_dimension", 0, "max_dimension"), ("pad_id", 61, "pad_id"),
    ("dropout", 1.0, "dropout"), ("token_dim", 2.5, "token_dim")])
def test_config_errors_name_the_field(field, value, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tiny(**{field: value})


def test_unknown_variant():
    with pytest.raises(ValueError, match="odeformer-paper"):
        variant_config("nope")


def test_point_and_system_tokens():
    import numpy as np

    from formers.sciml.ode import codec, expr, tokens

    t, x = np.array([1.0, 2.5]), np.array([[0.012345], [-3.0]])
    ids = tokens.encode_points(t, x, max_dimension=3)
    assert ids.shape == (2, 12)
    assert [tokens.INPUT_VOCAB[i] for i in ids[0, 3:6]] == ["+", "N1235", "E-5"]  # the paper's example
    assert (ids[:, 6:] == tokens.INPUT_PAD_ID).all()
    assert np.allclose(codec.decode_floats(ids[:, :6].reshape(2, 2, 3)), np.c_[t, x], rtol=5e-4)
    with pytest.raises(ValueError, match="max_dimension = 1"):
        tokens.encode_points(np.zeros(3), np.zeros((3, 2)), max_dimension=1)
    system = expr.parse("-0.5*x_0 + x_1 | sin(x_0)")
    ids = tokens.encode_system(system, 2)
    assert ids[0] == tokens.BOS and ids[-1] == tokens.EOS
    assert tokens.decode_system(ids, 2) == system
    assert max(ids) < variant_config("odeformer").vocab_size
    with pytest.raises(ValueError, match="max_dimension"):
        tokens.encode_system(system, 1)
