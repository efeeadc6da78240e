"""ResFormer value residual and SVFormer (arXiv 2410.17897): paper tests from the notes (§2 (d))."""

from __future__ import annotations

import pytest
import torch

from formers import registry
from formers.nn import LayerSpec, ModelConfig, build_model
from formers.nn.attention.softmax import SoftmaxAttention
from formers.nn.cache import FullCache
from formers.nn.context import Context
from formers.nn.presets import apply_preset
from formers.nn.value_residual import ValueResidual


def cfg(**over) -> ModelConfig:
    base = dict(vocab_size=23, d_model=16, n_heads=4, n_layers=4, d_ff=32, max_seq_len=32,
                init_std=0.1, position="rope")
    return ModelConfig(**{**base, **over})


def build(c: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(c).eval()


def ids(b=2, t=9, seed=1):
    return torch.randint(0, 23, (b, t), generator=torch.Generator().manual_seed(seed))


def loss_grads(model, x):
    model.zero_grad(set_to_none=True)
    logits = model(x)
    w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(3))
    (logits * w).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def cached_logits(model, x, pieces=(4, 1, 1, 3)):
    cache, outs, s = model.new_cache(), [], 0
    for n in pieces:
        outs.append(model(x[:, s:s + n], cache=cache))
        s += n
    outs.append(model(x[:, s:], cache=cache))
    return torch.cat(outs, 1), cache


# ------------------------------------------------------------------- 1. neutral mix == vanilla
@pytest.mark.parametrize("mode", ["mix", "learned"])
@pytest.mark.parametrize("arch", ["decoder", "encoder"])
def test_neutral_mix_equals_vanilla(mode, arch):
    plain = build(cfg(arch=arch))
    vr = build(cfg(arch=arch, value_residual=mode, value_lambda_first=0.0, value_lambda_self=1.0))
    x = ids()
    lp, gp = loss_grads(plain, x)
    lv, gv = loss_grads(vr, x)
    torch.testing.assert_close(lv, lp, atol=1e-6, rtol=0)
    for n, g in gp.items():
        torch.testing.assert_close(gv[n], g, atol=1e-6, rtol=1e-5, msg=lambda m: f"{n}: {m}")


# ------------------------------------------------------------------- 2. layer 1 unchanged
@pytest.mark.parametrize("mode,l1,l2", [("mix", 0.5, 0.5), ("mix", 2.0, 1.0), ("learned", 0.3, 0.9),
                                        ("shared", 0.5, 0.5)])
def test_first_layer_unchanged(mode, l1, l2):
    plain = build(cfg())
    vr = build(cfg(value_residual=mode, value_lambda_first=l1, value_lambda_self=l2))
    if mode == "shared":  # fewer value projections -> different init stream; copy the shared weights
        vr.load_state_dict(plain.state_dict(), strict=False)
    cp, cv = {}, {}
    with torch.no_grad():
        plain(ids(), capture=cp)
        vr(ids(), capture=cv)
    torch.testing.assert_close(cv["layer0.resid"], cp["layer0.resid"], atol=0, rtol=0)
    assert not torch.allclose(cv["layer1.resid"], cp["layer1.resid"], atol=1e-4)


# ------------------------------------------------------------------- 3. linearity in the mix
def _mixer_out(attn, x, v1, l1, l2):
    c = cfg(value_residual="mix", value_lambda_first=l1, value_lambda_self=l2)
    ctx = Context(positions=torch.arange(x.shape[1]), causal=True, layer=1,
                  value_residual=ValueResidual(c, c.n_layers), v_first=v1, capture={})
    return attn(x, ctx), ctx.capture


