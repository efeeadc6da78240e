"""formers.bench.profile: the kernel categories and the per-step breakdown (CPU path), and
``formers bench train --profile-steps``."""

from __future__ import annotations

import json

import pytest
import torch

from formers.bench.profile import CATEGORIES, breakdown_markdown, categorize, step_breakdown
from formers.cli import main


@pytest.mark.parametrize("name, want", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "gemm"),
    ("nvjet_tst_192x192_64x4_2x1_v_bz_coopA_TNN", "gemm"),
    ("triton_tem_fused_addmm_3", "gemm"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3", "attention"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("triton_per_fused_native_layer_norm_0", "elementwise"),
    ("triton_red_fused__log_softmax_nll_loss_forward_5", "elementwise"),
    ("triton_per_fused__to_copy_add_native_layer_norm_backward_view_9", "elementwise"),
    ("Memcpy DtoD (Device -> Device)", "copy / fill"),
    ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", "other"),
    ("void at::native::(anonymous namespace)::embedding_backward_feature_kernel<c10::BFloat16, float, long>", "indexing"),
    ("void at_cuda_detail::cub::DeviceRadixSortOnesweepKernel<...>", "indexing"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", "copy / fill"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::AUnaryFunctor<float>>", "elementwise"),
    ("aten::embedding_dense_backward", "indexing"),
    ("aten::addmm", "gemm"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("aten::gelu", "elementwise"),
    ("aten::copy_", "copy / fill"),
])
def test_categories(name, want):
    assert categorize(name) == want


def test_breakdown_of_a_gemm_heavy_step_on_cpu():
    a, b = torch.randn(384, 384), torch.randn(384, 384)
    x = torch.randn(2048)

    def step():
        for _ in range(4):
            a @ b            # 4 x 2 * 384^3 = 453 MFLOP
        (x * 2.0).sum()      # tiny

    r = step_breakdown(step, 3, torch.device("cpu"))
    assert r["steps"] == 3 and set(r["categories"]) == set(CATEGORIES)
    assert sum(r["categories"].values()) == pytest.approx(r["kernel_ms"])
    assert r["categories"]["gemm"] > 0.8 * r["kernel_ms"]
    assert r["top"][0]["category"] == "gemm" and r["top"][0]["calls"] == pytest.approx(4)
    # one thread: operator self time cannot exceed the wall time
    assert 0 < r["busy"] <= 1.05
    lines = "\n".join(breakdown_markdown([("step", r)]))
    assert "| step |" in lines and "[gemm]" in lines


@pytest.mark.parametrize("steps", [0, -1, 1.5, True])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match="profile steps"):
        step_breakdown(lambda: None, steps, torch.device("cpu"))


def test_bench_train_profile_steps(tmp_path):
    rc = main(["bench", "train", "--preset", "tiny", "--device", "cpu", "--models", "baseline",
               "--batch-size", "2", "--seq-len", "16", "--steps", "1", "--warmup", "1", "--repeats", "1",
               "--no-compile", "--profile-steps", "2", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    rec = json.loads((tmp_path / "train_bench-cpu-tiny.json").read_text())
    prof = rec["rows"][0]["profile"]
    assert prof["steps"] == 2 and prof["categories"]["gemm"] > 0 and prof["categories"]["optimizer"] > 0
    md = (tmp_path / "train_bench-cpu-tiny.md").read_text()
    assert "Where the time goes" in md and "operators' self times" in md  # CPU: what 'kernels' means


def test_profile_steps_refused():
    from formers.bench.train import TrainBenchConfig

    with pytest.raises(ValueError, match="profile_steps must be an int >= 0, got -1"):
        TrainBenchConfig(profile_steps=-1)
