"""ODEFormer input encoding: the 3-token float codec and the time/state rescaling.

Source: d'Ascoli et al., "ODEFormer: Symbolic Regression of Dynamical Systems with Transformers"
(arXiv 2310.05573), section 3 ("Tokenization", "Rescaling"); reference code
``odeformer/envs/encoders.py::FloatSequences`` (``float_precision=3``, ``max_exponent=100``) and
``odeformer/model/utils_wrapper.py::Scaler``.

Stable interface (used by the model side; keep the signatures):

* ``FLOAT_TOKENS``: the codec's vocabulary, ``["+", "-", "NaN", "N0000".."N9999", "E-100".."E100"]``
  (10,204 tokens); ``FLOAT_INDEX``: token -> position in ``FLOAT_TOKENS``.
* ``encode_float(x: float) -> list[str]``: ``[sign, "Nmmmm", "Ee"]`` with ``x ~ sign * mmmm * 10**e``,
  the 4-digit mantissa being ``"%.3e" % x`` without its dot (so ``e`` is the printed exponent
  minus 3). Example: ``encode_float(0.012345) == ["+", "N1235", "E-5"]``. Relative round-off at
  most 5e-4.
* ``decode_float(tokens: Sequence[str]) -> float``: the inverse (ValueError on malformed tokens).
* ``encode_floats(x: ndarray (...)) -> ndarray (..., 3) of int``: vectorised, the positions of the
  three tokens in ``FLOAT_TOKENS`` (what a point embedder consumes); ``decode_floats(ids (..., 3))
  -> ndarray (...)``; ``float_tokens(x) -> list[str]``: the flat token list of an array.
* ``Rescaling``: ``Rescaling.fit(t, x)`` then ``.transform(t, x) -> (t_s, x_s)``,
  ``.scale_system(system)`` (a law in original units -> the same law in scaled units) and
  ``.unscale_system(system)`` (a predicted law in scaled units -> original units, exact).

Edge cases (the reference crashes or leaves them undefined; ours are documented deviations):
NaN and +-inf encode as three ``"NaN"`` tokens; a magnitude whose exponent would exceed E100
(|x| >= 9.9995e103) also encodes as NaN; one below E-100 (|x| < ~1e-97) encodes as signed zero
``[sign, "N0000", "E0"]`` (as the reference does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # expr imports this module; the reverse import happens lazily
    from formers.sciml.ode.expr import Node

PRECISION = 3  # digits after the dot in "%.3e": a 4-digit mantissa
N_MANTISSA = 10 ** (PRECISION + 1)
MAX_EXPONENT = 100

SIGNS = ("+", "-")
NAN_TOKEN = "NaN"
FLOAT_TOKENS: list[str] = (
    ["+", "-", NAN_TOKEN]
    + [f"N{i:04d}" for i in range(N_MANTISSA)]
    + [f"E{e}" for e in range(-MAX_EXPONENT, MAX_EXPONENT + 1)]
)
FLOAT_INDEX: dict[str, int] = {tok: i for i, tok in enumerate(FLOAT_TOKENS)}
_M0 = 3  # position of N0000
_E0 = 3 + N_MANTISSA + MAX_EXPONENT  # position of E0
NAN_ID = FLOAT_INDEX[NAN_TOKEN]


def encode_float(x: float) -> list[str]:
    """One float as three tokens ``[sign, "Nmmmm", "Ee"]`` (value = sign * mmmm * 10**e).

    ``"%.3e"`` formatting decides the rounding (round-half-even on the exact binary value), as
    in the reference. NaN, +-inf and |x| >= 9.9995e103 give ``["NaN"] * 3``.
    """
    x = float(x)
    if not math.isfinite(x):
        return [NAN_TOKEN] * 3
    sign = "-" if math.copysign(1.0, x) < 0 else "+"
    mant, exp = (f"%.{PRECISION}e" % abs(x)).split("e")
    e = int(exp) - PRECISION
    if e > MAX_EXPONENT:
        return [NAN_TOKEN] * 3
    if e < -MAX_EXPONENT:
        return [sign, "N0000", "E0"]
    return [sign, "N" + mant.replace(".", ""), f"E{e}"]


def decode_float(tokens: Sequence[str]) -> float:
    """The float of three codec tokens; ``["NaN"] * 3`` gives nan.

    Raises:
        ValueError: not exactly three tokens, or a token out of place (the message names it).
    """
    if len(tokens) != 3:
        raise ValueError(f"a float is 3 tokens (sign, mantissa, exponent), got {list(tokens)}")
    s, m, e = tokens
    if s == NAN_TOKEN or m == NAN_TOKEN or e == NAN_TOKEN:
        if s == m == e == NAN_TOKEN:
            return float("nan")
        raise ValueError(f"partial NaN float {list(tokens)}: NaN must fill all three tokens")
    if s not in SIGNS:
        raise ValueError(f"float sign token must be '+' or '-', got {s!r}")
    if not (len(m) == PRECISION + 2 and m[0] == "N" and m[1:].isdigit()):
        raise ValueError(f"float mantissa token must be N0000..N9999, got {m!r}")
    if e not in FLOAT_INDEX or not e.startswith("E"):
        raise ValueError(f"float exponent token must be E-{MAX_EXPONENT}..E{MAX_EXPONENT}, got {e!r}")
    v = float(f"{int(m[1:])}e{int(e[1:])}")
    return -v if s == "-" else v


def encode_floats(x: np.ndarray) -> np.ndarray:
    """Vectorised codec: ``x (...)`` -> token positions in ``FLOAT_TOKENS``, ``(..., 3)`` int64.

    Equal to ``[FLOAT_INDEX[tok] for tok in encode_float(v)]`` for every element: the mantissa
    comes from numpy arithmetic, and elements that land within 1e-6 of a rounding tie are
    re-done with ``encode_float`` so the printf rounding is kept exactly.
    """
    x = np.asarray(x, dtype=np.float64)
    flat = x.reshape(-1)
    out = np.empty((flat.size, 3), dtype=np.int64)
    a = np.abs(flat)
    finite = np.isfinite(flat)
    nz = finite & (a > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        e = np.where(nz, np.floor(np.log10(np.where(nz, a, 1.0))), 0.0) - PRECISION
    # magnitudes far below E-100 encode as signed zero (``under`` below); they stay out of the
    # mantissa arithmetic, where 10**e underflows to 0 for subnormals (|x| < ~1e-320: inf / inf)
    nonzero = nz
    nz = nonzero & (e >= -2 * MAX_EXPONENT)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scaled = np.where(nz, a / 10.0 ** np.where(nz, e, 0.0), 0.0)
        # log10 can be off by one near powers of ten: bring the mantissa into [1000, 10000)
        low = nz & (scaled < N_MANTISSA / 10 - 0.5)
        e = np.where(low, e - 1, e)
        scaled = np.where(low, a / 10.0 ** np.where(low, e, 0.0), scaled)
        high = nz & (scaled >= N_MANTISSA - 0.5)
        m = np.rint(scaled)
        e = np.where(high, e + 1, e)
        m = np.where(high, np.rint(np.where(high, a / 10.0 ** np.where(high, e, 0.0), 0.0)), m)
    m = np.where(nz, m, 0.0)
    frac = np.abs(scaled - np.floor(scaled) - 0.5)
    tie = nz & (frac < 1e-6)
    sign = np.signbit(flat).astype(np.int64)  # 0 = '+', 1 = '-'
    out[:, 0] = sign
    out[:, 1] = _M0 + m.astype(np.int64)
    out[:, 2] = _E0 + np.clip(e, -MAX_EXPONENT - 1, MAX_EXPONENT + 1).astype(np.int64)
    under = nonzero & (e < -MAX_EXPONENT)
    out[under, 1] = _M0
    out[under, 2] = _E0
    bad = ~finite | (nz & (e > MAX_EXPONENT))
    out[bad] = NAN_ID
    for i in np.flatnonzero(tie & ~bad & ~under):
        out[i] = [FLOAT_INDEX[tok] for tok in encode_float(flat[i])]
    return out.reshape(x.shape + (3,))


def decode_floats(ids: np.ndarray) -> np.ndarray:
    """Vectorised inverse of :func:`encode_floats`: ``ids (..., 3)`` -> floats ``(...)``.

    Raises:
        ValueError: an id in the wrong slot (a mantissa id where a sign belongs, ...).
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.shape[-1:] != (3,):
        raise ValueError(f"ids must have a last axis of 3 (sign, mantissa, exponent), got {ids.shape}")
    s, m, e = ids[..., 0], ids[..., 1], ids[..., 2]
    nan = (s == NAN_ID) & (m == NAN_ID) & (e == NAN_ID)
    ok = (s >= 0) & (s <= 1) & (m >= _M0) & (m < _M0 + N_MANTISSA) & (e >= _E0 - MAX_EXPONENT) & (
        e <= _E0 + MAX_EXPONENT)
    if not np.all(ok | nan):
        raise ValueError("decode_floats: some triples are not (sign, mantissa, exponent) positions "
                         f"of FLOAT_TOKENS, e.g. {ids[~(ok | nan)][0].tolist()}")
    with np.errstate(over="ignore"):
        v = (m - _M0).astype(np.float64) * 10.0 ** (e - _E0).astype(np.float64)
    v = np.where(s == 1, -v, v)
    return np.where(nan, np.nan, v)


