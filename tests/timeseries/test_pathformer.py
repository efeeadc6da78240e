"""Pathformer (arXiv 2402.05956): router, balance loss, dual attention, aggregator, shapes, training."""

from __future__ import annotations

import math

import pytest
import torch

from formers import registry
from formers.timeseries.forecaster import build_forecaster, config_from_dict
from formers.timeseries.pathformer import (
    AdaptiveMultiScaleBlock,
    DualAttentionLayer,
    MultiScaleRouter,
    Pathformer,
    PathformerConfig,
    TrendDecomposition,
    cv_squared,
    etth1_config,
    seasonality,
)


def small_cfg(**kw) -> PathformerConfig:
    base = dict(look_back=24, horizon=8, n_channels=3, patch_sizes=[[12, 6, 4, 2], [8, 3, 6]], k=2,
                d_model=4, d_ff=16, n_frequencies=2, trend_kernels=[2, 3])
    base.update(kw)
    return PathformerConfig(**base)


def random_router(n_experts=4, k=2, look_back=24, channels=3) -> MultiScaleRouter:
    r = MultiScaleRouter(look_back, channels, n_experts, k, noisy_gating=True, noise_epsilon=1e-2,
                         n_frequencies=2, trend_kernels=[2, 3])
    with torch.no_grad():  # the reference starts these at zero (all logits tie); spread them out
        r.w_gate.normal_(0, 1.0)
        r.w_noise.normal_(0, 0.3)
    return r


# ---------------------------------------------------------------- router
@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("training", [True, False])
def test_router_gates_have_k_nonzeros_summing_to_one(k, training):
    r = random_router(n_experts=4, k=k).train(training)
    gates, load = r(torch.randn(32, 24, 3, 4))
    assert gates.shape == (32, 4) and load.shape == (4,)
    assert torch.equal((gates > 0).sum(1), torch.full((32,), k))
    torch.testing.assert_close(gates.sum(1), torch.ones(32))
    assert (gates >= 0).all()


def test_router_gates_are_softmax_of_top_k_clean_logits_in_eval():
    r = random_router(n_experts=5, k=3).eval()
    x = torch.randn(6, 24, 3, 4)
    clean, noisy, std = r.logits(x)
    assert noisy is None and std is None
    gates, load = r(x)
    for b in range(6):
        top = clean[b].topk(3)
        expect = torch.zeros(5)
        expect[top.indices] = torch.softmax(top.values, 0)
        torch.testing.assert_close(gates[b], expect)
    torch.testing.assert_close(load, (gates > 0).sum(0).float())


def test_router_noise_only_in_training():
    r = random_router()
    x = torch.randn(16, 24, 3, 4)
    r.eval()
    g1, _ = r(x)
    g2, _ = r(x)
    assert torch.equal(g1, g2)
    r.train()
    torch.manual_seed(1)
    t1, l1 = r(x)
    torch.manual_seed(2)
    t2, _ = r(x)
    assert not torch.equal(t1, t2)  # fresh noise changes the gates in training
    # training load is the smooth estimate (not integer counts) and carries gradient to w_gate
    assert not torch.equal(l1, l1.round())
    cv_squared(l1).backward()
    assert r.w_gate.grad is not None and r.w_gate.grad.abs().sum() > 0
    # with noisy_gating off, training is deterministic too
    r.noisy_gating = False
    assert torch.equal(r(x)[0], r(x)[0])


def test_router_load_probability_matches_monte_carlo():
    """The smooth load is E[#samples routing to e] under the gate noise (Shazeer et al. 2017)."""
    r = random_router(n_experts=4, k=2).train()
    x = torch.randn(3, 24, 3, 4)
    clean, noisy, std = r.logits(x)
    top_vals = noisy.topk(3, dim=1).values
    p = r._prob_in_top_k(clean, noisy, std, top_vals)
    # For sample b and expert e, resample only e's noise; the others keep their noisy logits.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, generator=g)
    for b in range(3):
        for e in range(4):
            others = torch.cat([noisy[b, :e], noisy[b, e + 1:]]).detach()
            kth_other = others.topk(2).values[-1]
            mc = ((clean[b, e].detach() + z * std[b, e].detach()) > kth_other).float().mean()
            assert abs(mc.item() - p[b, e].item()) < 0.015


