"""``formers explain RUN_DIR_OR_CHECKPOINT``: the command-line entry of the explainer."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import tyro


def explain_cmd(
    run: tyro.conf.Positional[Path],
    port: int = 0,
    host: str = "127.0.0.1",
    no_browser: bool = False,
    compare: Optional[Path] = None,
    export: Optional[Path] = None,
) -> None:
    """Explain a trained language model in the browser: a local page that shows tokens,
    embeddings, attention (per layer and head, from scores to probabilities), the residual stream,
    the MLP, the next-token distribution and step-by-step generation, with a guided tour.

    Args:
        run: a run folder (config.yaml + ckpt/), a model folder (config.json + model.safetensors)
            or its model.safetensors file.
        port: TCP port (0 = any free port; the address is printed).
        host: address to bind; 127.0.0.1 (this machine only) unless you mean otherwise.
        no_browser: do not open a browser window.
        compare: a second run or model folder shown side by side on the same text.
        export: write a static site to this (new or empty) folder instead of serving: the page
            runs the model in the browser through ONNX (onnxruntime-web, fetched with npm), for
            any static file server. Needs ``pip install 'formers[export]'``.
    """
    import torch

    from formers.explain.api import Explainer
    from formers.explain.load import load
    from formers.explain.server import serve

    torch.set_num_threads(min(4, torch.get_num_threads()))
    if export is not None:
        if compare is not None:
            raise ValueError("--export writes one model's site; drop --compare")
        from formers.explain.export import export_site

        print(f"formers explain: static site in {export_site(load(run), export)} "
              f"(serve it with any static file server, e.g. python -m http.server -d {export})")
        return
    models = [load(run)] + ([load(compare)] if compare is not None else [])
    serve(Explainer(models), host=host, port=port, open_browser=not no_browser)
