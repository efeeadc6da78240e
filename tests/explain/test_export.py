"""Static export: ONNX outputs (with the named intermediates) equal PyTorch's to 1e-4, and the
exported site runs the model in headless Chromium served by a plain static file server."""

import functools
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from formers.explain.capture import capture
from formers.explain.export import Intermediates, export_site
from formers.explain.load import load
from formers.explain.sampling import distribution



@pytest.fixture(scope="module")
def site(tiny_models, tmp_path_factory):
    loaded = load(tiny_models[0])
    t = time.perf_counter()
    out = export_site(loaded, tmp_path_factory.mktemp("export") / "site")
    print(f"export took {time.perf_counter() - t:.1f} s")
    return loaded, out


def test_site_layout_and_names(site):
    _, out = site
    assert {p.name for p in out.iterdir()} == {"index.html", "model.json", "model.onnx", "ort", "static"}
    html = (out / "index.html").read_text()
    assert "ort/ort.wasm.min.js" in html and "http" not in html
    with pytest.raises(ValueError, match="not empty"):
        export_site(site[0], out)


@pytest.mark.parametrize("seq_len", [1, 7, 23])
def test_onnx_equals_pytorch(site, seq_len):
    import onnxruntime as ort

    loaded, out = site
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert names[0] == "logits" and "block_1_attn_masked" in names and names[-1] == "stream_norms"
    ids = torch.randint(0, 259, (1, seq_len), generator=torch.Generator().manual_seed(seq_len))
    got = sess.run(None, {"ids": ids.numpy()})
    want = Intermediates(loaded.model, ids)(ids)
    for name, g, w in zip(names, got, want):
        w = w.numpy()
        assert g.shape == w.shape, name
        inf = np.isinf(w)
        assert (np.isinf(g) == inf).all(), name
        assert np.abs(np.where(inf, 0, g) - np.where(inf, 0, w)).max() <= 1e-4, name


@pytest.fixture(scope="module")
def static_page(site, browser):
    loaded, out = site
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(out))
    handler.log_message = lambda *a: None
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    pg = browser.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(f"http://127.0.0.1:{srv.server_address[1]}/")
    pg.wait_for_selector("body[data-ready='1']")
    yield loaded, pg
    assert not errors, errors
    pg.close()
    srv.shutdown()
    srv.server_close()


def test_exported_site_runs_in_browser(static_page, artifacts):
    loaded, pg = static_page
    pg.fill("#prompt", "static site")
    pg.wait_for_function("document.querySelectorAll('.pane .token').length === 11")
    pg.select_option("#layer", index=1)
    pg.select_option("#head", index=3)
    pg.wait_for_function("document.querySelector('.attn-where').textContent.includes('layer 2, head 4')")
    pg.wait_for_timeout(300)
    pg.wait_for_function("document.body.getAttribute('data-busy') === '0'")
    ids = torch.tensor([list(b"static site")])
    t = capture(loaded.model, ids).tensors
    shown = pg.evaluate("""() => [...document.querySelectorAll('.stages table[data-stage="softmax"] tr')].slice(1)
        .map(tr => [...tr.querySelectorAll('td')].map(td => Number(td.dataset.value)))""")
    np.testing.assert_allclose(np.array(shown), t["layer1.attn.softmax"][0, 3].numpy(), atol=1e-4)
    masked = pg.evaluate("""() => [...document.querySelectorAll('.stages table[data-stage="masked"] td')]
        .filter(td => td.dataset.value === '-inf').length""")
    assert masked == 11 * 10 // 2  # the causal mask
    # the JS port of the sampling rule, full vocabulary and the top-50 approximation
    for mode in ("full", "top50"):
        pg.select_option("#mode", mode)
        pg.fill("#temperature", "1.3")
        pg.fill("#top-p", "0.5")
        pg.wait_for_timeout(400)
        pg.wait_for_function("document.body.getAttribute('data-busy') === '0'")
        d = distribution(t["logits"][0, -1], 1.3, 5, 0.5, mode)
        rows = pg.eval_on_selector_all(".next-table tr[data-id]", "rs => rs.map(r => [Number(r.dataset.id), Number(r.dataset.prob)])")
        assert [r[0] for r in rows[:5]] == d.ids[:5].tolist()
        np.testing.assert_allclose([r[1] for r in rows], d.probs[:len(rows)].numpy(), atol=1e-4)
    pg.fill("#steps", "2")
    pg.click("#generate")
    pg.wait_for_function("document.querySelectorAll('.gen-step').length === 2")
    pg.wait_for_function("document.querySelectorAll('.pane .token').length === 13")
    pg.screenshot(path=str(artifacts / "7-static-export.png"), full_page=False)
