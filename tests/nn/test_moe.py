"""Mixture-of-experts FFN (``nn/ffn/moe.py``): routing invariants, reductions to dense FFNs, a
hand-computed routing case, the auxiliary loss, gradients, causality policy and parameter counts
(Brainformers, arXiv 2306.00008; expert choice, arXiv 2202.09368; GShard / Switch top-k)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from formers.nn import LayerSpec, ModelConfig, build_model, count_params
from formers.nn.context import Context
from formers.nn.ffn.mlp import MLP
from formers.nn.ffn.moe import (
    MoE, active_params, aux_loss, expert_params, moe_layers, moe_param_counts, moe_stats,
)
from formers.nn.presets import apply_preset

ENC = ModelConfig(arch="encoder", vocab_size=31, d_model=8, n_layers=2, n_heads=2, d_ff=16,
                  max_seq_len=64)
DEC = ENC.replace(arch="decoder")


def ctx(t: int, causal: bool = False, key_mask=None, capture=None) -> Context:
    return Context(positions=torch.arange(t), causal=causal, key_mask=key_mask, capture=capture)


def moe(cfg=ENC, seed=0, **kw) -> MoE:
    torch.manual_seed(seed)
    return MoE(cfg, **kw)


def run(m: MoE, x, **c):
    cap: dict = {}
    out = m(x, ctx(x.shape[1], capture=cap, **c))
    return out, cap


# ------------------------------------------------------------------------ expert choice
@pytest.mark.parametrize("cf,t", [(1.0, 16), (2.0, 16), (1.0, 13), (0.5, 7)])
def test_expert_choice_every_expert_gets_exactly_capacity(cf, t):
    m = moe(routing="expert_choice", n_experts=4, capacity_factor=cf)
    x = torch.randn(3, t, 8)
    out, cap = run(m, x)
    c = min(t, max(1, math.ceil(t * cf / 4)))
    assert m.capacity(t) == c
    gates, probs = cap["layer0.moe.gates"], cap["layer0.moe.probs"]
    chosen = gates > 0
    assert (chosen.sum(1) == c).all()                     # per sequence, per expert: c tokens
    assert (m.last_stats["tokens_per_expert"] == 3 * c).all()
    assert ((chosen.sum(-1) >= 0) & (chosen.sum(-1) <= 4)).all()  # experts per token in [0, E]
    torch.testing.assert_close(gates[chosen], probs[chosen])      # gates = router softmax values
    # each expert's chosen tokens are its top-c probabilities
    for e in range(4):
        kth = probs[..., e].topk(c, dim=1).values[:, -1:]
        assert (probs[..., e][chosen[..., e]].view(3, c) >= kth).all()
    assert m.last_stats["dropped"] == 0
    assert m.last_stats["unrouted"] == (chosen.sum(-1) == 0).sum()
    assert out.shape == x.shape and float(aux_loss(m)) == 0.0


def test_expert_choice_unchosen_tokens_get_zero():
    m = moe(routing="expert_choice", n_experts=4, capacity_factor=0.5)
    x = torch.randn(2, 16, 8)
    out, cap = run(m, x)
    none = cap["layer0.moe.gates"].sum(-1) == 0
    assert none.any() and (out[none] == 0).all() and (out[~none] != 0).any()


def test_expert_choice_padding_is_ignored():
    m = moe(routing="expert_choice", n_experts=4, capacity_factor=1.0)
    x = torch.randn(2, 10, 8)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    y = x.clone()
    y[~mask] = torch.randn_like(y[~mask]) * 5
    a, cap = run(m, x, key_mask=mask)
    b, _ = run(m, y, key_mask=mask)
    torch.testing.assert_close(a[mask], b[mask], atol=0, rtol=0)
    assert (cap["layer0.moe.gates"][~mask] == 0).all()


def test_expert_choice_batch_group_routes_over_all_tokens():
    m = moe(routing="expert_choice", n_experts=4, capacity_factor=1.0, group="batch")
    out, cap = run(m, torch.randn(3, 8, 8))
    assert (cap["layer0.moe.gates"].gt(0).sum(dim=(0, 1)) == 3 * 8 // 4).all()


# ------------------------------------------------------------------------- token choice
@pytest.mark.parametrize("k,normalize", [(1, None), (2, None), (3, True), (2, False)])
def test_token_choice_k_gates_per_token(k, normalize):
    m = moe(routing="top_k", n_experts=4, top_k=k, normalize=normalize)
    out, cap = run(m, torch.randn(2, 12, 8))
    gates, probs = cap["layer0.moe.gates"], cap["layer0.moe.probs"]
    assert ((gates > 0).sum(-1) == k).all()
    topk = probs.topk(k, dim=-1).values
    norm = k > 1 if normalize is None else normalize
    want = torch.ones(2, 12) if norm else topk.sum(-1)  # GShard renormalises; Switch top-1 raw p
    torch.testing.assert_close(gates.sum(-1), want)
    assert m.last_stats["dropped"] == 0 and m.last_stats["unrouted"] == 0  # dropless
    assert int(m.last_stats["tokens_per_expert"].sum()) == 2 * 12 * k


def _skewed(m: MoE, expert: int = 0) -> MoE:
    with torch.no_grad():
        m.router.weight.zero_()
        m.router.weight[expert, 0] = 10.0  # x[..., 0] > 0 sends the token to ``expert``
    return m


def test_capacity_overflow_drops_in_token_order_and_counts():
    m = _skewed(moe(routing="top_k", n_experts=4, top_k=1, capacity_factor=1.0))
    x = torch.randn(1, 8, 8)
    x[..., 0] = 1.0 + x[..., 0].abs()  # every token prefers expert 0
    out, cap = run(m, x)
    c = math.ceil(1 * 8 * 1.0 / 4)
    assert m.capacity(8) == c == 2
    assert m.last_stats["tokens_per_expert"].tolist() == [2, 0, 0, 0]
    assert int(m.last_stats["dropped"]) == 6 and int(m.last_stats["unrouted"]) == 6
    assert (out[0, 2:] == 0).all() and (out[0, :2] != 0).all()  # first tokens win the slots
    assert (cap["layer0.moe.gates"][0, 2:] == 0).all()


def test_second_choices_come_after_all_first_choices():
    """GShard priority: with capacity 2 per expert, token 0's second choice (expert 1) loses its
    slot to the first choices of tokens 1 and 2."""
    torch.manual_seed(0)
    m = moe(routing="top_k", n_experts=2, top_k=2, capacity_factor=0.5)
    with torch.no_grad():
        m.router.weight.copy_(torch.zeros(2, 8))
        m.router.weight[0, 0], m.router.weight[1, 1] = 5.0, 5.0
    x = torch.zeros(1, 4, 8)
    x[0, 0, 0] = 1  # prefers expert 0
    x[0, 1:, 1] = 1  # prefer expert 1
    assert m.capacity(4) == 2
    _, cap = run(m, x)
    g = cap["layer0.moe.gates"][0] > 0
    assert g[0].tolist() == [True, False]                 # its second choice (expert 1) dropped
    assert g[:, 1].tolist() == [False, True, True, False]  # expert 1: first choices of 1, 2
    assert g[:, 0].tolist() == [True, True, False, False]  # expert 0: t0 first, then t1 second
    assert int(m.last_stats["dropped"]) == 4  # t3 first, t0, t2, t3 second choices


def test_token_choice_padding_takes_no_capacity():
    m = _skewed(moe(routing="top_k", n_experts=4, top_k=1, capacity_factor=1.0))
    x = torch.randn(1, 8, 8)
    x[..., 0] = 1.0 + x[..., 0].abs()
    mask = torch.ones(1, 8, dtype=torch.bool)
    mask[0, :4] = False  # the first four are padding: real tokens 4, 5 get the two slots
    out, _ = run(m, x, key_mask=mask)
    assert (out[0, 4:6] != 0).all() and (out[0, 6:] == 0).all() and (out[0, :4] == 0).all()
    assert int(m.last_stats["dropped"]) == 2


def _dense_mixture(m: MoE, x: torch.Tensor) -> torch.Tensor:
    """An independent implementation: every expert on every token, weighted by the top-k gates."""
    probs = torch.softmax(m.router(x), -1)
    v, i = probs.topk(m.top_k, -1)
    if m.normalize:
        v = v / v.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for e in range(m.n_experts):
        w1, w2 = m.up.weight[e], m.down.weight[e]
        b1 = m.up.bias.view(m.n_experts, -1)[e]
        b2 = m.down.bias.view(m.n_experts, -1)[e]
        y = F.gelu(x @ w1 + b1, approximate="tanh") @ w2 + b2
        gate = (v * (i == e)).sum(-1, keepdim=True)
        out = out + gate * y
    return out


@pytest.mark.parametrize("cf", [None, 4.0])
def test_top2_with_full_capacity_equals_dense_mixture(cf):
    m = moe(routing="top_k", n_experts=4, top_k=2, capacity_factor=cf)
    x = torch.randn(2, 9, 8)
    torch.testing.assert_close(m(x), _dense_mixture(m, x), atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- reductions
@pytest.mark.parametrize("opts", [
    {"routing": "expert_choice", "capacity_factor": 1.0},
    {"routing": "top_k", "top_k": 1},
    {"routing": "top_k", "top_k": 1, "capacity_factor": 1.0},
])
def test_one_expert_full_capacity_is_the_dense_ffn(opts):
    m = moe(n_experts=1, **opts)
    dense = MLP(ENC)
    with torch.no_grad():
        dense.up.weight.copy_(m.up.weight[0].T)
        dense.up.bias.copy_(torch.randn(16))
        m.up.bias.copy_(dense.up.bias)
        dense.down.weight.copy_(m.down.weight[0].T)
        dense.down.bias.copy_(torch.randn(8))
        m.down.bias.copy_(dense.down.bias)
    x = torch.randn(3, 11, 8)
    torch.testing.assert_close(m(x), dense(x), atol=1e-6, rtol=1e-5)


def test_hand_computed_routing():
    """d = 2, E = 2, n = 3; router = identity, expert_e(x) = s_e relu(x) with s = (1, 10).
    probs: t0 (2, 0) -> (e^2, 1)/(e^2 + 1); t1 (0, 1) -> (1, e)/(1 + e); t2 (1, .5) ->
    (e^.5, 1)/(e^.5 + 1). Expert choice, c = ceil(3 / 2) = 2: expert 0 takes t0, t2; expert 1
    takes t1, t2. Top-1 (raw p): t0 -> e0, t1 -> e1, t2 -> e0."""
    cfg = ModelConfig(arch="encoder", d_model=2, n_heads=1, d_ff=2, bias=False)
    x = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 0.5]]])
    p0 = math.exp(2) / (math.exp(2) + 1)
    p1 = math.e / (1 + math.e)
    p2 = math.exp(0.5) / (math.exp(0.5) + 1)
    want = {
        "expert_choice": [[2 * p0, 0.0], [0.0, 10 * p1],
                          [p2 + 10 * (1 - p2), 0.5 * p2 + 5 * (1 - p2)]],
        "top_k": [[2 * p0, 0.0], [0.0, 10 * p1], [p2, 0.5 * p2]],
    }
    for routing, expected in want.items():
        m = MoE(cfg, n_experts=2, routing=routing, top_k=1, activation="relu")
        with torch.no_grad():
            m.router.weight.copy_(torch.eye(2))
            m.up.weight.copy_(torch.eye(2).expand(2, 2, 2))
            m.down.weight.copy_(torch.stack([torch.eye(2), 10 * torch.eye(2)]))
        torch.testing.assert_close(m(x)[0], torch.tensor(expected), atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------- aux loss, gradients
def test_aux_loss_is_one_at_uniform_routing_and_larger_when_skewed():
    m = moe(routing="top_k", n_experts=4, top_k=2, aux_loss_weight=1.0)
    with torch.no_grad():
        m.router.weight.zero_()
    m(torch.randn(2, 16, 8))
    torch.testing.assert_close(m.last_aux_loss, torch.tensor(1.0))
    _skewed(m)
    x = torch.randn(2, 16, 8)
    x[..., 0] = x[..., 0].abs() + 1
    m(x)
    assert float(m.last_aux_loss.detach()) > 1.5
    m.aux_loss_weight = 0.01
    m(x)
    assert 0.015 < float(m.last_aux_loss.detach()) < 0.04 + 1e-6


def test_aux_loss_helper_sums_layers_and_trains_the_router():
    cfg = apply_preset("moe", DEC.replace(n_layers=4))
    torch.manual_seed(0)
    model = build_model(cfg)
    ids = torch.randint(0, 31, (2, 10))
    model(ids)
    layers = moe_layers(model)
    assert len(layers) == 2
    total = aux_loss(model)
    torch.testing.assert_close(total, layers[0].last_aux_loss + layers[1].last_aux_loss)
    total.backward()
    for m in layers:
        assert m.router.weight.grad is not None and m.router.weight.grad.abs().sum() > 0
    assert float(aux_loss(build_model(DEC))) == 0.0  # no MoE layer: zero
    assert len(moe_stats(model)) == 2


@pytest.mark.parametrize("routing", ["expert_choice", "top_k"])
def test_task_loss_gradient_reaches_router(routing):
    m = moe(routing=routing, n_experts=4)
    x = torch.randn(2, 8, 8, requires_grad=True)
    m(x).pow(2).sum().backward()
    assert m.router.weight.grad.abs().sum() > 0
    assert m.up.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


# ------------------------------------------------------------------------------- causality
def test_noncausal_routing_is_refused_in_causal_stacks():
    for opts in ({"routing": "expert_choice"}, {"routing": "top_k", "capacity_factor": 2.0}):
        for arch in ("decoder", "encoder-decoder"):
            cfg = ENC.replace(arch=arch, layers=[LayerSpec(ffn="moe", ffn_options=opts)])
            with pytest.raises(ValueError, match="not causal"):
                build_model(cfg)
        m = moe(**opts)  # an encoder-built layer refuses a causal context at run time
        with pytest.raises(ValueError, match="not causal"):
            m(torch.randn(1, 4, 8), ctx(4, causal=True))


def test_expert_choice_leaks_the_future_when_allowed():
    """Why it is refused: with noncausal_ok the decoder's earlier outputs depend on later tokens."""
    cfg = DEC.replace(init_std=0.3, layers=[LayerSpec(ffn="moe", ffn_options={
        "routing": "expert_choice", "n_experts": 4, "capacity_factor": 0.5, "noncausal_ok": True})])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ids = torch.randint(0, 31, (4, 12))
    other = ids.clone()
    other[:, -1] = (other[:, -1] + 7) % 31
    with torch.no_grad():
        diff = (model(ids) - model(other))[:, :-1].abs().max()
    assert diff > 1e-4


