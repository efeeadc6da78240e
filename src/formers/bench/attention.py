"""``formers bench attention``: time and peak memory of every registered token mixer against
sequence length, beside the softmax SDPA baseline measured in the same run.

What is measured. Only the mixer module (``build_part('attention', name, cfg, options)`` with
``cfg.max_seq_len`` = the length), on x of shape (batch, length, d_model) with d_model =
n_heads * head_dim, no position scheme (``ctx.position=None``), causal or not. Modes:

* ``fwd``: one forward under ``torch.no_grad()`` (inference);
* ``fwd+bwd``: forward with gradients, then backward of a fixed random cotangent
  (gradients of x and of the mixer's parameters).

The baseline ``sdpa`` is the registry's ``softmax`` mixer forced to ``backend='sdpa'``
(``torch.nn.functional.scaled_dot_product_attention``: flash / memory-efficient on CUDA, the
fused CPU kernel on CPU). Every other registered attention entry that mixes tokens and can run
in the chosen mode (``caps.causal`` / ``caps.bidirectional``) is discovered from the registry,
so new mixers join without code changes; ``softmax`` itself is not repeated.

Timing: ``warmup`` calls (at least two: the first pays one-time costs such as compilation, the
second measures memory), then ``repeats`` calls timed one by one (``perf_counter`` around the
call, with ``torch.cuda.synchronize`` before and after on CUDA); the median is reported. A case
whose repeats would exceed ``time_limit_s`` runs fewer (at least one); a case whose second call
exceeds ``time_limit_s`` (or whose first exceeds three times it, plus ``COMPILE_ALLOWANCE_S`` on
CUDA, where the first call of a FlexAttention pattern compiles its kernels) is recorded as
``timeout``.

Memory:

* CUDA: ``torch.cuda.max_memory_allocated`` during the second call, minus the memory allocated
  before it (module, input, cotangent): the call's own activations and workspace.
* CPU: every case runs in its own process, forked from a server process that imported torch
  and the parts but ran no torch op (so the fork is safe and each case starts clean). glibc is told to return every allocation >= 64 KiB to the system on free
  (``M_MMAP_THRESHOLD``, and ``malloc_trim`` before measuring), so the resident set tracks
  live tensors. After a first call (which also sets up thread pools and the autograd engine,
  tens of MiB that are not the mixer's), the number is the rise of the process's peak resident
  set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) over its resident set, during
  the second call. Where ``clear_refs`` is not writable the peak since process start is used
  (a lower bound) and ``mem_method`` says so.

A case that runs out of memory (CUDA OOM, a ``RuntimeError`` about memory, or a CPU worker
killed by the system) or times out is recorded as such, and the larger lengths of that mixer
in that mode are recorded as ``skipped``. Other exceptions are recorded as ``error`` with the
message, and the sweep goes on.

Summary per (mixer, mode): the log-log slope of time and of memory against length (least
squares over all measured lengths, and over the largest three: the asymptotic exponent, 2 for
exact attention, 1 for linear-time mixers), and the crossover length where the mixer becomes
faster than SDPA (see :func:`crossover`).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from formers.atomic import atomic_write
from formers.bench.results import write_result_files

BASELINE = "sdpa"
MODES = ("fwd", "fwd+bwd")
# seconds added on CUDA to the first call's limit: compiling a FlexAttention pattern's kernels
COMPILE_ALLOWANCE_S = 90.0
CPU_LENGTHS = (256, 8192)
GPU_LENGTHS = (256, 32768)
_MMAP_THRESHOLD = 64 * 1024
CPU_FLEX_COMPILE = ("", "eager", "aot_eager", "inductor")


@dataclass
class AttentionBenchConfig:
    """Settings of one sweep (recorded in the results).

    device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:N``.
    lengths: explicit sequence lengths; empty = powers of 2 from ``min_len`` to ``max_len``
        (defaults: 256..8192 on CPU, 256..32768 on CUDA).
    mixers: registry names to run (empty = every eligible one); ``exclude`` drops names.
    causal: run causally (decoder layers) instead of bidirectionally.
    batch, n_heads, head_dim: the input shape; d_model = n_heads * head_dim.
    dtype: ``auto`` (bf16 on CUDA, fp32 on CPU), ``fp32``, ``bf16``, ``fp16``.
    warmup / repeats: untimed calls, then timed calls (median reported).
    time_limit_s: per-case limit (see the module docstring). threads: CPU threads (0 = torch's).
    options: per-mixer constructor options, ``{"linformer": {"k": 128}}``.
    modes: which of ``fwd`` / ``fwd+bwd`` to run (default both).
    force_flex: build the mixers whose registry backend names the flex path with
        ``backend="flex"`` (FlexAttention on CPU too); default: each mixer's own choice.
    cpu_flex_compile: torch.compile backend for the flex path on CPU (``eager``, ``aot_eager``,
        ``inductor``; "" = flex's eager form, the default); forward only (see
        :data:`formers.nn.attention.core.FLEX_CPU_COMPILE`).
    isolate: CPU only: run every case in its own forked process (clean memory numbers; the
        default). False runs them in this process, one after another as on CUDA, so torch.compile
        caches carry over from length to length and the recompilation counts mean what they
        mean on the GPU.
    """

    device: str = "auto"
    lengths: tuple[int, ...] = ()
    min_len: int = 256
    max_len: int = 0
    mixers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    causal: bool = False
    batch: int = 1
    n_heads: int = 8
    head_dim: int = 64
    dtype: str = "auto"
    warmup: int = 2
    repeats: int = 5
    time_limit_s: float = 60.0
    threads: int = 0
    seed: int = 0
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    modes: tuple[str, ...] = MODES
    force_flex: bool = False
    cpu_flex_compile: str = ""
    isolate: bool = True

    def __post_init__(self) -> None:
        o = "bench attention"
        for name in ("batch", "n_heads", "head_dim", "repeats", "min_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{o}: {name} must be an int >= 1, got {v!r}")
        for name in ("warmup", "threads", "max_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{o}: {name} must be an int >= 0, got {v!r}")
        if not self.time_limit_s > 0:
            raise ValueError(f"{o}: time_limit_s must be > 0, got {self.time_limit_s}")
        if self.dtype not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"{o}: dtype must be one of auto, fp32, bf16, fp16, got {self.dtype!r}")
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.lengths):
            raise ValueError(f"{o}: lengths must be ints >= 1, got {list(self.lengths)}")
        if self.max_len and self.max_len < self.min_len:
            raise ValueError(f"{o}: max_len = {self.max_len} is below min_len = {self.min_len}")
        if not isinstance(self.options, dict) or not all(isinstance(v, dict) for v in self.options.values()):
            raise ValueError(f"{o}: options must map a mixer name to a dict of options, got {self.options!r}")
        self.modes = tuple(self.modes)
        if not self.modes or any(m not in MODES for m in self.modes):
            raise ValueError(f"{o}: modes must be a non-empty subset of {list(MODES)}, got {list(self.modes)}")
        if self.cpu_flex_compile not in CPU_FLEX_COMPILE:
            raise ValueError(f"{o}: cpu_flex_compile must be one of {list(CPU_FLEX_COMPILE)}, "
                             f"got {self.cpu_flex_compile!r}")
        if self.cpu_flex_compile and "fwd+bwd" in self.modes:
            raise ValueError(f"{o}: cpu_flex_compile={self.cpu_flex_compile!r} runs forward only "
                             f"(compiled flex has no backward on CPU); use modes=('fwd',)")

    @property
    def d_model(self) -> int:
        return self.n_heads * self.head_dim


# ================================================================================ analysis
def loglog_slope(lengths: list[float], values: list[float]) -> float | None:
    """Least-squares slope of log(value) against log(length) over the points with value > 0;
    None with fewer than two such points (or one distinct length)."""
    pts = [(math.log(n), math.log(v)) for n, v in zip(lengths, values)
           if v is not None and v > 0 and n > 0 and math.isfinite(v)]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def crossover(lengths: list[int], mixer: list[float | None], base: list[float | None]
              ) -> tuple[float | None, str]:
    """The length from which ``mixer`` is faster than ``base`` (times at ``lengths``, ascending).

    A length where the mixer failed (None) counts as slower, one where only the baseline failed
    as faster; where both failed the length is left out. The crossover is the point after the
    last length where the mixer is not faster: interpolated linearly in (log length, log time
    ratio) between that length and the next when both ran there, else the next measured length.

    Returns (length, kind): kind ``below`` (faster at every length: the length is the smallest
    measured), ``at`` (crossover inside the range), ``never`` (not faster at the largest length:
    length None), or ``none`` (no length with a result: None).
    """
    d: list[tuple[int, float]] = []  # (length, log(t_mixer / t_base)); +-inf for one-sided failures
    for n, m, b in zip(lengths, mixer, base):
        if m is None and b is None:
            continue
        if m is None:
            d.append((n, math.inf))
        elif b is None:
            d.append((n, -math.inf))
        else:
            d.append((n, math.log(m / b)))
    if not d:
        return None, "none"
    slower = [i for i, (_, r) in enumerate(d) if r >= 0]
    if not slower:
        return float(d[0][0]), "below"
    i = slower[-1]
    if i == len(d) - 1:
        return None, "never"
    (n0, r0), (n1, r1) = d[i], d[i + 1]
    if math.isinf(r0) or math.isinf(r1):
        return float(n1), "at"
    f = r0 / (r0 - r1)  # r0 >= 0 > r1
    return math.exp(math.log(n0) + f * (math.log(n1) - math.log(n0))), "at"


def summarise(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (mixer, mode): slopes (all lengths and the largest 3), crossover against the baseline,
    the largest length that ran."""
    lengths = result["lengths"]
    table: dict[tuple[str, str], dict[int, dict]] = {}
    for c in result["cases"]:
        table.setdefault((c["mixer"], c["mode"]), {})[c["length"]] = c
    rows = []
    for (mixer, mode), by_len in table.items():
        ok = [n for n in lengths if by_len.get(n, {}).get("status") == "ok"]
        times = [by_len[n]["time_ms"] for n in ok]
        mems = [by_len[n]["mem_mb"] for n in ok]
        pos = [(n, m) for n, m in zip(ok, mems) if m is not None and m > 0]
        row = {"mixer": mixer, "mode": mode,
               "time_slope": loglog_slope(ok, times), "time_slope_tail": loglog_slope(ok[-3:], times[-3:]),
               "mem_slope": loglog_slope([p[0] for p in pos], [p[1] for p in pos]),
               "mem_slope_tail": loglog_slope([p[0] for p in pos[-3:]], [p[1] for p in pos[-3:]]),
               "max_len_ok": max(ok) if ok else None}
        # torch.compile graphs compiled in each length's case (None: not counted / did not run);
        # ``compiles_later``: those after the first length, i.e. recompilations for new lengths
        comp = [by_len.get(n, {}).get("compiles") for n in lengths]
        counted = [c for c in comp if c is not None]
        row["compiles_by_length"] = comp
        row["compiles_later"] = sum(counted[1:]) if counted else None
        if mixer != BASELINE:
            base = table.get((BASELINE, mode), {})

            def t(src: dict, n: int) -> float | None:
                c = src.get(n)
                return c["time_ms"] if c is not None and c["status"] == "ok" else None

            ran = [n for n in lengths if n in by_len and by_len[n]["status"] != "error"
                   and (n in base and base[n]["status"] != "error")]
            x, kind = crossover(ran, [t(by_len, n) for n in ran], [t(base, n) for n in ran])
            row["crossover_len"], row["crossover"] = x, kind
        rows.append(row)
    return rows


# =========================================================================== running cases
def _dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def uses_flex(name: str) -> bool:
    """Whether mixer ``name``'s registry backend names the FlexAttention path."""
    from formers import registry

    return name != BASELINE and "flex" in registry.get("attention", name).caps.backend


def build_mixer(name: str, length: int, n_heads: int, head_dim: int, options: dict[str, Any] | None = None,
                force_flex: bool = False):
    """The registered mixer ``name`` (``sdpa`` = softmax forced to SDPA) for ``length`` tokens;
    ``force_flex``: a mixer with a flex path is built with ``backend="flex"``."""
    from formers.nn.build import build_part
    from formers.nn.config import ModelConfig

    cfg = ModelConfig(d_model=n_heads * head_dim, n_heads=n_heads, max_seq_len=length, dropout=0.0)
    if name == BASELINE:
        return build_part("attention", "softmax", cfg, options, backend="sdpa")
    if force_flex and uses_flex(name):
        return build_part("attention", name, cfg, options, backend="flex")
    return build_part("attention", name, cfg, options)


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "not enough memory" in msg
                                            or "can't allocate memory" in msg or "failed to allocate" in msg)


