"""Low-Rank Transformer (Greenformers, arXiv 2108.10808): LED units, SVD factorisation, parts."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from formers.nn import LayerSpec, ModelConfig, build_model, count_params, load_model, save_model
from formers.nn.lowrank import (
    LowRankLinear, factorize, limit_rank, lowrank_config, lowrank_params, resolve_rank,
)
from formers.nn.presets import apply_preset

CFG = ModelConfig(vocab_size=37, d_model=16, n_layers=2, n_heads=4, d_ff=48, max_seq_len=32,
                  init_std=0.2)


def _model(cfg: ModelConfig = CFG, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def _ids(b: int = 2, t: int = 9) -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (b, t), generator=torch.Generator().manual_seed(1))


def _quiet_factorize(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return factorize(*args, **kw)


# ------------------------------------------------------------------------------------- LED unit
@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (6, 6)])
def test_full_rank_svd_reproduces_linear(shape):
    torch.manual_seed(0)
    lin = nn.Linear(*shape).double()
    led = LowRankLinear.from_linear(lin, min(shape))
    x = torch.randn(3, 4, shape[0], dtype=torch.float64)
    torch.testing.assert_close(led(x), lin(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(led.weight, lin.weight, atol=1e-12, rtol=0)
    lin32 = lin.float()
    led32 = LowRankLinear.from_linear(lin32, min(shape))
    torch.testing.assert_close(led32(x.float()), lin32(x.float()), atol=1e-6, rtol=1e-5)


def test_eckart_young_hand_case():
    """W = U diag(3, 2, 1) V^T: the rank-1 error is sqrt(2^2 + 1^2), rank-2 error 1, relative to
    ||W||_F = sqrt(14); and D = U_r S_r, E = V_r^T."""
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(4, 3, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(5, 3, generator=g, dtype=torch.float64))
    w = u @ torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ v.T
    for r, err in [(1, math.sqrt(5.0)), (2, 1.0), (3, 0.0)]:
        led = LowRankLinear(5, 4, r, bias=False).double()
        s = led.load_svd(w)
        torch.testing.assert_close(s, torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64),
                                   atol=1e-12, rtol=0)
        assert torch.linalg.matrix_norm(w - led.weight).item() == pytest.approx(err, abs=1e-12)
    led = LowRankLinear(5, 4, 1, bias=False).double()
    led.load_svd(w)
    # D = 3 u_1, E = v_1^T up to a common sign
    sign = torch.sign(led.E.weight[0] @ v[:, 0])
    torch.testing.assert_close(led.E.weight[0] * sign, v[:, 0], atol=1e-12, rtol=0)
    torch.testing.assert_close(led.D.weight[:, 0] * sign, 3 * u[:, 0], atol=1e-12, rtol=0)


def test_report_error_equals_tail_singular_values():
    m = _model()
    new, rep = factorize(m, 3)
    for r in rep.layers:
        w = m.get_submodule(r.name).weight.detach().double()
        s = torch.linalg.svdvals(w)
        tail = (s[r.rank:] ** 2).sum().sqrt() / (s ** 2).sum().sqrt()
        assert r.rel_error == pytest.approx(tail.item(), rel=1e-5, abs=1e-7)
        assert r.rank == 3


def test_parameter_count_formula():
    led = LowRankLinear(10, 6, 3)
    assert sum(p.numel() for p in led.parameters()) == 3 * (10 + 6) + 6 == lowrank_params(10, 6, 3)
    assert sum(p.numel() for p in LowRankLinear(10, 6, 3, bias=False).parameters()) == 48
    # the limit rank rule: r(in+out) < in*out iff r < in*out/(in+out)
    assert limit_rank(16, 16) == 8.0 and limit_rank(16, 48) == 12.0
    assert lowrank_params(16, 16, 8, bias=False) == 16 * 16            # at the limit: no saving
    assert lowrank_params(16, 16, 7, bias=False) < 16 * 16
    # whole model: dense count minus, per converted linear, in*out - r(in+out)
    d, f, r = 16, 48, 4
    per_layer = 4 * (d * d - r * 2 * d) + 2 * (d * f - r * (d + f))
    low = build_model(lowrank_config(CFG, r))
    assert count_params(build_model(CFG)) - count_params(low) == CFG.n_layers * per_layer


def test_fractional_rank_and_preset_ranks():
    assert resolve_rank(0.5, 128, 128) == 32 and resolve_rank(0.5, 128, 512) == 51
    assert resolve_rank(1.0, 16, 16) == 8 and resolve_rank(0.01, 16, 16) == 1
    cfg = apply_preset("lowrank", ModelConfig(d_model=128, n_layers=1, n_heads=4))
    m = build_model(cfg)
    blk = m.stack.blocks[0]
    assert blk.mixer.q.rank == 32 and blk.ffn.up.rank == 51 and blk.ffn.down.rank == 51


@pytest.mark.parametrize("bad", [0, 17, -1, 0.0, 1.5, True, "4", None])
def test_rank_out_of_range(bad):
    with pytest.raises(ValueError, match="rank"):
        resolve_rank(bad, 16, 48)
    with pytest.raises((ValueError, TypeError), match="rank"):  # TypeError: wrong type (True, "4")
        _quiet_factorize(_model(), bad)


def test_non_contiguous_input():
    led = LowRankLinear(6, 4, 2)
    x = torch.randn(6, 5).T  # (5, 6) non-contiguous
    torch.testing.assert_close(led(x), led(x.contiguous()))


# ------------------------------------------------------------------------------------ factorize
@pytest.mark.parametrize("ffn", ["mlp", "swiglu"])
@pytest.mark.parametrize("which", ["all", "attention", "ffn"])
def test_factorized_full_rank_equals_dense(ffn, which):
    cfg = CFG.replace(ffn=ffn, position="rope")
    m = _model(cfg)
    with pytest.warns(UserWarning, match="saves nothing"):
        new, rep = factorize(m, 16, which=which)  # min(in, out) = 16 for every linear
    x = _ids()
    torch.testing.assert_close(new(x), m(x), atol=2e-5, rtol=1e-5)
    n_attn, n_ffn = 4 * cfg.n_layers, (3 if ffn == "swiglu" else 2) * cfg.n_layers
    assert len(rep.layers) == {"all": n_attn + n_ffn, "attention": n_attn, "ffn": n_ffn}[which]
    assert all(r.rel_error < 1e-6 and not r.saves for r in rep.layers)
    assert len(rep.warnings) == len(rep.layers)


def test_factorized_encoder_decoder_full_rank():
    m = _model(CFG.replace(arch="encoder-decoder"))
    new, rep = _quiet_factorize(m, 16)
    src, tgt = _ids(2, 7), _ids(2, 5)
    torch.testing.assert_close(new(src, tgt), m(src, tgt), atol=2e-5, rtol=1e-5)
    assert len(rep.left_dense) == CFG.n_layers  # decoder cross-attention stays dense
    assert all(".cross" in s for s in rep.left_dense)


def test_factorize_does_not_touch_the_source_and_saves(tmp_path):
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    new, rep = factorize(m, 4)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])
    assert rep.params_after < rep.params_before and rep.param_saving > 0
    assert rep.flops_lowrank < rep.flops_dense
    assert not rep.warnings
    # biases are copies, not shared Parameters
    assert new.stack.blocks[0].mixer.q.D.bias.data_ptr() != m.stack.blocks[0].mixer.q.bias.data_ptr()
    # the converted model saves and loads with identical outputs
    x = _ids()
    save_model(new, tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    assert loaded.cfg == new.cfg
    torch.testing.assert_close(loaded(x), new(x), atol=0, rtol=0)
    assert "| linear |" in rep.table() and rep.to_dict()["params_before"] == rep.params_before


def test_report_hand_values():
    _, rep = factorize(_model(), 4, which="ffn")
    up = next(r for r in rep.layers if r.name.endswith("ffn.up"))
    assert (up.in_features, up.out_features, up.rank, up.limit_rank) == (16, 48, 4, 12.0)
    assert (up.params_dense, up.params_lowrank) == (16 * 48 + 48, 4 * 64 + 48)
    assert (up.flops_dense, up.flops_lowrank) == (2 * 16 * 48, 2 * 4 * 64)


def test_skip_unprofitable_leaves_linears_dense():
    """auto_fact's rule: linears with r >= in*out/(in+out) are left as they are."""
    m = _model()
    # rank 10: >= limit 8 for the 16x16 projections (kept), < limit 12 for the 16x48 FFN linears
    new, rep = factorize(m, 10, skip_unprofitable=True)
    blk, old = new.stack.blocks[0], m.stack.blocks[0]
    assert type(blk.mixer.q) is nn.Linear and torch.equal(blk.mixer.q.weight, old.mixer.q.weight)
    assert isinstance(blk.ffn.up, LowRankLinear) and blk.ffn.up.rank == 10
    assert not rep.warnings
    kept = [r for r in rep.layers if r.kept_dense]
    assert len(kept) == 4 * CFG.n_layers and all(r.params_lowrank == r.params_dense for r in kept)
    x = _ids()
    _, rep_full = _quiet_factorize(m, 16, skip_unprofitable=True)  # nothing saves: all dense
    assert all(r.kept_dense for r in rep_full.layers)
    new_full, _ = _quiet_factorize(m, 16, skip_unprofitable=True)
    torch.testing.assert_close(new_full(x), m(x), atol=0, rtol=0)


