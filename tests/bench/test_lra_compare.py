"""benchmarks/lra_compare.py: every token-mixing attention is reached through a preset, task
options and settings hashes (the job scheduling itself is exercised by ``--smoke``)."""

import importlib.util
from pathlib import Path

from formers import registry

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("lra_compare", ROOT / "benchmarks" / "lra_compare.py")
lra = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lra)


def test_every_token_mixer_has_a_preset_that_uses_it():
    from formers.nn.presets import apply_preset
    from formers.nn.config import ModelConfig

    presets = lra.mixer_presets()
    mixers = {e.name for e in registry.entries("attention") if e.caps.mixes_tokens}
    assert set(presets.values()) == mixers and presets["baseline"] == "softmax"
    base = ModelConfig(arch="encoder", vocab_size=11, d_model=16, n_layers=2, n_heads=2, max_seq_len=64)
    for preset, mixer in presets.items():
        cfg = apply_preset(preset, base)
        assert {cfg.layer_spec(i).attention for i in range(cfg.n_layers)} == {mixer}, preset


def test_task_options_and_job_dirs(tmp_path):
    a = lra.parse_args(["--seq-len", "128", "--opt", "block=32", "--work", str(tmp_path)])
    assert a.tasks.split(",") == ["listops", "recall", "long-copy"]
    assert lra.task_options(a, "block-cross")["block"] == 32
    assert "block" not in lra.task_options(a, "recall")           # not a recall option
    assert lra.task_options(a, "recall")["arch"] == "auto" and lra.task_options(a, "recall")["seq_len"] == 128
    d1 = lra.job_dir(a, "recall", "linear")
    b = lra.parse_args(["--seq-len", "128", "--opt", "block=32", "--work", str(tmp_path), "--steps", "9"])
    assert d1 != lra.job_dir(b, "recall", "linear") and d1.parent.name.startswith("recall-128-")
    assert lra.done(d1) is None


def test_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert lra.gpus("cuda") == ["2", "3"] and lra.gpus("cpu") == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert lra.gpus("auto") == []
