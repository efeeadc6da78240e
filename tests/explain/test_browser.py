"""The explainer's page in a real browser: Playwright (Python) driving Debian's Chromium headless
(the ``browser`` fixture of conftest.py) against a server started here on two tiny saved models.
Screenshots go to tmp/artifacts/explain/ (or $FORMERS_ARTIFACTS/explain)."""

import pytest

from formers.explain.api import Explainer
from formers.explain.load import load
from formers.explain.server import start_in_thread


@pytest.fixture(scope="module")
def page(tiny_models, browser, artifacts):
    srv, url = start_in_thread(Explainer([load(tiny_models[0]), load(tiny_models[1])]))
    pg = browser.new_page()
    pg.artifacts = artifacts
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(url)
    pg.wait_for_selector("body[data-ready='1']")
    yield pg
    assert not errors, errors
    pg.close()
    srv.shutdown()
    srv.server_close()


def settle(pg):
    """Wait until no request of the page is in flight."""
    pg.wait_for_timeout(250)
    pg.wait_for_function("document.body.getAttribute('data-busy') === '0'")


def api(pg, path, body):
    return pg.evaluate("async ([p, b]) => (await fetch(p, {method: 'POST', body: JSON.stringify(b), "
                       "headers: {'Content-Type': 'application/json'}})).json()", [path, body])


def heat(pg, pane, stage):
    return pg.evaluate("""([pane, stage]) => {
        const t = document.querySelectorAll('.pane')[pane].querySelector(`.stages table[data-stage="${stage}"]`);
        return [...t.querySelectorAll('tr')].slice(1).map(tr => [...tr.querySelectorAll('td')].map(td => td.dataset.value));
    }""", [pane, stage])


def test_1_type_prompt_shows_tokens(page):
    page.fill("#prompt", "hello world")
    page.wait_for_function("document.querySelectorAll('.pane .token').length === 11")
    settle(page)
    ids = page.eval_on_selector_all(".pane .token", "ts => ts.map(t => Number(t.dataset.id))")
    assert ids == list(b"hello world")
    assert "decoder-only" in page.inner_text(".pane-title")
    page.screenshot(path=str(page.artifacts / "1-prompt.png"), full_page=True)


def test_2_layer_and_head_heatmaps_equal_api(page):
    page.select_option("#layer", index=1)
    page.select_option("#head", index=2)
    page.wait_for_function("document.querySelector('.attn-where').textContent.includes('layer 2, head 3')")
    settle(page)
    r = api(page, "/api/forward", {"text": "hello world", "layer": 1, "head": 2})
    for stage in ("raw", "scaled", "masked", "softmax"):
        shown = heat(page, 0, stage)
        want = [["-inf" if v is None else v for v in row] for row in r["attention"]["stages"][stage]]
        assert [[x if x == "-inf" else float(x) for x in row] for row in shown] == want, stage
    masked = heat(page, 0, "masked")
    assert all(masked[i][j] == "-inf" for i in range(11) for j in range(i + 1, 11))  # the causal mask
    assert page.eval_on_selector(".head-thumb.selected", "e => e.dataset.head") == "2"
    page.screenshot(path=str(page.artifacts / "2-layer-head.png"), full_page=True)


def next_probs(pg):
    return pg.eval_on_selector_all(".pane:first-child .next-table tr[data-id]",
                                   "rs => rs.map(r => [Number(r.dataset.id), Number(r.dataset.prob)])")


def test_3_temperature_slider(page):
    before = next_probs(page)
    page.fill("#temperature", "1.5")
    page.wait_for_function("document.querySelector('#temperature-value').textContent === '1.50'")
    page.wait_for_function("document.querySelector('.next-caption').textContent.includes('(1.50')")
    settle(page)
    after = next_probs(page)
    r = api(page, "/api/forward", {"text": "hello world", "temperature": 1.5, "top_k": 5})
    assert after == [[c["id"], c["prob"]] for c in r["next"]["candidates"]]
    assert sum(p > 0 for _, p in after) == 5  # top-k 5 from the page's default
    assert after[0][0] == before[0][0] and after[0][1] <= before[0][1]  # hotter = flatter
    page.screenshot(path=str(page.artifacts / "3-temperature.png"), full_page=True)


