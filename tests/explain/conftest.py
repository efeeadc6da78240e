"""Tiny saved language models for the explainer's server and browser tests (built, not trained:
the page shows any weights the same way)."""

import os
import shutil
import tempfile
from pathlib import Path

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


CHROMIUM = os.environ.get("FORMERS_CHROMIUM", "/usr/bin/chromium")
# the flags of this machine's notes: no background connections (the network is closed), no sandbox (root)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("FORMERS_ARTIFACTS", Path(__file__).resolve().parents[2] / "tmp" / "artifacts")) / "explain"
TIMEOUT = 30_000  # ms; the machine is shared


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, headless, driven by Playwright (no browser download). `make test`
    installs both; missing ones fail with the install hint (FORMERS_SKIP_BROWSER=1 skips on purpose)."""
    if os.environ.get("FORMERS_SKIP_BROWSER") == "1":
        pytest.skip("FORMERS_SKIP_BROWSER=1")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need the Python package playwright: pip install -e '.[dev]' (or make test)")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"the browser tests need Chromium at {CHROMIUM}: apt-get install -y chromium chromium-driver "
                    f"(make test does it)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="explain-chromium-")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=FLAGS, headless=True,
                                                   viewport={"width": 1400, "height": 1000})
        ctx.set_default_timeout(TIMEOUT)
        yield ctx
        ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def artifacts():
    """Folder for screenshots (test artifacts)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