@torch.no_grad()
def test_dropless_top_k_decoder_is_causal_and_cache_exact():
    cfg = DEC.replace(layers=[LayerSpec(ffn="moe", ffn_options={"n_experts": 4, "top_k": 2})])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ids = torch.randint(0, 31, (2, 9))
    full = model(ids)
    other = ids.clone()
    other[:, 5] = (other[:, 5] + 3) % 31
    torch.testing.assert_close(model(other)[:, :5], full[:, :5], atol=1e-6, rtol=0)
    cache = model.new_cache()
    inc = torch.cat([model(ids[:, :4], cache=cache)] + [model(ids[:, i:i + 1], cache=cache)
                                                        for i in range(4, 9)], 1)
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=0)


def test_capture_records_routing():
    cfg = apply_preset("moe", DEC)
    model = build_model(cfg)
    cap: dict = {}
    model(torch.randint(0, 31, (2, 5)), capture=cap)
    assert cap["layer1.moe.gates"].shape == (2, 5, 8) and cap["layer1.moe.probs"].shape == (2, 5, 8)
    assert {"layer1.moe.tokens_per_expert", "layer1.moe.dropped", "layer1.moe.router_entropy"} <= set(cap)
    ent = cap["layer1.moe.router_entropy"]
    assert 0 <= float(ent) <= math.log(8) + 1e-6


