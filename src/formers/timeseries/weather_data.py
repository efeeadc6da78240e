"""A generated seasonal weather set for WeatherFormer's pretraining and fine-tuning demonstration.

The paper (Hasan, Roozbehani, Dahleh, "WeatherFormer: A Pretrained Encoder Model for Learning
Robust Weather Representations from Small Datasets", arXiv 2405.17455) pretrains on NASA POWER
satellite data (28 daily variables, 1984-2022, 119 rectangles over the Americas) and fine-tunes on
county-level soybean yield and NYC influenza data. None of these is available offline (all need
downloads), so the paper's numbers cannot be reproduced here. This module makes a stand-in with
the same *shape* of problem: a large unlabelled archive of daily multivariate weather at many
locations, and a small labelled set whose target depends nonlinearly on one season's weather.

Generator (:func:`generate_weather`), per location (lat, lng in degrees) and day d of a
365-day calendar (leap days ignored):

* extraterrestrial radiation Ra(lat, d) in MJ/m²/day (FAO-56 eqs. 21-25: declination, sunset hour
  angle, inverse relative Earth-Sun distance) drives the annual cycle, so its amplitude and phase
  depend on latitude (the southern hemisphere's summer is in January);
* daily AR(1) latent processes: a temperature anomaly (φ = 0.85), a wetness/cloud state
  (φ = 0.6) and a wind anomaly (φ = 0.5);
* eight variables (NASA POWER-like names), correlated through the latents:
  ``T2M_MAX``/``T2M_MIN`` (°C: a climatology lagging Ra by 30 days, plus the anomaly, cooled by
  cloud; the diurnal range shrinks under cloud), ``PRECTOT`` (mm/day: wet when the wetness state
  plus a per-location rainy-season cycle passes a threshold; gamma amounts), ``RH2M`` (%),
  ``ALLSKY_SFC_SW_DWN`` (MJ/m²/day: Ra × cloud transmissivity), ``WS2M`` (m/s: windier in winter),
  ``GWETTOP`` (0-1: a soil bucket filled by rain and emptied by Hargreaves ET0) and ``VPD`` (kPa,
  from Tetens' saturation pressure and RH).

Downstream target (:func:`yield_proxy`), for northern mid-latitude "crop" locations and one
calendar year: a yield-like number

    y = 4 (1 - exp(-GDD / 1500)) · exp(-((R - 450) / 300)²) · (0.6 + 0.8 W) - 0.015 H + ε,

with GDD the growing-degree days (base 10 °C, capped at 30 °C) of days 120-269 (May-September),
R the rainfall (mm) of the same days, W the mean soil wetness of days 150-249, H the heat-stress
degree-days above 32 °C of days 180-239 (tmax), and ε ~ N(0, 0.1²): too little or too much rain,
a cool season, drought and heat waves all lower it. Models see weekly means (52 weeks, Jan 1 -
Dec 30) of the eight variables, standardised with the archive's statistics.

Splits (:func:`make_weather_splits`): ``archive`` locations (both hemispheres, lat -40..55,
lng -125..-35) are the unlabelled pretraining set (its last ``val_years`` years are the
pretraining validation windows); ``crop`` locations (lat 30..50, lng -105..-80; disjoint from the
archive) give labelled location-years, shuffled once with the data seed and cut into test,
validation and a labelled training pool. Nothing of the crop locations is used for pretraining.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from formers.config import Config

VARIABLES = ("T2M_MAX", "T2M_MIN", "PRECTOT", "RH2M", "ALLSKY_SFC_SW_DWN", "WS2M", "GWETTOP", "VPD")
UNITS = ("degC", "degC", "mm/day", "%", "MJ/m2/day", "m/s", "fraction", "kPa")
YEAR_DAYS = 365
WEEKS = 52
ARCHIVE_BOX = ((-40.0, 55.0), (-125.0, -35.0))  # (lat range, lng range)
CROP_BOX = ((30.0, 50.0), (-105.0, -80.0))


@dataclass
class WeatherSetConfig(Config):
    """Size of the generated set: ``n_archive`` unlabelled locations, ``n_crop`` labelled (crop)
    locations, ``n_years`` years each, ``seed`` of the generator, ``val_years`` archive years kept
    for pretraining validation, ``n_test``/``n_val`` labelled location-years for test/validation
    (the rest of the ``n_crop * n_years`` is the labelled training pool).

    Raises ValueError (naming the field) for a non-positive size, val_years >= n_years, or test +
    validation leaving no labelled training rows."""

    n_archive: int = 48
    n_crop: int = 32
    n_years: int = 20
    seed: int = 0
    val_years: int = 2
    n_test: int = 256
    n_val: int = 64

    def __post_init__(self) -> None:
        o = "WeatherSetConfig"
        for name in ("n_archive", "n_crop", "n_years", "val_years", "n_test", "n_val"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{o}.{name} must be an int > 0, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"{o}.seed must be an int >= 0, got {self.seed!r}")
        if self.val_years >= self.n_years:
            raise ValueError(f"{o}.val_years = {self.val_years} must be < n_years = {self.n_years}")
        if self.n_test + self.n_val >= self.n_crop * self.n_years:
            raise ValueError(f"{o}: n_test + n_val = {self.n_test + self.n_val} leaves no labelled training "
                             f"rows out of n_crop * n_years = {self.n_crop * self.n_years}")

    @property
    def n_pool(self) -> int:
        """Labelled training pool size (location-years)."""
        return self.n_crop * self.n_years - self.n_test - self.n_val


@dataclass
class WeatherSet:
    """Daily weather: ``daily`` (n_locations, n_years * 365, n_vars) float32 in physical units
    (:data:`UNITS`), ``lat``/``lng`` (n_locations,) in degrees."""

    daily: np.ndarray
    lat: np.ndarray
    lng: np.ndarray


def extraterrestrial_radiation(lat_deg: np.ndarray, doy: np.ndarray) -> np.ndarray:
    """Ra in MJ/m²/day (FAO-56 eqs. 21-25) for latitudes (n,) and day-of-year index (d,) -> (n, d).
    ``doy`` is 0-based (0 = Jan 1)."""
    phi = np.radians(lat_deg)[:, None]
    j = np.asarray(doy, dtype=np.float64)[None, :] + 1.0
    dr = 1 + 0.033 * np.cos(2 * np.pi * j / 365)
    delta = 0.409 * np.sin(2 * np.pi * j / 365 - 1.39)
    ws = np.arccos(np.clip(-np.tan(phi) * np.tan(delta), -1.0, 1.0))
    return 24 * 60 / np.pi * 0.0820 * dr * (ws * np.sin(phi) * np.sin(delta)
                                             + np.cos(phi) * np.cos(delta) * np.sin(ws))


def _ar1(rng: np.random.Generator, n: int, days: int, phi: float, sd: float) -> np.ndarray:
    """(n, days) stationary AR(1) paths with coefficient ``phi`` and innovation std ``sd``."""
    from scipy.signal import lfilter

    e = rng.standard_normal((n, days)) * sd
    e[:, 0] *= 1.0 / math.sqrt(1 - phi * phi)  # start in the stationary distribution
    return lfilter([1.0], [1.0, -phi], e, axis=1)


def generate_weather(lat: np.ndarray, lng: np.ndarray, n_years: int, seed: int) -> WeatherSet:
    """Daily weather at locations (lat, lng) for ``n_years`` 365-day years (see the module doc).

    Raises ValueError for latitudes outside [-66, 66] (polar night is not modelled) or longitudes
    outside [-180, 180]."""
    lat = np.asarray(lat, dtype=np.float64)
    lng = np.asarray(lng, dtype=np.float64)
    if lat.shape != lng.shape or lat.ndim != 1:
        raise ValueError(f"lat and lng must be 1-D of one length, got {lat.shape} and {lng.shape}")
    if np.any(np.abs(lat) > 66):
        raise ValueError(f"latitudes must lie in [-66, 66] degrees, got {lat[np.abs(lat) > 66][:3]}")
    if np.any(np.abs(lng) > 180):
        raise ValueError(f"longitudes must lie in [-180, 180] degrees, got {lng[np.abs(lng) > 180][:3]}")
    rng = np.random.default_rng([seed, 7])
    n, days = len(lat), n_years * YEAR_DAYS
    doy = np.tile(np.arange(YEAR_DAYS), n_years)
    ra_year = extraterrestrial_radiation(lat, np.arange(YEAR_DAYS))           # (n, 365)
    ra = ra_year[:, doy]
    ra_lag = np.roll(ra_year, 30, axis=1)[:, doy]                              # climate lags the sun
    # per-location climate
    continental = np.clip((lng + 125) / 90, 0, 1) * rng.uniform(0.6, 1.0, n)   # drier/more extreme inland
    t_base = 31 - 0.45 * np.abs(lat) - rng.uniform(0, 3, n)
    t_gain = 0.6 + 0.4 * continental
    rain_phase = rng.uniform(0, YEAR_DAYS, n)
    rain_amp = rng.uniform(0.0, 1.0, n)
    wet_freq = rng.uniform(0.2, 0.45, n) * (1.1 - 0.4 * continental)
    rain_scale = rng.uniform(4.0, 9.0, n)
    # latent weather
    a_t = _ar1(rng, n, days, 0.85, 1.6)
    w = _ar1(rng, n, days, 0.6, 0.8)                                           # stationary sd 1
    a_ws = _ar1(rng, n, days, 0.5, 0.6)
    season = rain_amp[:, None] * np.cos(2 * np.pi * (doy[None, :] - rain_phase[:, None]) / YEAR_DAYS)
    from scipy.special import ndtri

    z = ndtri(1 - wet_freq)[:, None]
    excess = w + season - z
    wet = excess > 0
    precip = np.where(wet, rain_scale[:, None] * (0.5 + excess) * rng.gamma(0.9, 1.0, (n, days)), 0.0)
    cloud = 1 / (1 + np.exp(-1.5 * (excess + 0.8)))
    rs = np.clip(ra * (0.75 - 0.5 * cloud) + 0.5 * rng.standard_normal((n, days)), 0.5, None)
    t_clim = t_base[:, None] + t_gain[:, None] * (ra_lag - ra_year.mean(1, keepdims=True))
    t_mean = t_clim + a_t - 3.0 * (cloud - 0.5)
    dtr = np.clip(5 + 9 * (1 - cloud) + 0.1 * (rs - 15), 1.0, None)
    t_max, t_min = t_mean + dtr / 2, t_mean - dtr / 2
    et0 = np.clip(0.0023 * ra / 2.45 * (t_mean + 17.8) * np.sqrt(dtr), 0.0, None)  # Hargreaves, mm/day
    soil = np.empty((n, days))
    s = np.full(n, 0.5)
    for t in range(days):  # bucket model: rain in, evaporation out (proportional to wetness)
        s = np.clip(s + (precip[:, t] - 0.8 * et0[:, t] * s) / 80.0, 0.02, 1.0)
        soil[:, t] = s
    rh = np.clip(40 + 35 * cloud + 15 * soil - 1.0 * a_t + 4 * rng.standard_normal((n, days)), 5, 100)
    winter = (ra_year.mean(1, keepdims=True) - ra) / (ra_year.std(1, keepdims=True) + 1.0)
    wind = np.clip(2.5 + 0.8 * winter + 0.6 * a_ws + 0.5 * np.abs(w), 0.2, None)
    es = 0.6108 * np.exp(17.27 * t_mean / (t_mean + 237.3))
    vpd = es * (1 - rh / 100)
    daily = np.stack([t_max, t_min, precip, rh, rs, wind, soil, vpd], axis=-1).astype(np.float32)
    return WeatherSet(daily=daily, lat=lat, lng=lng)


def yield_proxy(ws: WeatherSet, seed: int) -> np.ndarray:
    """The yield-like target (n_locations, n_years) of the module doc, from daily weather."""
    n, days, _ = ws.daily.shape
    d = ws.daily.reshape(n, days // YEAR_DAYS, YEAR_DAYS, -1).astype(np.float64)
    t_mean = (d[..., 0] + d[..., 1]) / 2
    gdd = (np.clip(t_mean[..., 120:270], 10, 30) - 10).sum(-1)
    rain = d[..., 120:270, 2].sum(-1)
    wetness = d[..., 150:250, 6].mean(-1)
    heat = np.clip(d[..., 180:240, 0] - 32, 0, None).sum(-1)
    y = 4 * (1 - np.exp(-gdd / 1500)) * np.exp(-(((rain - 450) / 300) ** 2)) * (0.6 + 0.8 * wetness)
    y = y - 0.015 * heat
    return y + 0.1 * np.random.default_rng([seed, 11]).standard_normal(y.shape)


def weekly(daily: np.ndarray) -> np.ndarray:
    """Weekly means: (n, n_years * 365, V) -> (n, n_years, 52, V); day 365 of each year is dropped."""
    n, days, v = daily.shape
    years = days // YEAR_DAYS
    d = daily.reshape(n, years, YEAR_DAYS, v)[:, :, : WEEKS * 7]
    return d.reshape(n, years, WEEKS, 7, v).mean(3)


def week_days(n_weeks: int = WEEKS) -> np.ndarray:
    """Day of year (0-based, fractional) at the middle of each week: 3, 10, ..., (n_weeks,)."""
    return 7.0 * np.arange(n_weeks) + 3.0


def _locations(rng: np.random.Generator, n: int, box) -> tuple[np.ndarray, np.ndarray]:
    (la0, la1), (lo0, lo1) = box
    return rng.uniform(la0, la1, n), rng.uniform(lo0, lo1, n)


@dataclass
class WeatherSplits:
    """The generated set, weekly and standardised with the archive's training-year statistics.

    archive: (n_archive, n_years, 52, V) unlabelled weeks; archive_coords: (n_archive, 2) lat, lng.
    mean, std: (V,) the per-variable statistics used (physical units).
    labelled: dict of ``x`` (N, 52, V), ``coords`` (N, 2), ``y`` (N,) standardised target, for
    ``train`` (the pool: take its first n rows for a labelled set of n), ``val`` and ``test``.
    y_mean, y_std: the target's standardisation (over every crop location-year).
    """

    archive: np.ndarray
    archive_coords: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    labelled: dict[str, dict[str, np.ndarray]]
    y_mean: float
    y_std: float


def make_weather_splits(cfg: WeatherSetConfig) -> WeatherSplits:
    """Generate the archive and crop locations and cut the labelled splits (module doc)."""
    rng = np.random.default_rng([cfg.seed, 3])
    a_lat, a_lng = _locations(rng, cfg.n_archive, ARCHIVE_BOX)
    c_lat, c_lng = _locations(rng, cfg.n_crop, CROP_BOX)
    archive = generate_weather(a_lat, a_lng, cfg.n_years, cfg.seed)
    crop = generate_weather(c_lat, c_lng, cfg.n_years, cfg.seed + 10_000)
    aw, cw = weekly(archive.daily), weekly(crop.daily)
    fit = aw[:, : cfg.n_years - cfg.val_years].reshape(-1, len(VARIABLES))
    mean, std = fit.mean(0), fit.std(0) + 1e-6
    aw = ((aw - mean) / std).astype(np.float32)
    cw = ((cw - mean) / std).astype(np.float32)
    y = yield_proxy(crop, cfg.seed)
    y_mean, y_std = float(y.mean()), float(y.std())
    x = cw.reshape(cfg.n_crop * cfg.n_years, WEEKS, len(VARIABLES))
    coords = np.repeat(np.stack([c_lat, c_lng], 1), cfg.n_years, axis=0).astype(np.float32)
    yy = ((y.reshape(-1) - y_mean) / y_std).astype(np.float32)
    order = np.random.default_rng([cfg.seed, 5]).permutation(len(yy))
    cuts = {"test": order[: cfg.n_test], "val": order[cfg.n_test: cfg.n_test + cfg.n_val],
            "train": order[cfg.n_test + cfg.n_val:]}
    labelled = {k: {"x": x[i], "coords": coords[i], "y": yy[i]} for k, i in cuts.items()}
    return WeatherSplits(archive=aw, archive_coords=np.stack([a_lat, a_lng], 1).astype(np.float32),
                         mean=mean, std=std, labelled=labelled, y_mean=y_mean, y_std=y_std)
