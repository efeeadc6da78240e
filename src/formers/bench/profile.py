"""Where a training step's time goes: a kernel-time breakdown from ``torch.profiler`` (issue 8:
"every missed goal has a profile-based explanation").

:func:`step_breakdown` runs ``step()`` a few times under the profiler and sums the device time of
every kernel (CUDA) or the self time of every operator (CPU) by category:

- ``gemm``: cuBLAS / CUTLASS / nvJet matrix products and inductor's matmul templates (``triton_tem``)
  (CPU: ``aten::mm``, ``addmm``, ``bmm``, ``linear`` ...);
- ``attention``: flash / cuDNN / memory-efficient SDPA kernels (CPU: ``scaled_dot_product`` ops);
- ``optimizer``: the fused AdamW and other ``multi_tensor`` kernels;
- ``elementwise``: on CUDA the elementwise / reduction kernels inductor generates (LayerNorm, GELU, bias,
  residual adds, the cross-entropy, casts) and ATen's own elementwise / reduce kernels; on CPU every
  other arithmetic operator;
- ``indexing``: embedding lookups and their backward (sorts, scatters), gathers, index kernels;
- ``copy / fill``: memcpy, memset, copies, concatenation, fills;
- ``other``: the rest (e.g. NCCL).

``busy`` = summed kernel time / wall time of the profiled steps: below 1 the GPU waits on the CPU
(launch overhead, Python, synchronisation). Kernels that run concurrently on two streams are counted
twice, so ``busy`` can exceed 1 in multi-stream code; a training step here uses one stream.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Callable

CATEGORIES = ("gemm", "attention", "optimizer", "elementwise", "indexing", "copy / fill", "other")

# (category, substrings of the lower-cased kernel / operator name); the first match wins, so the
# attention kernels (whose names also hold "sm90" or "gemm"-like parts) are tested before GEMMs
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("flash", "fmha", "attention", "sdpa", "scaled_dot_product")),
    ("optimizer", ("multi_tensor", "adam", "_foreach_")),
    ("gemm", ("gemm", "cutlass", "nvjet", "xmma", "cublas", "aten::mm", "aten::addmm",
              "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear", "mkl", "sgemm")),
    ("indexing", ("embedding", "index", "scatter", "gather", "radixsort", "radix_sort")),
    ("copy / fill", ("memcpy", "memset", "copy", "fill", "aten::cat", "aten::zero", "aten::empty")),
    ("elementwise", ("aten::", "elementwise_kernel", "reduce_kernel")),
)


def categorize(name: str) -> str:
    """The category (one of :data:`CATEGORIES`) of a kernel or operator name. Inductor's kernels
    (``triton_...``) are GEMM templates (``triton_tem``) or fused elementwise / reduction code, even
    when their names list a fused ``_to_copy`` or ``fill``."""
    low = name.lower()
    if low.startswith("triton_"):
        return "gemm" if low.startswith("triton_tem") else "elementwise"
    for cat, keys in _RULES:
        if any(k in low for k in keys):
            return cat
    return "other"


def step_breakdown(step: Callable[[], Any], steps: int, device, top: int = 40) -> dict[str, Any]:
    """Profile ``steps`` calls of ``step()`` on ``device`` (a ``torch.device``).

    Returns ``{"steps", "wall_ms", "kernel_ms", "busy", "kernels", "categories": {cat: ms},
    "top": [{"name", "category", "ms", "calls"}]}``, every time per step in milliseconds:
    ``kernel_ms`` is the summed device time of the kernels (CUDA) or the summed operator self time
    (CPU), ``kernels`` the launches (CUDA) / operator calls (CPU) per step, ``top`` the ``top``
    names by time.

    Raises:
        ValueError: ``steps`` < 1.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"profile steps must be an int >= 1, got {steps!r}")
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    sync()
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall = time.perf_counter() - t0
    times: dict[str, float] = defaultdict(float)  # microseconds over all steps
    calls: dict[str, int] = defaultdict(int)
    want = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    for ev in prof.key_averages():
        # on the GPU timeline a record_function (``Optimizer.step#AdamW.step``) also appears as an
        # annotation spanning its kernels: counting it would count those kernels twice
        if ev.device_type != want or (cuda and getattr(ev, "is_user_annotation", False)):
            continue
        us = _self_device_us(ev) if cuda else ev.self_cpu_time_total
        if us <= 0:
            continue
        times[ev.key] += us
        calls[ev.key] += ev.count
    per = 1e3 * steps  # microseconds over all steps -> milliseconds per step
    cats = dict.fromkeys(CATEGORIES, 0.0)
    for name, us in times.items():
        cats[categorize(name)] += us / per
    kernel_ms = sum(times.values()) / per
    wall_ms = wall * 1e3 / steps
    ranked = sorted(times, key=times.get, reverse=True)[:top]
    return {
        "steps": steps, "wall_ms": wall_ms, "kernel_ms": kernel_ms,
        "busy": kernel_ms / wall_ms if wall_ms > 0 else None,
        "kernels": sum(calls.values()) / steps, "categories": cats,
        "top": [{"name": n, "category": categorize(n), "ms": times[n] / per, "calls": calls[n] / steps}
                for n in ranked],
    }


def _self_device_us(ev) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        v = getattr(ev, attr, None)
        if v is not None:
            return float(v)
    return 0.0


def breakdown_markdown(rows: list[tuple[str, dict[str, Any]]], top: int = 12) -> list[str]:
    """Markdown lines: one row per (label, :func:`step_breakdown` result) with the wall time, the
    busy fraction and the milliseconds of each category; then each label's ``top`` kernels."""
    head = ["entry", "wall (ms)", "kernels (ms)", "busy", "launches"] + list(CATEGORIES)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, b in rows:
        cells = [label, f"{b['wall_ms']:.2f}", f"{b['kernel_ms']:.2f}",
                 "-" if b["busy"] is None else f"{b['busy']:.1%}", f"{b['kernels']:.0f}"]
        # "-": a category that the record's profiler version did not have
        cells += [f"{b['categories'][c]:.2f}" if c in b["categories"] else "-" for c in CATEGORIES]
        lines.append("| " + " | ".join(cells) + " |")
    for label, b in rows:
        lines += ["", f"Top kernels of {label} (ms per step, calls per step):", ""]
        lines += [f"- {t['ms']:.3f} ms, {t['calls']:.0f}x [{t['category']}] `{t['name'][:110]}`" for t in b["top"][:top]]
    return lines


__all__ = ["CATEGORIES", "categorize", "step_breakdown", "breakdown_markdown"]
