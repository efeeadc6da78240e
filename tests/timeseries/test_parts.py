"""RevIN, SAM, SAMformer and the baselines: the faithfulness checks of the papers' notes."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import formers.timeseries  # noqa: F401  (registers the forecasters)
from formers.nn.io import save_model
from formers.timeseries import RevIN
from formers.timeseries.forecaster import build_forecaster, forecaster_config, load_forecaster
from formers.timeseries.linear import moving_average
from formers.train.optim import SAM


# ------------------------------------------------------------------------------------ RevIN
def test_revin_round_trip_and_statistics():
    rv = RevIN(5)
    with torch.no_grad():
        rv.weight.uniform_(0.5, 2.0)
        rv.bias.normal_()
    x = torch.randn(4, 64, 5) * 30 + 100
    z, stats = rv(x)
    assert torch.allclose(rv.inverse(z, stats), x, rtol=1e-5, atol=1e-3)  # |x| ~ 100: 1e-5 relative
    zn = (z - rv.bias) / rv.weight  # before the affine map: mean 0, population std ~1 per channel
    assert torch.allclose(zn.mean(1), torch.zeros(4, 5), atol=1e-4)
    assert torch.allclose(zn.std(1, unbiased=False), torch.ones(4, 5), atol=1e-4)
    assert not stats[0].requires_grad and not stats[1].requires_grad  # detached, as the reference
    with pytest.raises(ValueError, match="expected"):
        rv(torch.randn(2, 8, 3))


# ------------------------------------------------------------------------------------ SAM
def _quadratic(a, b):
    # L(a, b) = 0.5 a^2 + 1.5 b^2  (A = diag(1, 3)), two separate tensors: the norm must be global
    return 0.5 * a.pow(2).sum() + 1.5 * b.pow(2).sum()


def test_sam_two_pass_step_on_a_hand_computed_quadratic():
    a = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = SAM(torch.optim.SGD([a, b], lr=0.1), rho=0.1)

    def closure():
        loss = _quadratic(a, b)
        loss.backward()
        return loss

    loss = opt.step(closure)
    # by hand: g = (1, 3), |g| = sqrt(10); e = 0.1 g / sqrt(10) = (0.0316228, 0.0948683);
    # g' = A (w + e) = (1.0316228, 3.2846050); w1 = w - 0.1 g' = (0.8968377, 0.6715395)
    assert loss.item() == pytest.approx(2.0)
    assert a.item() == pytest.approx(1 - 0.1 * (1 + 0.1 / math.sqrt(10)), abs=1e-12)
    assert b.item() == pytest.approx(1 - 0.1 * 3 * (1 + 0.3 / math.sqrt(10)), abs=1e-12)
    assert a.item() == pytest.approx(0.8968377, abs=1e-7) and b.item() == pytest.approx(0.6715395, abs=1e-7)
    # a per-tensor norm would give e = (0.1, 0.1): b1 = 1 - 0.1 * 3.3 = 0.67, which differs
    assert abs(b.item() - 0.67) > 1e-3


def test_sam_rho_zero_equals_the_base_optimizer_bit_for_bit():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    twin = copy.deepcopy(net)
    x, y = torch.randn(32, 6), torch.randn(32, 2)
    sam = SAM(torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-5), rho=0.0)
    adam = torch.optim.Adam(twin.parameters(), lr=1e-2, weight_decay=1e-5)
    for _ in range(5):
        sam.step(lambda: torch.nn.functional.mse_loss(net(x), y).backward())
        adam.zero_grad()
        torch.nn.functional.mse_loss(twin(x), y).backward()
        adam.step()
    for p, q in zip(net.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    assert sam.state_dict()["state"].keys() == adam.state_dict()["state"].keys()


def test_sam_errors():
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="rho"):
        SAM(torch.optim.SGD([p], lr=0.1), rho=-1)
    with pytest.raises(TypeError):
        SAM(object(), rho=0.1)
    s = SAM(torch.optim.SGD([p], lr=0.1), rho=0.1)
    with pytest.raises(RuntimeError):
        s.restore()


# ------------------------------------------------------------------------------------ SAMformer
def _samformer(C=5, L=32, H=8):
    m = build_forecaster(forecaster_config("samformer", look_back=L, horizon=H, n_channels=C))
    with torch.no_grad():  # non-trivial RevIN affine parameters
        m.revin.weight.uniform_(0.5, 2.0)
        m.revin.bias.normal_()
    return m.eval()


def test_samformer_attention_rows_sum_to_one():
    m = _samformer()
    a = m.attention(torch.randn(3, 32, 5))
    assert a.shape == (3, 5, 5)
    assert torch.allclose(a.sum(-1), torch.ones(3, 5), atol=1e-6)
    assert (a >= 0).all()


def test_samformer_channel_permutation_equivariance():
    m = _samformer()
    x = torch.randn(4, 32, 5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    twin = copy.deepcopy(m)
    with torch.no_grad():  # RevIN's per-channel parameters move with the channels
        twin.revin.weight.copy_(m.revin.weight[perm])
        twin.revin.bias.copy_(m.revin.bias[perm])
    assert torch.allclose(twin(x[..., perm]), m(x)[..., perm], atol=1e-5)
    # without permuting RevIN's parameters the outputs differ: the test can fail
    assert not torch.allclose(m(x[..., perm]), m(x)[..., perm], atol=1e-3)


def test_samformer_matches_the_papers_equation():
    m = _samformer(C=3, L=16, H=4)
    x = torch.randn(2, 16, 3)
    z, stats = m.revin(x)
    X = z.transpose(1, 2)
    A = torch.softmax((X @ m.q.weight.T + m.q.bias) @ (X @ m.k.weight.T + m.k.bias).transpose(1, 2) / 4.0, -1)
    out = (X + A @ (X @ m.v.weight.T + m.v.bias)) @ m.head.weight.T + m.head.bias
    ref = m.revin.inverse(out.transpose(1, 2), stats)
    assert torch.allclose(m(x), ref, atol=1e-5)


# ------------------------------------------------------------------------------------ all forecasters
@pytest.mark.parametrize("name", ["samformer", "dlinear", "patchtst"])
def test_forecaster_shapes_save_load_and_errors(name, tmp_path):
    cfg = forecaster_config(name, look_back=48, horizon=12, n_channels=3)
    m = build_forecaster(cfg).eval()
    x = torch.randn(2, 48, 3)
    y = m(x)
    assert y.shape == (2, 12, 3) and torch.isfinite(y).all()
    save_model(m, tmp_path / name)
    again = load_forecaster(tmp_path / name).eval()
    assert type(again) is type(m) and again.cfg == cfg
    assert torch.equal(again(x), y)
    with pytest.raises(ValueError, match="expected x of shape"):
        m(torch.randn(2, 47, 3))
    with pytest.raises(ValueError, match="look_back"):
        forecaster_config(name, look_back=0)


def test_dlinear_moving_average_and_decomposition():
    x = torch.arange(10.0).reshape(1, 10, 1)
    avg = moving_average(x, 3)
    # edges repeat the first/last value: (0+0+1)/3 at the start, (8+9+9)/3 at the end
    assert torch.allclose(avg[0, :, 0], torch.tensor([1 / 3, 1, 2, 3, 4, 5, 6, 7, 8, 26 / 3]))
    with pytest.raises(ValueError, match="odd"):
        forecaster_config("dlinear", kernel=4)


def test_patchtst_patch_count_and_channel_independence():
    cfg = forecaster_config("patchtst", look_back=512, horizon=96, n_channels=7)
    assert cfg.n_patches == 64  # (512 - 16) / 8 + 2, PatchTST's 64 "words"
    m = build_forecaster(forecaster_config("patchtst", look_back=32, horizon=8, n_channels=3,
                                           dropout=0.0)).eval()
    x = torch.randn(2, 32, 3)
    x2 = x.clone()
    x2[..., 1] += torch.randn(2, 32)
    y, y2 = m(x), m(x2)
    assert torch.allclose(y[..., [0, 2]], y2[..., [0, 2]], atol=1e-6)  # other channels untouched
    assert not torch.allclose(y[..., 1], y2[..., 1])
    with pytest.raises(ValueError, match="patch_len"):
        forecaster_config("patchtst", look_back=8, patch_len=16)
