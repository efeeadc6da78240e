"""DenseFormer depth-weighted averaging (arXiv 2402.02622): paper tests from the notes (§1 (d))."""

from __future__ import annotations

import pytest
import torch

from formers import registry
from formers.nn import ModelConfig, build_model
from formers.nn.presets import apply_preset
from formers.nn.residual import (
    DepthWeightedAverage, _BufferedMix, dwa_layers, dwa_param_count, dwa_sources,
)

KP = [(1, 1), (4, 1), (4, 5), (2, 3)]


def cfg(**over) -> ModelConfig:
    base = dict(vocab_size=23, d_model=16, n_heads=4, n_layers=6, d_ff=32, max_seq_len=32,
                init_std=0.1)
    return ModelConfig(**{**base, **over})


def build(c: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(c).eval()


def ids(b=2, t=9, seed=1):
    return torch.randint(0, 23, (b, t), generator=torch.Generator().manual_seed(seed))


def randomise_alphas(model, seed=5):
    """Move every alpha away from the identity (one-hot + noise)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in alpha_params(model).values():
            eye = (torch.arange(p.numel()) == p.numel() - 1).float()
            p.copy_(eye + 0.5 * torch.randn(p.shape, generator=g))


def alpha_params(model):
    return {n: p for n, p in model.named_parameters() if "residual.alphas." in n}


def loss_grads(model, x):
    model.zero_grad(set_to_none=True)
    logits = model(x)
    w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(3))
    (logits * w).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ----------------------------------------------------------------------------- 1. identity init
@pytest.mark.parametrize("k,p", KP)
@pytest.mark.parametrize("arch", ["decoder", "encoder"])
def test_identity_init_equals_plain_outputs_and_gradients(k, p, arch):
    plain = build(cfg(arch=arch))
    dense = build(cfg(arch=arch, residual="dwa", dwa_dilation=k, dwa_period=p))
    assert set(plain.state_dict()) <= set(dense.state_dict())
    for n, t in plain.state_dict().items():
        torch.testing.assert_close(dense.state_dict()[n], t, atol=0, rtol=0)
    x = ids()
    lp, gp = loss_grads(plain, x)
    ld, gd = loss_grads(dense, x)
    torch.testing.assert_close(ld, lp, atol=1e-6, rtol=0)
    for n, g in gp.items():
        torch.testing.assert_close(gd[n], g, atol=1e-6, rtol=1e-5, msg=lambda m: f"{n}: {m}")


def test_identity_init_survives_model_initialisation_and_reset():
    m = build(cfg(residual="dwa"))
    for name, a in alpha_params(m).items():
        i = int(name.rsplit(".", 1)[1])
        assert a.shape == (i + 1,)
        assert torch.equal(a.detach(), torch.nn.functional.one_hot(torch.tensor(i), i + 1).float())
    randomise_alphas(m)
    m.stack.residual.reset_identity()
    assert all(a[-1] == 1 and a[:-1].abs().sum() == 0 for a in alpha_params(m).values())


# ----------------------------------------------------------------------------- 2. parameter count
@pytest.mark.parametrize("d", [1, 6, 12, 48])
def test_param_count_full_denseformer(d):
    assert dwa_param_count(d, 1, 1) == d * (d + 3) // 2
    assert dwa_param_count(48, 1, 1) == 1224


@pytest.mark.parametrize("k,p", KP + [(4, 4), (3, 7)])
def test_param_count_formula_matches_module(k, p):
    d = 12
    m = build(cfg(n_layers=d, residual="dwa", dwa_dilation=k, dwa_period=p))
    n = sum(a.numel() for a in alpha_params(m).values())
    assert n == dwa_param_count(d, k, p) == sum(i // k + 1 for i in range(1, d + 1) if i % p == 0)
    assert sorted(int(s.rsplit(".", 1)[1]) for s in alpha_params(m)) == dwa_layers(d, k, p)
    plain = build(cfg(n_layers=d))
    assert sum(q.numel() for q in m.parameters()) - sum(q.numel() for q in plain.parameters()) == n


# ----------------------------------------------------------------------------- 3. connectivity
def test_connectivity_k4_p4():
    assert dwa_layers(12, 4, 4) == [4, 8, 12]
    assert dwa_sources(4, 4) == [0, 4] and dwa_sources(8, 4) == [0, 4, 8]
    assert dwa_sources(12, 4) == [0, 4, 8, 12]
    assert dwa_sources(10, 4) == [2, 6, 10]  # the 4x5 example of the paper
    assert dwa_layers(10, 4, 5) == [5, 10]
    m = build(cfg(n_layers=12, residual="dwa", dwa_dilation=4, dwa_period=4))
    assert m.stack.residual.alphas["8"].shape == (3,)


@pytest.mark.parametrize("impl", ["buffer", "naive"])
def test_one_hot_on_embedding_gives_embedding(impl):
    """k = p = 4, d = 12: alpha_8 one-hot on X_0 makes the input of block 9 the embedding."""
    m = build(cfg(n_layers=12, residual="dwa", dwa_dilation=4, dwa_period=4))
    m.stack.residual.impl = impl
    randomise_alphas(m)
    with torch.no_grad():
        m.stack.residual.alphas["8"].copy_(torch.tensor([1.0, 0.0, 0.0]))
    seen = {}
    m.embed.register_forward_hook(lambda mod, inp, out: seen.__setitem__("x0", out[0]))
    m.stack.blocks[8].register_forward_pre_hook(lambda mod, args: seen.__setitem__("y8", args[0]))
    with torch.no_grad():
        m(ids())
    torch.testing.assert_close(seen["y8"], seen["x0"], atol=1e-6, rtol=0)


def test_buffers_store_raw_block_outputs_not_averages():
    """alpha_4 mixes (Y_4 != X_4); alpha_8 one-hot on X_4 must give the raw X_4 = block 4's output."""
    m = build(cfg(n_layers=12, residual="dwa", dwa_dilation=4, dwa_period=4))
    with torch.no_grad():
        m.stack.residual.alphas["4"].copy_(torch.tensor([0.7, 0.6]))
        m.stack.residual.alphas["8"].copy_(torch.tensor([0.0, 1.0, 0.0]))
    seen = {}
    m.stack.blocks[3].register_forward_hook(lambda mod, a, out: seen.__setitem__("x4", out))
    m.stack.blocks[4].register_forward_pre_hook(lambda mod, args: seen.__setitem__("y4", args[0]))
    m.stack.blocks[8].register_forward_pre_hook(lambda mod, args: seen.__setitem__("y8", args[0]))
    with torch.no_grad():
        m(ids())
    assert not torch.allclose(seen["y4"], seen["x4"])
    torch.testing.assert_close(seen["y8"], seen["x4"], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- 4. buffer == naive
@pytest.mark.parametrize("k,p", KP)
def test_buffered_equals_naive_in_model(k, p):
    m = build(cfg(n_layers=10, residual="dwa", dwa_dilation=k, dwa_period=p))
    randomise_alphas(m)
    m.train()
    x = ids()
    ref, g_ref = loss_grads(m, x)
    m.stack.residual.impl = "naive"
    out, g = loss_grads(m, x)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    assert g.keys() == g_ref.keys()
    for n in g:
        torch.testing.assert_close(g[n], g_ref[n], atol=1e-6, rtol=1e-5, msg=lambda s: f"{n}: {s}")


def test_buffered_gradcheck_float64_three_blocks():
    """float64 gradcheck of the buffered DWA stream over a 3-block toy (k=1, p=1): gradients
    w.r.t. the alphas, the embedding and every block output."""
    dwa = DepthWeightedAverage(cfg(n_layers=3, residual="dwa"), 3).double()
    blocks = [torch.nn.Linear(4, 4).double() for _ in range(3)]
    names = list(dwa.alphas)

    def f(a1, a2, a3, x0):
        with torch.no_grad():
            for n, a in zip(names, (a1, a2, a3)):
                dwa.alphas[n].data = a.detach()
        alphas = dict(zip(names, (a1, a2, a3)))
        state = dwa.begin(x0)
        y = x0
        for i, blk in enumerate(blocks, 1):
            xi = torch.tanh(blk(y))
            dwa._store(i, xi, state)
            src = dwa_sources(i, 1)
            buf = state["bufs"][0][: len(src)]
            y = _BufferedMix.apply(alphas[str(i)], [buf], *[state["xs"][j] for j in src])
        return y

    g = torch.Generator().manual_seed(0)
    args = [torch.randn(i + 1, dtype=torch.float64, generator=g, requires_grad=True) for i in (1, 2, 3)]
    x0 = torch.randn(2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(f, (*args, x0))


# ----------------------------------------------------------------------------- 5. grad reaches alpha
def test_gradient_reaches_off_diagonal_alphas_at_identity():
    c = cfg(n_layers=3, residual="dwa")
    dwa = DepthWeightedAverage(c, 3)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 5, 16, generator=g) for _ in range(4)]
    w = torch.randn(2, 5, 16, generator=g)
    state = dwa.begin(xs[0])
    for i in (1, 2):
        dwa.after_block(i, xs[i], state)
    y3 = dwa.after_block(3, xs[3], state)
    (y3 * w).sum().backward()
    expected = torch.stack([(w * xj).sum() for xj in xs])  # dL/dalpha_{3,j} = <dL/dY_3, X_j>
    torch.testing.assert_close(dwa.alphas["3"].grad, expected, atol=1e-4, rtol=1e-5)
    assert (dwa.alphas["3"].grad[:3].abs() > 0).all()
    m = build(cfg(residual="dwa"))
    _, grads = loss_grads(m, ids())
    for n, a in alpha_params(m).items():
        assert grads[n][:-1].abs().sum() > 0 or a.numel() == 1, n


# ----------------------------------------------------------------------------- 6. cached decoding
@pytest.mark.parametrize("k,p", [(1, 1), (4, 5), (2, 1)])
def test_cached_decoding_equals_full_forward(k, p):
    m = build(cfg(n_layers=10, residual="dwa", dwa_dilation=k, dwa_period=p, position="rope"))
    randomise_alphas(m)
    x = ids(t=11)
    with torch.no_grad():
        full = m(x)
        cache = m.new_cache()
        outs = [m(x[:, :4], cache=cache)] + [m(x[:, t:t + 1], cache=cache) for t in range(4, 7)]
        outs.append(m(x[:, 7:], cache=cache))
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- plumbing
def test_capture_records_dwa_weights_and_sources():
    m = build(cfg(n_layers=8, residual="dwa", dwa_dilation=4, dwa_period=4))
    cap = {}
    with torch.no_grad():
        m(ids(), capture=cap)
    assert torch.equal(cap["layer7.dwa.sources"], torch.tensor([0, 4, 8]))
    assert torch.equal(cap["layer7.dwa.alpha"], torch.tensor([0.0, 0.0, 1.0]))
    assert "layer3.dwa.alpha" in cap and "layer2.dwa.alpha" not in cap


def test_registry_presets_and_config_errors():
    assert {"plain", "dwa"} <= set(registry.names("residual"))
    assert registry.get("residual", "dwa").paper.arxiv == "2402.02622"
    base = cfg(n_layers=4)
    assert apply_preset("denseformer", base).residual == "dwa"
    assert (apply_preset("denseformer-4x5", base).dwa_dilation, apply_preset("denseformer-4x5", base).dwa_period) == (4, 5)
    with pytest.raises(ValueError, match="dwa_dilation"):
        cfg(dwa_dilation=0)
    with pytest.raises(ValueError, match="dwa_period"):
        cfg(dwa_period=-1)
    with pytest.raises(ValueError, match="residual 'nope'"):
        build_model(cfg(residual="nope"))
    with pytest.raises(ValueError, match="impl"):
        DepthWeightedAverage(cfg(), 3, impl="fast")


def test_alphas_are_no_decay_and_named():
    from formers.train.optim import param_groups

    m = build(cfg(residual="dwa"))
    decay, no_decay = param_groups(m, 0.1)
    assert all("residual.alphas" not in n for n in decay["names"])
    assert {n for n in no_decay["names"] if "residual.alphas" in n} == set(alpha_params(m))


def test_encoder_decoder_with_dwa_runs_and_caches():
    m = build(cfg(arch="encoder-decoder", residual="dwa", n_layers=3))
    randomise_alphas(m)
    src, tgt = ids(t=5, seed=2), ids(t=6)
    with torch.no_grad():
        mem = m.encode(src)
        full = m.decode(tgt, mem)
        cache = m.new_cache()
        inc = torch.cat([m.decode(tgt[:, :2], mem, cache=cache), m.decode(tgt[:, 2:], mem, cache=cache)], 1)
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=0)
