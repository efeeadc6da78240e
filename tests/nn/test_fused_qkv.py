"""SoftmaxAttention's fused W_Q/W_K/W_V GEMM (``fuse_qkv``, on by default on CUDA only) equals the
three separate projections: outputs, gradients and the state dict, MHA and GQA, and through cached
decoding."""

from __future__ import annotations

import pytest
import torch

import formers.nn  # noqa: F401
from formers.nn.attention.softmax import SoftmaxAttention
from formers.nn.config import ModelConfig
from formers.nn.models import build_model


def _loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    logits = model(ids)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("n_kv, value_residual", [(None, "none"), (2, "none"), (None, "mix")])
def test_fused_equals_separate(monkeypatch, n_kv, value_residual):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=80, d_model=32, n_layers=2, n_heads=4, n_kv_heads=n_kv, max_seq_len=16,
                      value_residual=value_residual)
    model = build_model(cfg)
    ids = torch.randint(0, 80, (2, 16))
    monkeypatch.setattr(SoftmaxAttention, "fuse_qkv", False)
    ref, gref = _loss_and_grads(model, ids)
    calls = []
    real = torch.nn.functional.linear
    monkeypatch.setattr(SoftmaxAttention, "fuse_qkv", True)
    monkeypatch.setattr(torch.nn.functional, "linear",
                        lambda x, w, b=None: (calls.append(tuple(w.shape)), real(x, w, b))[1])
    out, gout = _loss_and_grads(model, ids)
    d, hkv = 32, (n_kv or 4) * 8
    assert calls.count((d + 2 * hkv, d)) == 2  # one fused GEMM per layer
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert gout.keys() == gref.keys() and "stack.blocks.0.mixer.q.weight" in gout
    for n in gref:
        torch.testing.assert_close(gout[n], gref[n], atol=1e-5, rtol=1e-4, msg=lambda m: f"{n}: {m}")


def test_fused_cached_decoding_equals_full_forward(monkeypatch):
    monkeypatch.setattr(SoftmaxAttention, "fuse_qkv", True)
    torch.manual_seed(1)
    model = build_model(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=16)).eval()
    ids = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        steps = [model(ids[:, :6], cache=cache)] + [model(ids[:, i:i + 1], cache=cache) for i in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_default_fuses_on_cuda_only():
    layer = SoftmaxAttention(ModelConfig(d_model=32, n_heads=4))
    assert SoftmaxAttention.fuse_qkv is None
    x = torch.randn(1, 3, 32)
    q, k, v = layer._self_projections(x)   # CPU: the three separate layers, bit for bit
    assert torch.equal(q, layer.q(x)) and torch.equal(k, layer.k(x)) and torch.equal(v, layer.v(x))

