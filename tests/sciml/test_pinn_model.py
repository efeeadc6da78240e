"""PINNsFormer and its baselines: pseudo-sequences, Wavelet, shapes, parameter counts, init, errors
(paper arXiv 2307.11833 §3; the counts are the ones the reference notebooks print)."""

from __future__ import annotations

import math

import pytest
import torch

from formers.nn.io import save_model
from formers.sciml.pde.pinn_baselines import QResBlock
from formers.sciml.pde.pinnsformer import (PINNsFormerConfig, Wavelet, build_pinn, load_pinn,
                                           make_time_sequence, pinn_config, pseudo_sequence)

torch.set_num_threads(1)


def small(**kw):
    return build_pinn(pinn_config("pinnsformer", d_model=8, d_ff=16, d_hidden=16, **kw))


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_time_sequence_shape_and_values():
    pts = torch.tensor([[0.5, 0.1], [2.0, 0.7], [3.0, 0.0]], dtype=torch.float64)
    seq = make_time_sequence(pts, k=5, dt=1e-4)
    assert seq.shape == (3, 5, 2)
    assert torch.equal(seq[:, :, 0], pts[:, :1].expand(3, 5))  # x constant along the sequence
    steps = seq[:, :, 1] - pts[:, 1:]
    assert torch.allclose(steps, torch.arange(5, dtype=torch.float64) * 1e-4, atol=1e-15, rtol=0)
    # time is the last column also with more coordinates (x, y, t); k = 1 is the point itself
    pts3 = torch.rand(4, 3)
    seq3 = make_time_sequence(pts3, k=3, dt=1e-2)
    assert torch.equal(seq3[:, :, :2], pts3[:, None, :2].expand(4, 3, 2))
    assert torch.allclose(seq3[:, 2, 2] - seq3[:, 0, 2], torch.full((4,), 2e-2))
    assert torch.equal(make_time_sequence(pts3, 1, 0.5)[:, 0], pts3)


@pytest.mark.parametrize("k,dt,match", [(0, 1e-4, "k must be"), (-2, 1e-4, "k must be"), (2.5, 1e-4, "k must be"),
                                         (5, 0.0, "dt must be"), (5, -1e-4, "dt must be"),
                                         (5, float("nan"), "dt must be")])
def test_time_sequence_rejects_bad_k_dt(k, dt, match):
    with pytest.raises(ValueError, match=match):
        make_time_sequence(torch.rand(3, 2), k, dt)


