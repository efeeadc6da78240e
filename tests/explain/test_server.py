"""The explainer's server and JSON API: values, limits, safety (loopback, no path traversal, no
pickles, other model families refused)."""

import http.client
import json

import pytest
import torch

from formers.explain.api import MAX_PROMPT_CHARS, Explainer
from formers.explain.load import load
from formers.explain.sampling import distribution
from formers.explain.server import MAX_BODY_BYTES, start_in_thread


@pytest.fixture(scope="module")
def server(tiny_models):
    ex = Explainer([load(tiny_models[0]), load(tiny_models[1])])
    srv, url = start_in_thread(ex)
    yield ex, srv
    srv.shutdown()
    srv.server_close()


def request(srv, method, path, body=None, raw: bytes | None = None, headers=None):
    host, port = srv.server_address[:2]
    c = http.client.HTTPConnection(host, port, timeout=30)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    c.request(method, path, body=data, headers=headers or {"Content-Type": "application/json"})
    r = c.getresponse()
    out = r.status, r.read()
    c.close()
    return out


def test_binds_loopback_and_serves_page(server):
    _, srv = server
    assert srv.server_address[0] == "127.0.0.1"
    status, body = request(srv, "GET", "/")
    assert status == 200 and b"formers explain" in body
    for name in ("app.js", "style.css"):
        st, text = request(srv, "GET", f"/static/{name}")
        assert st == 200
        body += text
    # works offline: nothing is fetched from another host (no CDN)
    assert b"http://" not in body and b"https://" not in body and b"//cdn" not in body


@pytest.mark.parametrize("path", ["/static/../load.py", "/static/%2e%2e/load.py", "/../../etc/passwd",
                                  "/static//etc/passwd", "/static/..%2fapi.py", "/etc/passwd",
                                  "/static/__init__.py", "/static/"])
def test_no_path_traversal(server, path):
    status, body = request(server[1], "GET", path)
    assert status == 404 and b"root:" not in body and b"import" not in body


def test_forward_values(server, tiny_models):
    ex, srv = server
    status, body = request(srv, "POST", "/api/forward", {"text": "hello", "layer": 1, "head": 3,
                                                         "temperature": 0.8, "top_k": 5})
    assert status == 200
    r = json.loads(body)
    assert [t["id"] for t in r["tokens"]] == list(b"hello")
    a = r["attention"]
    soft = torch.tensor(a["stages"]["softmax"])
    torch.testing.assert_close(soft.sum(-1), torch.ones(5), atol=1e-5, rtol=0)
    assert all(a["stages"]["masked"][i][j] is None for i in range(5) for j in range(i + 1, 5))
    # the next-token numbers are the sampling rule applied to the model's own logits
    model = ex.models[0].model
    logits = model(torch.tensor([list(b"hello")]))[0, -1]
    d = distribution(logits, 0.8, 5)
    assert [c["id"] for c in r["next"]["candidates"][:5]] == d.ids[:5].tolist()
    assert [c["prob"] for c in r["next"]["candidates"][:5]] == pytest.approx(d.probs[:5].tolist(), abs=1e-6)
    assert r["next"]["n_kept"] == 5
    assert len(r["residual"]["norms"]) == 3  # entering block 1, block 2, final norm


def test_compare_second_model(server):
    status, body = request(server[1], "POST", "/api/forward", {"text": "hi", "model": 1, "layer": 2})
    r = json.loads(body)
    assert status == 200 and len(r["residual"]["norms"]) == 4
    assert r["extras"]["2"]["dwa_alpha"] and len(r["extras"]["2"]["dwa_alpha"]) == 4


def test_generate_steps_greedy(server):
    ex, srv = server
    status, body = request(srv, "POST", "/api/generate", {"text": "ab", "steps": 2, "temperature": 0})
    r = json.loads(body)
    assert status == 200 and len(r["ids"]) == 4 and len(r["steps"]) == 2
    # from ids (what the page sends after generating: a byte need not be valid text)
    st2, body2 = request(srv, "POST", "/api/generate", {"ids": [104, 255, 257], "steps": 1, "temperature": 0})
    assert st2 == 200 and json.loads(body2)["ids"][:3] == [104, 255, 257]
    ids = list(b"ab")
    for step in r["steps"]:  # greedy = argmax of the full forward, one token at a time
        nxt = int(ex.models[0].model(torch.tensor([ids]))[0, -1].argmax())
        assert step["id"] == nxt
        ids.append(nxt)


@pytest.mark.parametrize("body,status,match", [
    ({"text": "x" * (MAX_PROMPT_CHARS + 1)}, 400, "at most"),
    ({"text": "x" * 60}, 413, "at most 48 tokens"),
    ({"text": ""}, 400, "non-empty"),
    ({"text": "ab", "temperature": -1}, 400, "temperature"),
    ({"text": "ab", "top_p": 2}, 400, "top_p"),
    ({"text": "ab", "layer": 9}, 400, "layer"),
    ({"text": "ab", "model": 5}, 400, "model"),
    ({"text": "ab", "mode": "top5"}, 400, "mode"),
    ({"ids": [1, 300]}, 400, "token ids in [0, 259)"),
    ({"ids": "abc"}, 400, "token ids"),
])
def test_bad_requests_get_clear_messages(server, body, status, match):
    st, out = request(server[1], "POST", "/api/forward", body)
    assert st == status and match in json.loads(out)["error"]


def test_body_size_limit_and_bad_json(server):
    st, out = request(server[1], "POST", "/api/forward", raw=b"{" + b" " * (MAX_BODY_BYTES + 1) + b"}")
    assert st == 413 and "limit" in json.loads(out)["error"]
    st, out = request(server[1], "POST", "/api/forward", raw=b"[1, 2")
    assert st == 400 and "JSON" in json.loads(out)["error"]


def test_other_family_and_pickles_refused(tmp_path, tiny_models):
    fc = tmp_path / "forecaster"
    fc.mkdir()
    (fc / "config.json").write_text(json.dumps({"model": "samformer", "look_back": 512, "horizon": 96}))
    (fc / "model.safetensors").write_bytes((tiny_models[0] / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="another family"):
        load(fc)
    pk = tmp_path / "pickled"
    pk.mkdir()
    torch.save({"w": torch.zeros(1)}, pk / "model.pt")
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        load(pk)


def test_cli_rejects_bad_path(tmp_path, capsys):
    from formers.cli import main

    assert main(["explain", str(tmp_path / "missing"), "--no-browser"]) == 2
    assert "does not exist" in capsys.readouterr().err
