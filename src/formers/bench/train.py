"""``formers bench train``: training throughput of model variants and peer implementations measured
in the same process (issue 8).

What is measured. Each *entry* (one of our model presets, ``NAME`` or a MatFormer submodel
``NAME@G``, or a peer: ``hf`` = transformers GPT-2, ``xtransformers``) gets the same training
step on the same batches:

    zero-free step: loss = CE(logits(ids).float(), targets)  [under autocast, inside torch.compile]
                    loss.backward(); AdamW.step() (fused on CUDA); zero_grad(set_to_none=True)

(``NAME~fusedce`` entries: loss = linear_cross_entropy(hidden(ids), head.weight, targets), the
chunked fused head + CE of :mod:`formers.nn.linear_ce`; ``NAME~unfused``: separate Q, K, V GEMMs.)

Batches are **random token ids** (uniform over the vocabulary, fixed seed): the harness measures
throughput only, not learning. Every entry is built and warmed up first (``warmup`` steps, which
include compilation), then ``repeats`` rounds each time every entry in turn for ``steps`` steps
(A, B, C, A, B, C, ...: slow drift of clocks or temperature hits every entry alike). Step times
are CUDA events around each step (CPU: ``time.perf_counter``); the figure is the median over all
measured steps, tokens/s = batch * seq_len / median. With ``interleave=False`` each entry is
instead built, measured and freed (del + gc + ``torch.cuda.empty_cache``) before the next.

Peak memory. CUDA: ``torch.cuda.max_memory_allocated`` over the entry's windows minus what was
allocated at the window start, plus the entry's resident state (parameters, optimiser state)
measured when it was built: the entry's own peak even while other entries stay resident. CPU: the
process's peak RSS during the entry's windows (VmHWM after a reset; whole process, so with
interleaving it includes the other entries' weights).

MFU = FLOPs per token * tokens/s / device peak. FLOPs per token come from
:func:`formers.bench.flops.train_flops_per_token` (the parts' analytic declarations); every row
also reports the issue's baseline formula ``6 N + 12 L d T`` (N = every parameter, tied once; the
issue's reference figures, e.g. HF GPT-2 341k tokens/s = 29.7 %, use this N) as
``mfu_6n``. Peers count the FLOPs of our ``baseline`` at the same shape (the same work). The peak
is :func:`formers.bench.devices.peak_tflops` (datasheet table, ``peak_tflops`` overrides; no MFU
on CPU without an override).

Results: ``train_bench-<device>-<preset>.json`` / ``.md`` / ``.png`` (written atomically), every
row with ratios to each peer measured in the same run and to our baseline, and a ``goals``
list (the issue's targets beside the measured figure).
"""

from __future__ import annotations

import gc
import itertools
import math
import os
import platform
import statistics
import sys
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from formers.atomic import atomic_write
from formers.bench.results import write_result_files
from formers.config import Config

GPT2_VOCAB = 50257


@dataclass(frozen=True)
class BenchPreset:
    """A model size for the harness (GPT-2-style baseline shape) and its default batch."""

    n_layers: int
    d_model: int
    n_heads: int
    seq_len: int
    vocab: int          # before padding to a multiple of 64
    batch_size: int
    note: str = ""


PRESETS: dict[str, BenchPreset] = {
    "gpt2-small": BenchPreset(12, 768, 12, 1024, GPT2_VOCAB, 16, "GPT-2 small (124M)"),
    "gpt2-medium": BenchPreset(24, 1024, 16, 1024, GPT2_VOCAB, 16, "GPT-2 medium (350M)"),
    "tiny": BenchPreset(2, 128, 4, 128, 512, 8, "CPU smoke size"),
}
VOCAB_MULTIPLE = 64
ENTRY_OPTIONS = ("unfused", "fusedce")  # NAME~OPTION (expand_models)
DTYPES = ("auto", "bf16", "fp16", "fp32")
SDPA_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")
RECOMPILE_LIMIT = 64  # one graph per entry shares the loss wrapper's code object