def test_time_sequence_rejects_nan_and_bad_shape():
    pts = torch.rand(3, 2)
    pts[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        make_time_sequence(pts, 5, 1e-4)
    with pytest.raises(ValueError, match="n_points, d_in"):
        make_time_sequence(torch.rand(3), 5, 1e-4)
    with pytest.raises(TypeError):
        make_time_sequence(torch.ones(3, 2, dtype=torch.long), 5, 1e-4)


def test_wavelet_reduces_to_scaled_sine_and_starts_at_one():
    w = Wavelet()
    assert w(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]  # ω1 = ω2 = 1: W(0) = cos 0 = 1
    x = torch.linspace(-4, 4, 101)
    w2 = Wavelet(omega1=1.7, omega2=0.0)
    assert torch.allclose(w2(x), 1.7 * torch.sin(x), atol=1e-7, rtol=0)
    w(x).pow(2).sum().backward()
    assert w.omega1.grad is not None and w.omega2.grad is not None
    assert w.omega1.grad.abs().item() > 0 and w.omega2.grad.abs().item() > 0


def test_parameter_counts_match_the_reference():
    assert n_params(build_pinn(pinn_config("pinnsformer"))) == 453_561            # 1-D problems
    assert n_params(build_pinn(pinn_config("pinnsformer", d_in=3, d_out=2))) == 454_106  # NS
    # baselines by hand: PINN 2-512-512-512-1; QRes 2->256 block + 3 blocks 256->256 + 256->1
    assert n_params(build_pinn(pinn_config("pinn"))) == 3 * 512 + 2 * (512 * 512 + 512) + 513
    assert n_params(build_pinn(pinn_config("fls"))) == n_params(build_pinn(pinn_config("pinn")))
    assert n_params(build_pinn(pinn_config("qres"))) == 2 * (3 * 256) + 3 * 2 * (256 * 256 + 256) + 257


def test_reference_initialisation():
    m = build_pinn(pinn_config("pinnsformer"))
    assert all(w.omega1.item() == 1.0 and w.omega2.item() == 1.0 for w in m.modules() if isinstance(w, Wavelet))
    attn = m.encoder[0].attn
    bound = math.sqrt(6 / (4 * 32))  # the fused (3 d, d) in_proj's xavier bound, zero bias
    for proj in (attn.q, attn.k, attn.v):
        assert proj.weight.abs().max() <= bound and proj.bias.abs().max() == 0
    assert torch.all(attn.o.bias == 0.01) and torch.all(m.embed.bias == 0.01) and torch.all(m.head[4].bias == 0.01)
    assert m.head[2].weight.abs().max() <= math.sqrt(6 / 1024)  # xavier on 512 x 512


def _reference_layout_init(seed: int, d: int, d_ff: int, d_hidden: int, n_layers: int) -> dict:
    """The reference's initial weights, rebuilt from torch modules in the reference's construction
    order (embedding; one encoder layer = MultiheadAttention then a 3-layer feed-forward, deep-copied
    n_layers times; the same for the decoder; the head), then ``apply`` of xavier / bias 0.01 on
    every nn.Linear; returned under this project's parameter names (in_proj split into q, k, v)."""
    import copy

    from torch import nn

    def mlp(a, w, b):
        return nn.Sequential(nn.Linear(a, w), nn.Identity(), nn.Linear(w, w), nn.Identity(), nn.Linear(w, b))

    def stack():
        layer = nn.ModuleDict({"attn": nn.MultiheadAttention(d, 2, batch_first=True), "ff": mlp(d, d_ff, d)})
        return nn.ModuleList(copy.deepcopy(layer) for _ in range(n_layers))

    torch.manual_seed(seed)
    ref = nn.ModuleDict({"emb": nn.Linear(2, d), "enc": stack(), "dec": stack(), "out": mlp(d, d_hidden, 1)})

    def init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            m.bias.data.fill_(0.01)

    ref.apply(init_weights)
    out = {"embed.weight": ref["emb"].weight, "embed.bias": ref["emb"].bias}
    for ours, theirs in (("encoder", "enc"), ("decoder", "dec")):
        for i, layer in enumerate(ref[theirs]):
            a = layer["attn"]
            for j, p in enumerate("qkv"):
                out[f"{ours}.{i}.attn.{p}.weight"] = a.in_proj_weight[j * d:(j + 1) * d]
                out[f"{ours}.{i}.attn.{p}.bias"] = a.in_proj_bias[j * d:(j + 1) * d]
            out[f"{ours}.{i}.attn.o.weight"], out[f"{ours}.{i}.attn.o.bias"] = a.out_proj.weight, a.out_proj.bias
            for j in (0, 2, 4):
                out[f"{ours}.{i}.ff.{j}.weight"], out[f"{ours}.{i}.ff.{j}.bias"] = layer["ff"][j].weight, layer["ff"][j].bias
    for j in (0, 2, 4):
        out[f"head.{j}.weight"], out[f"head.{j}.bias"] = ref["out"][j].weight, ref["out"][j].bias
    return out


@pytest.mark.parametrize("seed,d,d_ff,d_hidden,n_layers", [(0, 32, 256, 512, 1), (3, 8, 16, 24, 2)])
def test_initial_weights_are_the_references_draw_for_draw(seed, d, d_ff, d_hidden, n_layers):
    # the same seed must give the reference's initial weights exactly: at the paper's size the
    # reaction problem converges from the reference's seed-0 draw and stalls in the trivial
    # solution (rMAE 0.98) from other draws, e.g. the one a layout-order init gave at seed 0
    want = _reference_layout_init(seed, d, d_ff, d_hidden, n_layers)
    rng_after_reference = torch.get_rng_state()
    torch.manual_seed(seed)
    m = build_pinn(pinn_config("pinnsformer", d_model=d, d_ff=d_ff, d_hidden=d_hidden, n_layers=n_layers))
    assert torch.equal(torch.get_rng_state(), rng_after_reference)  # the same number of draws
    got = {k: v for k, v in m.state_dict().items() if "omega" not in k}
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k].detach()), k
    if n_layers > 1:  # deep-copied reference layers share their construction draws (in_proj)
        assert torch.equal(m.encoder[0].attn.q.weight, m.encoder[1].attn.q.weight)
        assert not torch.equal(m.encoder[0].ff[0].weight, m.encoder[1].ff[0].weight)