# ---------------------------------------------------------------- balance loss
def test_balance_loss_zero_at_uniform_importance_and_hand_value_otherwise():
    assert cv_squared(torch.full((4,), 2.5)).item() == 0.0
    assert cv_squared(torch.tensor([7.0])).item() == 0.0  # one expert: no imbalance
    # importance (3, 1): mean 2, unbiased var 2 -> cv^2 = 0.5
    torch.testing.assert_close(cv_squared(torch.tensor([3.0, 1.0])), torch.tensor(0.5))
    block = AdaptiveMultiScaleBlock(small_cfg(), [12, 6, 4, 2])
    uniform = torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    load = (uniform > 0).sum(0).float()
    assert block.balance_loss(uniform, load).item() == 0.0
    skewed = torch.tensor([[0.75, 0.25, 0, 0], [0.75, 0.25, 0, 0]])
    imp = torch.tensor([1.5, 0.5, 0.0, 0.0])
    expect = 1e-2 * (imp.var() / imp.mean() ** 2 + cv_squared((skewed > 0).sum(0).float()))
    torch.testing.assert_close(block.balance_loss(skewed, (skewed > 0).sum(0).float()), expect)


def test_aux_loss_is_weighted_sum_over_layers_of_last_forward():
    m = Pathformer(small_cfg(balance_coef=0.05)).eval()
    assert m.aux_loss().item() == 0.0
    m(torch.randn(5, 24, 3))
    expect = 0.0
    for g in m.last_gates():
        expect += 0.05 * (cv_squared(g.sum(0)) + cv_squared((g > 0).sum(0).float()))
    torch.testing.assert_close(m.aux_loss(), torch.as_tensor(expect))
    m.train()
    m(torch.randn(5, 24, 3))
    assert m.aux_loss().requires_grad


# ---------------------------------------------------------------- config errors
def test_patch_size_must_divide_look_back():
    with pytest.raises(ValueError, match=r"patch size 5 does not divide look_back = 96"):
        PathformerConfig(patch_sizes=[[16, 12], [8, 5]], k=2)
    with pytest.raises(ValueError, match=r"patch_sizes\[1\]"):
        PathformerConfig(patch_sizes=[[16, 12], [8, 5]], k=2)


@pytest.mark.parametrize("kw,match", [
    (dict(k=5), r"k = 5 exceeds"),
    (dict(k=0), r"k must be > 0"),
    (dict(d_model=5), r"d_model = 5 is not divisible by intra_heads"),
    (dict(patch_sizes=[]), r"patch_sizes"),
    (dict(patch_sizes=[[16], []], k=1), r"patch_sizes\[1\] is empty"),
    (dict(patch_sizes=[16, 8], k=1), r"patch_sizes\[0\] = 16 is not a list"),
    (dict(n_frequencies=48), r"n_frequencies = 48"),
    (dict(inter_layout="mixed"), r"inter_layout"),
    (dict(combine="max"), r"combine"),
    (dict(dropout=1.0), r"dropout"),
])
def test_config_errors_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        PathformerConfig(**kw)


def test_config_round_trip_and_registry_entry():
    cfg = small_cfg(inter_layout="reference")
    assert PathformerConfig.from_dict(cfg.to_dict()) == cfg
    entry = registry.get("forecaster", "pathformer")
    assert entry.obj is Pathformer and entry.config is PathformerConfig
    assert entry.paper is not None and entry.paper.arxiv == "2402.05956"
    built = build_forecaster(config_from_dict(cfg.to_dict()))
    assert isinstance(built, Pathformer) and built.cfg == cfg
    with pytest.raises(ValueError, match="unknown field"):
        PathformerConfig.from_dict({**cfg.to_dict(), "patch_size": 4})


