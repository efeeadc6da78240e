"""Conformance checks as plain functions.

Each ``check_*`` takes a built model (and maybe a few arguments), runs it, and raises
``AssertionError`` when the model breaks a contract. The parametrised tests in this folder call
them on every registry entry; ``test_broken_mixers.py`` calls them on deliberately broken toy
mixers to show that each check can fail.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from formers import registry
from formers.nn import EncoderDecoder, LayerSpec, ModelConfig, build_model, load_model, save_model
from formers.nn.attention import core
from formers.nn.presets import apply_preset

# Tiny shapes keep the whole suite fast. init_std is larger than the default so that a mixer that
# leaks information (future tokens, stale cache) moves the logits far above the tolerances.
VOCAB = 61
BASE = ModelConfig(
    arch="decoder", vocab_size=VOCAB, d_model=16, n_layers=2, n_heads=4, d_ff=32,
    max_seq_len=520, init_std=0.1,
)
ATOL = 1e-5          # cache vs full forward, fp32
GRAD_ATOL, GRAD_RTOL = 1e-5, 1e-4
ODD_LENGTHS = (1, 7, 9, 513)


# ----------------------------------------------------------------------------------- building
def mixer_config(name: str, arch: str = "decoder", **over) -> ModelConfig:
    """BASE with every layer's token mixer set to registry attention ``name``."""
    return BASE.replace(arch=arch, layers=[LayerSpec(attention=name)], **over)


# Presets are tested at 6 layers: layer patterns of length 1, 2, 3 and 6 (a Brainformer block)
# all tile that depth.
PRESET_BASE = BASE.replace(n_layers=6)


def preset_config(name: str, arch: str = "decoder") -> ModelConfig:
    return apply_preset(name, PRESET_BASE.replace(arch=arch))


def build(cfg: ModelConfig, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)


def is_seq2seq(model: nn.Module) -> bool:
    return isinstance(model, EncoderDecoder)