def test_mix_is_linear_before_attention():
    torch.manual_seed(0)
    c = cfg(position="none", n_kv_heads=2)
    attn = SoftmaxAttention(c)
    x = torch.randn(2, 7, 16)
    v1 = torch.randn(2, 2, 7, 4)
    o_b = attn.o.bias
    f = {lam: _mixer_out(attn, x, v1, *lam)[0] for lam in [(0.5, 0.5), (1.0, 0.0), (0.0, 1.0), (2.0, 1.0)]}
    # o(A(l1 V1 + l2 Vn)) - b = l1 (o(A V1) - b) + l2 (o(A Vn) - b)
    torch.testing.assert_close(f[(0.5, 0.5)], 0.5 * f[(1.0, 0.0)] + 0.5 * f[(0.0, 1.0)], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(f[(2.0, 1.0)] - o_b, 2 * (f[(1.0, 0.0)] - o_b) + (f[(0.0, 1.0)] - o_b),
                               atol=1e-5, rtol=1e-5)
    # by hand: 1/2 A V_n + 1/2 A V_1 with the same A (attention weights do not depend on the mix)
    out, cap = _mixer_out(attn, x, v1, 0.5, 0.5)
    a = cap["layer1.attn.weights"]  # (2, 4, 7, 7)
    vn = attn.v(x).view(2, 7, 2, 4).transpose(1, 2)
    rep = lambda t: t.repeat_interleave(2, dim=1)  # noqa: E731  (GQA: 2 query heads per kv head)
    u = 0.5 * a @ rep(vn) + 0.5 * a @ rep(v1)
    torch.testing.assert_close(out, attn.o(u.transpose(1, 2).reshape(2, 7, 16)), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cap["layer1.value_residual.mix"], torch.tensor([0.5, 0.5]))


# ------------------------------------------------------------------- 4. gradient path to W_V^1
@pytest.mark.parametrize("mode", ["mix", "learned", "shared"])
def test_gradient_reaches_first_layer_values_through_later_layers(mode):
    def grad_v1(model):
        with torch.no_grad():  # layer 1's attention output no longer reaches the stream
            model.stack.blocks[0].mixer.o.weight.zero_()
            model.stack.blocks[0].mixer.o.bias.zero_()
        _, g = loss_grads(model, ids())
        return g["stack.blocks.0.mixer.v.weight"]

    assert grad_v1(build(cfg())).abs().sum() == 0
    assert grad_v1(build(cfg(value_residual=mode))).abs().sum() > 0


# ------------------------------------------------------------------- 5. SVFormer
def test_svformer_has_no_later_value_projections_and_equals_resformer_1_0():
    sv = build(cfg(value_residual="shared"))
    names = [n for n, _ in sv.named_parameters()]
    assert "stack.blocks.0.mixer.v.weight" in names
    assert not [n for n in names if ".mixer.v." in n and not n.startswith("stack.blocks.0.")]
    res = build(cfg(value_residual="mix", value_lambda_first=1.0, value_lambda_self=0.0))
    sv.load_state_dict(res.state_dict(), strict=False)
    x = ids()
    ls, gs = loss_grads(sv, x)
    lr, gr = loss_grads(res, x)
    torch.testing.assert_close(ls, lr, atol=1e-6, rtol=0)
    for n, g in gs.items():
        torch.testing.assert_close(g, gr[n], atol=1e-6, rtol=1e-5, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("n_kv", [None, 2, 1])
def test_svformer_cache_stores_values_once(n_kv):
    c = cfg(n_kv_heads=n_kv)
    x = ids(t=12)
    plain, sv = build(c), build(c.replace(value_residual="shared"))
    with torch.no_grad():
        _, cp = cached_logits(plain, x)
        _, cs = cached_logits(sv, x)
    per_tensor = 2 * (n_kv or 4) * 12 * 4 * 4  # batch * kv_heads * len * head_dim * 4 bytes
    L = c.n_layers
    assert cp.nbytes() == 2 * L * per_tensor  # keys and values in every layer
    assert cs.nbytes() == (L + 1) * per_tensor  # keys in every layer, values once
    assert cs.layers[0].v.shape[-1] == 4 and all(lc.v.shape[-1] == 0 for lc in cs.layers[1:])


def test_svformer_cache_positions_must_match_first_layer():
    class Window(FullCache):
        """toy policy: keep the last 3 keys"""

        def update(self, k, v, pos):
            k, v, pos = super().update(k, v, pos)
            self.k, self.v, self.pos = k[:, :, -3:], v[:, :, -3:], pos[-3:]
            return self.k, self.v, self.pos

    registry.register("cache", "_toy_window3")(Window)
    try:
        c = cfg(value_residual="shared", layers=[LayerSpec(cache="full"), LayerSpec(cache="_toy_window3")])
        m = build(c)
        with pytest.raises(ValueError, match="same cache policy"):
            with torch.no_grad():
                cached_logits(m, ids(t=12))
    finally:
        registry.unregister("cache", "_toy_window3")


# ------------------------------------------------------------------- cached decoding, GQA
@pytest.mark.parametrize("n_kv", [None, 2, 1])
@pytest.mark.parametrize("mode", ["mix", "learned", "shared"])
def test_cached_decoding_equals_full_forward(mode, n_kv):
    m = build(cfg(value_residual=mode, n_kv_heads=n_kv, value_lambda_first=0.7, value_lambda_self=0.4))
    if mode == "learned":
        with torch.no_grad():
            for p in m.stack.value_residual.lambdas.values():
                p.add_(torch.randn(2) * 0.3)
    x = ids(t=12)
    with torch.no_grad():
        full = m(x)
        inc, _ = cached_logits(m, x)
    assert full.shape == (2, 12, 23)
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=0)


def test_gqa_shape_mismatch_is_an_error():
    c = cfg(value_residual="mix", n_kv_heads=2)
    rule = ValueResidual(c, c.n_layers)
    ctx = Context(positions=torch.arange(5), layer=0)
    rule(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), ctx.positions, ctx)
    ctx.layer = 1
    with pytest.raises(ValueError, match="n_kv_heads"):
        rule(torch.randn(1, 4, 5, 4), torch.randn(1, 4, 5, 4), ctx.positions, ctx)
    ctx.v_first = None
    with pytest.raises(ValueError, match="no layer-1 values"):
        rule(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), ctx.positions, ctx)


