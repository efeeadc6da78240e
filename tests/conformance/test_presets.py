"""Every model preset (registry kind ``model``) applied to a small base config, as a decoder, an
encoder and an encoder-decoder."""

from __future__ import annotations

import pytest
import torch

from formers import registry

from .checks import (
    PRESET_BASE, build, check_backends, check_bidirectional, check_cache, check_causal,
    check_default_path, check_forward_backward, check_lengths, check_padding, check_save_load,
    preset_config,
)

PRESETS = [e.name for e in registry.entries("model")]


def _model(name: str, arch: str = "decoder"):
    """The preset in a small model; a preset with causal-only mixers (e.g. streaming attention) must
    refuse to build an encoder (the calling test then ends here, having checked the refusal)."""
    if arch != "decoder":
        cfg = preset_config(name, arch)
        n_enc = cfg.n_encoder_layers or cfg.n_layers
        if not all(registry.get("attention", cfg.layer_spec(i).attention).caps.bidirectional
                   for i in range(n_enc)):
            with pytest.raises(ValueError, match="causal-only"):
                build(cfg)
            pytest.skip(f"{name} has causal-only layers; refuses arch {arch!r} (checked)")
    if arch != "encoder":  # and a preset with non-causal mixers (Linformer ...) refuses decoders
        cfg = preset_config(name, arch)
        if not all(registry.get("attention", cfg.layer_spec(i).attention).caps.causal
                   for i in range(cfg.n_layers)):
            with pytest.raises(ValueError, match="cannot run causally"):
                build(cfg)
            pytest.skip(f"{name} has non-causal layers; refuses arch {arch!r} (checked)")
    return build(preset_config(name, arch))


def _pad(batch: int, length: int, keep: int) -> torch.Tensor:
    m = torch.ones(batch, length, dtype=torch.bool)
    m[-1, keep:] = False
    return m


def test_registry_has_presets():
    assert {"baseline", "llama", "gqa", "mqa"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_keeps_base_size(name):
    cfg = preset_config(name)
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.max_seq_len) == (
        PRESET_BASE.vocab_size, PRESET_BASE.d_model, PRESET_BASE.n_layers, PRESET_BASE.n_heads,
        PRESET_BASE.max_seq_len)


# --------------------------------------------------------------------------------- decoder
@pytest.mark.parametrize("name", PRESETS)
def test_decoder(name):
    m = _model(name)
    check_forward_backward(m)
    check_causal(m)
    check_default_path(m, expect_sdpa=True)


@pytest.mark.parametrize("prefill,chunk", [(1, 1), (6, 1), (3, 4), (7, 5)])
@pytest.mark.parametrize("name", PRESETS)
def test_decoder_cache_equals_full(name, prefill, chunk):
    check_cache(_model(name), prefill, chunk)


@pytest.mark.parametrize("name", PRESETS)
def test_decoder_sdpa_equals_reference(name):
    m = _model(name)
    check_backends(m)
    check_backends(m, key_mask=_pad(2, 9, 6))
    check_backends(m, cached=True)


@pytest.mark.parametrize("name", PRESETS)
def test_decoder_save_load(name, tmp_path):
    check_save_load(_model(name), tmp_path / "m")


@pytest.mark.parametrize("name", PRESETS)
def test_decoder_odd_lengths(name):
    check_lengths(_model(name))


# --------------------------------------------------------------------------------- encoder
@pytest.mark.parametrize("name", PRESETS)
def test_encoder(name, tmp_path):
    m = _model(name, "encoder")
    check_forward_backward(m)
    check_bidirectional(m)
    check_padding(m)
    check_backends(m, key_mask=_pad(2, 9, 4))
    check_save_load(m, tmp_path / "m")
    check_lengths(m, (1, 7, 9, 513))


# ------------------------------------------------------------------------- encoder-decoder
@pytest.mark.parametrize("name", PRESETS)
def test_seq2seq(name, tmp_path):
    m = _model(name, "encoder-decoder")
    check_forward_backward(m)
    check_causal(m)
    check_cache(m, 1, 1)
    check_cache(m, 4, 3)
    check_backends(m, key_mask=_pad(2, 6, 2))
    check_backends(m, cached=True)
    check_save_load(m, tmp_path / "m")
