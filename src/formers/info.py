"""What this machine offers formers: torch, device, threads, and which attention backends work."""

from __future__ import annotations

import importlib
import platform
from typing import Any

import torch


def _try_sdpa(device: str, backend: Any) -> tuple[bool, str]:
    """Run one tiny SDPA call restricted to ``backend``; report success or the reason it failed."""
    from torch.nn.attention import sdpa_kernel

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    q = torch.randn(1, 2, 8, 16, device=device, dtype=dtype)
    try:
        with sdpa_kernel([backend]):
            torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        return True, f"ok ({dtype})"
    except Exception as e:  # the reason is what we report
        return False, str(e).strip().splitlines()[0][:120]


def backend_report() -> list[dict[str, str]]:
    """One row per (device, attention backend): usable yes/no and why."""
    from torch.nn.attention import SDPBackend

    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    names = {"flash": SDPBackend.FLASH_ATTENTION, "memory-efficient": SDPBackend.EFFICIENT_ATTENTION,
             "math": SDPBackend.MATH}
    if hasattr(SDPBackend, "CUDNN_ATTENTION"):
        names["cudnn"] = SDPBackend.CUDNN_ATTENTION
    for dev in devices:
        for name, b in names.items():
            if dev == "cpu" and name in ("memory-efficient", "cudnn"):
                rows.append({"device": dev, "backend": f"sdpa/{name}", "usable": "no",
                             "why": "CUDA-only kernel"})
                continue
            ok, why = _try_sdpa(dev, b)
            rows.append({"device": dev, "backend": f"sdpa/{name}", "usable": "yes" if ok else "no", "why": why})
        try:
            importlib.import_module("torch.nn.attention.flex_attention")

            rows.append({"device": dev, "backend": "flex_attention", "usable": "yes",
                         "why": "importable; fast only under torch.compile"})
        except ImportError as e:
            rows.append({"device": dev, "backend": "flex_attention", "usable": "no", "why": str(e)})
        rows.append({"device": dev, "backend": "reference", "usable": "yes",
                     "why": "explicit softmax(QK^T)V in fp32 (always available)"})
    return rows


def system_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
        info["bf16"] = torch.cuda.is_bf16_supported()
    return info