# ------------------------------------------------------------------- learned mix, capture, errors
def test_learned_lambdas_named_trained_and_not_decayed():
    from formers.train.optim import param_groups

    m = build(cfg(value_residual="learned", value_lambda_first=0.25, value_lambda_self=0.75))
    lam = {n: p for n, p in m.named_parameters() if "value_residual.lambdas" in n}
    assert sorted(lam) == [f"stack.value_residual.lambdas.layer{i}" for i in (1, 2, 3)]
    assert all(torch.equal(p.detach(), torch.tensor([0.25, 0.75])) for p in lam.values())
    _, g = loss_grads(m, ids())
    assert all(g[n].abs().sum() > 0 for n in lam)
    decay, no_decay = param_groups(m, 0.1)
    assert set(lam) <= set(no_decay["names"])
    cap = {}
    with torch.no_grad():
        m(ids(), capture=cap)
    torch.testing.assert_close(cap["layer2.value_residual.mix"], torch.tensor([0.25, 0.75]))
    assert "layer0.value_residual.mix" not in cap


def test_unsupported_mixer_and_bad_config_raise():
    class NoVR(SoftmaxAttention):
        """toy mixer that does not opt in to value residual"""

        supports_value_residual = False

    registry.register("attention", "_toy_novr", caps=registry.get("attention", "softmax").caps)(NoVR)
    try:
        with pytest.raises(ValueError, match="does not support value_residual"):
            build_model(cfg(value_residual="mix", layers=[LayerSpec(attention="_toy_novr")]))
        build_model(cfg(layers=[LayerSpec(attention="_toy_novr")]))  # fine without value residual
    finally:
        registry.unregister("attention", "_toy_novr")
    with pytest.raises(ValueError, match="value_residual"):
        cfg(value_residual="sometimes")
    with pytest.raises(ValueError, match="value_lambda_first"):
        cfg(value_lambda_first=float("nan"))
    with pytest.raises(ValueError, match="cross-attention"):
        SoftmaxAttention(cfg(), cross=True, own_values=False)


def test_presets_and_encoder_decoder():
    base = cfg()
    assert apply_preset("value-residual", base).value_residual == "mix"
    assert apply_preset("value-residual-learned", base).value_residual == "learned"
    assert apply_preset("svformer", base).value_residual == "shared"
    for mode in ("mix", "shared"):
        m = build(cfg(arch="encoder-decoder", value_residual=mode, n_kv_heads=2))
        src, tgt = ids(t=5, seed=2), ids(t=7)
        with torch.no_grad():
            mem = m.encode(src)
            full = m.decode(tgt, mem)
            cache = m.new_cache()
            inc = torch.cat([m.decode(tgt[:, :3], mem, cache=cache),
                             m.decode(tgt[:, 3:], mem, cache=cache)], 1)
        torch.testing.assert_close(inc, full, atol=1e-5, rtol=0)


def test_dwa_and_value_residual_compose():
    m = build(cfg(residual="dwa", value_residual="shared", n_layers=5))
    with torch.no_grad():
        for p in m.stack.residual.alphas.values():
            p.add_(torch.randn(p.shape) * 0.3)
        x = ids(t=12)
        inc, _ = cached_logits(m, x)
        torch.testing.assert_close(inc, m(x), atol=1e-5, rtol=0)
