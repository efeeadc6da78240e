"""``formers explain RUN --export DIR``: a self-contained static site that runs the model in the
browser through ONNX (onnxruntime-web, wasm), for any static file server.

The model is exported with ``torch.onnx.export`` (dynamo exporter, opset 20, one file, dynamic
sequence length) with the explainer's named intermediates as extra outputs, as Transformer
Explainer does for GPT-2 (Cho et al., arXiv 2408.04619; its ``export_to_onnx.py`` emits per head
``attn``, ``attn_scaled``, ``attn_masked``, ``attn_softmax``). Deviation: our outputs keep the head
axis, one tensor per layer and stage (``block_{i}_attn_{stage}``: (1, n_heads, seq_len, seq_len)),
instead of one output per head, and the file is not split into chunks.

Output names (batch 1): ``logits`` (1, seq_len, vocab); ``embed_tok`` (1, seq_len, d_model);
``embed_pos`` (seq_len, d_model) for additive positions; ``stream_norms`` (n_layers + 1, 1, seq_len);
``block_{i}_attn_{raw,scaled,[biased],masked,softmax}``; ``block_{i}_mlp_act`` (1, seq_len, d_ff);
``block_{i}_dwa_alpha`` and ``block_{i}_value_mix`` where the model has them.

The site is the live page (``static/``) plus ``model.onnx``, ``model.json`` (the model's info)
and the onnxruntime-web wasm runtime, fetched from the npm registry with ``npm`` at the first export
and kept in the user cache (or copied from ``ort_dir``). Needs the ``export`` extra: ``pip install formers[export]``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import nn

from formers.explain.capture import ATTENTION_STAGES, capture

ORT_WEB_VERSION = "1.30.0"
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs")


class Intermediates(nn.Module):
    """``model`` whose forward returns the named intermediates as a tuple (see :meth:`names`)."""

    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        trace = capture(model, example)
        self._keys = [("logits", "logits"), ("embed_tok", "embed.tok")]
        if "embed.pos" in trace.tensors:
            self._keys.append(("embed_pos", "embed.pos"))
        for i in range(model.cfg.n_layers):
            for s in ATTENTION_STAGES:
                if f"layer{i}.attn.{s}" in trace.tensors:
                    self._keys.append((f"block_{i}_attn_{s}", f"layer{i}.attn.{s}"))
            for name, key in (("mlp_act", "mlp.act"), ("dwa_alpha", "dwa.alpha"), ("value_mix", "value_residual.mix")):
                if f"layer{i}.{key}" in trace.tensors:
                    self._keys.append((f"block_{i}_{name}", f"layer{i}.{key}"))

    def names(self) -> list[str]:
        return [n for n, _ in self._keys] + ["stream_norms"]

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        trace = capture(self.model, ids)
        return tuple(trace.tensors[k].float() for _, k in self._keys) + (trace.residual_norms(),)


def export_onnx(model: nn.Module, path: str | Path, example_len: int = 8) -> list[str]:
    """Write ``model`` with its intermediates to ``path`` (one ONNX file); returns the output names.

    Raises ImportError naming the extra when onnx / onnxscript are missing."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ImportError("the static export needs onnx and onnxscript: pip install 'formers[export]'") from None
    model = model.eval()
    example = torch.randint(0, model.cfg.vocab_size, (1, min(example_len, model.cfg.max_seq_len)))
    wrapper = Intermediates(model, example).eval()
    names = wrapper.names()
    seq = torch.export.Dim("seq_len", min=1, max=model.cfg.max_seq_len)
    with torch.no_grad():
        torch.onnx.export(wrapper, (example,), str(path), input_names=["ids"], output_names=names,
                          dynamic_shapes={"ids": {1: seq}}, dynamo=True, external_data=False,
                          opset_version=20, verbose=False)
    return names


