"""Tiny saved language models for the explainer's server and browser tests (built, not trained:
the page shows any weights the same way)."""

import pytest
import torch

import formers.nn  # noqa: F401  (registers the parts)
from formers.nn.config import ModelConfig
from formers.nn.io import save_model
from formers.nn.models import build_model
from formers.nn.presets import apply_preset


def save_tiny(folder, preset: str, n_layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    base = ModelConfig(vocab_size=259, d_model=32, n_layers=n_layers, n_heads=4, max_seq_len=48)
    save_model(build_model(apply_preset(preset, base)), folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain-models")
    return save_tiny(root / "baseline", "baseline"), save_tiny(root / "denseformer", "denseformer", n_layers=3, seed=1)