def run(model: nn.Module, tgt: torch.Tensor, src: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of a decoder/encoder (``model(tgt)``) or an encoder-decoder (``model(src, tgt)``)."""
    if is_seq2seq(model):
        src = ids(tgt.shape[0], 6, seed=7) if src is None else src
        return model(src, tgt, src_mask=key_mask)
    return model(tgt, key_mask=key_mask)


@contextlib.contextmanager
def force_backend(backend: str) -> Iterator[None]:
    """Make every call of :func:`formers.nn.attention.core.attend` use ``backend``.

    Mixers import ``attend`` by name, so the function is replaced in every loaded module that holds
    it (new mixers are covered automatically). Calls that ask for weights keep the reference path.
    """
    orig = core.attend

    def forced(*args, **kw):
        if not kw.get("return_weights"):
            kw["backend"] = backend
        return orig(*args, **kw)

    patched = []
    for mod in list(sys.modules.values()):
        try:
            if vars(mod).get("attend") is orig:
                setattr(mod, "attend", forced)
                patched.append(mod)
        except TypeError:  # modules without __dict__
            continue
    try:
        yield
    finally:
        for mod in patched:
            setattr(mod, "attend", orig)


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str, atol: float = ATOL,
           rtol: float = 0.0) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


# ------------------------------------------------------------------------------------- checks
def check_forward_backward(model: nn.Module, batch: int = 2, length: int = 9) -> None:
    """Logits have shape (batch, length, vocab) and are finite; every used parameter gets a finite
    gradient and at least one gradient is non-zero."""
    model.zero_grad(set_to_none=True)
    x = ids(batch, length)
    logits = run(model, x)
    assert logits.shape == (batch, length, model.cfg.vocab_size), (
        f"logits shape {tuple(logits.shape)} != {(batch, length, model.cfg.vocab_size)}")
    assert torch.isfinite(logits).all(), "non-finite logits"
    logits.float().logsumexp(-1).mean().backward()
    grads = [(n, p.grad) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, g in grads if g is None]
    assert not missing, f"parameters without gradient: {missing}"
    bad = [n for n, g in grads if not torch.isfinite(g).all()]
    assert not bad, f"non-finite gradients: {bad}"
    assert any(g.abs().sum() > 0 for _, g in grads), "all gradients are zero"
    model.zero_grad(set_to_none=True)


@torch.no_grad()
def check_causal(model: nn.Module, length: int = 9, positions: tuple[int, ...] = (0, 4, 8)) -> None:
    """Changing token t leaves the logits before t unchanged (and does change the logits at t)."""
    x = ids(2, length)
    src = ids(2, 6, seed=7)
    base = run(model, x, src)
    for t in positions:
        y = x.clone()
        y[:, t] = (y[:, t] + 1 + torch.arange(2)) % VOCAB
        out = run(model, y, src)
        _close(out[:, :t], base[:, :t], f"logits before position {t} changed when token {t} changed",
               atol=1e-6)
        assert not torch.allclose(out[:, t], base[:, t]), f"logits at {t} ignore token {t}"


@torch.no_grad()
def check_bidirectional(model: nn.Module, length: int = 9) -> None:
    """An encoder sees the whole sequence: changing the last token moves earlier outputs
    (so at least one layer must mix tokens)."""
    x = ids(2, length)
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % VOCAB
    diff = (run(model, x) - run(model, y))[:, :-1].abs().max()
    assert diff > 1e-4, f"encoder outputs before the last token ignore it (max change {diff:.2e})"


@torch.no_grad()
def check_padding(model: nn.Module, length: int = 9) -> None:
    """With a key padding mask, outputs at real positions ignore what the padded tokens are."""
    x = ids(2, length)
    mask = torch.ones(2, length, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, 3:] = False
    y = x.clone()
    y[~mask] = (y[~mask] + 5) % VOCAB
    a, b = run(model, x, key_mask=mask), run(model, y, key_mask=mask)
    assert torch.isfinite(a).all() and torch.isfinite(b).all(), "non-finite logits with padding"
    _close(b[mask], a[mask], "outputs at real positions depend on padded tokens", atol=1e-6)


@torch.no_grad()
def check_cache(model: nn.Module, prefill: int, chunk: int, length: int = 12) -> None:
    """Prefill ``prefill`` tokens, then feed ``chunk`` tokens at a time through the cache; the
    concatenated logits equal the full forward (fp32, atol 1e-5)."""
    x = ids(2, length)
    if is_seq2seq(model):
        src = ids(2, 6, seed=7)
        src_mask = torch.ones(2, 6, dtype=torch.bool)
        src_mask[1, 4:] = False
        memory = model.encode(src, src_mask)
        full = model.decode(x, memory, src_mask)

        def step(piece, cache):
            return model.decode(piece, memory, src_mask, cache=cache)
    else:
        full = model(x)

        def step(piece, cache):
            return model(piece, cache=cache)

    cache = model.new_cache()
    outs, start = [], 0
    sizes = [prefill] + [chunk] * length
    for n in sizes:
        if start >= length:
            break
        piece = x[:, start:start + n]
        outs.append(step(piece, cache))
        start += piece.shape[1]
        assert cache.offset == start, f"cache.offset {cache.offset} != tokens fed {start}"
    inc = torch.cat(outs, dim=1)
    assert inc.shape == full.shape, f"incremental shape {tuple(inc.shape)} != {tuple(full.shape)}"
    _close(inc, full, f"cached decoding (prefill {prefill}, chunk {chunk}) != full forward")


def _loss_and_grads(model: nn.Module, x: torch.Tensor, key_mask: torch.Tensor | None,
                    cached: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    if cached:  # prefill 5 tokens, then a chunk of 4: causal attention with q_len < k_len
        cache = model.new_cache()
        if is_seq2seq(model):
            memory = model.encode(ids(x.shape[0], 6, seed=7))
            logits = torch.cat([model.decode(x[:, :5], memory, cache=cache),
                                model.decode(x[:, 5:], memory, cache=cache)], 1)
        else:
            logits = torch.cat([model(x[:, :5], cache=cache), model(x[:, 5:], cache=cache)], 1)
    else:
        logits = run(model, x, key_mask=key_mask)
    w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(3))
    if key_mask is not None and not is_seq2seq(model):
        w = w * key_mask[..., None]
    (logits * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return logits.detach(), grads


def check_backends(model: nn.Module, key_mask: torch.Tensor | None = None, cached: bool = False,
                   length: int = 9) -> None:
    """The SDPA path and the reference path of the attention core give the same logits and the
    same parameter gradients (fp32, ~1e-5). ``cached``: compare a prefill + chunk decode."""
    x = ids(2, length)
    before = dict(core.CALLS)
    with force_backend("reference"):
        ref, g_ref = _loss_and_grads(model, x, key_mask, cached)
    n_ref = core.CALLS["reference"] - before.get("reference", 0)
    assert core.CALLS["sdpa"] == before.get("sdpa", 0), "sdpa ran while forcing the reference path"
    with force_backend("sdpa"):
        fast, g_fast = _loss_and_grads(model, x, key_mask, cached)
    n_fast = core.CALLS["sdpa"] - before.get("sdpa", 0)
    assert n_fast == n_ref, f"{n_fast} sdpa calls but {n_ref} reference calls for the same work"
    sel = key_mask if key_mask is not None and not is_seq2seq(model) else slice(None)
    _close(fast[sel], ref[sel], "sdpa logits != reference logits", atol=1e-5, rtol=1e-5)
    assert g_ref.keys() == g_fast.keys(), "different parameters receive gradients"
    for n in g_ref:
        # fp32 rounding grows with the gradient's size (a bias gradient sums over every position),
        # so the absolute tolerance scales with the tensor's largest entry (at least 1).
        scale = max(1.0, float(g_ref[n].abs().max()))
        _close(g_fast[n], g_ref[n], f"gradient of {n}: sdpa != reference", atol=GRAD_ATOL * scale,
               rtol=GRAD_RTOL)


@torch.no_grad()
def check_default_path(model: nn.Module, expect_sdpa: bool) -> None:
    """By default the forward never takes the reference path (and takes SDPA when expected)."""
    core.CALLS.clear()
    run(model, ids(2, 9))
    calls = dict(core.CALLS)
    assert calls.get("reference", 0) == 0, f"default forward took the reference path: {calls}"
    if expect_sdpa:  # one SDPA call at least per layer whose mixer runs on the SDPA core
        n = sum("sdpa" in registry.get("attention", model.cfg.layer_spec(i).attention).caps.backend
                for i in range(model.cfg.n_layers))
        assert calls.get("sdpa", 0) >= n, f"SDPA not taken by default: {calls} (expected >= {n})"


@torch.no_grad()
def check_save_load(model: nn.Module, folder: Path) -> None:
    """save_model then load_model gives a model with identical outputs and config."""
    x = ids(2, 9)
    before = run(model, x)
    save_model(model, folder)
    loaded = load_model(folder).eval()
    assert loaded.cfg == model.cfg, "loaded config differs"
    assert type(loaded) is type(model), f"loaded {type(loaded).__name__}, saved {type(model).__name__}"
    after = run(loaded, x)
    _close(after, before, "outputs after save/load differ", atol=0.0)


@torch.no_grad()
def check_lengths(model: nn.Module, lengths: tuple[int, ...] = ODD_LENGTHS) -> None:
    """Odd lengths give finite logits of the right shape; for a causal model the logits of a
    shorter sequence equal the same prefix of the longest one."""
    longest = max(lengths)
    x = ids(1, longest)
    full = run(model, x)
    for n in lengths:
        out = run(model, x[:, :n])
        assert out.shape == (1, n, model.cfg.vocab_size), f"length {n}: shape {tuple(out.shape)}"
        assert torch.isfinite(out).all(), f"length {n}: non-finite logits"
        if model.cfg.arch != "encoder":
            _close(out, full[:, :n], f"length {n}: prefix logits differ from the length-{longest} run",
                   atol=1e-5)


def check_documented(entry: registry.Entry, needs_paper: bool) -> None:
    """A summary line, an own docstring (for classes) and, where asked, a paper with a title and a
    well-formed arXiv id (when one is given)."""
    import re

    where = f"{entry.kind} {entry.name!r}"
    assert entry.summary.strip(), f"{where}: no summary/docstring"
    if isinstance(entry.obj, type):
        assert (entry.obj.__dict__.get("__doc__") or "").strip(), f"{where}: class has no docstring"
    if needs_paper:
        assert entry.paper is not None, f"{where}: no paper"
        assert entry.paper.title.strip(), f"{where}: paper without title"
        if entry.paper.arxiv:
            assert re.fullmatch(r"\d{4}\.\d{4,5}", entry.paper.arxiv), (
                f"{where}: malformed arXiv id {entry.paper.arxiv!r}")