def padded_vocab(vocab: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """``vocab`` rounded up to a multiple of ``multiple`` (50257 -> 50304)."""
    return -(-vocab // multiple) * multiple


def preset_config(name: str, seq_len: int | None = None, vocab: int | None = None):
    """The GPT-2-style baseline :class:`~formers.nn.config.ModelConfig` of preset ``name``: learned
    positions, pre-LayerNorm, tanh-GELU MLP 4x, biases, tied embeddings, no dropout, vocabulary
    (``vocab``, default the preset's) padded to a multiple of 64, ``max_seq_len`` = ``seq_len``
    (default: the preset's).

    Raises:
        ValueError: unknown preset, seq_len < 1 or vocab < 2.
    """
    from formers.nn.config import ModelConfig

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    p = PRESETS[name]
    t = p.seq_len if seq_len is None else seq_len
    if not isinstance(t, int) or t < 1:
        raise ValueError(f"seq_len must be an int >= 1, got {seq_len!r}")
    v = p.vocab if vocab is None else vocab
    if isinstance(v, bool) or not isinstance(v, int) or v < 2:
        raise ValueError(f"vocab must be an int >= 2, got {vocab!r}")
    return ModelConfig(arch="decoder", vocab_size=padded_vocab(v), d_model=p.d_model,
                       n_layers=p.n_layers, n_heads=p.n_heads, max_seq_len=t, position="learned",
                       norm="layernorm", prenorm=True, attention="softmax", ffn="mlp", dropout=0.0,
                       bias=True, tie_embeddings=True)


@dataclass
class TrainBenchConfig(Config):
    """Settings of ``formers bench train`` (validated on construction).

    Attributes:
        preset: ``gpt2-small`` | ``gpt2-medium`` | ``tiny``.
        models: our model presets (registry kind ``model``); ``NAME@G`` runs a MatFormer model at
            granularity index G (``NAME@all``: every granularity); ``~unfused`` / ``~fusedce``
            suffixes (combinable) give A/B entries, see :func:`expand_models`.
        peers: ``hf`` and / or ``xtransformers`` (need ``pip install 'formers[peers]'``).
        batch_size / seq_len: None = the preset's. steps: measured steps per window (>= 1).
        vocab_size: None = the preset's; else this vocabulary (>= 2, padded to a multiple of 64),
            e.g. a GPT-2-sized head on the tiny preset to measure the LM head on a CPU.
        fused_ce_chunk: tokens per chunk of the ``~fusedce`` entries' loss (0 = the default of
            :func:`formers.nn.linear_ce.default_chunk_tokens`).
        warmup: steps before measuring (compilation happens here; >= 1 when compiling).
        repeats: measurement windows per entry, interleaved across entries (>= 1).
        compile: torch.compile the loss (model + cross-entropy); None = on CUDA only.
        compile_mode: torch.compile mode (``default``, ``max-autotune-no-cudagraphs`` ...).
        compile_backend: torch.compile backend: ``inductor`` (the benchmark), or ``aot_eager`` /
            ``eager`` (tracing only: graph breaks and recompilations checked cheaply in tests).
        dtype: autocast dtype (``auto``: bf16 on CUDA, fp32 on CPU).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        peak_tflops: device peak for MFU (None: the table; CPU: no MFU).
        sdpa_backend: restrict SDPA to one kernel for every entry (``auto`` = torch's choice).
        interleave: keep every entry resident and interleave windows (False: one at a time).
        threads: torch.set_num_threads (0 = leave). seed: weights and data. lr: AdamW's.
        tag: appended to the result file name (``train_bench-<device>-<preset>-<tag>``), so runs
            of one preset with other models or flags do not overwrite each other.
        inductor: ``KEY=VALUE`` settings of ``torch._inductor.config`` for this run (e.g.
            ``coordinate_descent_tuning=true``); values read as YAML scalars; unknown keys rejected.
        time_limit_s: once this many seconds have passed, entries not yet built are skipped
            (listed in ``skipped_time_limit``; the first entry always runs) and the built ones are
            measured and written; 0 = none.
        profile_steps: after the measurement, profile this many more steps of each entry with
            ``torch.profiler`` and record where the time goes (:mod:`formers.bench.profile`: kernel
            time by category, GPU busy fraction, top kernels); 0 = no profile.
    Raises:
        ValueError: naming the field, the value and what is allowed.
    """

    preset: str = "tiny"
    models: tuple[str, ...] = ("baseline",)
    peers: tuple[str, ...] = ()
    batch_size: int | None = None
    seq_len: int | None = None
    vocab_size: int | None = None
    fused_ce_chunk: int = 0
    steps: int = 10
    warmup: int = 3
    repeats: int = 3
    compile: bool | None = None
    compile_mode: str = "default"
    compile_backend: str = "inductor"
    dtype: str = "auto"
    device: str = "auto"
    peak_tflops: float | None = None
    sdpa_backend: str = "auto"
    interleave: bool = True
    threads: int = 0
    seed: int = 0
    lr: float = 3e-4
    tag: str = ""
    time_limit_s: float = 0.0
    inductor: tuple[str, ...] = ()
    profile_steps: int = 0

    def __post_init__(self) -> None:
        from formers.bench.peers import PEERS

        o = "TrainBenchConfig"
        if self.preset not in PRESETS:
            raise ValueError(f"{o}.preset: unknown preset {self.preset!r}; known: {sorted(PRESETS)}")
        self.models, self.peers = tuple(self.models), tuple(self.peers)
        if not self.models and not self.peers:
            raise ValueError(f"{o}: nothing to run (models and peers are both empty)")
        for p in self.peers:
            if p not in PEERS:
                raise ValueError(f"{o}.peers: unknown peer {p!r}; known: {list(PEERS)}")
        if len(set(self.models)) != len(self.models) or len(set(self.peers)) != len(self.peers):
            raise ValueError(f"{o}: models / peers listed twice: {self.models} / {self.peers}")
        for name, low in (("batch_size", 1), ("seq_len", 1), ("vocab_size", 2)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise ValueError(f"{o}.{name} must be an int >= {low}, got {v!r}")
        for name, low in (("steps", 1), ("warmup", 0), ("repeats", 1), ("threads", 0),
                          ("profile_steps", 0), ("fused_ce_chunk", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{o}.{name} must be an int >= {low}, got {v!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"{o}.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.sdpa_backend not in SDPA_BACKENDS:
            raise ValueError(f"{o}.sdpa_backend must be one of {list(SDPA_BACKENDS)}, got {self.sdpa_backend!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"{o}.compile_mode must be one of {list(COMPILE_MODES)}, got {self.compile_mode!r}")
        if self.compile_backend not in COMPILE_BACKENDS:
            raise ValueError(f"{o}.compile_backend must be one of {list(COMPILE_BACKENDS)}, "
                             f"got {self.compile_backend!r}")
        if self.peak_tflops is not None and not (isinstance(self.peak_tflops, (int, float))
                                                 and 0 < self.peak_tflops < math.inf):
            raise ValueError(f"{o}.peak_tflops must be a positive number, got {self.peak_tflops!r}")
        if self.tag and not all(c.isalnum() or c in "-_." for c in self.tag):
            raise ValueError(f"{o}.tag may hold letters, digits, '-', '_' and '.', got {self.tag!r}")
        self.inductor = tuple(self.inductor)
        inductor_settings(self.inductor)  # validates
        if not (isinstance(self.time_limit_s, (int, float)) and self.time_limit_s >= 0):
            raise ValueError(f"{o}.time_limit_s must be >= 0 (0 = no limit), got {self.time_limit_s!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"{o}.lr must be > 0, got {self.lr!r}")


def inductor_settings(items: tuple[str, ...]) -> dict[str, Any]:
    """``("KEY=VALUE", ...)`` -> {key: value} for ``torch._inductor.config`` (values parsed as YAML
    scalars: ``true``, ``4``, ``max-autotune``). Raises ValueError for a malformed item or a key
    that ``torch._inductor.config`` does not have."""
    if not items:
        return {}
    import yaml
    from torch._inductor import config as inductor_config

    out = {}
    for it in items:
        key, eq, value = it.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"TrainBenchConfig.inductor: expected KEY=VALUE, got {it!r}")
        obj = inductor_config
        *path, last = key.split(".")
        for part in path:
            obj = getattr(obj, part, None)
        if obj is None or not hasattr(obj, last):
            raise ValueError(f"TrainBenchConfig.inductor: torch._inductor.config has no setting {key!r}")
        out[key] = yaml.safe_load(value)
    return out


# ------------------------------------------------------------------------------------------ entries
def expand_models(models: tuple[str, ...] | list[str], base) -> list[tuple[str, str, int | None]]:
    """``[(label, preset name, granularity or None)]`` for the ``--models`` list; ``NAME@G`` picks
    MatFormer granularity index G, ``NAME@all`` every granularity of that model at ``base``'s size.
    Options after ``~`` (A/B entries of the same model in one run, combinable, each at most once,
    e.g. ``baseline~unfused~fusedce``): ``~unfused`` runs the three separate W_Q, W_K, W_V GEMMs
    (``SoftmaxAttention.fuse_qkv = False``); ``~fusedce`` computes the loss with the chunked
    :func:`formers.nn.linear_ce.linear_cross_entropy` on the final hidden states and the head
    weight (the (tokens, vocab) logits never exist). Labels keep the options in the given order.

    Raises:
        ValueError: unknown model preset (naming the known ones), an unknown or repeated option, a
            granularity on a model without MatFormer layers, or a granularity index out of range.
    """
    import formers.nn  # noqa: F401  (registers the parts and presets)
    from formers.registry import names

    known = names("model")
    out: list[tuple[str, str, int | None]] = []
    for item in models:
        core, *options = item.split("~")
        for o in options:
            if o not in ENTRY_OPTIONS:
                raise ValueError(f"model {item!r}: the options after '~' are {', '.join(ENTRY_OPTIONS)}, got {o!r}")
        if len(set(options)) != len(options):
            raise ValueError(f"model {item!r}: an option after '~' is given twice")
        suffix = "".join("~" + o for o in options)
        name, at, g = core.partition("@")
        if name not in known:
            raise ValueError(f"unknown model {name!r}; known: {', '.join(known)}")
        if not at:
            out.append((name + suffix, name, None))
            continue
        n = _n_granularities(name, base)
        if g == "all":
            out += [(f"{name}@{i}{suffix}", name, i) for i in range(n)]
            continue
        if not g.isdigit() or int(g) >= n:
            raise ValueError(f"model {item!r}: granularity must be an index in 0..{n - 1} or 'all', got {g!r}")
        out.append((item, name, int(g)))
    labels = [o[0] for o in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"models listed twice: {labels}")
    return out


def _n_granularities(name: str, base) -> int:
    import torch

    from formers.nn.matformer import matformer_layers, n_granularities
    from formers.nn.models import build_model
    from formers.nn.presets import apply_preset

    with torch.device("meta"):
        model = build_model(apply_preset(name, base))
    if not matformer_layers(model):
        raise ValueError(f"model {name!r} has no MatFormer layers; '@granularity' needs one (e.g. matformer)")
    return n_granularities(model)


def flops_per_token(cfg, seq_len: int) -> tuple[float, str]:
    """(training FLOPs per token, source): :func:`formers.bench.flops.train_flops_per_token`, or the
    ``6 N + 12 L d T`` formula where a part declares no count."""
    import torch

    from formers.nn.models import build_model, count_params

    try:
        from formers.bench.flops import train_flops_per_token

        return float(train_flops_per_token(cfg, seq_len)), "formers.bench.flops.train_flops_per_token"
    except (ImportError, NotImplementedError, ValueError, TypeError) as e:
        with torch.device("meta"):
            n = count_params(build_model(cfg))
        return float(six_n_flops(n, cfg.n_layers, cfg.d_model, seq_len)), f"6N+12LdT fallback ({e})"


def six_n_flops(n_params: int, n_layers: int, d_model: int, seq_len: int) -> float:
    """The issue's baseline FLOPs per token ``6 N + 12 L d T`` with N = every parameter (tied once)."""
    return 6.0 * n_params + 12.0 * n_layers * d_model * seq_len


def _loss_module(model, logits_fn: Callable, fused_ce: bool = False, chunk_tokens: int | None = None):
    """The step's loss as a module (what torch.compile compiles). ``fused_ce``: our model's final
    hidden states (``model(ids, hidden=True)``) and ``model.head.weight`` go to
    :func:`formers.nn.linear_ce.linear_cross_entropy` (chunked, ``chunk_tokens`` a chunk, None =
    its default; no (tokens, vocab) logits)."""
    import torch.nn.functional as F
    from torch import nn

    from formers.nn.linear_ce import linear_cross_entropy

    class LossOf(nn.Module):
        """CE of the next token: logits (batch, seq, vocab) upcast inside the (compiled) graph."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids, targets):
            if fused_ce:
                h = self.model(ids, hidden=True)
                return linear_cross_entropy(h.flatten(0, 1), self.model.head.weight, targets.flatten(),
                                            chunk_tokens=chunk_tokens)
            logits = logits_fn(self.model, ids)
            return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    return LossOf()


class _Entry:
    """One model under test: model, optimiser, (compiled) loss, its times and memory."""

    def __init__(self, label: str, kind: str, model, logits_fn, cfg, flops: tuple[float, str],
                 granularity: int | None = None) -> None:
        self.label, self.kind, self.model, self.cfg = label, kind, model, cfg
        self.logits_fn, self.granularity = logits_fn, granularity
        self.flops, self.flops_source = flops
        self.loss_fn = None
        self.fused_ce = "fusedce" in label.split("~")[1:]
        self.opt = None
        self.times: list[float] = []
        self.window_medians: list[float] = []
        self.resident_bytes = 0
        self._built_bytes = 0
        self.transient_peak = 0
        self.rss_peak_kb = 0
        self.warmup_s = 0.0
        self.profile: dict[str, Any] | None = None
        self.compiles: int | None = None
        self.graph_breaks: int | None = None
        self.last_loss: float | None = None
        self.params = sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------ runner
def _resolve_device(name: str):
    from formers.train.trainer import resolve_device

    return resolve_device(name)


def _graph_break_total() -> int | None:
    try:
        from torch._dynamo.utils import counters
    except Exception:  # pragma: no cover
        return None
    return int(sum(counters["graph_break"].values()))


def _sdpa_context(backend: str):
    if backend == "auto":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kind = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[backend]
    return sdpa_kernel([kind])


class TrainBench:
    """Runs a :class:`TrainBenchConfig`; :meth:`run` returns the result record (not written)."""

    def __init__(self, cfg: TrainBenchConfig, progress: Callable[[str], None] | None = None) -> None:
        import torch

        self.cfg = cfg
        self.say = progress or (lambda s: None)
        self.device = _resolve_device(cfg.device)
        self.cuda = self.device.type == "cuda"
        if cfg.dtype == "auto":
            self.dtype_name = "bf16" if self.cuda else "fp32"
        else:
            self.dtype_name = cfg.dtype
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[self.dtype_name]
        self.compile = self.cuda if cfg.compile is None else cfg.compile
        self.cudagraphs = (self.compile and self.cuda and cfg.compile_backend == "inductor"
                           and cfg.compile_mode in ("reduce-overhead", "max-autotune"))
        if self.compile and cfg.warmup < 1:
            raise ValueError("TrainBenchConfig.warmup must be >= 1 when compiling (the first step compiles)")
        self.p = PRESETS[cfg.preset]
        self.batch = cfg.batch_size or self.p.batch_size
        self.base = preset_config(cfg.preset, cfg.seq_len, cfg.vocab_size)
        self.seq_len = self.base.max_seq_len
        # everything that can fail on the arguments fails before any model is built
        self.model_specs = expand_models(cfg.models, self.base)
        from formers.bench.peers import require_peer

        for p in cfg.peers:
            try:
                require_peer(p)
            except ImportError as e:
                raise ValueError(f"{e} (or drop --peers {p})") from None

    # -------------------------------------------------------------------- building
    def _batches(self):
        import torch

        g = torch.Generator().manual_seed(self.cfg.seed + 1)
        out = []
        for _ in range(4):
            ids = torch.randint(0, self.base.vocab_size, (self.batch, self.seq_len + 1), generator=g)
            ids = ids.to(self.device)
            out.append((ids[:, :-1].contiguous(), ids[:, 1:].contiguous()))
        return out

    def _build_entry(self, spec) -> _Entry:
        import torch

        from formers.nn.models import build_model
        from formers.nn.presets import apply_preset

        kind, label = spec[0], spec[1]
        torch.manual_seed(self.cfg.seed)
        if kind == "ours":
            _, label, name, g = spec
            mcfg = apply_preset(name, self.base)
            model = build_model(mcfg)
            flop_cfg = mcfg
            if g is not None:
                from formers.nn.matformer import extract_config, set_granularity

                set_granularity(model, g)
                flop_cfg = extract_config(model, g)
            if "unfused" in label.split("~")[1:]:
                from formers.nn.attention.softmax import SoftmaxAttention

                for m in model.modules():
                    if isinstance(m, SoftmaxAttention):
                        m.fuse_qkv = False

            def logits_fn(m, ids):
                return m(ids)
            entry = _Entry(label, "ours", model, logits_fn, mcfg, flops_per_token(flop_cfg, self.seq_len), g)
            if g is not None:  # parameters the submodel uses (for 6N)
                from formers.nn.models import count_params

                with torch.device("meta"):
                    entry.params = count_params(build_model(flop_cfg))
        else:
            from formers.bench.peers import build_peer, peer_logits

            model = build_peer(label, self.base)

            def logits_fn(m, ids, _name=label):
                return peer_logits(_name, m, ids)
            entry = _Entry(label, "peer", model, logits_fn, self.base, self._baseline_flops())
        entry.model.to(self.device).train()
        return entry

    def _baseline_flops(self) -> tuple[float, str]:
        if not hasattr(self, "_base_flops"):
            self._base_flops = flops_per_token(self.base, self.seq_len)
        return self._base_flops

    def _prepare(self, e: _Entry) -> None:
        import torch

        params = [p for p in e.model.parameters() if p.requires_grad]
        kw = {"fused": True} if self.cuda else {}
        e.opt = torch.optim.AdamW(params, lr=self.cfg.lr, betas=(0.9, 0.95), weight_decay=0.1, **kw)
        loss = _loss_module(e.model, e.logits_fn, e.fused_ce, self.cfg.fused_ce_chunk or None)
        if self.compile:
            dyn = torch._dynamo.config
            dyn.recompile_limit = max(dyn.recompile_limit, RECOMPILE_LIMIT)
            if hasattr(dyn, "accumulated_recompile_limit"):
                dyn.accumulated_recompile_limit = max(dyn.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT)
            mode = None if self.cfg.compile_mode == "default" else self.cfg.compile_mode
            # dynamic=False: every entry gets static-shape kernels; otherwise a second entry whose
            # weights differ in shape (MatFormer granularities) would recompile the shared loss
            # wrapper with dynamic dimensions (automatic dynamic shapes) and run other kernels
            if self.cfg.compile_backend == "inductor":
                loss = torch.compile(loss, mode=mode, dynamic=False)
            else:
                loss = torch.compile(loss, backend=self.cfg.compile_backend, dynamic=False)
        e.loss_fn = loss

    def _step(self, e: _Entry, batch) -> Any:
        import torch

        ids, targets = batch
        if self.cudagraphs:  # a new iteration: outputs of the previous replay may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        ctx = torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else nullcontext()
        with ctx:
            loss = e.loss_fn(ids, targets)
        loss.backward()
        e.opt.step()
        e.opt.zero_grad(set_to_none=True)
        return loss

    def _sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _warm(self, e: _Entry, batches) -> None:
        import torch

        from formers.bench.compile_count import CompileCount

        self._sync()
        before = torch.cuda.memory_allocated(self.device) if self.cuda else 0
        gb0 = _graph_break_total()
        t0 = time.perf_counter()
        with CompileCount() as cc, _sdpa_context(self.cfg.sdpa_backend):
            self._prepare(e)
            for i in range(self.cfg.warmup):
                loss = self._step(e, batches[i % len(batches)])
            self._sync()
        e.warmup_s = time.perf_counter() - t0
        if self.compile:
            e.compiles = cc.graphs
            gb1 = _graph_break_total()
            e.graph_breaks = None if gb0 is None or gb1 is None else gb1 - gb0
        if self.cfg.warmup:
            e.last_loss = float(loss.detach().float())
        if self.cuda:  # parameters (allocated at build) + optimiser state and compile-time buffers
            e.resident_bytes = e._built_bytes + torch.cuda.memory_allocated(self.device) - before

    def _window(self, e: _Entry, batches) -> None:
        import torch

        from formers.bench.attention import _peak_rss_kb, _read_status_kb, _reset_hwm

        steps = self.cfg.steps
        self._sync()
        if self.cuda:
            start_alloc = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(steps)]
        else:
            hwm = _reset_hwm()
        times = []
        loss = None
        with _sdpa_context(self.cfg.sdpa_backend):
            for i in range(steps):
                batch = batches[i % len(batches)]
                if self.cuda:
                    ev[i][0].record()
                    loss = self._step(e, batch)
                    ev[i][1].record()
                else:
                    t0 = time.perf_counter()
                    loss = self._step(e, batch)
                    times.append(time.perf_counter() - t0)
        self._sync()
        if self.cuda:
            times = [a.elapsed_time(b) / 1e3 for a, b in ev]
            e.transient_peak = max(e.transient_peak, torch.cuda.max_memory_allocated(self.device) - start_alloc)
        else:
            kb = _read_status_kb("VmHWM") if hwm else None
            e.rss_peak_kb = max(e.rss_peak_kb, kb if kb is not None else _peak_rss_kb())
        e.times += times
        e.window_medians.append(statistics.median(times))
        e.last_loss = float(loss.detach().float())
        if not math.isfinite(e.last_loss):
            raise ValueError(f"{e.label}: the training loss is {e.last_loss} (not finite)")

    def _profile(self, e: _Entry, batches) -> None:
        """``profile_steps`` more steps under ``torch.profiler`` (after the timed windows, so the
        profiler's own overhead never reaches the measured figures)."""
        if not self.cfg.profile_steps:
            return
        from formers.bench.profile import step_breakdown

        i = itertools.count()
        with _sdpa_context(self.cfg.sdpa_backend):
            e.profile = step_breakdown(lambda: self._step(e, batches[next(i) % len(batches)]),
                                       self.cfg.profile_steps, self.device)
        self.say(f"{e.label}: profiled, {e.profile['kernel_ms']:.2f} ms of kernels in "
                 f"{e.profile['wall_ms']:.2f} ms per step")

    def _free(self, e: _Entry) -> None:
        import torch

        e.model = e.opt = e.loss_fn = None
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    # -------------------------------------------------------------------- run
    def _built(self, spec) -> _Entry:
        import torch

        self._sync()
        before = torch.cuda.memory_allocated(self.device) if self.cuda else 0
        e = self._build_entry(spec)
        self._sync()
        e._built_bytes = (torch.cuda.memory_allocated(self.device) - before) if self.cuda else 0
        return e

    def run(self) -> dict[str, Any]:
        """Build, warm up and measure every entry; return the result record."""
        import torch

        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        for key, value in inductor_settings(cfg.inductor).items():
            from torch._inductor import config as inductor_config

            obj = inductor_config
            *path, last = key.split(".")
            for part in path:
                obj = getattr(obj, part)
            setattr(obj, last, value)
        self.skipped: list[str] = []
        ours = [("ours", label, name, g) for label, name, g in self.model_specs]
        # build order: our first model, the peers, then our other models, so that a time limit
        # drops variants before the peers every ratio refers to
        specs = ours[:1] + [("peer", p) for p in cfg.peers] + ours[1:]
        batches = self._batches()
        entries: list[_Entry] = []
        t_start = time.perf_counter()
        if cfg.interleave:
            for spec in specs:
                if entries and self._out_of_time(t_start, spec):
                    continue
                e = self._built(spec)
                self.say(f"{e.label}: built ({e.params / 1e6:.2f} M parameters), warming up "
                         f"({cfg.warmup} steps{', compiling' if self.compile else ''})")
                self._warm(e, batches)
                self.say(f"{e.label}: warm-up {e.warmup_s:.1f} s")
                entries.append(e)
            for r in range(cfg.repeats):
                for e in entries:
                    self._window(e, batches)
                self.say(f"round {r + 1}/{cfg.repeats}: " + ", ".join(
                    f"{e.label} {e.window_medians[-1] * 1e3:.2f} ms" for e in entries))
            for e in entries:
                self._profile(e, batches)
        else:
            for spec in specs:
                if entries and self._out_of_time(t_start, spec):
                    continue
                e = self._built(spec)
                self.say(f"{e.label}: built ({e.params / 1e6:.2f} M parameters), warming up")
                self._warm(e, batches)
                for _ in range(cfg.repeats):
                    self._window(e, batches)
                self.say(f"{e.label}: {statistics.median(e.times) * 1e3:.2f} ms/step")
                self._profile(e, batches)
                entries.append(e)
                self._free(e)
        return self._record(entries, time.perf_counter() - t_start)

    def _out_of_time(self, t_start: float, spec) -> bool:
        """True (and the entry recorded as skipped) once ``time_limit_s`` has passed."""
        limit = self.cfg.time_limit_s
        if not limit or time.perf_counter() - t_start < limit:
            return False
        self.skipped.append(spec[1])
        self.say(f"{spec[1]}: skipped (time limit {limit:.0f} s passed)")
        return True

    # -------------------------------------------------------------------- record
    def _record(self, entries: list[_Entry], wall: float) -> dict[str, Any]:
        import torch

        from formers.bench.attention import device_tag
        from formers.bench.devices import mfu, peak_tflops
        from formers.bench.peers import LABELS, xtransformers_param_gap
        from formers.train.trainer import git_commit

        cfg = self.cfg
        dev_name = torch.cuda.get_device_name(self.device) if self.cuda else (
            platform.processor() or platform.machine() or "cpu")
        tf32 = self.cuda and torch.backends.cuda.matmul.allow_tf32
        peak, peak_src = peak_tflops(dev_name if self.cuda else "cpu", self.dtype_name, cfg.peak_tflops, tf32)
        tokens = self.batch * self.seq_len
        rows = []
        for e in entries:
            med = statistics.median(e.times)
            tps = tokens / med
            six_n = six_n_flops(e.params, e.cfg.n_layers, e.cfg.d_model, self.seq_len)
            mem_mb = ((e.resident_bytes + e.transient_peak) / 2**20) if self.cuda else e.rss_peak_kb / 1024
            rows.append({
                "name": e.label, "kind": e.kind,
                "implementation": LABELS.get(e.label, "formers") if e.kind == "peer" else "formers",
                "granularity": e.granularity, "params": e.params,
                "step_time_ms": med * 1e3,
                "step_time_ms_windows": [m * 1e3 for m in e.window_medians],
                "step_time_ms_min": min(e.times) * 1e3,
                # the fastest window's median: robust to bursts of load from other processes (a
                # shared CPU), where the overall median may land in a disturbed window
                "step_time_ms_best_window": min(e.window_medians) * 1e3,
                "tokens_per_s_best_window": tokens / min(e.window_medians), "tokens_per_s": tps,
                "peak_mem_mb": mem_mb,
                "peak_mem_method": ("resident state + max_memory_allocated rise in the windows" if self.cuda
                                    else "process peak RSS (VmHWM) in the windows"),
                "flops_per_token": e.flops, "flops_source": e.flops_source,
                "mfu": mfu(e.flops, tps, peak), "flops_per_token_6n": six_n, "mfu_6n": mfu(six_n, tps, peak),
                "warmup_s": e.warmup_s, "compiles": e.compiles, "graph_breaks": e.graph_breaks,
                "final_loss": e.last_loss, "profile": e.profile,
            })
        by = {r["name"]: r for r in rows}
        refs = [p for p in cfg.peers if p in by] + (["baseline"] if "baseline" in by else [])
        for r in rows:
            r["ratios"] = {}
            for ref in refs:
                if ref == r["name"]:
                    continue
                b = by[ref]
                r["ratios"][ref] = {"tokens_per_s": r["tokens_per_s"] / b["tokens_per_s"],
                                    "tokens_per_s_best_window": r["tokens_per_s_best_window"]
                                    / b["tokens_per_s_best_window"],
                                    "step_time": r["step_time_ms"] / b["step_time_ms"],
                                    "peak_mem": (r["peak_mem_mb"] / b["peak_mem_mb"]) if b["peak_mem_mb"] else None}
        param_notes = {}
        if "hf" in by and "baseline" in by:
            param_notes["hf"] = f"HF GPT-2 {by['hf']['params']:,} vs ours {by['baseline']['params']:,}"
        if "xtransformers" in by:
            param_notes["xtransformers"] = (f"x-transformers {by['xtransformers']['params']:,}; ours has "
                                            f"{xtransformers_param_gap(self.base):,} more (attention and LayerNorm biases)")
        record = {
            "benchmark": "train_bench", "preset": cfg.preset, "device": str(self.device),
            "device_name": dev_name, "device_tag": device_tag(str(self.device)), "dtype": self.dtype_name,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "commit": git_commit(),
            "python": platform.python_version(), "batch_size": self.batch, "seq_len": self.seq_len,
            "tokens_per_step": tokens, "vocab_size": self.base.vocab_size,
            "model": {k: getattr(self.base, k) for k in ("n_layers", "d_model", "n_heads", "vocab_size",
                                                         "max_seq_len", "position", "norm", "ffn", "tie_embeddings")},
            "compile": self.compile, "compile_mode": cfg.compile_mode if self.compile else None,
            "compile_backend": cfg.compile_backend if self.compile else None,
            "sdpa_backend": cfg.sdpa_backend, "inductor": inductor_settings(cfg.inductor),
            "interleave": cfg.interleave, "steps": cfg.steps,
            "warmup": cfg.warmup, "repeats": cfg.repeats, "seed": cfg.seed,
            "optimizer": f"AdamW(lr={cfg.lr}, betas=(0.9, 0.95), wd=0.1{', fused' if self.cuda else ''})",
            "data": "random token ids, uniform over the vocabulary, fixed seed (throughput only; nothing is learned)",
            "peak_tflops": peak, "peak_source": peak_src, "params_note": param_notes,
            "skipped_time_limit": list(self.skipped), "tag": cfg.tag, "wall_s": wall, "config": cfg.to_dict(), "rows": rows,
        }
        record["goals"] = goals(record)
        record["matformer_scaling"] = matformer_scaling(record)
        return record


# ------------------------------------------------------------------------------------------ goals
def goals(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets that this record can answer: [{goal, value, target, met}]."""
    by = {r["name"]: r for r in record["rows"]}
    out = []

    def add(goal: str, value: float | None, target: float, higher: bool = True) -> None:
        if value is None:
            return
        out.append({"goal": goal, "value": value, "op": ">=" if higher else "<=", "target": target,
                    "met": value >= target if higher else value <= target})

    b = by.get("baseline")
    cuda = record["device"].startswith("cuda")
    if b is not None:
        if cuda and record["preset"] == "gpt2-small" and record["dtype"] == "bf16" and record["compile"]:
            add("gpt2-small bf16 compiled MFU (6N+12LdT, datasheet peak)", b["mfu_6n"], 0.45)
        if cuda:
            if "xtransformers" in by:
                add("tokens/s vs x-transformers", b["ratios"]["xtransformers"]["tokens_per_s"], 1.4)
            if "hf" in by:
                add("tokens/s vs HF GPT-2", b["ratios"]["hf"]["tokens_per_s"], 1.5)
                add("peak memory vs HF GPT-2 (ratio)", b["ratios"]["hf"]["peak_mem"], 1.0, higher=False)
        elif "xtransformers" in by:
            add("CPU tokens/s vs x-transformers", b["ratios"]["xtransformers"]["tokens_per_s"], 1.0)
            best = b["ratios"]["xtransformers"].get("tokens_per_s_best_window")
            add("CPU tokens/s vs x-transformers (fastest windows)", best, 1.0)
        for name, limit in (("denseformer-4x5", 0.05), ("value-residual", 0.03)):
            if name in by:
                add(f"{name} slowdown vs baseline (step time ratio - 1)",
                    by[name]["step_time_ms"] / b["step_time_ms"] - 1, limit, higher=False)
    return out


def matformer_scaling(record: dict[str, Any]) -> list[dict[str, Any]]:
    """For each MatFormer submodel row (``NAME@G``) beside a ``baseline`` row: its tokens/s
    speed-up over the baseline, the FLOP ratio baseline / submodel (the speed-up if time followed
    the FLOPs) and their quotient (1 = the submodel is as much faster as its FLOPs are fewer). The
    issue asks that submodel speed scale with FFN width; there is no numeric target."""
    by = {r["name"]: r for r in record["rows"]}
    b = by.get("baseline")
    out = []
    for r in record["rows"]:
        if b is None or r.get("granularity") is None:
            continue
        speedup = r["tokens_per_s"] / b["tokens_per_s"]
        flop_ratio = b["flops_per_token"] / r["flops_per_token"]
        out.append({"name": r["name"], "granularity": r["granularity"], "speedup_vs_baseline": speedup,
                    "flop_ratio": flop_ratio, "speedup_over_flop_ratio": speedup / flop_ratio})
    return out


# ------------------------------------------------------------------------------------------ output
def _f(v: Any, fmt: str = "{:.3g}") -> str:
    if v is None:
        return "-"
    return fmt.format(v)


def table_markdown(record: dict[str, Any]) -> str:
    """A markdown table of the rows (absolute figures and ratios to every peer / the baseline)."""
    refs = sorted({k for r in record["rows"] for k in r["ratios"]})
    head = ["model", "params (M)", "step (ms)", "best window (ms)", "tokens/s", "peak mem (MiB)", "MFU", "MFU 6N",
            "warm-up (s)", "graph breaks"] + [f"tok/s vs {k}" for k in refs]
    lines = [
        f"# train_bench {record['preset']} on {record['device_name']} ({record['dtype']}, "
        f"compile={record['compile']}{'' if not record['compile_mode'] else ' ' + record['compile_mode']}, "
        f"sdpa={record['sdpa_backend']})",
        "",
        f"batch {record['batch_size']} x seq_len {record['seq_len']}, vocab {record['vocab_size']}; "
        f"torch {record['torch']}, {record['threads']} threads, commit {record['commit']}; "
        f"peak {_f(record['peak_tflops'])} TFLOP/s ({record['peak_source']}). {record['data']}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in record["rows"]:
        cells = [r["name"], f"{r['params'] / 1e6:.2f}", f"{r['step_time_ms']:.2f}",
                 f"{r['step_time_ms_best_window']:.2f}", f"{r['tokens_per_s']:,.0f}",
                 f"{r['peak_mem_mb']:,.0f}", _f(r["mfu"], "{:.1%}"), _f(r["mfu_6n"], "{:.1%}"),
                 f"{r['warmup_s']:.1f}", _f(r["graph_breaks"], "{}")]
        cells += [_f(r["ratios"].get(k, {}).get("tokens_per_s"), "{:.3f}") for k in refs]
        lines.append("| " + " | ".join(cells) + " |")
    if record.get("goals"):
        lines += ["", "| goal | measured | target | met |", "|---|---|---|---|"]
        for g in record["goals"]:
            lines.append(f"| {g['goal']} | {g['value']:.3f} | {g['op']} {g['target']} | {'yes' if g['met'] else 'no'} |")
    if record.get("matformer_scaling"):
        lines += ["", "| MatFormer submodel | speed-up vs baseline | FLOP ratio | speed-up / FLOP ratio |",
                  "|---|---|---|---|"]
        for m in record["matformer_scaling"]:
            lines.append(f"| {m['name']} | {m['speedup_vs_baseline']:.3f} | {m['flop_ratio']:.3f} | "
                         f"{m['speedup_over_flop_ratio']:.3f} |")
    if record.get("params_note"):
        lines += [""] + [f"- {k}: {v}" for k, v in record["params_note"].items()]
    profiled = [(r["name"], r["profile"]) for r in record["rows"] if r.get("profile")]
    if profiled:
        from formers.bench.profile import breakdown_markdown

        what = ("busy = kernel time / wall" if record.get("device") != "cpu" else
                "on the CPU 'kernels' are the operators' self times, 'launches' the operator calls, and "
                "`Optimizer.step#AdamW.step` is the optimizer's own Python time; busy = their sum / wall")
        lines += ["", f"Where the time goes (torch.profiler; milliseconds per step; {what}):", ""]
        lines += breakdown_markdown(profiled)
    return "\n".join(lines) + "\n"


def plot(record: dict[str, Any], path: Path) -> Path:
    """Bar plot: tokens/s (left) and peak memory (right) per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["rows"]
    names = [r["name"] for r in rows]
    colors = ["tab:gray" if r["kind"] == "peer" else "tab:blue" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(rows) + 4), 4.5))
    for ax, key, label in ((axes[0], "tokens_per_s", "tokens/s (median step)"),
                           (axes[1], "peak_mem_mb", "peak memory (MiB)")):
        ax.bar(names, [r[key] for r in rows], color=colors)
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=45)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"train_bench {record['preset']}: {record['device_name']} {record['dtype']}, "
                 f"batch {record['batch_size']} x {record['seq_len']} (peers grey)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def result_stem(record: dict[str, Any]) -> str:
    tag = record.get("tag") or ""
    return f"train_bench-{record['device_tag']}-{record['preset']}" + (f"-{tag}" if tag else "")


def write_results(record: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """``train_bench-<device>-<preset>.{json,md,png}`` in ``out_dir``, each written atomically."""
    return write_result_files(out_dir, result_stem(record), record, table_markdown, plot)


# record fields that change throughput or memory besides the code; compare_records names those that differ
COMPARE_SETTINGS = ("preset", "device_name", "dtype", "threads", "batch_size", "seq_len", "vocab_size", "compile",
                    "compile_mode", "sdpa_backend", "interleave", "torch", "peak_tflops")


def compare_records(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Per-row change of ``new`` against ``old`` (rows matched by name): tokens/s, step time, peak
    memory and MFU, old -> new and the relative change. Rows in only one record are listed. When
    the two runs differ in a setting that moves the figures (:data:`COMPARE_SETTINGS`: threads,
    batch, dtype, torch version, ...), a ``settings differ:`` line names each one, so that a
    change from, say, 2 threads to 1 is not read as a regression."""
    from formers.bench.results import settings_differ

    o = {r["name"]: r for r in old.get("rows", [])}
    lines = [f"compare: {old.get('device_name')} {old.get('commit')} -> {new.get('device_name')} {new.get('commit')}"]
    differ = settings_differ(old, new, COMPARE_SETTINGS)
    if differ:
        lines.append(differ)
    lines += [f"{'model':<22} {'tokens/s old':>14} {'new':>14} {'change':>8}   {'step ms old':>11} {'new':>9}"
              f"   {'mem MiB old':>11} {'new':>9}   {'MFU old':>7} {'new':>7}"]
    for r in new["rows"]:
        a = o.pop(r["name"], None)
        if a is None:
            lines.append(f"{r['name']:<22} {'(new row)':>14} {r['tokens_per_s']:>14,.0f}")
            continue
        ch = r["tokens_per_s"] / a["tokens_per_s"] - 1
        lines.append(f"{r['name']:<22} {a['tokens_per_s']:>14,.0f} {r['tokens_per_s']:>14,.0f} {ch:>+8.1%}   "
                     f"{a['step_time_ms']:>11.2f} {r['step_time_ms']:>9.2f}   {a['peak_mem_mb']:>11,.0f} "
                     f"{r['peak_mem_mb']:>9,.0f}   {_f(a.get('mfu'), '{:.1%}'):>7} {_f(r.get('mfu'), '{:.1%}'):>7}")
    for name in o:
        lines.append(f"{name:<22} (row gone)")
    return "\n".join(lines)


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """A stored train_bench JSON (ValueError when it is not one)."""
    from formers.bench.results import read_result

    return read_result(path, "train_bench", "rows")


def run_bench(cfg: TrainBenchConfig, out: Path | None, progress: Callable[[str], None] | None = None
              ) -> tuple[dict[str, Any], dict[str, Path] | None]:
    """Run and (when ``out`` is given) write the results; returns (record, paths)."""
    record = TrainBench(cfg, progress).run()
    paths = write_results(record, out) if out is not None else None
    return record, paths


__all__ = ["PRESETS", "BenchPreset", "TrainBenchConfig", "TrainBench", "preset_config", "padded_vocab",
           "expand_models", "flops_per_token", "six_n_flops", "goals", "matformer_scaling", "table_markdown", "plot",
           "write_results", "COMPARE_SETTINGS", "compare_records", "read_record", "run_bench"]