def _read_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_kb() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r // 1024 if sys.platform == "darwin" else r


def _glibc_setup() -> Callable[[], None]:
    """Ask glibc to unmap allocations >= 64 KiB on free; return a ``malloc_trim(0)`` caller."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, _MMAP_THRESHOLD)  # M_MMAP_THRESHOLD (also turns off its dynamic growth)
        return lambda: libc.malloc_trim(0)
    except (OSError, AttributeError):
        return lambda: None


def run_case(name: str, length: int, mode: str, cfg: AttentionBenchConfig, device: str) -> dict[str, Any]:
    """Measure one (mixer, length, mode) in this process: median time (ms), memory (MiB) and the
    torch.compile graphs compiled during the case (``compiles``, with ``recompile_reasons``; see
    :mod:`formers.bench.compile_count`). Returns a case record; exceptions propagate (the caller
    classifies them)."""
    from formers.bench.compile_count import CompileCount
    from formers.nn.attention import core

    before = core.FLEX_CPU_COMPILE
    core.FLEX_CPU_COMPILE = cfg.cpu_flex_compile
    try:
        with CompileCount() as cc:
            rec = _measure(name, length, mode, cfg, device)
    finally:
        core.FLEX_CPU_COMPILE = before
    return {**rec, **cc.record()}


def _measure(name: str, length: int, mode: str, cfg: AttentionBenchConfig, device: str) -> dict[str, Any]:
    import torch

    from formers.nn.context import Context

    cuda = device.startswith("cuda")
    dt = _dtype(cfg.dtype, device)
    torch.manual_seed(cfg.seed)
    trim = (lambda: None) if cuda else _glibc_setup()
    mod = build_mixer(name, length, cfg.n_heads, cfg.head_dim, cfg.options.get(name),
                      cfg.force_flex).to(device=device, dtype=dt)
    x = torch.randn(cfg.batch, length, cfg.d_model, device=device, dtype=dt)
    g = torch.randn_like(x)
    ctx = Context(positions=torch.arange(length, device=device), causal=cfg.causal)
    if mode == "fwd+bwd":
        x.requires_grad_(True)

    def call() -> None:
        if mode == "fwd":
            with torch.no_grad():
                mod(x, ctx)
        else:
            mod.zero_grad(set_to_none=True)
            x.grad = None
            mod(x, ctx).backward(g)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    sync()
    t0 = time.perf_counter()
    call()  # the first call: one-time set-up (compilation, thread pools, autograd engine, buffers)
    sync()
    first = time.perf_counter() - t0
    compiles = cuda or bool(cfg.cpu_flex_compile and uses_flex(name))
    first_limit = 3 * cfg.time_limit_s + (COMPILE_ALLOWANCE_S if compiles else 0.0)
    if first > first_limit:
        return {"status": "timeout", "time_ms": first * 1e3, "mem_mb": None, "mem_method": "",
                "note": f"first call took {first:.1f} s > {first_limit:.0f} s (3 x time_limit_s "
                        f"{cfg.time_limit_s}{' + compile allowance' if compiles else ''})"}
    # the second call: memory (and the time that sets the number of repeats)
    if cuda:
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        call()
        sync()
        second = time.perf_counter() - t0
        mem_mb, method = (torch.cuda.max_memory_allocated(device) - before) / 2**20, "cuda-max-allocated"
    else:  # what the first call freed went back to the system
        trim()
        base_kb = _read_status_kb("VmRSS")
        reset = base_kb is not None and _reset_hwm()
        if not reset:
            base_kb = _peak_rss_kb()
        t0 = time.perf_counter()
        call()
        second = time.perf_counter() - t0
        if reset:
            mem_mb, method = (_read_status_kb("VmHWM") - base_kb) / 1024, "VmHWM-rise"
        else:
            mem_mb, method = (_peak_rss_kb() - base_kb) / 1024, "ru_maxrss-rise (lower bound)"
    if second > cfg.time_limit_s:
        return {"status": "timeout", "time_ms": second * 1e3, "mem_mb": mem_mb, "mem_method": method,
                "note": f"a call took {second:.1f} s > time_limit_s {cfg.time_limit_s}"}
    budget_calls = max(1, int(cfg.time_limit_s / max(second, 1e-9)))
    warmup = min(max(cfg.warmup - 2, 0), max(budget_calls - 1, 0))  # two calls ran already
    repeats = max(1, min(cfg.repeats, budget_calls - warmup))
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t0)
    return {"status": "ok", "time_ms": statistics.median(times) * 1e3, "mem_mb": mem_mb,
            "mem_method": method, "repeats": repeats,
            "note": "" if repeats == cfg.repeats else f"repeats cut to {repeats} by time_limit_s"}


def _classify(e: BaseException) -> dict[str, Any]:
    status = "oom" if _is_oom(e) else "error"
    return {"status": status, "time_ms": None, "mem_mb": None,
            "note": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"}


def _case_in_child(req: dict[str, Any]) -> dict[str, Any]:
    import torch

    cfg = AttentionBenchConfig(**req["cfg"])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return run_case(req["name"], req["length"], req["mode"], cfg, req["device"])


def _server() -> None:
    """The CPU fork server: imports torch and every part once, never runs a torch op itself (so
    forking it is safe), and runs each case (one JSON line on stdin) in a fresh forked child,
    killing it after ``hard_limit`` seconds; answers one JSON line per case on stdout."""
    import select
    import signal

    import importlib

    import torch  # noqa: F401
    import formers.nn  # noqa: F401

    # what the first backward imports lazily (about 1 s, paid once here instead of in every case)
    for mod in ("torch.fx.experimental.symbolic_shapes",):
        try:
            importlib.import_module(mod)
        except ImportError:
            pass
    for line in sys.stdin:
        req = json.loads(line)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the case
            os.close(r)
            os.dup2(2, 1)  # stray prints must not reach the protocol channel
            try:
                rec = _case_in_child(req)
            except BaseException as e:  # reported, not raised
                rec = _classify(e)
            data = json.dumps(rec).encode()
            while data:
                data = data[os.write(w, data):]
            os.close(w)
            os._exit(0)
        os.close(w)
        deadline, chunks, timed_out = time.monotonic() + req["hard_limit"], [], False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if select.select([r], [], [], left)[0]:
                b = os.read(r, 1 << 16)
                if not b:
                    break
                chunks.append(b)
        if timed_out:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(r)
        if timed_out:
            rec = {"status": "timeout", "time_ms": None, "mem_mb": None,
                   "note": f"worker killed after {req['hard_limit']:.0f} s"}
        elif chunks:
            rec = json.loads(b"".join(chunks))
        elif os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            rec = {"status": "oom", "time_ms": None, "mem_mb": None,
                   "note": "worker killed by SIGKILL (out of memory)"}
        else:
            rec = {"status": "error", "time_ms": None, "mem_mb": None,
                   "note": f"worker ended without a result (wait status {status})"}
        sys.stdout.write(json.dumps(rec) + "\n")
        sys.stdout.flush()


class _CpuWorkers:
    """Client of :func:`_server` (a subprocess started on first use, stopped by :meth:`close`)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def run(self, name: str, length: int, mode: str, cfg: AttentionBenchConfig, device: str) -> dict[str, Any]:
        if self.proc is None:
            src = str(Path(__file__).resolve().parents[2])
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from formers.bench.attention import _server; _server()"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        req = {"name": name, "length": length, "mode": mode, "cfg": asdict(cfg), "device": device,
               "hard_limit": cfg.time_limit_s * 5 + 60}
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench attention: the CPU worker server died (exit {self.proc.poll()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def eligible_mixers(causal: bool, only: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> list[str]:
    """Registered attention entries that mix tokens and run in the mode (``softmax`` excluded: it
    is the baseline). Names in ``only`` must be registered; one that cannot run in the mode is
    a ValueError."""
    from formers import registry

    ents = {e.name: e for e in registry.entries("attention")}
    for n in (*only, *exclude):
        if n not in ents and n != BASELINE:
            raise ValueError(f"bench attention: unknown mixer {n!r}; registered: {sorted(ents)}")
    out = []
    for name, e in ents.items():
        if name == "softmax" or name in exclude or (only and name not in only):
            continue
        ok = e.caps.mixes_tokens and (e.caps.causal if causal else e.caps.bidirectional)
        if not ok:
            if only:
                raise ValueError(f"bench attention: mixer {name!r} cannot run "
                                 f"{'causally' if causal else 'bidirectionally'} (or mixes no tokens)")
            continue
        out.append(name)
    return out


def _lengths(cfg: AttentionBenchConfig, cuda: bool) -> list[int]:
    if cfg.lengths:
        return sorted(set(cfg.lengths))
    lo, hi = cfg.min_len, cfg.max_len or (GPU_LENGTHS if cuda else CPU_LENGTHS)[1]
    out, n = [], 1
    while n <= hi:
        if n >= lo:
            out.append(n)
        n *= 2
    if not out:
        raise ValueError(f"bench attention: no power of 2 between min_len {lo} and max_len {hi}")
    return out


def device_tag(device: str) -> str:
    """``cpu`` or the GPU's short name (``NVIDIA H200`` -> ``H200``), safe in a file name."""
    import torch

    if not device.startswith("cuda"):
        return "cpu"
    name = torch.cuda.get_device_name(torch.device(device))
    name = name.replace("NVIDIA", "").replace("GeForce", "").strip() or "cuda"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def sweep(cfg: AttentionBenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every (mixer, length, mode) case; return the results record (not yet written)."""
    import torch

    from formers.train.trainer import resolve_device

    import formers.nn  # noqa: F401  (registers every mixer)

    dev = str(resolve_device(cfg.device))
    cuda = dev.startswith("cuda")
    lengths = _lengths(cfg, cuda)
    mixers = [BASELINE] + eligible_mixers(cfg.causal, cfg.mixers, cfg.exclude)
    for n in cfg.options:
        if n not in mixers:
            raise ValueError(f"bench attention: options given for {n!r}, which is not in this sweep {mixers}")
        build_mixer(n, lengths[0], cfg.n_heads, cfg.head_dim, cfg.options[n], cfg.force_flex)  # bad options fail here
    if cfg.threads and not cuda:
        torch.set_num_threads(cfg.threads)
    cases = []
    t_start = time.time()
    workers = _CpuWorkers()
    try:
        _sweep_cases(cfg, dev, cuda, mixers, lengths, cases, workers, progress)
    finally:
        workers.close()
    result = _record(cfg, dev, cuda, lengths, mixers, cases, time.time() - t_start)
    result["summary"] = summarise(result)
    return result


def _sweep_cases(cfg: AttentionBenchConfig, dev: str, cuda: bool, mixers: list[str], lengths: list[int],
                 cases: list[dict[str, Any]], workers: _CpuWorkers,
                 progress: Callable[[str], None] | None) -> None:
    import torch

    for name in mixers:
        stopped: dict[str, str] = {}
        for n in lengths:
            for mode in cfg.modes:
                if mode in stopped:
                    rec = {"status": "skipped", "time_ms": None, "mem_mb": None, "note": stopped[mode]}
                elif cuda or not cfg.isolate:
                    try:
                        rec = run_case(name, n, mode, cfg, dev)
                    except Exception as e:  # classified and recorded
                        rec = _classify(e)
                    if cuda:
                        torch.cuda.empty_cache()
                else:
                    rec = workers.run(name, n, mode, cfg, dev)
                if rec["status"] in ("oom", "timeout") and mode not in stopped:
                    stopped[mode] = f"after {rec['status']} at length {n}"
                case = {"mixer": name, "mode": mode, "length": n, **rec}
                cases.append(case)
                if progress is not None:
                    tm = "-" if case["time_ms"] is None else f"{case['time_ms']:.3g} ms"
                    mm = "-" if case["mem_mb"] is None else f"{case['mem_mb']:.3g} MiB"
                    progress(f"{name:>16} {mode:>7} n={n:<6} {case['status']:>7} {tm:>12} {mm:>12} {case.get('note', '')}")


def _record(cfg: AttentionBenchConfig, dev: str, cuda: bool, lengths: list[int], mixers: list[str],
            cases: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    import torch as _t

    from formers.train.trainer import git_commit

    return {
        "benchmark": "attention_scaling",
        "device": "cuda" if cuda else "cpu",
        "device_name": _t.cuda.get_device_name(_t.device(dev)) if cuda else platform.processor() or platform.machine(),
        "device_tag": device_tag(dev),
        "dtype": str(_dtype(cfg.dtype, dev)).replace("torch.", ""),
        "torch": _t.__version__,
        "python": platform.python_version(),
        "commit": git_commit(),
        "threads": _t.get_num_threads() if not cuda else None,
        "cpu_count": os.cpu_count(),
        "causal": cfg.causal,
        "settings": {**asdict(cfg), "d_model": cfg.d_model, "lengths": list(cfg.lengths)},
        "baseline": "sdpa: registry 'softmax' with backend='sdpa' (F.scaled_dot_product_attention)",
        "timing": "median of repeats after warm-up; perf_counter around each call"
                  + (" with torch.cuda.synchronize" if cuda else ""),
        "memory": ("torch.cuda.max_memory_allocated during the second call minus memory allocated "
                   "before it" if cuda else
                   "CPU: one process per case, forked from a server that ran no torch op; rise of peak RSS (VmHWM reset via /proc/self/clear_refs) "
                   "over RSS during the second call (after malloc_trim); glibc M_MMAP_THRESHOLD 64 KiB"),
        "lengths": lengths,
        "mixers": mixers,
        "backends": {m: _backend_text(m) for m in mixers},
        "wall_s": wall_s,
        "cases": cases,
    }


def _backend_text(name: str) -> str:
    from formers import registry

    if name == BASELINE:
        return "F.scaled_dot_product_attention"
    return registry.get("attention", name).caps.backend


# ================================================================================ reporting
def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def table_markdown(result: dict[str, Any]) -> str:
    """Markdown: the summary (crossover, slopes) and, per mode, time (ms) and memory (MiB) by length."""
    lengths = result["lengths"]
    by = {(c["mixer"], c["mode"], c["length"]): c for c in result["cases"]}
    head = (f"Attention scaling on {result['device_name']} ({result['device']}, {result['dtype']}, "
            f"torch {result['torch']}, commit {result['commit']}), "
            f"{'causal' if result['causal'] else 'bidirectional'}, batch {result['settings']['batch']}, "
            f"{result['settings']['n_heads']} heads x {result['settings']['head_dim']}.\n")
    out = [head, "| mixer | mode | crossover vs sdpa | time slope (all / last 3) | memory slope (all / last 3) "
                 "| max length run | torch.compile graphs by length |",
           "|---|---|---:|---:|---:|---:|---|"]
    for r in sorted(result["summary"], key=lambda r: (r["mixer"] != BASELINE, r["mixer"], r["mode"])):
        if r["mixer"] == BASELINE:
            x = "(baseline)"
        else:
            x = {"below": f"<= {_fmt(r['crossover_len'], 4)}", "at": _fmt(r["crossover_len"], 4),
                 "never": f"> {lengths[-1]} (never)", "none": "-"}[r["crossover"]]
        comp = r.get("compiles_by_length") or []
        comp_txt = ("-" if all(c is None for c in comp) else
                    ", ".join("-" if c is None else str(c) for c in comp) if any(comp) else "0")
        out.append(f"| {r['mixer']} | {r['mode']} | {x} | {_fmt(r['time_slope'])} / {_fmt(r['time_slope_tail'])} | "
                   f"{_fmt(r['mem_slope'])} / {_fmt(r['mem_slope_tail'])} | {r['max_len_ok'] or '-'} | {comp_txt} |")
    reasons = [f"- {c['mixer']} {c['mode']} n={c['length']}: " + "; ".join(c["recompile_reasons"])
               for c in result["cases"] if c.get("recompile_reasons")]
    if reasons:
        out += ["", "Recompilation reasons (TorchDynamo guard failures; a size mismatch at a new length "
                    "means one recompilation, after which that dimension is dynamic):", "", *reasons]
    modes = [m for m in MODES if any(c["mode"] == m for c in result["cases"])]
    for what, key in (("time (ms, median)", "time_ms"), ("peak memory (MiB)", "mem_mb")):
        for mode in modes:
            out += ["", f"{mode}: {what}", "", "| mixer | " + " | ".join(str(n) for n in lengths) + " |",
                    "|---|" + "---:|" * len(lengths)]
            for m in result["mixers"]:
                cells = []
                for n in lengths:
                    c = by.get((m, mode, n))
                    if c is None:
                        cells.append("")
                    elif c["status"] == "ok":
                        cells.append(_fmt(c[key]))
                    else:
                        cells.append(c["status"].upper() if c["status"] != "skipped" else "skip")
                out.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    """Log-log plot: time (top) and memory (bottom), fwd (left) and fwd+bwd (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for j, mode in enumerate(MODES):
        for i, (key, label) in enumerate((("time_ms", "time per call (ms)"), ("mem_mb", "peak memory (MiB)"))):
            ax = axes[i][j]
            for k, m in enumerate(result["mixers"]):
                pts = [(c["length"], c[key]) for c in result["cases"] if c["mixer"] == m and c["mode"] == mode
                       and c["status"] == "ok" and c[key] is not None and c[key] > 0]
                if not pts:
                    continue
                style = dict(color="black", lw=2.5, ls="--") if m == BASELINE else dict(color=cmap(k % 20), lw=1.2)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=m, **style)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length")
            ax.set_ylabel(label)
            ax.set_title(f"{mode}: {label.split(' (')[0]}")
            ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle(f"attention scaling: {result['device_name']} {result['dtype']}, "
                 f"{'causal' if result['causal'] else 'bidirectional'}")
    fig.tight_layout(rect=(0, 0, 0.85, 0.96))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def write_results(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """``attention_scaling-<device>[-causal].{json,md,png}`` in ``out_dir``, each written atomically."""
    stem = f"attention_scaling-{result['device_tag']}" + ("-causal" if result["causal"] else "")
    return write_result_files(out_dir, stem, result, table_markdown, plot)


__all__ = ["AttentionBenchConfig", "sweep", "summarise", "crossover", "loglog_slope", "table_markdown",
           "plot", "write_results", "eligible_mixers", "build_mixer", "run_case"]
