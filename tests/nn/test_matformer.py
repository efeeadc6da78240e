"""MatFormer (Devvrit, Kudugunta et al., arXiv 2310.07707): the paper tests of the research notes
(``shared/papers/architecture.md`` §3 (d)).

1. extraction: a dense model built from the sliced prefixes equals the nested model at each
   granularity (GELU and SwiGLU; uniform and Mix'n'Match per layer);
2. the largest granularity is the plain FFN;
3. nesting: a backward pass at granularity i leaves exactly zero gradient beyond m_i;
4. the joint loss's gradient is the sum of the separate gradients;
5. parameter counts per granularity (analytic = counted on the extracted model = hand formula).
Plus the explicit granularity API (context manager, persistence over cached decoding) and the
sampled schedule.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from formers.nn import LayerSpec, ModelConfig, build_model, count_params
from formers.nn.ffn.matformer import MatFormerFFN, resolve_widths
from formers.nn.ffn.mlp import MLP, SwiGLU
from formers.nn.matformer import (
    count_params_at, extract, extract_config, matformer_layers, matformer_loss, n_granularities,
    param_counts, sample_granularity, set_granularity,
)
from formers.nn.presets import apply_preset

BASE = ModelConfig(vocab_size=31, d_model=16, n_layers=4, n_heads=2, d_ff=64, max_seq_len=32,
                   init_std=0.1)
ACTS = ["gelu", "swiglu"]


def _model(act: str = "gelu", arch: str = "decoder", bias: bool = True, seed: int = 0, **opts):
    torch.manual_seed(seed)
    cfg = BASE.replace(arch=arch, bias=bias, layers=[
        LayerSpec(ffn="matformer", ffn_options={"activation": act, **opts})])
    return build_model(cfg).eval()


def _ids(b: int = 2, t: int = 9, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, BASE.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))


def _lm_loss(model, batch):
    ids = batch["ids"]
    return F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())


# ------------------------------------------------------------------------------ 1. extraction
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("bias", [True, False])
def test_extraction_equals_nested_forward(act, bias):
    m = _model(act, bias=bias)
    x = _ids()
    for g in [0, 1, 2, 3, None, [0, 3, 1, 2], [3, 2, 1, 0]]:
        dense = extract(m, g)
        assert not matformer_layers(dense)
        assert {type(b.ffn) for b in dense.stack.blocks} == {MLP if act == "gelu" else SwiGLU}
        with set_granularity(m, g):
            nested = m(x)
        torch.testing.assert_close(dense(x), nested, atol=0, rtol=0)


def test_extracted_config_is_plain_and_per_layer():
    torch.manual_seed(0)
    m = build_model(BASE.replace(ffn="matformer-swiglu"))
    cfg = extract_config(m, [0, 1, 2, 3])
    assert cfg.ffn == "swiglu" and cfg.layers is not None and len(cfg.layers) == 4
    assert [cfg.layer_spec(i).ffn for i in range(4)] == ["swiglu"] * 4
    assert [cfg.layer_spec(i).ffn_options["d_ff"] for i in range(4)] == [8, 16, 32, 64]
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    dense = extract(m, [0, 1, 2, 3])
    assert [b.ffn.down.in_features for b in dense.stack.blocks] == [8, 16, 32, 64]


def test_extraction_encoder_decoder_and_errors():
    m = _model("gelu", arch="encoder-decoder")
    src, tgt = _ids(2, 6, seed=3), _ids()
    with set_granularity(m, 1):
        nested = m(src, tgt)
    torch.testing.assert_close(extract(m, 1)(src, tgt), nested, atol=0, rtol=0)
    # encoder layer i and decoder layer i share cfg.layers[i]: differing widths cannot be expressed
    with pytest.raises(ValueError, match="share one LayerSpec"):
        extract(m, [0] * 4 + [1] * 4)
    with pytest.raises(ValueError, match="no MatFormer"):
        extract(build_model(BASE), 0)


def test_extract_keeps_mode_and_rng():
    m = _model().train()
    torch.manual_seed(5)
    a = torch.rand(1)
    torch.manual_seed(5)
    dense = extract(m, 0)
    assert torch.equal(torch.rand(1), a) and dense.training


# ------------------------------------------------------------------- 2. largest = plain FFN
@pytest.mark.parametrize("act,dense_cls", [("gelu", MLP), ("swiglu", SwiGLU)])
def test_largest_granularity_is_plain_ffn(act, dense_cls):
    cfg = BASE
    torch.manual_seed(0)
    nested = MatFormerFFN(cfg, activation=act)
    plain = dense_cls(cfg)
    plain.load_state_dict(nested.state_dict())  # same parameter names and shapes
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(nested(x), plain(x), atol=0, rtol=0)
    torch.testing.assert_close(nested(x, granularity=-1), plain(x), atol=0, rtol=0)


def test_matformer_preset_loads_into_baseline_and_matches():
    """The universal MatFormer model is the baseline model with the same weights."""
    base = ModelConfig(vocab_size=31, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_seq_len=32)
    for preset_name, plain_name in [("matformer", "baseline"), ("matformer-swiglu", "llama")]:
        torch.manual_seed(0)
        mat = build_model(apply_preset(preset_name, base)).eval()
        plain = build_model(apply_preset(plain_name, base)).eval()
        plain.load_state_dict(mat.state_dict())
        x = _ids(2, 7)
        torch.testing.assert_close(mat(x), plain(x), atol=0, rtol=0)


# ----------------------------------------------------------------------------- 3. nesting
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("g", [0, 1, 2])
def test_sub_granularity_gradients_vanish_beyond_prefix(act, g):
    m = _model(act)
    with set_granularity(m, g):
        _lm_loss(m, {"ids": _ids(2, 10)}).backward()
    for layer in matformer_layers(m):
        k = layer.widths[g]
        ins = [layer.up] + ([layer.gate] if act == "swiglu" else [])
        for lin in ins:
            assert (lin.weight.grad[k:] == 0).all() and (lin.bias.grad[k:] == 0).all()
            assert lin.weight.grad[:k].abs().sum() > 0
        assert (layer.down.weight.grad[:, k:] == 0).all()
        assert layer.down.weight.grad[:, :k].abs().sum() > 0
        assert layer.down.bias.grad.abs().sum() > 0  # the shared output bias is always trained


# --------------------------------------------------------------------- 4. joint schedule
def _grads(m) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("act", ACTS)
def test_joint_gradient_is_sum_of_separate_gradients(act):
    m = _model(act)
    batch = {"ids": _ids(2, 10)}
    lam = [1.0, 0.5, 2.0, 1.0]
    matformer_loss(m, batch, _lm_loss, "joint", weights=lam).backward()
    joint = _grads(m)
    total: dict[str, torch.Tensor] = {}
    for i, w in enumerate(lam):
        with set_granularity(m, i):
            (w * _lm_loss(m, batch)).backward()
        for n, g in _grads(m).items():
            total[n] = total.get(n, 0) + g
    assert joint.keys() == total.keys()
    for n in joint:
        torch.testing.assert_close(joint[n], total[n], atol=1e-6, rtol=1e-5)
    # the value is the (weighted) sum of the losses, and the setting is left as it was
    set_granularity(m, 2)
    expect = sum(w * _lm_loss(extract(m, i), batch).item() for i, w in enumerate(lam))
    assert matformer_loss(m, batch, _lm_loss, "joint", weights=lam).item() == pytest.approx(expect, rel=1e-5)
    assert {layer.granularity for layer in matformer_layers(m)} == {2}


def test_sampled_schedule_is_deterministic_and_uniform():
    m = _model()
    batch = {"ids": _ids(2, 10)}
    picks = [sample_granularity(s, seed=7, n=4) for s in range(400)]
    assert picks == [sample_granularity(s, seed=7, n=4) for s in range(400)]
    counts = torch.bincount(torch.tensor(picks), minlength=4)
    assert counts.min() > 70, counts  # ~100 each
    assert picks != [sample_granularity(s, seed=8, n=4) for s in range(400)]
    for step in range(3):
        g = sample_granularity(step, 0, 4)
        with set_granularity(m, g):
            expect = _lm_loss(m, batch)
        got = matformer_loss(m, batch, _lm_loss, "sampled", step=step, seed=0)
        assert torch.equal(got, expect)
    assert {layer.granularity for layer in matformer_layers(m)} == {None}
    with pytest.raises(ValueError, match="schedule"):
        matformer_loss(m, batch, _lm_loss, "cyclic")
    with pytest.raises(ValueError, match="weights"):
        matformer_loss(m, batch, _lm_loss, "joint", weights=[1.0])


# ------------------------------------------------------------------------ 5. parameter counts
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("bias", [True, False])
def test_parameter_counts(act, bias):
    m = _model(act, bias=bias)
    counts = param_counts(m)
    assert list(counts) == [0, 1, 2, 3] and counts[3] == count_params(m)
    d, L = BASE.d_model, BASE.n_layers
    mats = 2 if act == "gelu" else 3
    per_unit = mats * d + (mats - 1 if bias else 0)  # weights + sliced input biases per hidden unit
    for i, m_i in enumerate((8, 16, 32, 64)):
        assert counts[i] == count_params(m) - L * (64 - m_i) * per_unit
        assert counts[i] == count_params(extract(m, i))
    mix = [0, 2, 3, 1]
    assert count_params_at(m, mix) == count_params(extract(m, mix))
    assert count_params_at(m, mix) == count_params(m) - sum((64 - (8, 16, 32, 64)[g]) * per_unit for g in mix)


# --------------------------------------------------------------- the granularity setting
def test_set_granularity_is_explicit_scoped_and_persistent():
    m = _model()
    layers = matformer_layers(m)
    assert len(layers) == 4 and n_granularities(m) == 4
    x = _ids()
    full = m(x)
    with set_granularity(m, 0):
        small = m(x)
        assert torch.equal(m(x), small)  # persists over calls (no reset after a forward)
    assert {layer.granularity for layer in layers} == {None}
    torch.testing.assert_close(m(x), full, atol=0, rtol=0)
    assert not torch.allclose(small, full)
    handle = set_granularity(m, [0, 1, 2, -1])  # effective without ``with``
    assert [layer.width() for layer in layers] == [8, 16, 32, 64]
    handle.restore()
    assert [layer.granularity for layer in layers] == [None] * 4
    for bad in (4, -5, 1.0, "s", [0, 1]):
        with pytest.raises(ValueError):
            set_granularity(m, bad)
    assert [layer.granularity for layer in layers] == [None] * 4  # a refused call changes nothing
    with pytest.raises(ValueError, match="no MatFormer"):
        set_granularity(build_model(BASE), 0)


@torch.no_grad()
def test_setting_is_valid_across_cached_decoding():
    m = _model("swiglu")
    x = _ids(2, 10)
    with set_granularity(m, [1, 0, 2, 1]):
        full = m(x)
        cache = m.new_cache()
        steps = [m(x[:, :3], cache=cache)] + [m(x[:, i:i + 1], cache=cache) for i in range(3, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    torch.testing.assert_close(full, extract(m, [1, 0, 2, 1])(x), atol=0, rtol=0)


# ------------------------------------------------------------------------------------ config
def test_widths_from_fractions_or_ints_and_errors():
    assert resolve_widths([0.125, 0.25, 0.5, 1.0], 64) == (8, 16, 32, 64)
    assert resolve_widths([10, 0.5, 64], 64) == (10, 32, 64)
    assert MatFormerFFN(BASE, granularities=[16, 64]).widths == (16, 64)
    assert MatFormerFFN(BASE, d_ff=32, activation="swiglu").widths == (4, 8, 16, 32)
    for bad, match in [([], "non-empty"), ([0.5, 0.25, 1.0], "increase"), ([0.25, 0.5], "largest"),
                       ([0.0, 1.0], r"\(0, 1\]"), ([0.001, 1.0], "rounds to 0"), ([128], "width"),
                       (["s", 1.0], "neither"), ([True, 1.0], "neither")]:
        with pytest.raises(ValueError, match=match):
            resolve_widths(bad, 64)
    with pytest.raises(ValueError, match="activation"):
        MatFormerFFN(BASE, activation="relu")
    with pytest.raises(ValueError, match="does not take"):
        build_model(BASE.replace(layers=[LayerSpec(ffn="matformer", ffn_options={"factor": 8})]))