def test_4_generate_two_tokens(page):
    page.fill("#steps", "2")
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('.gen-step').length === 2")
    page.wait_for_function("document.querySelectorAll('.pane:first-child .token').length === 13")
    settle(page)
    gen = page.evaluate("window.__explain.lastGenerate")
    assert len(gen["ids"]) == 13 and gen["ids"][:11] == list(b"hello world")
    assert page.input_value("#prompt") == gen["text"]
    assert page.eval_on_selector_all(".pane:first-child .token.generated", "ts => ts.length") == 2
    page.screenshot(path=str(page.artifacts / "4-generate.png"), full_page=True)


def test_5_compare_two_models(page):
    page.click("#compare-toggle")
    page.wait_for_function("document.querySelectorAll('.pane').length === 2 && "
                           "document.querySelectorAll('.pane')[1].querySelector('.token') !== null")
    settle(page)
    titles = page.eval_on_selector_all(".pane-title", "ts => ts.map(t => t.textContent)")
    assert "baseline" in titles[0] and "denseformer" in titles[1] and "DenseFormer" in titles[1]
    rows = page.eval_on_selector_all(".pane .residual-table", "ts => ts.map(t => t.querySelectorAll('tr').length - 1)")
    assert rows == [3, 4]  # entering each block + the final norm: 2 and 3 layers
    ids = page.evaluate("window.__explain.ids")
    r = api(page, "/api/forward", {"ids": ids, "model": 1, "layer": 1, "head": 2, "temperature": 1.5, "top_k": 5})
    shown = heat(page, 1, "softmax")
    assert [[float(x) if x != "-inf" else None for x in row] for row in shown] == r["attention"]["stages"]["softmax"]
    assert "DenseFormer" in page.inner_text(".pane:nth-child(2) .layer-extras")
    page.screenshot(path=str(page.artifacts / "5-compare.png"), full_page=False)


def test_6_guided_tour(page):
    page.click("#tour-start")
    assert "decoder-only" in page.inner_text("#tour-text")
    for _ in range(4):
        page.click("#tour-next")
    assert page.inner_text("#tour-title") == "The causal mask"
    assert "causal mask" in page.inner_text("#tour-text")
    assert page.eval_on_selector(".tour-focus", "e => e.dataset.tour") == "attention"
    page.screenshot(path=str(page.artifacts / "6-tour.png"))
    page.click("#tour-close")


def test_7_too_long_prompt_message(page):
    page.fill("#prompt", "x" * 60)
    page.wait_for_function("!document.querySelector('#error').hidden")
    assert "at most 48 tokens" in page.inner_text("#error")


def test_8_mixers_without_a_softmax_matrix(browser, tmp_path, artifacts):
    """Flowformer shows its flows per token; linear attention the matrix its features imply."""
    from formers.nn.config import ModelConfig
    from formers.nn.io import save_model
    from formers.nn.models import build_model

    folders = []
    for mixer in ("flowformer", "linear"):
        cfg = ModelConfig(vocab_size=259, d_model=32, n_layers=1, n_heads=4, max_seq_len=32, attention=mixer)
        folders.append(save_model(build_model(cfg), tmp_path / mixer))
    srv, url = start_in_thread(Explainer([load(folders[0]), load(folders[1])]))
    pg = browser.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        pg.goto(url)
        pg.wait_for_selector("body[data-ready='1']")
        pg.click("#compare-toggle")
        pg.wait_for_function("document.querySelectorAll('.pane').length === 2 && "
                             "document.querySelectorAll('.pane')[1].querySelector('.token') !== null")
        settle(pg)
        flow, lin = pg.query_selector_all(".pane")
        assert "not available for this mixer" in flow.inner_text()
        names = flow.eval_on_selector_all(".per-token td:first-child", "ts => ts.map(t => t.textContent)")
        assert "flow.competition" in names
        assert lin.query_selector('.stages table[data-stage="implied"]') is not None
        pg.screenshot(path=str(artifacts / "8-other-mixers.png"), full_page=True)
        assert not errors, errors
    finally:
        pg.close()
        srv.shutdown()
        srv.server_close()