def test_output_shape_and_each_step_depends_on_its_own_time():
    torch.manual_seed(0)
    m = small()
    seq = make_time_sequence(torch.rand(6, 2), 5, 0.05).requires_grad_(True)
    out = m(seq)
    assert out.shape == (6, 5, 1)
    for j in range(5):
        g = torch.autograd.grad(out[:, j].sum(), seq, retain_graph=True)[0]
        assert g[:, j, 1].abs().min() > 0  # u_j reacts to its own time t_j


def test_no_positional_encoding_permutation_equivariant():
    torch.manual_seed(0)
    m = small()
    seq = make_time_sequence(torch.rand(4, 2), 5, 0.1)
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert torch.allclose(m(seq)[:, perm], m(seq[:, perm]), atol=1e-6)
    same = torch.rand(4, 1, 2).expand(4, 5, 2).contiguous()  # five identical points: five identical outputs
    out = m(same)
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-6)


def test_attention_mixes_within_a_sequence_only():
    torch.manual_seed(0)
    m = small()
    seq = make_time_sequence(torch.rand(5, 2), 5, 0.1)
    assert torch.allclose(m(seq)[:2], m(seq[:2]), atol=1e-6)


def test_qres_block_by_hand_and_baselines_point_wise():
    torch.manual_seed(0)
    b = QResBlock(2, 3)
    x = torch.randn(4, 2)
    a, c = x @ b.h1.weight.T + b.h1.bias, x @ b.h2.weight.T + b.h2.bias
    assert torch.allclose(b(x), torch.sigmoid(a * c + a), atol=1e-6)
    for name in ("pinn", "qres", "fls"):
        m = build_pinn(pinn_config(name, d_hidden=16))
        assert m.cfg.k == 1
        pts = torch.rand(7, 2)
        assert torch.allclose(m(pseudo_sequence(m, pts))[:, 0], m(pts), atol=1e-6)
    fls = build_pinn(pinn_config("fls", d_hidden=16))
    x = torch.rand(3, 2)
    assert torch.allclose(fls.net[1](fls.net[0](x)), torch.sin(fls.net[0](x)))


def test_model_input_errors():
    m = small()
    with pytest.raises(ValueError, match="batch, k=5, d_in=2"):
        m(torch.rand(3, 4, 2))
    bad = make_time_sequence(torch.rand(3, 2), 5, 1e-4)
    bad[0, 2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m(bad)
    with pytest.raises(ValueError, match="NaN"):
        build_pinn(pinn_config("pinn", d_hidden=8))(torch.tensor([[float("inf"), 0.0]]))


@pytest.mark.parametrize("fields,match", [({"k": 0}, "k must be"), ({"dt": 0.0}, "dt must be"),
                                          ({"dt": -1.0}, "dt must be"), ({"d_model": 9}, "divisible"),
                                          ({"d_in": 0}, "d_in must be")])
def test_config_errors(fields, match):
    with pytest.raises(ValueError, match=match):
        PINNsFormerConfig(**fields)
    with pytest.raises(ValueError, match="unknown pinn"):
        pinn_config("transformer")


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    for name in ("pinnsformer", "qres"):
        m = build_pinn(pinn_config(name, d_hidden=16)) if name == "qres" else small(dt=0.01)
        save_model(m, tmp_path / name)
        m2 = load_pinn(tmp_path / name)
        seq = pseudo_sequence(m, torch.rand(5, 2))
        assert m2.cfg == m.cfg and torch.equal(m(seq), m2(seq))
