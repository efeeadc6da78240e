"""Device peaks for MFU: a table of known GPUs' datasheet dense throughput (TFLOP/s), matched from
``torch.cuda.get_device_name``, overridable by the caller (``--peak-tflops``).

Figures are NVIDIA datasheet values for *dense* math (no 2:4 sparsity), per GPU:

=============  ======  ======  =====  =========================================
GPU            bf16    tf32    fp32   note
=============  ======  ======  =====  =========================================
B200           2250    1100    75     HGX B200 (per GPU)
H200 NVL       835     418     60     PCIe card
H200 (SXM)     989     495     67     same tensor cores as H100 SXM; GH200 too
H100 NVL       835     418     60
H100 PCIe      756     378     51
H100 (SXM)     989     495     67
A100           312     156     19.5   SXM and PCIe
L40S           362     183     91.6
L4             121     60      30.3
A10            125     62.5    31.2
V100           125*    -       15.7   * fp16 tensor cores (no bf16)
=============  ======  ======  =====  =========================================

``bf16`` is also used for fp16. ``fp32`` runs count against the tf32 peak when matmuls may use
TF32 (``torch.backends.cuda.matmul.allow_tf32`` or float32 matmul precision not ``highest``),
else against the fp32 (CUDA core) peak. On CPU there is no table: MFU needs an explicit peak.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DevicePeak:
    """Dense peak throughput of one GPU model in TFLOP/s (``None`` = not supported)."""

    name: str
    bf16: float | None
    tf32: float | None
    fp32: float


# Matched in order against the upper-cased device name: the first pattern whose every word
# occurs in the name wins, so specific entries (H100 NVL, H100 PCIe) come before generic ones.
PEAKS: tuple[tuple[tuple[str, ...], DevicePeak], ...] = (
    (("B200",), DevicePeak("B200", 2250.0, 1100.0, 75.0)),
    (("H200", "NVL"), DevicePeak("H200 NVL", 835.0, 418.0, 60.0)),
    (("H200",), DevicePeak("H200 SXM", 989.0, 495.0, 67.0)),
    (("GH200",), DevicePeak("GH200", 989.0, 495.0, 67.0)),
    (("H100", "NVL"), DevicePeak("H100 NVL", 835.0, 418.0, 60.0)),
    (("H100", "PCIE"), DevicePeak("H100 PCIe", 756.0, 378.0, 51.0)),
    (("H100",), DevicePeak("H100 SXM", 989.0, 495.0, 67.0)),
    (("A100",), DevicePeak("A100", 312.0, 156.0, 19.5)),
    (("L40S",), DevicePeak("L40S", 362.0, 183.0, 91.6)),
    (("L4",), DevicePeak("L4", 121.0, 60.0, 30.3)),
    (("A10",), DevicePeak("A10", 125.0, 62.5, 31.2)),
    (("V100",), DevicePeak("V100", 125.0, None, 15.7)),
)

DTYPES = ("bf16", "fp16", "fp32")


def lookup_peak(device_name: str) -> DevicePeak | None:
    """The :class:`DevicePeak` whose pattern matches ``device_name`` (e.g. ``"NVIDIA H200"``), or
    None for an unknown device (every CPU). Words match whole tokens of the name, so ``L4`` does
    not match ``L40S`` and ``A10`` does not match ``A100``."""
    tokens = set(device_name.upper().replace("-", " ").replace("_", " ").split())
    for words, peak in PEAKS:
        if all(w in tokens for w in words):
            return peak
    return None


def peak_tflops(device_name: str, dtype: str, override: float | None = None,
                tf32: bool = False) -> tuple[float | None, str]:
    """(peak TFLOP/s or None, where it came from) for ``dtype`` on ``device_name``.

    Args:
        device_name: ``torch.cuda.get_device_name`` or ``"cpu"``.
        dtype: ``bf16`` | ``fp16`` | ``fp32`` (the compute dtype of the matmuls).
        override: a peak given by the user (``--peak-tflops``); wins over the table.
        tf32: fp32 matmuls may use TF32 tensor cores (count against the tf32 peak).
    Returns:
        (peak, source): source is ``"override"``, ``"table:<entry> <column>"`` or the reason
        there is none (``"unknown device ..."``; MFU is then not reported).
    Raises:
        ValueError: unknown dtype, or an override that is not a positive finite number.
    """
    if dtype not in DTYPES:
        raise ValueError(f"peak_tflops: dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if override is not None:
        if not isinstance(override, (int, float)) or not 0 < float(override) < float("inf"):
            raise ValueError(f"peak_tflops: override (--peak-tflops) must be a positive number, got {override!r}")
        return float(override), "override"
    peak = lookup_peak(device_name)
    if peak is None:
        return None, f"unknown device {device_name!r}: no table entry (give --peak-tflops for MFU)"
    column = "bf16" if dtype in ("bf16", "fp16") else ("tf32" if tf32 else "fp32")
    value = getattr(peak, column)
    if value is None:
        return None, f"table:{peak.name} has no {column} peak"
    return value, f"table:{peak.name} {column}"


def mfu(flops_per_token: float, tokens_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: flops_per_token * tokens_per_s / (peak TFLOP/s * 1e12), or None
    without a peak."""
    if peak is None:
        return None
    return flops_per_token * tokens_per_s / (peak * 1e12)


__all__ = ["DevicePeak", "PEAKS", "lookup_peak", "peak_tflops", "mfu"]
