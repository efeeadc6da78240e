"""Every token mixer (registry kind ``attention``) in a small decoder, encoder and encoder-decoder."""

from __future__ import annotations

import pytest
import torch

from formers import registry

from .checks import (
    build, check_backends, check_bidirectional, check_cache, check_causal, check_default_path,
    check_forward_backward, check_lengths, check_padding, check_save_load, mixer_config,
)

ENTRIES = list(registry.entries("attention"))
DECODER = [e.name for e in ENTRIES if e.caps.causal]
ENCODER = [e.name for e in ENTRIES if e.caps.bidirectional]
CACHED = [e.name for e in ENTRIES if e.caps.causal and e.caps.kv_cache]
SEQ2SEQ = [e.name for e in ENTRIES if e.caps.causal and e.caps.bidirectional and e.caps.kv_cache]
POSITIONS = ["learned", "rope", "alibi", "sinusoidal", "none"]


def _build(name: str, arch: str = "decoder", position: str = "learned"):
    """The mixer in a small model; a mixer without a score bias must refuse ALiBi at build time
    (the calling test then ends here, having checked the refusal)."""
    if position == "alibi" and not registry.get("attention", name).caps.score_bias:
        with pytest.raises(ValueError, match="ALiBi"):
            build(mixer_config(name, arch=arch, position=position))
        pytest.skip(f"{name} refuses ALiBi at build time (checked)")
    return build(mixer_config(name, arch=arch, position=position))


def _biased(name: str) -> str:
    """ALiBi (a score bias on top of the masks) where the mixer takes one, else RoPE."""
    return "alibi" if registry.get("attention", name).caps.score_bias else "rope"


def test_registry_has_mixers():
    assert "softmax" in DECODER and "softmax" in CACHED


# --------------------------------------------------------------------------------- decoder
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("name", DECODER)
def test_decoder_forward_backward(name, position):
    check_forward_backward(_build(name, position=position))


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("name", DECODER)
def test_decoder_causal(name, position):
    check_causal(_build(name, position=position))


@pytest.mark.parametrize("prefill,chunk", [(1, 1), (5, 1), (7, 3), (4, 4)])
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("name", CACHED)
def test_decoder_cache_equals_full(name, position, prefill, chunk):
    check_cache(_build(name, position=position), prefill, chunk)


@pytest.mark.parametrize("position", ["learned", "rope", "alibi"])
@pytest.mark.parametrize("name", DECODER)
def test_decoder_sdpa_equals_reference(name, position):
    check_backends(_build(name, position=position))


@pytest.mark.parametrize("name", DECODER)
def test_decoder_sdpa_equals_reference_with_padding(name):
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    check_backends(_build(name, position=_biased(name)), key_mask=mask)


@pytest.mark.parametrize("position", ["learned", "rope", "alibi"])
@pytest.mark.parametrize("name", CACHED)
def test_decoder_sdpa_equals_reference_cached(name, position):
    check_backends(_build(name, position=position), cached=True)


@pytest.mark.parametrize("name", DECODER)
def test_decoder_default_path(name):
    e = registry.get("attention", name)
    check_default_path(_build(name), expect_sdpa="sdpa" in e.caps.backend)


@pytest.mark.parametrize("name", DECODER)
def test_decoder_save_load(name, tmp_path):
    check_save_load(_build(name, position="rope"), tmp_path / "m")


@pytest.mark.parametrize("position", ["learned", "rope", "alibi"])
@pytest.mark.parametrize("name", DECODER)
def test_decoder_odd_lengths(name, position):
    check_lengths(_build(name, position=position))


# --------------------------------------------------------------------------------- encoder
@pytest.mark.parametrize("name", ENCODER)
def test_encoder_forward_backward(name):
    check_forward_backward(_build(name, "encoder"))


@pytest.mark.parametrize("position", ["learned", "rope", "alibi"])
@pytest.mark.parametrize("name", ENCODER)
def test_encoder_sees_all_tokens_and_ignores_padding(name, position):
    m = _build(name, "encoder", position)
    if registry.get("attention", name).caps.mixes_tokens:
        check_bidirectional(m)
    check_padding(m)


@pytest.mark.parametrize("position", ["learned", "rope", "alibi"])
@pytest.mark.parametrize("name", ENCODER)
def test_encoder_sdpa_equals_reference(name, position):
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 4:] = False
    m = _build(name, "encoder", position)
    check_backends(m)
    check_backends(m, key_mask=mask)


@pytest.mark.parametrize("name", ENCODER)
def test_encoder_save_load(name, tmp_path):
    check_save_load(_build(name, "encoder"), tmp_path / "m")


@pytest.mark.parametrize("name", ENCODER)
def test_encoder_odd_lengths(name):
    check_lengths(_build(name, "encoder", _biased(name)))


@pytest.mark.parametrize("name", ENCODER)
def test_encoder_has_no_cache(name):
    with pytest.raises(ValueError, match="decoder"):
        _build(name, "encoder").new_cache()


# ------------------------------------------------------------------------- encoder-decoder
@pytest.mark.parametrize("name", SEQ2SEQ)
def test_seq2seq_forward_backward_causal(name):
    m = _build(name, "encoder-decoder", "rope")
    check_forward_backward(m)
    check_causal(m)


@pytest.mark.parametrize("prefill,chunk", [(1, 1), (5, 3)])
@pytest.mark.parametrize("position", ["learned", "rope", "alibi"])
@pytest.mark.parametrize("name", SEQ2SEQ)
def test_seq2seq_cache_equals_full(name, position, prefill, chunk):
    check_cache(_build(name, "encoder-decoder", position), prefill, chunk)


@pytest.mark.parametrize("name", SEQ2SEQ)
def test_seq2seq_sdpa_equals_reference(name):
    m = _build(name, "encoder-decoder", _biased(name))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 3:] = False
    check_backends(m)
    check_backends(m, key_mask=mask)
    check_backends(m, cached=True)


@pytest.mark.parametrize("name", SEQ2SEQ)
def test_seq2seq_save_load(name, tmp_path):
    check_save_load(_build(name, "encoder-decoder", "sinusoidal"), tmp_path / "m")
