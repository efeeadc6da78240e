"""``formers bench decode``: time to first token and decoding tokens/s of our generation path beside
Hugging Face ``generate`` on the same weights, measured in the same process (issue 8).

Entries (rows), each run at every (batch, prompt length) of the config:

* ``eager``: our :func:`formers.nn.generate.generate` with the full (growing) KV cache;
* ``static``: the same with ``static_cache=True`` (fixed buffers, no compilation);
* ``compiled``: ``static_cache=True, compile=True``: the per-token step under ``torch.compile``
  (``mode="reduce-overhead"``: CUDA graphs, on CUDA; default mode on CPU);
* ``hf``: ``transformers`` ``GPT2LMHeadModel.generate`` (SDPA attention, dynamic cache, greedy)
  with our weights copied in (:func:`formers.bench.hf_weights.to_hf_gpt2`);
* ``hf-static``: the same with ``cache_implementation="static"``; transformers compiles its
  forward for that cache by itself on CUDA (``mode="reduce-overhead"``) and not on CPU; the row
  records whether it did (``compiled``) or the error it raised.

Method. Prompts are random token ids (fixed seed); decoding is greedy (every entry the same
function of the same weights). Per entry and configuration: ``warmup`` untimed full generations
(compilation happens here), then ``repeats`` rounds, each timing (device synchronised before and
after) one generation of ``new_tokens`` tokens (``total``) and one of a single token (``ttft``:
prefill plus the first sampled token). Figures are medians over the rounds:

    decode tokens/s = (new_tokens - 1) * batch / (total - ttft)   (the tokens after the first)
    end-to-end tokens/s = new_tokens * batch / total

Every row has its ratio to ``hf`` (and ``hf-static``) measured in the same run. Outputs: each
entry's greedy tokens against ``hf``'s: the number of identical rows and the first generated
position where any row differs (bf16 kernels differ between implementations, so a near-tie of
the top two logits can flip a token and the continuation after it); with ``check_fp32`` (default
on CUDA) our eager path and HF are compared again in fp32.

``max_seq_len``: the model holds prompt + new tokens; the preset's own length (1024 for
gpt2-small) is raised to the longest prompt + new tokens when shorter (2048 for 1792 + 256), and
the record says so.
"""

from __future__ import annotations

import gc
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from formers.bench.results import write_result_files
from formers.config import Config

