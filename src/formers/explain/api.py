"""The explainer's JSON API (what the page asks for), independent of HTTP.

:class:`Explainer` holds one model, or two for side-by-side comparison, and answers
``info()``, ``forward(request)`` and ``generate(request)`` with JSON-able dicts. Bad requests raise
:class:`ApiError` (an HTTP status and a message for the person at the page) before any work.
Masked scores (-inf) are sent as ``null``.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import torch

from formers.explain.capture import ATTENTION_STAGES, capture
from formers.explain.load import Loaded
from formers.explain.sampling import MODES, distribution, sample

MAX_PROMPT_CHARS = 2000   # characters of text in one request
MAX_GENERATE_STEPS = 32   # tokens one generate request may add
EMBED_DIMS_SHOWN = 16     # leading embedding dimensions sent to the page
MLP_UNITS_SHOWN = 32      # strongest MLP units of the chosen position
CANDIDATES_SHOWN = 20     # next-token candidates sent to the page


class ApiError(ValueError):
    """A request the API refuses: ``status`` (HTTP code) and a plain-words message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _field(req: dict, name: str, kind: type, default: Any, ok=None, allowed: str = "") -> Any:
    v = req.get(name, default)
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool or (ok is not None and not ok(v)):
        raise ApiError(f"{name} must be {allowed or kind.__name__}, got {v!r:.80}")
    return v


