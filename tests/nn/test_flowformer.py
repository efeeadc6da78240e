"""Flowformer flow attention (Wu et al., arXiv 2202.06258): the paper tests of the research notes
(``shared/papers/architecture.md`` §5 (d)).

1. the bidirectional layer equals an explicit O(n m) dense form
   A_ij = allocation_i I_i (Qt_i . Kt_j), out_i = sum_j A_ij competition_j V_j (float64);
2. competition sums to m over the sources (the kept ones with padding);
3. conservation: I_i (Qt_i . sum_j Kt_j) = 1 and O_j (Kt_j . sum_i Qt_i) = 1 up to eps (exact as
   eps -> 0), causal: I_i / normal_i (Qt_i . sum_{j<=i} Kt_j) = 1;
4. causality by gradients: d out_t / d x_s = 0 for every s > t (and not for s <= t);
5. the causal layer equals a direct per-position computation with the ``normal`` factors;
6. fast paths == explicit reference backend (float64, with RoPE and padding); no dependence on the
   chunk size; decoding through the recurrent state == full forward;
7. the causal path never forms a (batch, heads, n, d, d) tensor; flows are fp32 under bf16;
8. padded tokens are removed from the flow network (outputs equal the unpadded sequence's).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from formers.nn import LayerSpec, ModelConfig, build_model
from formers.nn.attention.flow import FlowAttention, flow_bidirectional, flow_causal
from formers.nn.cache import RecurrentCache
from formers.nn.context import Context
from formers.nn.position import build_position

CFG = ModelConfig(d_model=16, n_heads=2, max_seq_len=600, d_ff=32, n_layers=2, vocab_size=23)
EPS = 1e-6


def _ctx(t: int, causal: bool, position: str = "none", offset: int = 0,
         key_mask: torch.Tensor | None = None, capture: dict | None = None, cfg=CFG) -> Context:
    pos = build_position(cfg.replace(position=position)).double()
    return Context(positions=torch.arange(offset, offset + t), causal=causal, position=pos,
                   key_mask=key_mask, capture=capture)


def _mixer(seed: int = 0, cfg=CFG, **opts) -> FlowAttention:
    m = FlowAttention(cfg, **opts).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.4)
    return m


def _x(b: int, t: int, seed: int = 1, d: int = 16) -> torch.Tensor:
    return torch.randn(b, t, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _qkv(m: FlowAttention, x: torch.Tensor):
    """Per head: Qt, Kt (sigmoid features) and V, each (b, h, t, hd)."""
    b, t, _ = x.shape
    h, hd = m.n_heads, m.head_dim

    def split(z):
        return z.view(b, t, h, hd).transpose(1, 2)
    return torch.sigmoid(split(m.q(x))), torch.sigmoid(split(m.k(x))), split(m.v(x))


def _finish(m: FlowAttention, out: torch.Tensor) -> torch.Tensor:
    b, h, t, hd = out.shape
    return m.o(out.transpose(1, 2).reshape(b, t, h * hd))


# ------------------------------------------------------------------------ independent forms
def _dense_bidirectional(qt, kt, v, eps=EPS):
    """One head, explicit O(n m): qt (n, d), kt (m, d), v (m, e)."""
    n, m = qt.shape[0], kt.shape[0]
    sk, sq = kt.sum(0), qt.sum(0)
    inc = torch.stack([1.0 / ((qt[i] + eps) @ (sk + eps)) for i in range(n)])
    out_f = torch.stack([1.0 / ((kt[j] + eps) @ (sq + eps)) for j in range(m)])
    sink = torch.stack([(qt[i] + eps) @ (sum(kt[j] * out_f[j] for j in range(m)) + eps) for i in range(n)])
    src = torch.stack([(kt[j] + eps) @ (sum(qt[i] * inc[i] for i in range(n)) + eps) for j in range(m)])
    src = src.clamp(-1, 1)
    alloc = torch.sigmoid(sink * n / m)
    comp = torch.exp(src) / torch.exp(src).sum() * m
    a = torch.zeros(n, m, dtype=qt.dtype)
    for i in range(n):
        for j in range(m):
            a[i, j] = alloc[i] * inc[i] * (qt[i] @ kt[j])
    return (a * comp[None, :]) @ v, comp


def _per_position_causal(qt, kt, v, eps=EPS):
    """One head, each output position t computed on its own from prefix sums over s <= t,
    with normal_t = t + 1 (reference ``Flow_Attention_Causal``)."""
    n = qt.shape[0]

    def inc(i):
        return (i + 1) / ((qt[i] + eps) @ (kt[: i + 1].sum(0) + eps))

    def outf(j):
        return (j + 1) / ((kt[j] + eps) @ (qt[: j + 1].sum(0) + eps))

    def src(j):
        s = sum(qt[i] * inc(i) for i in range(j + 1))
        return ((kt[j] + eps) @ (s + eps) / (j + 1)).clamp(-1, 1)

    def comp(j):
        return torch.exp(src(j)) / sum(torch.exp(src(s)) for s in range(j + 1)) * (j + 1)

    rows = []
    for t in range(n):
        sink = (qt[t] + eps) @ (sum(kt[j] * outf(j) for j in range(t + 1)) + eps) / (t + 1)
        w = qt[t] * inc(t) / (t + 1)
        agg = sum((w @ kt[j]) * comp(j) * v[j] for j in range(t + 1))
        rows.append(torch.sigmoid(sink) * agg)
    return torch.stack(rows)


# ------------------------------------------------------------------------ 1-2. dense form
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_bidirectional_equals_dense_form_and_competition_sums_to_m(backend):
    m = _mixer(backend=backend)
    x = _x(2, 7)
    with torch.no_grad():
        qt, kt, v = _qkv(m, x)
        want = torch.zeros_like(v)
        for b in range(2):
            for h in range(2):
                want[b, h], comp = _dense_bidirectional(qt[b, h], kt[b, h], v[b, h])
                torch.testing.assert_close(comp.sum(), torch.tensor(7.0, dtype=torch.float64))
        out = m(x, _ctx(7, False))
        torch.testing.assert_close(out, _finish(m, want), atol=1e-12, rtol=0)
        _, inter = flow_bidirectional(qt, kt, v, None)
    torch.testing.assert_close(inter["competition"].sum(-1), torch.full((2, 2), 7.0, dtype=torch.float64))
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[0, 4:] = False
    _, inter = flow_bidirectional(qt, kt, v, keep)
    torch.testing.assert_close(inter["competition"].sum(-1),
                               torch.tensor([[4.0, 4.0], [7.0, 7.0]], dtype=torch.float64))
    assert (inter["competition"][0, :, 4:] == 0).all()


@pytest.mark.parametrize("explicit", [False, True])
def test_sinks_and_sources_of_different_counts_equal_dense_form(explicit):
    """n = 5 sinks, m = 8 sources: the n / m ratio of the allocation and the m of the
    competition (self-attention alone always has n = m)."""
    g = torch.Generator().manual_seed(5)
    qt = torch.sigmoid(torch.randn(1, 2, 5, 4, generator=g, dtype=torch.float64))
    kt = torch.sigmoid(torch.randn(1, 2, 8, 4, generator=g, dtype=torch.float64))
    v = torch.randn(1, 2, 8, 3, generator=g, dtype=torch.float64)
    out, inter = flow_bidirectional(qt, kt, v, None, explicit=explicit)
    for h in range(2):
        want, comp = _dense_bidirectional(qt[0, h], kt[0, h], v[0, h])
        torch.testing.assert_close(out[0, h], want, atol=1e-12, rtol=0)
        torch.testing.assert_close(inter["competition"][0, h], comp, atol=1e-12, rtol=0)
    torch.testing.assert_close(inter["competition"].sum(-1), torch.full((1, 2), 8.0, dtype=torch.float64))


# ------------------------------------------------------------------------ 3. conservation
def test_conservation_identities():
    g = torch.Generator().manual_seed(3)
    qt, kt = (torch.sigmoid(torch.randn(1, 2, 9, 8, generator=g, dtype=torch.float64)) for _ in range(2))
    v = torch.randn(1, 2, 9, 8, generator=g, dtype=torch.float64)
    for eps, tol in ((1e-6, 1e-5), (1e-13, 1e-10)):
        _, it = flow_bidirectional(qt, kt, v, None, eps=eps)
        inflow = it["incoming"] * (qt * kt.sum(2, keepdim=True)).sum(-1)      # I_i (Qt_i . sum Kt)
        outflow = it["outgoing"] * (kt * qt.sum(2, keepdim=True)).sum(-1)     # O_j (Kt_j . sum Qt)
        torch.testing.assert_close(inflow, torch.ones_like(inflow), atol=tol, rtol=0)
        torch.testing.assert_close(outflow, torch.ones_like(outflow), atol=tol, rtol=0)
        # each sink's normalised incoming flow sum_j (Qt_i I_i) . Kt_j is 1
        rows = ((qt * it["incoming"][..., None]) @ kt.transpose(-1, -2)).sum(-1)
        torch.testing.assert_close(rows, torch.ones_like(rows), atol=tol, rtol=0)
        _, _, ic = flow_causal(qt, kt, v, None, eps=eps)
        cum = ((qt * (ic["incoming"] / ic["normal"])[..., None]) @ kt.transpose(-1, -2)).tril().sum(-1)
        torch.testing.assert_close(cum, torch.ones_like(cum), atol=tol, rtol=0)
    assert (it["conserved_source"].abs() <= 1).all()


# ------------------------------------------------------------------------ 4. causality
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_causality_by_gradients(backend):
    m = _mixer(backend=backend, chunk_size=3)
    x = _x(1, 8)
    jac = torch.autograd.functional.jacobian(lambda z: m(z, _ctx(8, True))[0], x)[:, :, 0]  # (t,d,s,d)
    per_pair = jac.abs().sum(dim=(1, 3))                                                    # (t, s)
    future = torch.ones(8, 8, dtype=torch.bool).triu(1)
    assert per_pair[future].max() == 0, "an output depends on a later input"
    assert (per_pair[~future] > 0).all(), "an output ignores an earlier input"


# ------------------------------------------------------------------------ 5. per-position
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_causal_equals_per_position_computation(backend):
    m = _mixer(backend=backend, chunk_size=4)
    x = _x(2, 9)
    with torch.no_grad():
        qt, kt, v = _qkv(m, x)
        want = torch.stack([torch.stack([_per_position_causal(qt[b, h], kt[b, h], v[b, h])
                                         for h in range(2)]) for b in range(2)])
        torch.testing.assert_close(m(x, _ctx(9, True)), _finish(m, want), atol=1e-12, rtol=0)


# ------------------------------------------------------------------------ 6. paths and cache
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("position", ["none", "rope"])
def test_fast_equals_reference_with_padding(causal, position):
    x = _x(2, 11)
    keep = torch.ones(2, 11, dtype=torch.bool)
    keep[0, 8:] = False
    keep[1, 0] = keep[1, 5] = False
    fast, ref = _mixer(chunk_size=4), _mixer(backend="reference")
    with torch.no_grad():
        for km in (None, keep):
            a = fast(x, _ctx(11, causal, position, key_mask=km))
            b = ref(x, _ctx(11, causal, position, key_mask=km))
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("causal", [True, False])
def test_result_does_not_depend_on_chunk_size(causal):
    x = _x(2, 37)
    with torch.no_grad():
        outs = [_mixer(chunk_size=c)(x, _ctx(37, causal, "rope")) for c in (1, 4, 16, 37, 100)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("pieces", [[1] * 10, [4, 1, 3, 2]])
def test_decoding_through_state_equals_full(backend, pieces):
    m = _mixer(backend=backend, chunk_size=3)
    x = _x(2, 10)
    with torch.no_grad():
        full = m(x, _ctx(10, True, "rope"))
        cache, outs, start = RecurrentCache(), [], 0
        for n in pieces:
            outs.append(m(x[:, start:start + n], _ctx(n, True, "rope", offset=start), cache))
            start += n
    assert cache.k is None and set(cache.state) == {"count", "sum_q", "sum_k", "sum_kO", "sum_qI",
                                                    "sum_exp", "S"}
    assert cache.state["S"].shape == (2, 2, 8, 8)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-12, rtol=0)


def test_model_decoding_uses_recurrent_policy():
    cfg = CFG.replace(layers=[LayerSpec(attention="flowformer")], max_seq_len=64)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ids = torch.randint(0, 23, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        outs = [model(ids[:, :3], cache=cache)]
        sizes = []
        for i in range(3, 12):
            outs.append(model(ids[:, i:i + 1], cache=cache))
            sizes.append(cache.nbytes())
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=0)
    assert len(set(sizes)) == 1, "the state must not grow with the number of tokens"


# ------------------------------------------------------------------------ 7. memory, fp32
class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_causal_path_never_forms_n_d_d():
    cfg = CFG.replace(d_model=32, n_heads=2)                # head_dim 16
    m = FlowAttention(cfg, chunk_size=32)
    x = torch.randn(1, 512, 32)
    with _LargestTensor() as watch, torch.no_grad():
        m(x, _ctx(512, True, cfg=cfg))
    naive = 1 * 2 * 512 * 16 * 16                           # the reference's (B, H, n, d, d)
    assert watch.largest <= naive // 4, f"largest tensor {watch.largest} vs naive {naive}"
    with _LargestTensor() as watch, torch.no_grad():
        FlowAttention(cfg, backend="reference")(x[:, :64], _ctx(64, True, cfg=cfg))
    assert watch.largest < 64 * 16 * 16 * 2                 # the reference path is O(n^2), not n d^2


def test_flows_are_fp32_under_bf16():
    m = FlowAttention(CFG).to(torch.bfloat16)
    x = torch.randn(2, 9, 16, dtype=torch.bfloat16)
    for causal in (True, False):
        cap: dict = {}
        out = m(x, Context(positions=torch.arange(9), causal=causal, capture=cap))
        assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
        flows = {k: v for k, v in cap.items() if ".flow." in k}
        assert flows and all(v.dtype == torch.float32 for v in flows.values()), \
            {k: v.dtype for k, v in flows.items()}


# ------------------------------------------------------------------------ 8. padding
@pytest.mark.parametrize("causal", [True, False])
def test_padded_tokens_are_removed_from_the_flow_network(causal):
    m = _mixer()
    x = _x(1, 9)
    keep = torch.tensor([[True, False, True, True, False, False, True, True, True]])
    with torch.no_grad():
        padded = m(x, _ctx(9, causal, key_mask=keep))[0, keep[0]]
        short = m(x[:, keep[0]], _ctx(int(keep.sum()), causal))[0]
    torch.testing.assert_close(padded, short, atol=1e-12, rtol=0)


@pytest.mark.parametrize("opts,match", [
    ({"chunk_size": 0}, "chunk_size"), ({"eps": 0.0}, "eps"), ({"backend": "flash"}, "backend"),
    ({"cross": True}, "cross"), ({"own_values": False}, "own_values"),
])
def test_bad_options_raise(opts, match):
    with pytest.raises(ValueError, match=match):
        FlowAttention(CFG, **opts)


def test_gqa_equals_mha_with_tiled_key_value_heads():
    gqa = FlowAttention(CFG.replace(n_kv_heads=1)).double()
    mha = FlowAttention(CFG).double()
    with torch.no_grad():
        for lin in ("q", "o"):
            getattr(mha, lin).load_state_dict(getattr(gqa, lin).state_dict())
        for lin in ("k", "v"):
            src, dst = getattr(gqa, lin), getattr(mha, lin)
            dst.weight.copy_(src.weight.repeat(2, 1))
            dst.bias.copy_(src.bias.repeat(2))
        x = _x(2, 6)
        for causal in (True, False):
            torch.testing.assert_close(gqa(x, _ctx(6, causal)), mha(x, _ctx(6, causal)),
                                       atol=1e-12, rtol=0)
