"""The checks can fail: deliberately broken toy mixers, registered for one test and removed after,
must make the matching check raise AssertionError (and pass the checks they do not break)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from formers import registry
from formers.nn.attention import core
from formers.nn.attention.core import attend
from formers.nn.attention.softmax import SoftmaxAttention
from formers.nn.context import Context
from formers.registry import Capabilities, Paper

from .checks import (
    build, check_backends, check_cache, check_causal, check_default_path, check_documented,
    check_forward_backward, check_lengths, check_save_load, mixer_config,
)

CAPS = Capabilities(kv_cache=True)
PAPER = Paper("A toy")


class PeekMixer(SoftmaxAttention):
    """Softmax attention that forgets the causal mask: every token sees the future."""

    def forward(self, x, ctx: Context, cache=None):
        return super().forward(x, Context(**{**vars(ctx), "causal": False}), cache)


class StaleCacheMixer(SoftmaxAttention):
    """Correct full forward; the cached path attends only to the tokens of the current call."""

    def forward(self, x, ctx: Context, cache=None):
        return super().forward(x, ctx, None)


class OffByOneCacheMixer(SoftmaxAttention):
    """The cache path drops the oldest cached key (an eviction bug)."""

    def forward(self, x, ctx: Context, cache=None):
        if cache is not None and len(cache) > 0:
            cache.k, cache.v, cache.pos = cache.k[:, :, 1:], cache.v[:, :, 1:], cache.pos[1:]
        return super().forward(x, ctx, cache)


class SkewedReferenceMixer(SoftmaxAttention):
    """Its output is 1% off whenever the attention core took the reference path."""

    def forward(self, x, ctx: Context, cache=None):
        before = core.CALLS["reference"]
        out = super().forward(x, ctx, cache)
        return out * 1.01 if core.CALLS["reference"] > before else out


class ReferenceByDefaultMixer(SoftmaxAttention):
    """Always asks the core for the slow reference path."""

    def __init__(self, cfg, **kw):
        super().__init__(cfg, backend="reference")


class ShortBufferMixer(SoftmaxAttention):
    """Breaks beyond 8 tokens (a fixed-size buffer bug): NaN outputs."""

    def forward(self, x, ctx: Context, cache=None):
        out = super().forward(x, ctx, cache)
        return out if x.shape[1] <= 8 else out * float("nan")


class ForgetfulMixer(SoftmaxAttention):
    """Adds a random buffer that is not saved, so a reloaded model computes something else."""

    def __init__(self, cfg, **kw):
        super().__init__(cfg, **kw)
        self.register_buffer("noise", torch.randn(cfg.d_model), persistent=False)

    def forward(self, x, ctx: Context, cache=None):
        return super().forward(x, ctx, cache) + self.noise


class DeadMixer(nn.Module):
    """Returns zeros detached from its parameters (no gradient reaches them)."""

    def __init__(self, cfg):
        super().__init__()
        self.w = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x, ctx: Context, cache=None):
        return torch.zeros_like(x)


class Undocumented(SoftmaxAttention):
    pass


@pytest.fixture
def toy():
    """Register a toy mixer under a throw-away name; always unregister it afterwards."""
    names = []

    def add(cls, caps=CAPS, paper=PAPER, summary="toy"):
        name = f"_broken_{cls.__name__}"
        registry.register("attention", name, caps=caps, paper=paper, summary=summary)(cls)
        names.append(name)
        return name

    yield add
    for n in names:
        registry.unregister("attention", n)
    assert not [n for n in registry.names("attention") if n.startswith("_broken_")]


def model(name, arch="decoder", position="alibi"):
    return build(mixer_config(name, arch=arch, position=position))


def test_peek_fails_causality_and_cache(toy):
    m = model(toy(PeekMixer))
    with pytest.raises(AssertionError, match="before position"):
        check_causal(m)
    with pytest.raises(AssertionError, match="cached decoding"):
        check_cache(m, 5, 1)
    check_forward_backward(m)  # not everything fails


def test_stale_cache_fails_cache_check_only(toy):
    m = model(toy(StaleCacheMixer))
    check_causal(m)
    for prefill, chunk in [(1, 1), (7, 3)]:
        with pytest.raises(AssertionError, match="cached decoding"):
            check_cache(m, prefill, chunk)


def test_off_by_one_cache_fails(toy):
    m = model(toy(OffByOneCacheMixer), position="rope")
    check_causal(m)
    with pytest.raises(AssertionError, match="cached decoding"):
        check_cache(m, 4, 1)


def test_stale_cache_in_seq2seq_decoder_fails(toy):
    m = model(toy(StaleCacheMixer), arch="encoder-decoder")
    check_causal(m)
    with pytest.raises(AssertionError, match="cached decoding"):
        check_cache(m, 4, 1)


def test_skewed_reference_fails_backend_check(toy):
    m = model(toy(SkewedReferenceMixer))
    with pytest.raises(AssertionError, match="sdpa logits != reference"):
        check_backends(m)


def test_reference_by_default_fails_default_path_check(toy):
    m = model(toy(ReferenceByDefaultMixer))
    with pytest.raises(AssertionError, match="reference path"):
        check_default_path(m, expect_sdpa=True)


def test_short_buffer_fails_length_check(toy):
    m = model(toy(ShortBufferMixer))
    with pytest.raises(AssertionError, match="non-finite|differ"):
        check_lengths(m)
    with pytest.raises(AssertionError, match="non-finite"):
        check_forward_backward(m, length=9)


def test_forgetful_fails_save_load(toy, tmp_path):
    m = model(toy(ForgetfulMixer))
    with pytest.raises(AssertionError, match="save/load"):
        check_save_load(m, tmp_path / "m")


def test_dead_mixer_fails_gradient_check(toy):
    m = model(toy(DeadMixer, caps=Capabilities()))
    with pytest.raises(AssertionError, match="without gradient"):
        check_forward_backward(m)


def test_undocumented_entry_fails_doc_check(toy):
    e = registry.get("attention", toy(Undocumented, paper=None, summary=""))
    with pytest.raises(AssertionError, match="no summary"):
        check_documented(e, needs_paper=True)
    e2 = registry.get("attention", toy(type("NoPaper", (PeekMixer,), {"__doc__": "x"}), paper=None))
    with pytest.raises(AssertionError, match="no paper"):
        check_documented(e2, needs_paper=True)
    e3 = registry.get("attention", toy(type("BadArxiv", (PeekMixer,), {"__doc__": "x"}),
                                       paper=Paper("T", "arXiv:12")))
    with pytest.raises(AssertionError, match="malformed"):
        check_documented(e3, needs_paper=True)


def test_capabilities_are_enforced(toy):
    """A causal-only mixer cannot be an encoder layer; a mixer without kv_cache cannot decode."""
    causal_only = toy(type("CausalOnly", (SoftmaxAttention,), {"__doc__": "x"}),
                      caps=Capabilities(bidirectional=False))
    with pytest.raises(ValueError, match="causal-only"):
        model(causal_only, arch="encoder")
    no_cache = toy(DeadMixer, caps=Capabilities())
    with pytest.raises(ValueError, match="KV cache"):
        model(no_cache).new_cache()
    enc_only = toy(ShortBufferMixer, caps=Capabilities(causal=False))
    with pytest.raises(ValueError, match="causally"):
        model(enc_only)


def test_toy_names_are_not_left_behind():
    assert not [n for n in registry.names("attention") if n.startswith("_broken_")]


def test_attend_is_the_only_core():
    """The toy mixers above reach the core through the same ``attend`` the library uses."""
    assert attend is core.attend
