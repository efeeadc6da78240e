"""The attention core :func:`formers.nn.attention.core.attend`: a hand-computed case, GQA, masks,
and agreement of the SDPA and reference paths (outputs and gradients)."""

from __future__ import annotations

import pytest
import torch

from formers.nn.attention import core
from formers.nn.attention.core import attend, causal_mask
from formers.nn.position import alibi_slopes

BACKENDS = ["sdpa", "reference"]

# Hand case: 1 head, 2 tokens, head_dim 2, scale 1/sqrt(2).
#   q = [[1, 0], [0, 1]], k = [[1, 0], [1, 1]], v = [[1, 2], [3, 4]]
#   row 0: scores (1, 1) * s -> weights (0.5, 0.5) -> out (2, 3)
#   row 1: scores (0, 1) * s, s = 0.70710678 -> w1 = 1 / (1 + exp(-s)) = 0.66976155,
#          w0 = 0.33023845 -> out = (w0 + 3 w1, 2 w0 + 4 w1) = (2.33952310, 3.33952310)
#   causal: row 0 sees only key 0 -> out (1, 2); row 1 unchanged.
Q = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
K = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
V = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
W_ROW1 = [0.3302384506733431, 0.6697615493266569]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_case(backend):
    out, _ = attend(Q, K, V, backend=backend)
    expect = torch.tensor([[[[2.0, 3.0], [2.3395230986533138, 3.3395230986533138]]]])
    torch.testing.assert_close(out, expect, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_case_causal(backend):
    out, _ = attend(Q, K, V, causal=True, backend=backend)
    expect = torch.tensor([[[[1.0, 2.0], [2.3395230986533138, 3.3395230986533138]]]])
    torch.testing.assert_close(out, expect, atol=1e-6, rtol=0)


def test_hand_case_weights():
    _, w = attend(Q, K, V, return_weights=True)
    torch.testing.assert_close(w, torch.tensor([[[[0.5, 0.5], W_ROW1]]]), atol=1e-7, rtol=0)
    _, w = attend(Q, K, V, causal=True, return_weights=True)
    torch.testing.assert_close(w, torch.tensor([[[[1.0, 0.0], W_ROW1]]]), atol=1e-7, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_case_key_mask_and_bias(backend):
    # masking key 1 leaves only v0 for both queries
    out, _ = attend(Q, K, V, key_mask=torch.tensor([[True, False]]), backend=backend)
    torch.testing.assert_close(out, V[:, :, :1].expand(1, 1, 2, 2), atol=1e-6, rtol=0)
    # a bias of +s on key 0 for row 1 makes its two scores equal -> mean of the values
    bias = torch.tensor([[[0.0, 0.0], [0.7071067811865476, 0.0]]])
    out, _ = attend(Q, K, V, bias=bias, backend=backend)
    torch.testing.assert_close(out[0, 0, 1], torch.tensor([2.0, 3.0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_argument(backend):
    # scale 0 -> uniform weights -> every query gets the mean of the values
    out, _ = attend(Q, K, V, scale=0.0, backend=backend)
    torch.testing.assert_close(out, torch.tensor([[[[2.0, 3.0], [2.0, 3.0]]]]), atol=1e-6, rtol=0)


def test_causal_mask_alignment():
    # q_len 2 < k_len 4: queries sit at key positions 2 and 3
    m = causal_mask(2, 4)
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(1, 5).tolist() == [[True] * 5]


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_with_fewer_queries_equals_last_rows_of_full(backend):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    full, _ = attend(q, k, v, causal=True, backend=backend)
    for tq in (1, 3, 6):
        part, _ = attend(q[:, :, -tq:], k, v, causal=True, backend=backend)
        torch.testing.assert_close(part, full[:, :, -tq:], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("hkv", [1, 2, 3])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gqa_equals_mha_with_repeated_kv(backend, hkv):
    torch.manual_seed(0)
    q = torch.randn(2, 6, 5, 4)
    k, v = torch.randn(2, hkv, 5, 4), torch.randn(2, hkv, 5, 4)
    out, _ = attend(q, k, v, causal=True, backend=backend)
    g = 6 // hkv
    # query head h uses kv head h // g
    kr, vr = k[:, [h // g for h in range(6)]], v[:, [h // g for h in range(6)]]
    mha, _ = attend(q, kr, vr, causal=True, backend=backend)
    torch.testing.assert_close(out, mha, atol=1e-6, rtol=1e-6)
    # and head by head against single-head attention
    for h in range(6):
        one, _ = attend(q[:, h:h + 1], k[:, h // g:h // g + 1], v[:, h // g:h // g + 1],
                        causal=True, backend=backend)
        torch.testing.assert_close(out[:, h:h + 1], one, atol=1e-6, rtol=1e-6)


def _case(name: str):
    g = torch.Generator().manual_seed(hash(name) % 1000)
    b, h, d = 2, 4, 8
    tq, tk, hkv = 6, 6, 4
    kw: dict = {}
    if "gqa" in name:
        hkv = 2
    if "mqa" in name:
        hkv = 1
    if "short_q" in name:
        tq, tk = 3, 7
    if "causal" in name:
        kw["causal"] = True
    if "alibi" in name:
        qp, kp = torch.arange(tk - tq, tk), torch.arange(tk)
        kw["bias"] = -alibi_slopes(h)[:, None, None] * (qp[:, None] - kp[None, :]).abs().float()
    if "pad" in name:
        km = torch.ones(b, tk, dtype=torch.bool)
        km[1, -2:] = False
        kw["key_mask"] = km
    q = torch.randn(b, h, tq, d, generator=g)
    k = torch.randn(b, hkv, tk, d, generator=g)
    v = torch.randn(b, hkv, tk, d, generator=g)
    return q, k, v, kw


CASES = ["plain", "causal", "alibi", "causal_alibi", "gqa_causal", "mqa_causal_alibi", "pad",
         "causal_pad", "gqa_pad_alibi", "short_q_causal", "short_q_causal_alibi_gqa",
         "short_q_causal_pad", "mqa_short_q_causal_pad_alibi"]


@pytest.mark.parametrize("name", CASES)
def test_sdpa_equals_reference_outputs_and_grads(name):
    q, k, v, kw = _case(name)
    res = {}
    for backend in BACKENDS:
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        out, _ = attend(qq, kk, vv, backend=backend, **kw)
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
        (out * w).sum().backward()
        res[backend] = (out.detach(), qq.grad, kk.grad, vv.grad)
    for a, b, what in zip(res["sdpa"], res["reference"], ["out", "dq", "dk", "dv"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"{what}: {m}")


def test_sdpa_grad_equals_reference_for_bias():
    q, k, v, kw = _case("causal_alibi")
    grads = []
    for backend in BACKENDS:
        bias = kw["bias"].clone().requires_grad_()
        out, _ = attend(q, k, v, causal=True, bias=bias, backend=backend)
        out.square().sum().backward()
        grads.append(bias.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


def test_fully_masked_query_rows_agree():
    """Left padding + causal: the first (padded) query sees no key at all. Both paths must agree
    and stay finite; otherwise one padded row turns a whole model's outputs into NaN on the
    reference path (the explainer's path) while the SDPA path returns zeros."""
    q, k, v, _ = _case("plain")
    km = torch.ones(2, 6, dtype=torch.bool)
    km[0, :2] = False
    fast, _ = attend(q, k, v, causal=True, key_mask=km, backend="sdpa")
    ref, _ = attend(q, k, v, causal=True, key_mask=km, backend="reference")
    assert torch.isfinite(fast).all()
    assert torch.isfinite(ref).all(), "reference path gives NaN for a query with no visible key"
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_auto_takes_sdpa_and_weights_take_reference():
    q, k, v, _ = _case("plain")
    core.CALLS.clear()
    attend(q, k, v, causal=True)
    attend(q, k, v, key_mask=torch.ones(2, 6, dtype=torch.bool))
    assert core.CALLS == {"sdpa": 2}
    _, w = attend(q, k, v, causal=True, return_weights=True)
    assert core.CALLS["reference"] == 1
    assert w.shape == (2, 4, 6, 6)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 6))
    assert (w.triu(1) == 0).all()


def test_errors():
    q, k, v, _ = _case("plain")
    with pytest.raises(ValueError, match="flash"):
        attend(q, k, v, backend="flash")
    with pytest.raises(ValueError, match="weights"):
        attend(q, k, v, backend="sdpa", return_weights=True)
    with pytest.raises(ValueError, match=r"\(2, 4, 6, 8\)"):
        attend(q[0], k, v)
    with pytest.raises(ValueError, match="n_kv_heads = 3"):
        attend(q, k[:, :3], v[:, :3])
    with pytest.raises(ValueError):
        attend(q, k, v[..., :4])


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_pattern_over_positions_equals_explicit_mask(backend):
    """A pattern is evaluated on absolute positions and combined with causal and key masks."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8) for _ in range(3))
    q_pos, k_pos = torch.arange(10, 15), torch.arange(10, 15)
    window = lambda qp, kp: qp - kp < 2  # noqa: E731
    got, _ = attend(q, k, v, causal=True, pattern=window, q_pos=q_pos, k_pos=k_pos, backend=backend)
    i = torch.arange(5)
    mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < 2)
    want = torch.softmax((q @ k.transpose(-1, -2) / 8 ** 0.5).masked_fill(~mask, float("-inf")), -1) @ v
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_pattern_needs_positions():
    q = torch.randn(1, 1, 3, 4)
    with pytest.raises(ValueError, match="pattern needs q_pos"):
        attend(q, q, q, pattern=lambda a, b: a >= b)