def fetch_ort_web(dest: Path) -> Path:
    """Install onnxruntime-web :data:`ORT_WEB_VERSION` from the npm registry under ``dest``; returns
    its ``dist`` folder. Raises RuntimeError when npm is missing or the install fails."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("the static export fetches onnxruntime-web with npm, which is not installed "
                           "(or pass ort_dir: a folder holding " + ", ".join(ORT_FILES) + ")")
    r = subprocess.run([npm, "install", "--no-save", "--no-audit", "--no-fund", "--silent", "--prefix", str(dest),
                        f"onnxruntime-web@{ORT_WEB_VERSION}"], capture_output=True, text=True)
    dist = dest / "node_modules" / "onnxruntime-web" / "dist"
    if r.returncode != 0 or not dist.is_dir():
        raise RuntimeError(f"npm install onnxruntime-web@{ORT_WEB_VERSION} failed: {r.stderr.strip()[-500:]}")
    return dist


def ort_web_dir() -> Path:
    """A folder holding onnxruntime-web's :data:`ORT_FILES`: the user cache
    (``$XDG_CACHE_HOME/formers/onnxruntime-web-VERSION``, default ``~/.cache``), filled from the npm
    registry on first use, so later exports work offline."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "formers"
    cache = base / f"onnxruntime-web-{ORT_WEB_VERSION}"
    if all((cache / n).is_file() for n in ORT_FILES):
        return cache
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        dist = fetch_ort_web(Path(tmp) / "npm")
        staged = Path(tmp) / "files"
        staged.mkdir()
        for name in ORT_FILES:
            shutil.copy2(dist / name, staged / name)
        shutil.rmtree(cache, ignore_errors=True)
        staged.rename(cache)
    return cache


def export_site(loaded, out: str | Path, ort_dir: str | Path | None = None) -> Path:
    """Write the static site of ``loaded`` (a :class:`formers.explain.load.Loaded`) to ``out``.

    ``out`` must not exist or be empty; the site is built in a sibling temporary folder and renamed
    into place. ``ort_dir``: a folder with onnxruntime-web's :data:`ORT_FILES` (default: fetched with
    npm). Raises ValueError for a non-empty ``out``, ImportError without the export extra,
    RuntimeError when onnxruntime-web cannot be fetched.
    """
    from formers.explain.api import Explainer
    from formers.explain.server import static_files

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--export {out}: the folder exists and is not empty; give a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        names = export_onnx(loaded.model, tmp / "model.onnx")
        ex = Explainer([loaded])
        info = ex.info()
        trace = capture(loaded.model, torch.zeros(1, 2, dtype=torch.long))
        layers = [{"index": li.index, "mixer": li.mixer, "ffn": li.ffn, "attention_matrix": li.attention_matrix,
                   "note": li.note} for li in trace.layers]
        for li in layers:
            src = trace.tensors.get(f"layer{li['index']}.dwa.sources")
            if src is not None:
                li["dwa_sources"] = src.tolist()
        (tmp / "model.json").write_text(json.dumps({"info": info["models"][0], "limits": info["limits"],
                                                    "outputs": names, "layers": layers}, indent=1))
        files = static_files()
        (tmp / "static").mkdir()
        for name, data in files.items():
            if name != "index.html":
                (tmp / "static" / name).write_bytes(data)
        html = files["index.html"].decode()
        html = html.replace('href="/static/style.css"', 'href="static/style.css"').replace(
            '<script src="/static/app.js"></script>',
            '<script src="ort/ort.wasm.min.js"></script>\n<script src="static/static-backend.js"></script>\n'
            '<script src="static/app.js"></script>')
        (tmp / "index.html").write_text(html)
        (tmp / "ort").mkdir()
        src_dir = Path(ort_dir) if ort_dir is not None else ort_web_dir()
        for name in ORT_FILES:
            if not (src_dir / name).is_file():
                raise RuntimeError(f"{src_dir / name} not found (onnxruntime-web's dist folder holds it)")
            shutil.copy2(src_dir / name, tmp / "ort" / name)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
