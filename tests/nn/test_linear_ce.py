"""formers.nn.linear_ce: the chunked fused linear + cross-entropy equals F.cross_entropy of the
full logits (loss and gradients, float64), under bf16 autocast within the plain path's own error,
with tied embeddings, under torch.compile(fullgraph=True), and it never saves (N, V) tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from formers.nn.linear_ce import default_chunk_tokens, linear_cross_entropy

N, D, V = 50, 12, 97


def _data(dtype=torch.float64, seed=0, ignore=(3, 17)):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g, dtype=dtype).requires_grad_()
    w = (0.5 * torch.randn(V, D, generator=g, dtype=dtype)).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    for i in ignore:
        t[i] = -100
    return h, w, t


def _ref(h, w, t, **kw):
    loss = F.cross_entropy(h @ w.T, t, **kw)
    return (loss, *torch.autograd.grad(loss, (h, w)))


@pytest.mark.parametrize("chunk", [1, 7, 10, 50, 64, None])  # 7 does not divide 50; 64 > N
def test_equals_cross_entropy_of_full_logits_float64(chunk):
    h, w, t = _data()
    loss_ref, gh_ref, gw_ref = _ref(h, w, t)
    loss = linear_cross_entropy(h, w, t, chunk_tokens=chunk)
    gh, gw = torch.autograd.grad(loss, (h, w))
    assert loss.dtype == torch.float64 and gh.dtype == gw.dtype == torch.float64
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gh, gh_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-10, atol=1e-12)
    # ignored rows get exactly zero gradient
    assert gh[3].abs().max() == 0 and gh[17].abs().max() == 0


def test_ignore_index_and_upstream_gradient():
    h, w, t = _data(ignore=())
    t[:5] = 7  # ignore_index=7 drops these rows, and only these
    loss_ref, gh_ref, gw_ref = _ref(h, w, t, ignore_index=7)
    loss = linear_cross_entropy(h, w, t, chunk_tokens=8, ignore_index=7)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=1e-12)
    # backward scales the saved gradients by the incoming one: d(3 * loss)
    gh, gw = torch.autograd.grad(3.0 * loss, (h, w))
    torch.testing.assert_close(gh, 3.0 * gh_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, 3.0 * gw_ref, rtol=1e-10, atol=1e-12)
    # hand case: one token, logits (0, 0) -> loss ln 2; every token ignored -> nan like F.cross_entropy
    one = linear_cross_entropy(torch.zeros(1, 2, dtype=torch.float64), torch.eye(2, dtype=torch.float64),
                               torch.tensor([1]))
    assert one.item() == pytest.approx(0.6931471805599453, abs=1e-15)
    assert torch.isnan(linear_cross_entropy(h.detach(), w.detach(), torch.full((N,), -100)))


def test_frozen_weight_and_no_grad():
    h, w, t = _data()
    loss_ref, gh_ref, _ = _ref(h, w, t)
    w2 = w.detach()
    loss = linear_cross_entropy(h, w2, t, chunk_tokens=9)
    (gh,) = torch.autograd.grad(loss, (h,))
    torch.testing.assert_close(gh, gh_ref, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        nl = linear_cross_entropy(h, w, t, chunk_tokens=9)
    assert not nl.requires_grad
    torch.testing.assert_close(nl, loss_ref.detach(), rtol=1e-12, atol=1e-12)


def test_tied_embedding_grads_equal_unfused_model():
    """A tied TransformerLM: grads of every parameter (the shared embedding / head sums both paths)
    through hidden=True + linear_cross_entropy equal those of F.cross_entropy(model(ids))."""
    from formers.nn.config import ModelConfig
    from formers.nn.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=61, d_model=16, n_layers=2, n_heads=2, max_seq_len=12, tie_embeddings=True)
    model = build_model(cfg).double()
    assert model.head.weight is model.embed.tok.weight
    ids = torch.randint(0, 61, (3, 12))
    x, y = ids[:, :-1], ids[:, 1:].flatten()
    hid = model(x, hidden=True)
    assert hid.shape == (3, 11, 16)
    torch.testing.assert_close(hid @ model.head.weight.T, model(x), rtol=1e-12, atol=1e-12)
    params = list(model.parameters())
    ref = torch.autograd.grad(F.cross_entropy(model(x).flatten(0, 1), y), params)
    loss = linear_cross_entropy(model(x, hidden=True).flatten(0, 1), model.head.weight, y, chunk_tokens=5)
    got = torch.autograd.grad(loss, params)
    for p, a, b in zip(model.named_parameters(), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=p[0])


def test_bf16_autocast_within_the_plain_paths_error():
    """Under CPU bf16 autocast both paths run bf16 GEMMs and an fp32 softmax. Tolerance: the loss
    within 1e-3 (relative) of the fp64 loss, and each gradient's max error against fp64 at most
    1.5x the plain autocast path's error + 1e-3 of the gradient's scale (ours accumulates
    grad_weight over chunks in fp32, the plain path rounds one GEMM's output to bf16)."""
    h64, w64, t = _data()
    loss64, gh64, gw64 = _ref(h64, w64, t)
    h = h64.detach().float().requires_grad_()
    w = w64.detach().float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.cross_entropy((h @ w.T).float(), t)
        ours = linear_cross_entropy(h, w, t, chunk_tokens=16)
    gp = torch.autograd.grad(plain, (h, w))
    go = torch.autograd.grad(ours, (h, w))
    assert ours.dtype == torch.float32 and go[0].dtype == go[1].dtype == torch.float32
    assert ours.item() == pytest.approx(loss64.item(), rel=1e-3)
    for o, p, r in zip(go, gp, (gh64, gw64)):
        err_o, err_p = (o.double() - r).abs().max(), (p.double() - r).abs().max()
        assert err_o <= 1.5 * err_p + 1e-3 * r.abs().max(), (err_o, err_p)
        assert err_o < 2e-2 * r.abs().max()


def test_compiles_fullgraph_and_matches():
    torch._dynamo.reset()
    h, w, t = _data(dtype=torch.float32)
    loss_ref, gh_ref, gw_ref = _ref(h, w, t)
    f = torch.compile(lambda a, b, c: linear_cross_entropy(a, b, c, chunk_tokens=16), fullgraph=True,
                      backend="aot_eager")
    loss = f(h, w, t)
    gh, gw = torch.autograd.grad(loss, (h, w))
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh, gh_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-4, atol=1e-6)