def _num(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


def _mat(t: torch.Tensor) -> list:
    return [[_num(float(x)) for x in row] for row in t.tolist()] if t.dim() == 2 else [_num(float(x)) for x in t.tolist()]


class Explainer:
    """Answers the page's requests about ``models`` (one, or two to compare)."""

    def __init__(self, models: list[Loaded]) -> None:
        if not 1 <= len(models) <= 2:
            raise ValueError(f"the explainer shows one model or compares two, got {len(models)}")
        self.models = models
        self.lock = threading.Lock()  # one forward at a time (torch threads are shared)

    # ------------------------------------------------------------------ requests
    def info(self) -> dict:
        out = []
        for m in self.models:
            c = m.model.cfg
            out.append({"name": m.name, "arch": c.arch, "decoder_only": c.arch == "decoder",
                        "n_layers": c.n_layers, "n_heads": c.n_heads, "n_kv_heads": c.kv_heads,
                        "d_model": c.d_model, "head_dim": c.head_dim, "vocab_size": c.vocab_size,
                        "max_seq_len": c.max_seq_len, "position": c.position, "norm": c.norm,
                        "prenorm": c.prenorm, "residual": c.residual, "value_residual": c.value_residual,
                        "mixers": sorted({c.layer_spec(i).attention for i in range(c.n_layers)}),
                        "ffns": sorted({c.layer_spec(i).ffn for i in range(c.n_layers)}),
                        "tokenizer": m.tokenizer.kind, "hint": m.tokenizer.hint})
        return {"models": out, "sampling_modes": list(MODES), "stages": list(ATTENTION_STAGES),
                "limits": {"max_prompt_chars": MAX_PROMPT_CHARS, "max_generate_steps": MAX_GENERATE_STEPS}}

    def _model(self, req: dict) -> Loaded:
        i = _field(req, "model", int, 0, lambda v: 0 <= v < len(self.models),
                   f"an integer in [0, {len(self.models)})")
        return self.models[i]

    def _ids(self, m: Loaded, req: dict, room: int = 0) -> list[int]:
        """The request's tokens: ``ids`` (a list of token ids, e.g. after generation, which need
        not decode to valid text) or else ``text`` (tokenized)."""
        vocab = m.model.cfg.vocab_size
        if req.get("ids") is not None:
            ids = _field(req, "ids", list, None, lambda v: len(v) <= MAX_PROMPT_CHARS and all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in v),
                f"a list of at most {MAX_PROMPT_CHARS} token ids in [0, {vocab})")
        else:
            text = _field(req, "text", str, None, lambda v: 0 < len(v) <= MAX_PROMPT_CHARS,
                          f"non-empty text of at most {MAX_PROMPT_CHARS} characters")
            try:
                ids = m.tokenizer.encode(text)
            except ValueError as e:
                raise ApiError(str(e)) from None
        limit = m.model.cfg.max_seq_len - room
        if not ids:
            raise ApiError("the text gives no tokens")
        if len(ids) > limit:
            raise ApiError(f"the text is {len(ids)} tokens long; this model reads at most "
                           f"{m.model.cfg.max_seq_len} tokens" + (f" ({room} kept free for generation)" if room else "")
                           + ": shorten it", 413)
        return ids

    def _sampling(self, req: dict) -> dict:
        s = {"temperature": _field(req, "temperature", float, 0.8, lambda v: math.isfinite(v) and 0 <= v <= 100,
                                   "a number in [0, 100] (0 = greedy)"),
             "top_k": _field(req, "top_k", int, 0, lambda v: v >= 0, "an integer >= 0 (0 = off)"),
             "top_p": _field(req, "top_p", float, 1.0, lambda v: 0 < v <= 1, "a number in (0, 1]"),
             "mode": _field(req, "mode", str, "full", lambda v: v in MODES, f"one of {list(MODES)}")}
        return s

    def forward(self, req: dict) -> dict:
        """Everything the page draws for one text: tokens, embeddings, the chosen layer/head's
        attention stages, all heads of that layer, residual norms, the MLP and the next token."""
        m = self._model(req)
        cfg = m.model.cfg
        ids = self._ids(m, req)
        layer = _field(req, "layer", int, 0, lambda v: 0 <= v < cfg.n_layers, f"an integer in [0, {cfg.n_layers})")
        head = _field(req, "head", int, 0, lambda v: 0 <= v < cfg.n_heads, f"an integer in [0, {cfg.n_heads})")
        s = self._sampling(req)
        with self.lock:
            trace = capture(m.model, torch.tensor([ids]))
        t = {k: v[0] if k != "embed.pos" and v.dim() > 1 and v.shape[0] == 1 else v for k, v in trace.tensors.items()}
        info = trace.layers[layer]
        n = EMBED_DIMS_SHOWN
        emb = {"d_model": cfg.d_model, "dims_shown": min(n, cfg.d_model),
               "tok": _mat(t["embed.tok"][:, :n]), "tok_norm": _mat(t["embed.tok"].norm(dim=-1)),
               "sum": _mat(t["stream0"][:, :n]), "sum_norm": _mat(t["stream0"].norm(dim=-1)),
               "position": cfg.position}
        if "embed.pos" in t:
            emb.update(pos=_mat(t["embed.pos"][:, :n]), pos_norm=_mat(t["embed.pos"].norm(dim=-1)))
        attn: dict[str, Any] = {"layer": layer, "head": head, "available": info.attention_matrix,
                                "note": info.note, "mixer": info.mixer, "recorded": info.recorded}
        if info.attention_matrix:
            pre = f"layer{layer}.attn."
            kv_head = head // (cfg.n_heads // cfg.kv_heads)
            attn["stages"] = {s_: _mat(t[pre + s_][head]) for s_ in ATTENTION_STAGES if pre + s_ in t}
            attn["heads"] = [_mat(w) for w in t[pre + "softmax"]]
            attn["q"], attn["k"], attn["v"] = (_mat(t[pre + x][h]) for x, h in
                                              (("q", head), ("k", kv_head), ("v", kv_head)))
            attn["scale"] = 1 / math.sqrt(cfg.head_dim)
        else:
            self._other_mixer(attn, trace, t, layer, head, cfg.arch == "decoder")
        extras = {}
        for i in range(cfg.n_layers):
            e = {}
            for key, label in (("dwa.alpha", "dwa_alpha"), ("dwa.sources", "dwa_sources"),
                               ("value_residual.mix", "value_mix")):
                if f"layer{i}.{key}" in t:
                    e[label] = _mat(t[f"layer{i}.{key}"].float().flatten())
            if f"layer{i}.moe.gates" in t:
                e["moe_gates_last"] = _mat(t[f"layer{i}.moe.gates"][-1].float())
            extras[i] = e
        pos = len(ids) - 1
        mlp = {"layer": layer, "position": pos}
        if f"layer{layer}.mlp.act" in t and t[f"layer{layer}.mlp.act"].shape[:-1] == (len(ids),):
            act = t[f"layer{layer}.mlp.act"]
            top = act[pos].abs().topk(min(MLP_UNITS_SHOWN, act.shape[-1]))
            mlp.update(d_ff=act.shape[-1], units=top.indices.tolist(), values=_mat(act[pos][top.indices]),
                       active_fraction=_mat((act > 0).float().mean(-1)),
                       out_norm=_mat(t[f"layer{layer}.mlp.out"].norm(dim=-1)))
        else:
            mlp["note"] = (f"the feed-forward {info.ffn!r} routes each token to experts; the last token's "
                           f"gates are listed with this layer's notes (section 3)" if f"layer{layer}.moe.gates" in t else
                           f"the feed-forward {info.ffn!r} has no per-token up/down projection pair to show")
        return {"model": m.name, "tokens": [{"id": i, "text": m.tokenizer.label(i)} for i in ids],
                "embeddings": emb, "attention": attn, "extras": extras,
                "layers": [{"index": li.index, "mixer": li.mixer, "ffn": li.ffn,
                            "attention_matrix": li.attention_matrix, "note": li.note} for li in trace.layers],
                "residual": {"norms": _mat(trace.residual_norms()[:, 0])},
                "mlp": mlp, "next": self._next(m, t["logits"][pos], s)}

    @staticmethod
    def _other_mixer(attn: dict, trace, t: dict, layer: int, head: int, causal: bool) -> None:
        """What a mixer without a (query, key) softmax matrix can show: the matrix its feature
        maps imply (linear attention, Performer; checked against its output), else its own
        weights (Synthesizer; Linformer over projected keys), and per-token quantities of the
        chosen head (Flowformer's incoming / outgoing flows, allocation, competition)."""
        pre = f"layer{layer}."
        implied = trace.implied_attention(layer, causal=causal)
        if implied is not None:
            attn.update(available=True, stages={"implied": _mat(implied[0, head])},
                        heads=[_mat(w) for w in implied[0]],
                        note=f"{attn['mixer']!r} computes no attention matrix; shown: the matrix its feature "
                             f"maps imply, phi(q).phi(k) normalised per row (it reproduces the layer's output)")
        elif f"{pre}attn.weights" in t and t[f"{pre}attn.weights"].dim() == 3:
            w = t[f"{pre}attn.weights"]
            attn.update(available=True, stages={"weights": _mat(w[head])}, heads=[_mat(x) for x in w],
                        note=f"{attn['mixer']!r}: its own attention weights" + (
                            f" over {w.shape[-1]} projected keys (columns are not tokens)"
                            if w.shape[-1] != w.shape[-2] else ""))
        attn["per_token"] = {k[len(pre):]: _mat(v[head]) for k, v in t.items()
                             if k.startswith(pre) and v.dim() == 2 and v.shape[-1] == len(trace.ids[0])}

    def _next(self, m: Loaded, logits: torch.Tensor, s: dict) -> dict:
        try:
            d = distribution(logits, s["temperature"], s["top_k"], s["top_p"], s["mode"])
        except ValueError as e:
            raise ApiError(str(e)) from None
        cands = d.head(CANDIDATES_SHOWN)
        for c in cands:
            c["text"] = m.tokenizer.label(c["id"])
            c["scaled"] = _num(c["scaled"])
        return {**s, "candidates": cands, "n_kept": int(d.kept.sum()), "n_candidates": len(d.ids)}

    def generate(self, req: dict) -> dict:
        """Add ``steps`` tokens one at a time; each step returns its candidates and the choice."""
        m = self._model(req)
        steps = _field(req, "steps", int, 1, lambda v: 1 <= v <= MAX_GENERATE_STEPS,
                       f"an integer in [1, {MAX_GENERATE_STEPS}]")
        ids = self._ids(m, req, room=steps)
        s = self._sampling(req)
        seed = _field(req, "seed", int, 0, lambda v: 0 <= v < 2**63, "an integer >= 0")
        g = torch.Generator().manual_seed(seed)
        out = []
        with self.lock, torch.no_grad():
            for _ in range(steps):
                logits = m.model(torch.tensor([ids]))[0, -1]
                d = distribution(logits, s["temperature"], s["top_k"], s["top_p"], s["mode"])
                tok = sample(d, g)
                cands = d.head(10)
                for c in cands:
                    c["text"] = m.tokenizer.label(c["id"])
                    c["scaled"] = _num(c["scaled"])
                out.append({"position": len(ids), "id": tok, "token": m.tokenizer.label(tok),
                            "prob": float(d.probs[d.ids == tok].sum()), "candidates": cands})
                ids = ids + [tok]
        return {"model": m.name, "steps": out, "ids": ids, "text": m.tokenizer.decode(ids), **s}