# ---------------------------------------------------------------- dual attention
def _explicit_intra(layer: DualAttentionLayer, x: torch.Tensor) -> torch.Tensor:
    """Intra-patch attention with explicit loops over patches, channels and heads."""
    B, L, C, d = x.shape
    P, n, h = layer.patch, layer.n_patches, layer.heads
    hd = d // h
    w, b = layer.kv_weights()
    q_all = layer.queries()
    z = torch.zeros(B, n, C, d)
    for i in range(n):
        patch = x[:, i * P:(i + 1) * P]  # (B, P, C, d)
        for c in range(C):
            q = layer.query_seed[i, c] @ layer.query_w[i] + layer.query_b[i]  # (d,)
            torch.testing.assert_close(q, q_all[i, c])
            tokens = torch.cat([q.expand(B, 1, d), patch[:, :, c]], dim=1)  # (B, P+1, d)
            keys = tokens @ w[0, c] + b[0, c]
            vals = tokens @ w[1, c] + b[1, c]
            heads = []
            for j in range(h):
                s = slice(j * hd, (j + 1) * hd)
                scores = (keys[:, :, s] @ q[s]) / math.sqrt(hd)  # (B, P+1)
                heads.append(torch.einsum("bt,btk->bk", torch.softmax(scores, dim=1), vals[:, :, s]))
            z[:, i, c] = layer.intra_mlp(torch.cat(heads, dim=-1))
    W, bias = layer.intra_to_time.weight, layer.intra_to_time.bias  # (L, n), (L,)
    return torch.einsum("tn,bncd->btcd", W, z) + bias[None, :, None, None]


@pytest.mark.parametrize("look_back,patch", [(8, 4), (12, 3)])
def test_intra_patch_path_equals_explicit_loop(look_back, patch):
    cfg = small_cfg(look_back=look_back, patch_sizes=[[patch]], k=1, n_frequencies=1)
    layer = DualAttentionLayer(cfg, patch).eval()
    x = torch.randn(3, look_back, 3, 4)
    torch.testing.assert_close(layer.intra(x), _explicit_intra(layer, x), rtol=1e-5, atol=1e-5)


def test_inter_patch_layout_paper_keeps_channels_apart_reference_mixes_them():
    cfg = small_cfg(look_back=12, patch_sizes=[[4]], k=1, n_frequencies=1)
    x = torch.randn(2, 12, 3, 4)
    x2 = x.clone()
    x2[:, :, 2] += torch.randn(2, 12, 4)  # perturb channel 2 only
    torch.manual_seed(0)
    paper = DualAttentionLayer(cfg, 4).eval()
    torch.manual_seed(0)
    ref = DualAttentionLayer(cfg.replace(inter_layout="reference"), 4).eval()
    a, b = paper.inter(x), paper.inter(x2)
    torch.testing.assert_close(a[:, :, :2], b[:, :, :2])  # channels 0 and 1 unaffected
    assert (a[:, :, 2] - b[:, :, 2]).abs().max() > 1e-4
    ra, rb = ref.inter(x), ref.inter(x2)
    assert (ra[:, :, :2] - rb[:, :, :2]).abs().max() > 1e-4  # the reference reshape leaks channel 2
    # the two layouts hold the same numbers, only placed differently: reference = raw reshape
    B, L, C, d = x.shape
    n, P = 3, 4
    torch.testing.assert_close(ra, a.view(B, n, P, C, d).permute(0, 3, 1, 2, 4).reshape(B, L, C, d))


def test_single_channel_layouts_agree():
    cfg = small_cfg(n_channels=1)
    x = torch.randn(4, 24, 1)
    torch.manual_seed(3)
    a = Pathformer(cfg).eval()
    torch.manual_seed(3)
    b = Pathformer(cfg.replace(inter_layout="reference")).eval()
    torch.testing.assert_close(a(x), b(x))


# ---------------------------------------------------------------- decomposition
def test_seasonality_keeps_the_strongest_frequencies_without_the_mean():
    t = torch.arange(48, dtype=torch.float32)
    strong = 2.0 * torch.sin(2 * math.pi * 4 * t / 48 + 0.3)
    mid = 1.0 * torch.cos(2 * math.pi * 7 * t / 48)
    weak = 0.2 * torch.sin(2 * math.pi * 11 * t / 48)
    x = (5.0 + strong + mid + weak).view(1, 48, 1)
    torch.testing.assert_close(seasonality(x, 2), (strong + mid).view(1, 48, 1), atol=1e-4, rtol=0)
    torch.testing.assert_close(seasonality(x, 1), strong.view(1, 48, 1), atol=1e-4, rtol=0)