def test_unsupported_parts_and_which():
    kv = _model(CFG.replace(layers=[LayerSpec(attention="kv")]))
    with pytest.raises(ValueError, match="no low-rank version"):
        factorize(kv, 4)
    new, rep = factorize(kv, 4, which="ffn")
    assert new.cfg.layers[0].attention == "kv" and new.cfg.layers[0].ffn == "lowrank-mlp"
    with pytest.raises(ValueError, match="which"):
        factorize(_model(), 4, which="both")
    with pytest.raises((ValueError, TypeError), match="skip_unprofitable"):
        build_model(CFG.replace(layers=[LayerSpec(ffn="lowrank-mlp",
                                                  ffn_options={"skip_unprofitable": "yes"})]))


def test_low_rank_by_design_trains():
    """Factorisation by design: a lowrank model built by config takes a gradient step."""
    torch.manual_seed(0)
    m = build_model(lowrank_config(CFG, 0.5))
    x = _ids(4, 12)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    losses = []
    for _ in range(5):
        logits = m(x[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, CFG.vocab_size), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_init_matches_the_dense_std():
    """From scratch, each LED product D E has the std the dense layer would get (init_std, and
    init_std / sqrt(2L) for the residual projections o / down), not init_std^2 sqrt(r)."""
    cfg = ModelConfig(vocab_size=37, d_model=256, n_layers=2, n_heads=4, d_ff=1024, max_seq_len=32,
                      init_std=0.02)
    torch.manual_seed(0)
    m = build_model(lowrank_config(cfg, 0.5))
    leds = {n: mod for n, mod in m.named_modules() if isinstance(mod, LowRankLinear)}
    assert leds
    for name, led in leds.items():
        want = 0.02 / (math.sqrt(4) if name.endswith((".o", ".down")) else 1.0)
        got = led.weight.std().item()
        assert abs(got - want) < 0.1 * want, (name, got, want)
