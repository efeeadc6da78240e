"""Pathformer's faster intra-patch path and one-pass drop_last scoring give the same numbers as
the plain formulations they replaced (fixed seeds, 1e-6)."""

from __future__ import annotations

import torch

import formers.timeseries  # noqa: F401
from formers.nn.attention.core import attend
from formers.timeseries.pathformer import DualAttentionLayer, Pathformer, etth1_config
from formers.timeseries.protocol import Windows, evaluate_model, evaluate_windows

torch.set_num_threads(1)


def _intra_before(layer: DualAttentionLayer, x: torch.Tensor) -> torch.Tensor:
    """The intra-patch path as first written: the query token joins every sample's tokens,
    keys and values in two contractions over all tokens, SDPA."""
    B, L, C, d = x.shape
    n, P, h = layer.n_patches, layer.patch, layer.heads
    q = layer.queries()
    tokens = torch.cat([q.expand(B, n, C, d).unsqueeze(2), x.reshape(B, n, P, C, d)], dim=2)
    w, b = layer.kv_weights()
    k = torch.einsum("bnpcd,cde->bnpce", tokens, w[0]) + b[0]
    v = torch.einsum("bnpcd,cde->bnpce", tokens, w[1]) + b[1]
    hd = d // h
    qh = q.expand(B, n, C, d).reshape(B * n * C, 1, h, hd).transpose(1, 2)
    kh = k.permute(0, 1, 3, 2, 4).reshape(B * n * C, P + 1, h, hd).transpose(1, 2)
    vh = v.permute(0, 1, 3, 2, 4).reshape(B * n * C, P + 1, h, hd).transpose(1, 2)
    out, _ = attend(qh, kh, vh, backend="sdpa")
    out = layer.intra_mlp(out.transpose(1, 2).reshape(B, n, C, d))
    return layer.intra_to_time(out.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)


def test_intra_path_equals_the_first_formulation_values_and_gradients():
    torch.manual_seed(0)
    cfg = etth1_config(96)
    for patch in (2, 12, 32):
        layer = DualAttentionLayer(cfg, patch)
        x = torch.randn(4, 96, 7, 4, requires_grad=True)
        a = layer.intra(x)
        ga = torch.autograd.grad(a.square().sum(), [x, *layer.parameters()], allow_unused=True)
        b = _intra_before(layer, x)
        gb = torch.autograd.grad(b.square().sum(), [x, *layer.parameters()], allow_unused=True)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        for u, v in zip(ga, gb):
            if u is not None or v is not None:  # float32 sums in another order: 1e-6 of the scale
                assert (u - v).abs().max() <= 1e-6 * (1 + v.abs().max())


def test_one_pass_drop_last_equals_a_separate_drop_last_pass():
    torch.manual_seed(0)
    model = Pathformer(etth1_config(96, n_channels=2)).eval()
    series = torch.randn(96 + 96 + 40, 2)
    w = Windows(series, 96, 96)  # 41 windows
    for bs in (8, 41, 50):
        both = evaluate_model(model, w, bs, with_drop_last=True)
        full = evaluate_model(model, w, bs)
        assert both["mse"] == full["mse"] and both["mae"] == full["mae"]
        if bs > len(w):
            assert "mse_drop_last" not in both  # no full batch
            continue
        dl = evaluate_model(model, w, bs, drop_last=True)
        assert both["mse_drop_last"] == dl["mse"] and both["mae_drop_last"] == dl["mae"]
        assert both["windows_drop_last"] == dl["windows"] == (len(w) // bs) * bs
    naive = evaluate_windows(lambda x: x[:, -1:].expand(-1, 96, -1), w, 41, with_drop_last=True)
    assert naive["mse_drop_last"] == naive["mse"]  # 41 windows in one full batch