def _saved_shapes(fn):
    shapes = []

    def pack(x):
        shapes.append(tuple(x.shape))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = fn()
    loss.backward()
    return shapes


def test_no_logits_sized_tensor_is_saved():
    """The plain path saves (N, V) tensors for its backward (the hook sees them); ours saves only
    grad_hidden (N, d) and grad_weight (V, d)."""
    h, w, t = _data(dtype=torch.float32)
    plain = _saved_shapes(lambda: F.cross_entropy(h @ w.T, t))
    assert (N, V) in plain
    ours = _saved_shapes(lambda: linear_cross_entropy(h, w, t, chunk_tokens=8))
    assert sorted(ours) == sorted([(N, D), (V, D)])
    assert all(s[0] * (s[1] if len(s) > 1 else 1) < N * V for s in ours)


def test_peak_memory_below_plain_path():
    """Peak bytes of live tensors (torch.profiler's memory events: allocations minus frees over
    the forward + backward) with logits of 512 x 4096 fp32 (8 MiB): the chunked loss stays below
    half of the plain path's peak."""
    from torch.profiler import ProfilerActivity, profile

    def peak(fn):
        g = torch.Generator().manual_seed(0)
        h = torch.randn(512, 32, generator=g, requires_grad=True)
        w = torch.randn(4096, 32, generator=g, requires_grad=True)
        t = torch.randint(0, 4096, (512,), generator=g)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn(h, w, t).backward()
        live = top = 0
        for ev in sorted(prof.profiler.kineto_results.events(), key=lambda e: e.start_ns()):
            if ev.name() == "[memory]":
                live += ev.nbytes()
                top = max(top, live)
        return top

    plain = peak(lambda h, w, t: F.cross_entropy(h @ w.T, t))
    ours = peak(lambda h, w, t: linear_cross_entropy(h, w, t, chunk_tokens=64))
    assert plain >= 2 * 512 * 4096 * 4  # the logits and their log-softmax / gradient
    assert ours < plain / 2, (ours, plain)


def test_bad_arguments_raise_before_work():
    h, w, t = _data()
    with pytest.raises(ValueError, match=r"hidden must be \(N, d\)"):
        linear_cross_entropy(h[None], w, t)
    with pytest.raises(ValueError, match="hidden's d = 12 differs from weight's d = 5"):
        linear_cross_entropy(h, w[:, :5], t)
    with pytest.raises(ValueError, match=r"targets must be \(N,\) = \(50,\), got \(49,\)"):
        linear_cross_entropy(h, w, t[:49])
    with pytest.raises(ValueError, match="no tokens"):
        linear_cross_entropy(h[:0], w, t[:0])
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="chunk_tokens must be an int >= 1"):
            linear_cross_entropy(h, w, t, chunk_tokens=bad)
    with pytest.raises(TypeError, match="targets must be an integer tensor"):
        linear_cross_entropy(h, w, t.double())
    with pytest.raises(TypeError, match="floating point"):
        linear_cross_entropy(h, w.long(), t)
    assert h.grad is None and w.grad is None


def test_default_chunk_tokens():
    # GPT-2 small: 16,384 x 50,304 logits in chunks of <= 2**26 -> 13 chunks -> 1,261 -> 1,280 (x 64)
    assert default_chunk_tokens(16384, 50304) == 1280
    assert default_chunk_tokens(10, 50) == 10  # one chunk, never more than N
    assert default_chunk_tokens(1000, 1000, max_elements=100_000) == 128  # 10 chunks of 100 -> 128