def float_tokens(x: np.ndarray) -> list[str]:
    """The flat token list of an array (3 tokens per element, row-major)."""
    return [FLOAT_TOKENS[i] for i in encode_floats(x).reshape(-1)]


@dataclass(frozen=True)
class Rescaling:
    """Affine time map and per-component state scaling (ODEFormer's inference-time ``Scaler``).

    Scaled time ``s = a_t * t + b_t`` maps ``[t_min, t_max]`` onto ``time_range`` (paper: [1, 10]);
    scaled state ``y_j = scale_j * x_j`` with ``scale_j = feature_scale / x_j(t_earliest)`` (a zero
    initial value is replaced by 1, as in the reference).

    If the scaled data obey ``dy/ds = g(y, s)``, the original data obey, exactly,
    ``dx_d/dt = (a_t / scale_d) * g_d(scale * x, a_t * t + b_t)`` (:meth:`unscale_system`, the
    reference's ``rescale_function``); :meth:`scale_system` is its inverse.

    Attributes: a_t, b_t (floats), scale (tuple of dim floats).
    """

    a_t: float
    b_t: float
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, t: np.ndarray, x: np.ndarray, time_range: tuple[float, float] = (1.0, 10.0),
            feature_scale: float = 1.0) -> "Rescaling":
        """Fit to a trajectory ``t (n,)``, ``x (n, dim)``.

        Raises:
            ValueError: shapes disagree, fewer than 2 distinct times, non-finite values, or an
                empty/reversed ``time_range``.
        """
        t = np.asarray(t, dtype=np.float64)
        x = np.asarray(x, dtype=np.float64)
        if t.ndim != 1 or x.ndim != 2 or x.shape[0] != t.shape[0]:
            raise ValueError(f"t must be (n,) and x (n, dim) with the same n, got {t.shape} and {x.shape}")
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(x))):
            raise ValueError("t and x must be finite (no NaN or inf) to fit a rescaling")
        lo, hi = float(t.min()), float(t.max())
        if hi <= lo:
            raise ValueError(f"rescaling needs at least two distinct times, got t in [{lo}, {hi}]")
        if not time_range[1] > time_range[0]:
            raise ValueError(f"time_range must be increasing, got {time_range}")
        if not feature_scale > 0:
            raise ValueError(f"feature_scale must be > 0, got {feature_scale}")
        a_t = (time_range[1] - time_range[0]) / (hi - lo)
        b_t = time_range[0] - a_t * lo
        x0 = x[int(np.argmin(t))].copy()
        x0[x0 == 0] = 1.0
        return cls(float(a_t), float(b_t), tuple(float(feature_scale / v) for v in x0))

    def transform(self, t: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(t (n,), x (n, dim)) -> (s (n,), y (n, dim))`` in scaled units."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.scale):
            raise ValueError(f"x must be (n, {len(self.scale)}), got {x.shape}")
        return self.a_t * np.asarray(t, dtype=np.float64) + self.b_t, x * np.asarray(self.scale)

    def inverse_transform(self, s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scaled ``(s, y)`` back to original ``(t, x)``."""
        y = np.asarray(y, dtype=np.float64)
        return (np.asarray(s, dtype=np.float64) - self.b_t) / self.a_t, y / np.asarray(self.scale)

    def unscale_system(self, system: Sequence["Node"]) -> tuple["Node", ...]:
        """A law ``dy/ds = g(y, s)`` found on scaled data -> ``dx/dt`` in original units (exact).

        Every ``x_j`` becomes ``scale_j * x_j``, ``t`` becomes ``a_t * t + b_t`` and component d
        is multiplied by ``a_t / scale_d``. No simplification is done (call
        :func:`formers.sciml.ode.expr.simplify` for a compact form).

        Raises:
            ValueError: the system's number of components differs from the fitted dimension.
        """
        return self._map(system, list(self.scale), self.a_t, self.b_t,
                         [self.a_t / s for s in self.scale])

    def scale_system(self, system: Sequence["Node"]) -> tuple["Node", ...]:
        """A law ``dx/dt = f(x, t)`` in original units -> ``dy/ds`` in scaled units (exact); the
        inverse of :meth:`unscale_system`: ``y_j -> y_j / scale_j``, ``s -> (s - b_t) / a_t``,
        component d times ``scale_d / a_t``."""
        return self._map(system, [1.0 / s for s in self.scale], 1.0 / self.a_t, -self.b_t / self.a_t,
                         [s / self.a_t for s in self.scale])

    def _map(self, system, var_mul, t_mul, t_add, out_factor):
        """Substitute x_j -> var_mul_j * x_j and t -> t_mul * t + t_add, then scale component d
        by out_factor_d."""
        from formers.sciml.ode.expr import Node, const, substitute, var

        system = tuple(system)
        if len(system) != len(self.scale):
            raise ValueError(f"the system has {len(system)} components but the rescaling was fitted "
                             f"to {len(self.scale)} state columns")
        mapping = {f"x_{j}": Node("mul", (const(var_mul[j]), var(j))) for j in range(len(system))}
        mapping["t"] = Node("add", (Node("mul", (const(t_mul), Node("t"))), const(t_add)))
        return tuple(Node("mul", (const(out_factor[d]), substitute(c, mapping)))
                     for d, c in enumerate(system))