def test_trend_moving_average_by_hand():
    td = TrendDecomposition([4])
    x = torch.arange(6, dtype=torch.float32).view(1, 6, 1)
    # kernel 4: two copies of x[0] in front, one copy of x[-1] at the end
    padded = [0, 0, 0, 1, 2, 3, 4, 5, 5]
    expect = torch.tensor([sum(padded[i:i + 4]) / 4 for i in range(6)]).view(1, 6, 1)
    torch.testing.assert_close(td.moving_average(x, 4), expect)
    td3 = TrendDecomposition([2, 3])
    const = torch.full((2, 10, 3), 1.7)
    torch.testing.assert_close(td3(const), const)  # any mix of averages of a constant is that constant


# ---------------------------------------------------------------- aggregator
@pytest.mark.parametrize("combine", ["sum", "reference_log"])
@pytest.mark.parametrize("residual", [True, False])
def test_sparse_dispatch_equals_dense_weighted_combination(combine, residual):
    cfg = small_cfg(combine=combine, residual_connection=residual)
    block = AdaptiveMultiScaleBlock(cfg, [12, 6, 4, 2]).eval()
    with torch.no_grad():
        block.router.w_gate.normal_()
    x = torch.randn(7, 24, 3, 4)
    out, _ = block(x)
    gates, _ = block.router(x)
    ys = torch.stack([e(x) for e in block.experts], dim=1)  # every expert on every sample
    g = gates.view(7, 4, 1, 1, 1)
    dense = (g * ys).sum(1) if combine == "sum" else (g * ys.exp()).sum(1).log()
    if residual:
        dense = dense + x
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- model
@pytest.mark.parametrize("horizon", [96, 336, 720])
def test_output_shape_published_configs(horizon):
    cfg = etth1_config(horizon)
    assert (cfg.k, cfg.residual_connection) == ((2, False) if horizon == 720 else (3, horizon != 336))
    m = Pathformer(cfg)
    y = m(torch.randn(2, 96, 7))
    assert y.shape == (2, horizon, 7) and torch.isfinite(y).all()
    assert m.aux_loss().dim() == 0


def test_wrong_input_shape_is_a_clear_error():
    m = Pathformer(small_cfg())
    with pytest.raises(ValueError, match=r"\(batch, 24, 3\)"):
        m(torch.randn(2, 23, 3))
    with pytest.raises(ValueError, match=r"\(batch, 24, 3\)"):
        m(torch.randn(2, 24, 4))


def test_eval_is_deterministic_and_revin_makes_scale_equivariant():
    m = Pathformer(small_cfg()).eval()
    x = torch.randn(4, 24, 3)
    torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)
    # RevIN: affine changes of each input window pass through to the forecast
    torch.testing.assert_close(m(3.0 * x + 5.0), 3.0 * m(x) + 5.0, rtol=1e-4, atol=1e-4)


def test_training_mode_is_stochastic():
    m = Pathformer(small_cfg(dropout=0.0, ff_dropout=0.0)).train()
    with torch.no_grad():
        for blk in m.blocks:
            blk.router.w_gate.normal_(0, 0.3)
            blk.router.w_noise.normal_(0, 0.3)
    x = torch.randn(4, 24, 3)
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(2)
    b = m(x)
    assert not torch.equal(a, b)  # only the router noise differs


def test_overfits_a_seasonal_series():
    torch.manual_seed(0)
    cfg = small_cfg(n_channels=2, horizon=8)
    m = Pathformer(cfg)
    t = torch.arange(400, dtype=torch.float32)
    series = torch.stack([torch.sin(2 * math.pi * t / 12) + 0.3 * torch.sin(2 * math.pi * t / 5),
                          torch.cos(2 * math.pi * t / 8) + 0.01 * t], dim=1)
    starts = torch.arange(0, 360, 11)
    xs = torch.stack([series[s:s + 24] for s in starts])
    ys = torch.stack([series[s + 24:s + 32] for s in starts])
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    m.train()
    losses = []
    for _ in range(25):
        opt.zero_grad()
        pred = m(xs)
        loss = (pred - ys).abs().mean()
        (loss + m.aux_loss()).backward()
        opt.step()
        losses.append(loss.item())
    m.eval()
    with torch.no_grad():
        final = (m(xs) - ys).abs().mean().item()
    assert final < 0.25 * losses[0], (losses[0], final)