OURS = ("eager", "static", "compiled")
PEER_ROWS = ("hf", "hf-static")
DTYPES = ("auto", "bf16", "fp16", "fp32")
COMPILE_MODES = ("reduce-overhead", "default", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class DecodeBenchConfig(Config):
    """Settings of ``formers bench decode`` (validated on construction).

    Attributes:
        preset: model size (:data:`formers.bench.train.PRESETS`: ``gpt2-small``, ``gpt2-medium``,
            ``tiny``); GPT-2-style baseline, max_seq_len raised to hold prompt + new tokens.
        batch: batch sizes. prompt: prompt lengths (tokens). new_tokens: tokens generated (>= 2).
        ours: our entries (``eager``, ``static``, ``compiled``).
        peers: ``hf`` (and ``hf-static``); empty = ours only.
        warmup: untimed generations per entry and configuration (>= 1 when compiling).
        repeats: timed rounds (>= 1). dtype: ``auto`` = bf16 on CUDA, fp32 on CPU.
        compile_mode: torch.compile mode of ``compiled`` on CUDA (on CPU the default mode).
        cache_len: static buffer length of ``static`` / ``compiled`` (None: generate's default,
            prompt + new tokens rounded up to 256; one length for every configuration means one
            compiled graph per batch size). At least the longest prompt + new tokens; the model's
            max_seq_len is raised to it when shorter.
        check_fp32: also compare greedy outputs of ``eager`` and ``hf`` in fp32 (None: on CUDA
            when the dtype is not fp32).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``. threads: torch.set_num_threads (0 =
            leave). seed: weights and prompts.
    Raises:
        ValueError: naming the field, the value and what is allowed (and, when the run starts,
        a missing ``transformers`` with the extra to install).
    """

    preset: str = "tiny"
    batch: tuple[int, ...] = (1, 4)
    prompt: tuple[int, ...] = (32,)
    new_tokens: int = 64
    ours: tuple[str, ...] = OURS
    peers: tuple[str, ...] = PEER_ROWS
    warmup: int = 1
    repeats: int = 3
    dtype: str = "auto"
    compile_mode: str = "reduce-overhead"
    cache_len: int | None = None
    check_fp32: bool | None = None
    device: str = "auto"
    threads: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        from formers.bench.train import PRESETS

        o = "DecodeBenchConfig"
        if self.preset not in PRESETS:
            raise ValueError(f"{o}.preset: unknown preset {self.preset!r}; known: {sorted(PRESETS)}")
        self.batch, self.prompt = tuple(self.batch), tuple(self.prompt)
        self.ours, self.peers = tuple(self.ours), tuple(self.peers)
        for name in ("batch", "prompt"):
            vals = getattr(self, name)
            if not vals or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in vals):
                raise ValueError(f"{o}.{name} must be a non-empty list of ints >= 1, got {vals!r}")
        if isinstance(self.new_tokens, bool) or not isinstance(self.new_tokens, int) or self.new_tokens < 2:
            raise ValueError(f"{o}.new_tokens must be an int >= 2, got {self.new_tokens!r}")
        for name, allowed in (("ours", OURS), ("peers", PEER_ROWS)):
            vals = getattr(self, name)
            bad = [v for v in vals if v not in allowed]
            if bad or len(set(vals)) != len(vals):
                raise ValueError(f"{o}.{name}: {list(vals)} (allowed, each once: {list(allowed)})")
        if not self.ours and not self.peers:
            raise ValueError(f"{o}: nothing to run (ours and peers are both empty)")
        for name, low in (("warmup", 0), ("repeats", 1), ("threads", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{o}.{name} must be an int >= {low}, got {v!r}")
        if "compiled" in self.ours and self.warmup < 1:
            raise ValueError(f"{o}.warmup must be >= 1 with the 'compiled' entry (compilation happens "
                             f"in the warm-up), got {self.warmup}")
        if self.dtype not in DTYPES:
            raise ValueError(f"{o}.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        longest = max(self.prompt) + self.new_tokens
        if self.cache_len is not None and (isinstance(self.cache_len, bool) or not isinstance(self.cache_len, int)
                                           or self.cache_len < longest):
            raise ValueError(f"{o}.cache_len must be an int >= the longest prompt + new_tokens = {longest}, "
                             f"got {self.cache_len!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"{o}.compile_mode must be one of {list(COMPILE_MODES)}, got {self.compile_mode!r}")


def decode_config(preset: str, longest: int):
    """The GPT-2-style config of ``preset`` with max_seq_len = max(preset's, ``longest``) (prompt +
    new tokens); returns (config, note or '')."""
    from formers.bench.train import PRESETS, preset_config

    usual = PRESETS[preset].seq_len
    if longest <= usual:
        return preset_config(preset), ""
    note = (f"max_seq_len raised from {preset}'s {usual} to {longest} (= longest prompt + new tokens; "
            f"{usual} cannot hold them)")
    return preset_config(preset, seq_len=longest), note


def first_divergence(a, b, prompt_len: int) -> tuple[int, int | None]:
    """(rows of ``a`` equal to ``b``, the first generated position at which some row differs, or
    None). a, b: (batch, prompt_len + n) int64; generated positions count from 0.
    Raises ValueError for different shapes."""
    import torch

    if a.shape != b.shape:
        raise ValueError(f"first_divergence: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = (a[:, prompt_len:] != b[:, prompt_len:]).cpu()
    cols = torch.nonzero(diff.any(0))
    return int((~diff.any(1)).sum()), (int(cols[0]) if cols.numel() else None)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Runner:
    """One entry: ``gen(ids, n) -> (batch, prompt + n)`` ids, with its label and notes."""

    def __init__(self, name: str, gen: Callable, note: str = "") -> None:
        self.name, self.gen, self.note = name, gen, note
        self.compiled: bool | None = None
        self.error: str | None = None


class DecodeBench:
    """Runs a :class:`DecodeBenchConfig`; :meth:`run` returns the result record (not written)."""

    def __init__(self, cfg: DecodeBenchConfig, progress: Callable[[str], None] | None = None) -> None:
        import torch

        from formers.train.trainer import resolve_device

        self.cfg = cfg
        self.say = progress or (lambda _m: None)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.cuda = self.device.type == "cuda"
        name = cfg.dtype if cfg.dtype != "auto" else ("bf16" if self.cuda else "fp32")
        self.dtype_name = name
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]
        longest = max(max(cfg.prompt) + cfg.new_tokens, cfg.cache_len or 0)
        self.model_cfg, self.len_note = decode_config(cfg.preset, longest)
        self.check_fp32 = cfg.check_fp32 if cfg.check_fp32 is not None else (self.cuda and name != "fp32")
        if cfg.peers:
            from formers.bench.peers import require_peer

            try:
                require_peer("hf")
            except ImportError as e:  # a bad setting for the command line: ValueError, exit 2
                raise ValueError(f"{e} (or pass --peers '' to time ours only)") from None

    # ------------------------------------------------------------------ entries
    def _ours(self, model, name: str) -> _Runner:
        from formers.nn.generate import SamplingConfig, generate

        kw: dict[str, Any] = {}
        if name in ("static", "compiled"):
            kw["static_cache"] = True
            kw["cache_len"] = self.cfg.cache_len
        if name == "compiled":
            kw["compile"] = {"mode": self.cfg.compile_mode} if self.cuda else True

        def gen(ids, n):
            return generate(model, ids, SamplingConfig(max_new_tokens=n, temperature=0), **kw)

        r = _Runner(name, gen, {"eager": "full (growing) KV cache, eager",
                                "static": "static KV cache, eager",
                                "compiled": f"static KV cache, torch.compile step "
                                            f"({self.cfg.compile_mode if self.cuda else 'default'})"}[name])
        r.compiled = name == "compiled"
        return r

    def _hf(self, hf, name: str) -> _Runner:
        import torch

        extra: dict[str, Any] = {}
        if name == "hf-static":
            from transformers import GenerationConfig

            extra["cache_implementation"] = "static"
            if self.cfg.cache_len and hasattr(GenerationConfig(), "max_cache_len"):
                extra["max_cache_len"] = self.cfg.cache_len  # the same buffer length as ours

        def gen(ids, n):
            return hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                               do_sample=False, use_cache=True, **extra)

        note = "transformers GPT2LMHeadModel.generate, sdpa, greedy, " + (
            "static cache (transformers compiles its forward on CUDA)"
            + (f", max_cache_len {extra['max_cache_len']}" if "max_cache_len" in extra else "")
            if extra else "dynamic cache")
        return _Runner(name, gen, note)

    # ------------------------------------------------------------------ measure
    def _time(self, fn) -> float:
        _sync(self.device)
        t = time.perf_counter()
        fn()
        _sync(self.device)
        return time.perf_counter() - t

    def run(self) -> dict[str, Any]:
        import torch

        from formers.bench.hf_weights import to_hf_gpt2
        from formers.nn import build_model

        cfg, dev = self.cfg, self.device
        torch.manual_seed(cfg.seed)
        model = build_model(self.model_cfg).to(dev, self.dtype).eval()
        runners = [self._ours(model, n) for n in cfg.ours]
        hf = None
        if cfg.peers:
            hf = to_hf_gpt2(model)
            hf.generation_config.eos_token_id = None   # no early stop: every entry makes n tokens
            hf.generation_config.pad_token_id = 0
            runners += [self._hf(hf, n) for n in cfg.peers]
        params = sum(p.numel() for p in model.parameters())
        self.say(f"{cfg.preset}: {params / 1e6:.1f} M parameters, {self.dtype_name} on {dev}; "
                 f"entries {[r.name for r in runners]}")
        g = torch.Generator().manual_seed(cfg.seed + 1)
        configs = []
        t0 = time.perf_counter()
        n = cfg.new_tokens
        for b in cfg.batch:
            for p in cfg.prompt:
                ids = torch.randint(0, self.model_cfg.vocab_size, (b, p), generator=g).to(dev)
                results: dict[str, dict[str, Any]] = {}
                outputs: dict[str, torch.Tensor] = {}
                for r in runners:
                    if r.error is not None:
                        continue
                    try:
                        t_w = time.perf_counter()
                        for _ in range(cfg.warmup):
                            outputs[r.name] = r.gen(ids, n)
                            r.gen(ids, 1)
                        warm = time.perf_counter() - t_w
                        if r.name == "hf-static":
                            r.compiled = getattr(hf, "_compiled_call", None) is not None
                        totals, ttfts = [], []
                        for _ in range(cfg.repeats):
                            totals.append(self._time(lambda: outputs.__setitem__(r.name, r.gen(ids, n))))
                            ttfts.append(self._time(lambda: r.gen(ids, 1)))
                    except Exception as e:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
                        if r.name in OURS:
                            raise
                        r.error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                        self.say(f"{r.name}: failed ({r.error}); left out")
                        outputs.pop(r.name, None)
                        continue
                    total, ttft = statistics.median(totals), statistics.median(ttfts)
                    decode = max(total - ttft, 1e-9)
                    out = outputs[r.name]
                    if out.shape != (b, p + n):
                        raise RuntimeError(f"{r.name} returned shape {tuple(out.shape)}, expected {(b, p + n)}")
                    results[r.name] = {
                        "ttft_ms": ttft * 1e3, "total_ms": total * 1e3, "decode_ms": decode * 1e3,
                        "decode_step_ms": decode * 1e3 / (n - 1),
                        "decode_tokens_per_s": (n - 1) * b / decode, "e2e_tokens_per_s": n * b / total,
                        "total_ms_rounds": [t * 1e3 for t in totals], "ttft_ms_rounds": [t * 1e3 for t in ttfts],
                        "warmup_s": warm,
                    }
                    self.say(f"batch {b} prompt {p} {r.name}: ttft {ttft * 1e3:.1f} ms, "
                             f"{results[r.name]['decode_tokens_per_s']:,.0f} tok/s decode")
                ref = outputs.get("hf")
                for name, res in results.items():
                    res["ratios"] = {}
                    for peer in ("hf", "hf-static"):
                        if peer in results and peer != name:
                            q = results[peer]
                            res["ratios"][peer] = {
                                "decode_tokens_per_s": res["decode_tokens_per_s"] / q["decode_tokens_per_s"],
                                "ttft": res["ttft_ms"] / q["ttft_ms"],
                                "e2e_tokens_per_s": res["e2e_tokens_per_s"] / q["e2e_tokens_per_s"]}
                    if ref is not None and name != "hf":
                        eq, first = first_divergence(outputs[name], ref, p)
                        res["match_hf"] = {"rows_equal": eq, "rows": b, "first_divergence": first}
                entry = {"batch": b, "prompt": p, "new_tokens": n, "results": results}
                if self.check_fp32 and hf is not None and "eager" in cfg.ours:
                    entry["fp32_match_hf"] = self._fp32_check(model, ids, n)
                configs.append(entry)
        for r in runners:
            if r.name == "hf-static" and r.compiled is None and r.error is None:
                r.compiled = getattr(hf, "_compiled_call", None) is not None
        return self._record(runners, configs, params, time.perf_counter() - t0)

    def _fp32_check(self, model, ids, n: int) -> dict[str, Any]:
        """Greedy outputs of our eager path and HF's in fp32 (copies of the same weights)."""
        import torch

        from formers.bench.hf_weights import to_hf_gpt2
        from formers.nn import build_model
        from formers.nn.generate import SamplingConfig, generate

        if self.dtype == torch.float32:
            return {"skipped": "the run is already fp32"}
        # fresh fp32 copies (not deepcopy: the models hold static caches and compiled callables)
        m32 = build_model(self.model_cfg).to(self.device).eval()
        m32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
        h32 = to_hf_gpt2(m32)
        h32.generation_config.eos_token_id = None
        h32.generation_config.pad_token_id = 0
        a = generate(m32, ids, SamplingConfig(max_new_tokens=n, temperature=0))
        b = h32.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                         do_sample=False, use_cache=True)
        eq, first = first_divergence(a, b, ids.shape[1])
        del m32, h32
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        return {"rows_equal": eq, "rows": ids.shape[0], "first_divergence": first}

    # ------------------------------------------------------------------ record
    def _record(self, runners: list[_Runner], configs: list[dict[str, Any]], params: int,
                wall: float) -> dict[str, Any]:
        import torch

        from formers.bench.attention import device_tag
        from formers.train.trainer import git_commit

        cfg = self.cfg
        dev_name = torch.cuda.get_device_name(self.device) if self.cuda else (
            platform.processor() or platform.machine() or "cpu")
        try:
            import transformers

            hf_version = transformers.__version__
        except Exception:  # noqa: BLE001
            hf_version = None
        record = {
            "benchmark": "decode_bench", "preset": cfg.preset, "device": str(self.device),
            "device_name": dev_name, "device_tag": device_tag(str(self.device)), "dtype": self.dtype_name,
            "torch": torch.__version__, "transformers": hf_version, "threads": torch.get_num_threads(),
            "commit": git_commit(), "python": platform.python_version(), "params": params,
            "model": {k: getattr(self.model_cfg, k) for k in ("n_layers", "d_model", "n_heads", "vocab_size",
                                                              "max_seq_len", "position", "ffn", "tie_embeddings")},
            "max_seq_len_note": self.len_note, "new_tokens": cfg.new_tokens,
            "static_cache_len": cfg.cache_len or "prompt + new tokens rounded up to 256",
            "entries": [{"name": r.name, "note": r.note, "compiled": r.compiled, "error": r.error}
                        for r in runners],
            "method": ("greedy, random prompts (fixed seed); per configuration: warm-up generations, then "
                       "rounds of one full generation (total) and one 1-token generation (ttft), device "
                       "synchronised; medians; decode tokens/s = (new_tokens - 1) * batch / (total - ttft)"),
            "warmup": cfg.warmup, "repeats": cfg.repeats, "seed": cfg.seed, "wall_s": wall,
            "config": cfg.to_dict(), "configs": configs,
        }
        record["goals"] = goals(record)
        return record


# ------------------------------------------------------------------------------------------ goals
def goals(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's decoding targets this record answers: ``compiled`` decode tokens/s against HF
    ``generate`` (dynamic cache) >= 5x at batch 1 and >= 2x at batch 16 (CUDA runs), per prompt
    length; and identical greedy outputs (fp32 comparison where made, else the run's dtype)."""
    out = []
    cuda = record["device"].startswith("cuda")
    for c in record["configs"]:
        res = c["results"]
        comp = res.get("compiled")
        if cuda and comp is not None and "hf" in comp.get("ratios", {}) and c["batch"] in (1, 16):
            target = 5.0 if c["batch"] == 1 else 2.0
            v = comp["ratios"]["hf"]["decode_tokens_per_s"]
            out.append({"goal": f"decode tok/s vs HF generate, batch {c['batch']}, prompt {c['prompt']}",
                        "value": v, "op": ">=", "target": target, "met": v >= target})
        m = c.get("fp32_match_hf")
        if m is not None and "rows_equal" in m:
            out.append({"goal": f"greedy outputs = HF (fp32), batch {c['batch']}, prompt {c['prompt']}",
                        "value": m["rows_equal"], "op": "==", "target": m["rows"],
                        "met": m["rows_equal"] == m["rows"]})
        elif comp is not None and "match_hf" in comp:
            m = comp["match_hf"]
            out.append({"goal": f"greedy outputs = HF ({record['dtype']}), batch {c['batch']}, prompt {c['prompt']}",
                        "value": m["rows_equal"], "op": "==", "target": m["rows"],
                        "met": m["rows_equal"] == m["rows"]})
    return out


# ------------------------------------------------------------------------------------------ output
def _f(v: Any, fmt: str = "{:.3g}") -> str:
    return "-" if v is None else fmt.format(v)


def table_markdown(record: dict[str, Any]) -> str:
    """Markdown: one row per (batch, prompt, entry) with TTFT, decode tokens/s, ratios to HF and
    the output match against HF; then the goals and the entries' notes."""
    lines = [
        f"# decode_bench {record['preset']} on {record['device_name']} ({record['dtype']})",
        "",
        f"{record['new_tokens']} new tokens, greedy; torch {record['torch']}, transformers "
        f"{record['transformers']}, {record['threads']} threads, commit {record['commit']}; "
        f"{record['params'] / 1e6:.1f} M parameters, max_seq_len {record['model']['max_seq_len']}"
        + (f" ({record['max_seq_len_note']})" if record.get("max_seq_len_note") else "")
        + f"; static cache length: {record.get('static_cache_len')}.",
        "",
        "| batch | prompt | entry | TTFT (ms) | decode step (ms) | decode tok/s | e2e tok/s | "
        "decode vs hf | decode vs hf-static | TTFT vs hf | rows = hf | first divergence |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in record["configs"]:
        for name, r in c["results"].items():
            m = r.get("match_hf")
            lines.append("| " + " | ".join([
                str(c["batch"]), str(c["prompt"]), name, f"{r['ttft_ms']:.1f}", f"{r['decode_step_ms']:.2f}",
                f"{r['decode_tokens_per_s']:,.0f}", f"{r['e2e_tokens_per_s']:,.0f}",
                _f(r["ratios"].get("hf", {}).get("decode_tokens_per_s"), "{:.2f}x"),
                _f(r["ratios"].get("hf-static", {}).get("decode_tokens_per_s"), "{:.2f}x"),
                _f(r["ratios"].get("hf", {}).get("ttft"), "{:.2f}"),
                "-" if m is None else f"{m['rows_equal']}/{m['rows']}",
                "-" if m is None else _f(m["first_divergence"], "{}") if m["first_divergence"] is not None
                else "none"]) + " |")
        f32 = c.get("fp32_match_hf")
        if f32 and "rows_equal" in f32:
            lines.append(f"| {c['batch']} | {c['prompt']} | eager vs hf in fp32 | | | | | | | | "
                         f"{f32['rows_equal']}/{f32['rows']} | {_f(f32['first_divergence'], '{}') if f32['first_divergence'] is not None else 'none'} |")
    if record.get("goals"):
        lines += ["", "| goal | measured | target | met |", "|---|---|---|---|"]
        for g in record["goals"]:
            lines.append(f"| {g['goal']} | {g['value']:.3g} | {g['op']} {g['target']} | {'yes' if g['met'] else 'no'} |")
    lines += ["", "Entries:"]
    for e in record["entries"]:
        extra = "" if e["error"] is None else f" -- failed: {e['error']}"
        comp = "" if e["compiled"] is None else f" (compiled: {e['compiled']})"
        lines.append(f"- {e['name']}: {e['note']}{comp}{extra}")
    lines += ["", f"Method: {record['method']}."]
    return "\n".join(lines) + "\n"


def result_stem(record: dict[str, Any]) -> str:
    return f"decode_bench-{record['device_tag']}-{record['preset']}"


def write_results(record: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """``decode_bench-<device>-<preset>.{json,md}`` in ``out_dir``, each written atomically."""
    return write_result_files(out_dir, result_stem(record), record, table_markdown)


# record fields that change the figures besides the code; compare_records names those that differ
COMPARE_SETTINGS = ("preset", "device_name", "dtype", "threads", "new_tokens", "static_cache_len", "torch",
                    "transformers")


def compare_records(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Per-row change of ``new`` against ``old``, rows matched by (batch, prompt, entry): decode
    tokens/s old -> new with the relative change, and TTFT old -> new. Rows in only one record are
    listed; a ``settings differ:`` line names the settings of :data:`COMPARE_SETTINGS` that differ."""
    from formers.bench.results import settings_differ

    def rows(rec):
        return {(c["batch"], c["prompt"], name): r for c in rec.get("configs", [])
                for name, r in c["results"].items()}

    o, n = rows(old), rows(new)
    lines = [f"compare: {old.get('device_name')} {old.get('commit')} -> {new.get('device_name')} {new.get('commit')}"]
    differ = settings_differ(old, new, COMPARE_SETTINGS)
    if differ:
        lines.append(differ)
    lines.append(f"{'batch':>5} {'prompt':>6} {'entry':<10} {'decode tok/s old':>16} {'new':>10} {'change':>8}"
                 f"   {'TTFT ms old':>11} {'new':>8}")
    for key, r in n.items():
        b, t, name = key
        a = o.pop(key, None)
        if a is None:
            lines.append(f"{b:>5} {t:>6} {name:<10} {'(new row)':>16} {r['decode_tokens_per_s']:>10,.0f}")
            continue
        ch = r["decode_tokens_per_s"] / a["decode_tokens_per_s"] - 1
        lines.append(f"{b:>5} {t:>6} {name:<10} {a['decode_tokens_per_s']:>16,.0f} {r['decode_tokens_per_s']:>10,.0f} "
                     f"{ch:>+8.1%}   {a['ttft_ms']:>11.2f} {r['ttft_ms']:>8.2f}")
    for b, t, name in o:
        lines.append(f"{b:>5} {t:>6} {name:<10} (row gone)")
    return "\n".join(lines)


def read_record(path) -> dict[str, Any]:
    """A stored decode_bench JSON (ValueError when it is not one)."""
    from formers.bench.results import read_result

    return read_result(path, "decode_bench", "configs")


def run_bench(cfg: DecodeBenchConfig, out: Path | None, progress: Callable[[str], None] | None = None
              ) -> tuple[dict[str, Any], dict[str, Path] | None]:
    """Run and (when ``out`` is given) write the results; returns (record, paths)."""
    record = DecodeBench(cfg, progress).run()
    paths = write_results(record, out) if out is not None else None
    return record, paths


__all__ = ["DecodeBenchConfig", "DecodeBench", "decode_config", "first_divergence", "goals",
           "table_markdown", "write_results", "compare_records", "read_record", "run_bench"]