def test_bad_options():
    for kw, msg in [({"n_experts": 0}, "n_experts"), ({"routing": "hash"}, "routing"),
                    ({"top_k": 9}, "top_k"), ({"capacity_factor": 0}, "capacity_factor"),
                    ({"activation": "tanh"}, "activation"), ({"group": "x"}, "group")]:
        with pytest.raises(ValueError, match=msg):
            MoE(ENC, **kw)


@pytest.mark.parametrize("act", ["relu", "swiglu", "geglu"])
def test_activations_run(act):
    m = moe(activation=act, n_experts=2)
    assert m(torch.randn(1, 3, 8)).shape == (1, 3, 8)
    assert sum(p.numel() for p in m.parameters()) == moe_param_counts(8, 16, 2, activation=act)["total"]


# ---------------------------------------------------------------------------- parameter counts
def test_param_counts_analytic():
    d, h, e = 8, 16, 4
    dense = d * h + h * d + h + d
    assert expert_params(d, h) == dense == sum(p.numel() for p in MLP(ENC).parameters())
    assert expert_params(d, h, "swiglu", bias=False) == 3 * d * h
    for routing, kw, per in [("top_k", {"top_k": 2}, 2), ("top_k", {"top_k": 1}, 1),
                             ("expert_choice", {"capacity_factor": 1.0}, 1),
                             ("expert_choice", {"capacity_factor": 2.0}, 2)]:
        m = moe(routing=routing, n_experts=e, **kw)
        c = m.param_counts(d)
        assert c["total"] == sum(p.numel() for p in m.parameters()) == d * e + e * dense
        assert c["active"] == d * e + per * dense
        assert c["flops_per_token"] == 2 * (d * e + per * 2 * d * h)
        assert c["dense_flops_per_token"] == 2 * 2 * d * h


def test_active_params_of_a_model():
    cfg = apply_preset("moe", DEC.replace(n_layers=4))
    model = build_model(cfg)
    dense = expert_params(8, 16)
    assert active_params(model) == count_params(model) - 2 * (8 - 2) * dense
    assert active_params(build_model(DEC)) == count_params(build_model(DEC))


def test_moe_preset_alternates():
    cfg = apply_preset("moe", DEC.replace(n_layers=4))
    assert [s.ffn for s in cfg.layers] == ["mlp", "moe", "mlp", "moe"]
    assert all(s.attention == "softmax" for s in cfg.layers)
    model = build_model(apply_preset("moe", DEC.replace(n_layers=3)))
    assert [type(b.ffn).__name__ for b in model.stack.blocks] == ["MLP", "MoE", "MLP"]
