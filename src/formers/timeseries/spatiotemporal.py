"""WeatherFormer's spatiotemporal positional encoding.

Paper: Hasan, Roozbehani, Dahleh, "WeatherFormer: A Pretrained Encoder Model for Learning Robust
Weather Representations from Small Datasets", arXiv 2405.17455 (the positional-encoding equation
of its method section). With d = d_model (a multiple of 4), i = 0 .. d/4 - 1 and
ω_i = 10000^(-4i/d), the code added to the input embedding of step ``pos`` at (lat, lng) is

    PE[4i]   = sin(pos · ω_i)                 PE[4i+1] = cos(pos · ω_i)
    PE[4i+2] = sin(π · lat/180 · ω_i)         PE[4i+3] = cos(π · lng/180 · ω_i)

``time_encoding='index'`` is exactly this (``pos`` = the step index, or any time value the caller
passes). The paper leaves open how ``pos`` relates to the calendar: its fine-tuning inputs start
on January 1, so the index there *is* the time of year, but a window that starts anywhere else
carries no season. ``time_encoding='calendar'`` (a formers option, not in the paper) keeps the
geographic channels and the 4-channel interleaving and replaces the time angles by harmonics of
the calendar: with t the time in days (day of year, fraction = time of day),

    annual groups  i < G - n_diurnal:   angle_i = 2π (i + 1) t / 365.25
    diurnal groups i >= G - n_diurnal:  angle_i = 2π (i - G + n_diurnal + 1) t      (period 1 day)

so the code is periodic in the day of year (exactly, with ``n_diurnal = 0``) and, for sub-daily
data, in the time of day.

Properties (tested): the geographic channels depend on (lat, lng) only and are constant over the
window; sin(π lat/180 · ω_0) is injective on [-90, 90], so distinct latitudes give distinct codes;
cos is even, so (lat, lng) and (lat, -lng) get the *same* code (a property of the paper's
formula: it tells longitudes apart only within one sign, e.g. the Americas, lng < 0).
"""

from __future__ import annotations

import math

import torch
from torch import nn

TIME_ENCODINGS = ("index", "calendar")
YEAR = 365.25


def check_coords(coords: torch.Tensor, batch: int) -> None:
    """Raise ValueError unless coords is (batch, 2) = (lat, lng) degrees within [-90, 90] x [-180, 180]."""
    if coords.dim() != 2 or coords.shape != (batch, 2):
        raise ValueError(f"coords must be (batch, 2) = (lat, lng) degrees with batch {batch}, "
                         f"got {tuple(coords.shape)}")
    lat, lng = coords[:, 0], coords[:, 1]
    if bool((lat.abs() > 90).any()) or bool((lng.abs() > 180).any()):
        raise ValueError(f"coords out of range: lat must lie in [-90, 90] and lng in [-180, 180] degrees, "
                         f"got lat {lat.min().item():.3g}..{lat.max().item():.3g}, "
                         f"lng {lng.min().item():.3g}..{lng.max().item():.3g}")


class SpatiotemporalEncoding(nn.Module):
    """WeatherFormer's positional code (module doc). No parameters.

    Args:
        d_model: code width, a multiple of 4.
        time_encoding: ``index`` (the paper's pos · ω_i) or ``calendar`` (annual/diurnal harmonics).
        n_diurnal: with ``calendar``, how many of the d_model/4 groups use daily harmonics (0 for
            daily or coarser data); must leave at least one annual group.
        base: the frequency base (10000 in the paper).
    Call: ``pe(time, coords)`` with ``time`` (batch, seq_len) float (index, or days for
    ``calendar``) and ``coords`` (batch, 2) = (lat, lng) in degrees -> (batch, seq_len, d_model).
    Raises:
        ValueError: bad arguments; coordinates outside [-90, 90] x [-180, 180]; shapes that differ.
    """

    def __init__(self, d_model: int, time_encoding: str = "index", n_diurnal: int = 0,
                 base: float = 10000.0) -> None:
        super().__init__()
        if not isinstance(d_model, int) or d_model <= 0 or d_model % 4:
            raise ValueError(f"SpatiotemporalEncoding: d_model must be a positive multiple of 4, got {d_model!r}")
        if time_encoding not in TIME_ENCODINGS:
            raise ValueError(f"SpatiotemporalEncoding: time_encoding = {time_encoding!r} is not one of "
                             f"{list(TIME_ENCODINGS)}")
        groups = d_model // 4
        if not isinstance(n_diurnal, int) or not 0 <= n_diurnal < groups:
            raise ValueError(f"SpatiotemporalEncoding: n_diurnal must be an int in [0, {groups - 1}] "
                             f"(d_model/4 - 1), got {n_diurnal!r}")
        if time_encoding == "index" and n_diurnal:
            raise ValueError("SpatiotemporalEncoding: n_diurnal needs time_encoding='calendar'")
        if not base > 1:
            raise ValueError(f"SpatiotemporalEncoding: base must be > 1, got {base!r}")
        self.d_model, self.time_encoding, self.n_diurnal = d_model, time_encoding, n_diurnal
        i = torch.arange(groups, dtype=torch.float64)
        omega = base ** (-4 * i / d_model)
        if time_encoding == "index":
            time_freq = omega
        else:
            n_annual = groups - n_diurnal
            time_freq = torch.cat([2 * math.pi * torch.arange(1, n_annual + 1, dtype=torch.float64) / YEAR,
                                   2 * math.pi * torch.arange(1, n_diurnal + 1, dtype=torch.float64)])
        self.register_buffer("omega", omega, persistent=False)
        self.register_buffer("time_freq", time_freq, persistent=False)

    def forward(self, time: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        if time.dim() != 2:
            raise ValueError(f"time must be (batch, seq_len), got {tuple(time.shape)}")
        check_coords(coords, time.shape[0])
        b, n = time.shape
        t = time.to(torch.float64)[..., None] * self.time_freq            # (b, n, G)
        rad = coords.to(torch.float64) * (math.pi / 180.0)
        lat = torch.sin(rad[:, :1] * self.omega)                           # (b, G)
        lng = torch.cos(rad[:, 1:] * self.omega)
        geo = torch.stack([lat, lng], -1)[:, None].expand(b, n, -1, 2)     # (b, n, G, 2)
        pe = torch.cat([torch.stack([torch.sin(t), torch.cos(t)], -1), geo], -1)  # (b, n, G, 4)
        return pe.reshape(b, n, self.d_model).to(torch.get_default_dtype())
