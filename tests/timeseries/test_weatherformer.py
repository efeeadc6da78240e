"""WeatherFormer (arXiv 2405.17455): the spatiotemporal code, masked-variable loss, models, save/load,
the generated weather set, the two tasks and a short pretraining run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from formers import registry
from formers.nn.io import save_model
from formers.timeseries import weather_data as W
from formers.timeseries.spatiotemporal import SpatiotemporalEncoding
from formers.timeseries.weather_task import WeatherFinetuneTask, WeatherPretrainTask, resolve_init
from formers.timeseries.weatherformer import (WeatherFormer, WeatherFormerConfig, WeatherRegressor,
                                              WeatherRegressorConfig, load_weather_model, masked_mse,
                                              sample_variable_mask)

SMALL = dict(n_archive=4, n_crop=20, n_years=20)  # a small generated set (pool of 80 labelled rows)


def coords(*pairs):
    return torch.tensor(pairs, dtype=torch.float32)


def tiny(**over) -> WeatherFormerConfig:
    return WeatherFormerConfig(**{"d_model": 16, "n_heads": 2, "n_layers": 1, "max_seq_len": 12,
                                  "dropout": 0.0, **over})


def inputs(b=3, n=12, v=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, v, generator=g)
    t = torch.arange(n, dtype=torch.float32).expand(b, -1) * 7 + 3
    c = coords(*[(40.0 - 10 * i, -90.0 + 5 * i) for i in range(b)])
    return x, t, c


# ------------------------------------------------------------------ spatiotemporal encoding
def test_index_code_matches_the_paper_formula_by_hand():
    d = 8  # two groups: omega_0 = 1, omega_1 = 10000^(-4/8) = 0.01
    pe = SpatiotemporalEncoding(d, "index")(torch.tensor([[0.0, 3.0]]), coords((30.0, -60.0)))
    lat, lng = math.pi * 30 / 180, math.pi * -60 / 180
    for pos, row in zip((0.0, 3.0), pe[0]):
        want = [math.sin(pos), math.cos(pos), math.sin(lat), math.cos(lng),
                math.sin(pos * 0.01), math.cos(pos * 0.01), math.sin(lat * 0.01), math.cos(lng * 0.01)]
        assert torch.allclose(row, torch.tensor(want), atol=1e-6)


def test_calendar_code_is_periodic_in_day_of_year_and_geo_channels_are_constant():
    pe = SpatiotemporalEncoding(32, "calendar")
    t = torch.tensor([[0.0, 17.5, 200.0, 364.0]])
    c = coords((12.0, -70.0))
    a, b = pe(t, c), pe(t + W.YEAR_DAYS + 0.25, c)   # one calendar year later (365.25 days)
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(pe(t + 30, c), a, atol=1e-2)  # a month later differs
    geo = a.reshape(1, 4, 8, 4)[..., 2:]
    assert torch.equal(geo, geo[:, :1].expand_as(geo))   # lat/lng channels do not vary over time


def test_diurnal_harmonics_are_periodic_in_the_time_of_day():
    pe = SpatiotemporalEncoding(16, "calendar", n_diurnal=1)
    c = coords((0.0, 0.0))
    t = torch.tensor([[10.25]])
    a, b = pe(t, c)[0, 0].reshape(4, 4), pe(t + 1.0, c)[0, 0].reshape(4, 4)
    assert torch.allclose(a[3], b[3], atol=1e-5)           # the diurnal group: same time of day
    assert not torch.allclose(a[0], b[0], atol=1e-4)       # annual groups move with the day
    assert not torch.allclose(a[3], pe(t + 0.5, c)[0, 0].reshape(4, 4)[3], atol=1e-2)


def test_distinct_locations_get_distinct_codes_but_lng_sign_is_invisible():
    pe = SpatiotemporalEncoding(16, "index")
    lats = torch.linspace(-89, 89, 31)
    lngs = torch.linspace(-179, -1, 31)
    grid = torch.cartesian_prod(lats, lngs)
    codes = pe(torch.zeros(len(grid), 1), grid)[:, 0]
    dist = torch.cdist(codes, codes) + torch.eye(len(grid)) * 10
    assert dist.min() > 1e-4                               # every (lat, lng<0) pair differs
    mirror = pe(torch.zeros(1, 1), coords((40.0, 100.0)))
    assert torch.allclose(pe(torch.zeros(1, 1), coords((40.0, -100.0))), mirror)  # cos is even


def test_encoding_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple of 4"):
        SpatiotemporalEncoding(10)
    with pytest.raises(ValueError, match="time_encoding"):
        SpatiotemporalEncoding(8, "weekly")
    with pytest.raises(ValueError, match="lat must lie"):
        SpatiotemporalEncoding(8)(torch.zeros(1, 2), coords((95.0, 0.0)))
    with pytest.raises(ValueError, match="n_diurnal"):
        SpatiotemporalEncoding(8, "index", n_diurnal=1)


# ------------------------------------------------------------------ masking and the loss
def test_masked_loss_ignores_unmasked_targets():
    x, t, c = inputs()
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[:, [1, 5]] = True
    pred = torch.randn_like(x)
    base = masked_mse(pred, x, mask)
    y = x.clone()
    y[:, :, 0] += 100.0            # an unmasked variable changes
    y[0, 3, 2] = float("nan")      # even a NaN there does not leak
    assert torch.equal(masked_mse(pred, y, mask), base)
    y[:, :, 1] += 1.0              # a masked variable changes: the loss moves
    assert not torch.equal(masked_mse(pred, y, mask), base)
    hand = ((pred - x)[:, :, [1, 5]] ** 2).mean()
    assert torch.allclose(base, hand)
    with pytest.raises(ValueError, match="hides no entry"):
        masked_mse(pred, x, torch.zeros(3, 8, dtype=torch.bool))


def test_hidden_inputs_do_not_reach_the_model():
    torch.manual_seed(0)
    m = WeatherFormer(tiny()).eval()
    x, t, c = inputs()
    mask = sample_variable_mask(3, 8, 2, 2, torch.Generator().manual_seed(1))
    y = x.clone()
    y[mask[:, None, :].expand_as(y)] = float("nan")
    assert torch.equal(m(x, t, c, mask), m(y, t, c, mask))


def test_sample_variable_mask_counts():
    m = sample_variable_mask(500, 8, 1, 4, torch.Generator().manual_seed(0))
    k = m.sum(1)
    assert m.shape == (500, 8) and int(k.min()) == 1 and int(k.max()) == 4
    assert set(k.tolist()) == {1, 2, 3, 4}
    assert (m.float().mean(0) > 0.2).all()     # every variable gets masked sometimes
    with pytest.raises(ValueError, match="min_masked"):
        sample_variable_mask(2, 8, 0, 3)


# ------------------------------------------------------------------ models, shapes, save/load
def test_shapes_and_registry():
    x, t, c = inputs()
    enc = WeatherFormer(tiny(time_encoding="calendar"))
    assert enc(x, t, c).shape == (3, 12, 8) and enc.encode(x, t, c).shape == (3, 12, 16)
    reg = WeatherRegressor(WeatherRegressorConfig(encoder=tiny(), n_outputs=2, pooling="mean"))
    assert reg(x, t, c).shape == (3, 2)
    for name in ("weatherformer", "weatherformer-regressor"):
        e = registry.get("weather", name)
        assert e.paper.arxiv == "2405.17455" and e.config is not None
    with pytest.raises(ValueError, match="seq_len <= 12"):
        enc(torch.randn(1, 13, 8), torch.zeros(1, 13), coords((0.0, 0.0)))
    with pytest.raises(ValueError, match="d_model"):
        WeatherFormerConfig(d_model=18, n_heads=2)
    with pytest.raises(ValueError, match="pooling"):
        WeatherRegressorConfig(pooling="max")


def test_save_load_equal_outputs_and_encoder_transfer(tmp_path):
    x, t, c = inputs()
    torch.manual_seed(3)
    reg = WeatherRegressor(WeatherRegressorConfig(encoder=tiny())).eval()
    save_model(reg, tmp_path / "reg")
    back = load_weather_model(tmp_path / "reg").eval()
    assert isinstance(back, WeatherRegressor) and torch.equal(back(x, t, c), reg(x, t, c))
    enc = WeatherFormer(tiny()).eval()
    save_model(enc, tmp_path / "enc")
    fresh = WeatherRegressor(WeatherRegressorConfig(encoder=tiny(), freeze_encoder=True))
    fresh.load_encoder(tmp_path / "enc")
    assert torch.equal(fresh.encoder.encode(x, t, c), enc.encode(x, t, c))
    fresh.train()
    assert not fresh.encoder.training and fresh.head.training
    assert not any(p.requires_grad for p in fresh.encoder.parameters())
    other = WeatherRegressor(WeatherRegressorConfig(encoder=tiny(d_model=32)))
    with pytest.raises(ValueError, match="encoder config differs"):
        other.load_encoder(tmp_path / "enc")


# ------------------------------------------------------------------ the generated set
def test_generated_weather_has_latitude_dependent_seasons():
    ws = W.generate_weather(np.array([45.0, -45.0, 2.0]), np.array([-90.0, -65.0, -60.0]), 2, seed=0)
    assert ws.daily.shape == (3, 730, 8) and np.isfinite(ws.daily).all()
    tmax = ws.daily[..., 0].reshape(3, 2, 365)
    jan, jul = tmax[:, :, :31].mean((1, 2)), tmax[:, :, 181:212].mean((1, 2))
    assert jul[0] - jan[0] > 10 and jan[1] - jul[1] > 10      # opposite seasons in the two hemispheres
    assert abs(jul[2] - jan[2]) < abs(jul[0] - jan[0]) / 2       # weak annual cycle near the equator
    assert (ws.daily[..., 2] >= 0).all() and (ws.daily[..., 0] > ws.daily[..., 1]).all()
    with pytest.raises(ValueError, match="latitudes"):
        W.generate_weather(np.array([80.0]), np.array([0.0]), 1, 0)


def test_splits_are_disjoint_and_target_depends_on_weather():
    s = W.make_weather_splits(W.WeatherSetConfig(**SMALL))
    lab = s.labelled
    assert {k: len(v["y"]) for k, v in lab.items()} == {"test": 256, "val": 64, "train": 80}
    assert s.archive.shape == (4, 20, 52, 8)
    fit = s.archive[:, :18].reshape(-1, 8)
    assert np.allclose(fit.mean(0), 0, atol=1e-4) and np.allclose(fit.std(0), 1, atol=1e-3)
    y = np.concatenate([v["y"] for v in lab.values()])
    assert abs(y.mean()) < 1e-5 and abs(y.std() - 1) < 1e-4
    with pytest.raises(ValueError, match="leaves no labelled"):
        W.WeatherSetConfig(n_crop=2, n_years=10)


# ------------------------------------------------------------------ tasks and a short training run
def test_pretraining_reduces_masked_loss_and_finetune_task_loads_it(tmp_path):
    """200 Adam steps of masked-variable pretraining must cut the validation masked MSE to below
    0.3 of the untrained model's and below 0.3 of the mean predictor's (about 1); it reaches about 0.2."""
    torch.manual_seed(0)
    task = WeatherPretrainTask(seed=0, seq_len=26, min_masked=1, max_masked=3, val_windows=64, **SMALL)
    cfg = task.model_config().replace(d_model=16, n_heads=2, n_layers=1, dropout=0.0)
    model = task.build_model(cfg)
    dev = torch.device("cpu")
    before = task.evaluate(model.eval(), 1, 64, dev)["val_loss"]
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(200):
        loss = task.loss(model, task.train_batch(step, 0, 32))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = task.evaluate(model.eval(), 1, 64, dev)["val_loss"]
    assert after < 0.3 * before and after < 0.3 * task.zero_mse, (before, after, task.zero_mse)

    save_model(model, tmp_path / "pre")
    with pytest.raises(ValueError, match="max_seq_len"):  # a 26-step encoder cannot read a 52-week year
        WeatherFinetuneTask(seed=0, n_labelled=8, init=str(tmp_path / "pre"), **SMALL)
    full = task.model_config().replace(d_model=16, n_heads=2, n_layers=1, max_seq_len=52)
    enc = WeatherFormer(full)
    save_model(enc, tmp_path / "pre52")
    ft = WeatherFinetuneTask(seed=0, n_labelled=8, init=str(tmp_path / "pre52"), freeze=True, **SMALL)
    reg = ft.build_model(ft.model_config())
    assert torch.equal(reg.encoder.in_proj.weight, enc.in_proj.weight)
    batch = ft.train_batch(0, 0, 32)
    assert batch["x"].shape == (8, 52, 8) and torch.isfinite(ft.loss(reg, batch))
    metrics = ft.evaluate(reg, 1, 64, dev)
    assert set(metrics) == {"val_mse", "val_r2", "test_mse", "test_r2"}


def test_task_options_are_checked_before_work(tmp_path):
    with pytest.raises(ValueError, match="n_labelled"):
        WeatherFinetuneTask(n_labelled=10_000, **SMALL)
    with pytest.raises(ValueError, match="freeze=true needs init"):
        WeatherFinetuneTask(freeze=True, **SMALL)
    with pytest.raises(FileNotFoundError, match="no saved model"):
        resolve_init(tmp_path)
    with pytest.raises(ValueError, match="max_masked"):
        WeatherPretrainTask(max_masked=9, **SMALL)
    with pytest.raises(ValueError, match="time_encoding"):
        WeatherPretrainTask(time_encoding="hourly", **SMALL)


def test_observed_variables_hide_the_others_for_every_arm():
    """``observed``: the downstream data lacks the other variables; they are fed as masked, so a
    change in them cannot change a prediction (scratch model here; the same path serves init)."""
    ft = WeatherFinetuneTask(seed=0, n_labelled=8, observed="PRECTOT,T2M_MAX", **SMALL)
    assert ft.options["observed"] == ["T2M_MAX", "PRECTOT"]
    batch = ft.train_batch(0, 0, 4)
    assert batch["mask"].tolist()[0] == [v not in ("T2M_MAX", "PRECTOT") for v in W.VARIABLES]
    model = ft.build_model(ft.model_config()).eval()
    args = [batch[k] for k in ("x", "time", "coords", "mask")]
    out = model(*args)
    x2 = batch["x"].clone()
    x2[:, :, 1] += 5.0  # T2M_MIN, not observed
    assert torch.equal(model(x2, *args[1:]), out)
    x2[:, :, 0] += 5.0  # T2M_MAX, observed
    assert not torch.equal(model(x2, *args[1:]), out)
    model.train()  # evaluate scores in eval mode (dropout 0.1 off) and gives the mode back
    dev = torch.device("cpu")
    assert ft.evaluate(model, 1, 64, dev) == ft.evaluate(model, 1, 64, dev) and model.training
    with pytest.raises(ValueError, match="observed must name"):
        WeatherFinetuneTask(observed=["RAIN"], **SMALL)
