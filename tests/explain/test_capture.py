"""Intermediates for the explainer: outputs unchanged, and the invariants of Transformer Explainer
(arXiv 2408.04619): scaled = raw / sqrt(head_dim), causal mask above the diagonal, softmax rows
sum to 1, and the captured attention times V gives the layer's attention output."""

import math

import pytest
import torch

import formers.nn  # noqa: F401  (registers the parts)
from formers.explain.capture import capture
from formers.nn.config import ModelConfig
from formers.nn.models import build_model
from formers.nn.presets import apply_preset

PRESETS = ("baseline", "rope", "gqa", "denseformer", "value-residual", "alibi")


def tiny(preset: str, arch: str = "decoder"):
    base = ModelConfig(arch=arch, vocab_size=259, d_model=32, n_layers=2, n_heads=4, max_seq_len=16)
    return build_model(apply_preset(preset, base)).eval()


@pytest.mark.parametrize("preset", PRESETS)
def test_outputs_identical_and_stages(preset):
    model = tiny(preset)
    ids = torch.randint(0, 259, (1, 9))
    plain = model(ids)
    trace = capture(model, ids)
    t = trace.tensors
    assert torch.equal(t["logits"], plain)  # bit for bit: capture leaves the usual path alone
    assert torch.allclose(t["probs"].sum(-1), torch.ones(1, 9))
    hd = model.cfg.head_dim
    causal_above = torch.triu(torch.ones(9, 9, dtype=torch.bool), diagonal=1)
    for i in range(2):
        raw, scaled, masked, soft = (t[f"layer{i}.attn.{s}"][0] for s in ("raw", "scaled", "masked", "softmax"))
        assert raw.shape == (4, 9, 9)
        torch.testing.assert_close(scaled, raw / math.sqrt(hd))
        assert torch.isneginf(masked[:, causal_above]).all()
        assert torch.isfinite(masked[:, ~causal_above]).all()
        if preset != "alibi":  # no score bias: masked equals scaled below the diagonal
            torch.testing.assert_close(masked[:, ~causal_above], scaled[:, ~causal_above])
        else:  # ALiBi's bias sits between the two stages
            torch.testing.assert_close(masked[:, ~causal_above], t[f"layer{i}.attn.biased"][0][:, ~causal_above])
        torch.testing.assert_close(soft.sum(-1), torch.ones(4, 9))
        assert (soft[:, causal_above] == 0).all()
        # attention times V, heads concatenated, equals the input of the output projection
        v = t[f"layer{i}.attn.v"][0]
        v = v.repeat_interleave(4 // v.shape[0], dim=0)  # GQA: key/value heads shared
        heads = torch.einsum("hqk,hkd->qhd", soft, v).reshape(9, 4 * hd)
        torch.testing.assert_close(heads, t[f"layer{i}.attn.heads"][0], atol=1e-5, rtol=1e-5)
    # the stream: block output = stream entering the next block for the plain residual
    if preset != "denseformer":
        torch.testing.assert_close(t["layer0.resid"], t["stream1"])
    assert trace.residual_norms().shape == (3, 1, 9)


def test_stream0_is_token_plus_position_and_mlp_activation():
    model = tiny("baseline")
    ids = torch.randint(0, 259, (1, 5))
    t = capture(model, ids).tensors
    torch.testing.assert_close(t["stream0"][0], t["embed.tok"][0] + t["embed.pos"])
    torch.testing.assert_close(t["embed.tok"][0], model.embed.tok.weight[ids[0]])
    gelu = torch.nn.functional.gelu(t["layer1.mlp.pre"], approximate="tanh")
    torch.testing.assert_close(t["layer1.mlp.act"], gelu)


def test_denseformer_and_value_residual_weights_recorded():
    t = capture(tiny("denseformer"), torch.randint(0, 259, (1, 4))).tensors
    assert t["layer1.dwa.alpha"].numel() == 3  # X_0, X_1, X_2 mixed after block 2
    t = capture(tiny("value-residual"), torch.randint(0, 259, (1, 4))).tensors
    assert t["layer1.value_residual.mix"].tolist() == [0.5, 0.5]


def test_encoder_has_no_causal_mask():
    t = capture(tiny("baseline", arch="encoder"), torch.randint(0, 259, (1, 6))).tensors
    assert torch.isfinite(t["layer0.attn.masked"]).all()


def test_mixer_without_matrix_says_so():
    base = ModelConfig(vocab_size=259, d_model=32, n_layers=1, n_heads=4, max_seq_len=16, attention="linear")
    trace = capture(build_model(base).eval(), torch.randint(0, 259, (1, 5)))
    info = trace.layers[0]
    assert not info.attention_matrix and "not available for this mixer" in info.note


def test_rejects_other_models():
    with pytest.raises(TypeError, match="TransformerLM"):
        capture(torch.nn.Linear(2, 2), torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.parametrize("mixer", ["linear", "performer"])
@pytest.mark.parametrize("arch", ["decoder", "encoder"])
def test_kernel_mixers_implied_attention(mixer, arch):
    base = ModelConfig(arch=arch, vocab_size=259, d_model=32, n_layers=1, n_heads=4, max_seq_len=16, attention=mixer)
    trace = capture(build_model(base).eval(), torch.randint(0, 259, (1, 7)))
    w = trace.implied_attention(0, causal=arch == "decoder")
    assert w is not None and w.shape == (1, 4, 7, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 4, 7))
    assert (w >= 0).all()
    if arch == "decoder":
        assert (w[..., torch.triu(torch.ones(7, 7, dtype=torch.bool), 1)] == 0).all()
    # tampering with the recorded output makes the check refuse the picture
    trace.tensors["layer0.attn.heads"] = trace.tensors["layer0.attn.heads"] + 1
    assert trace.implied_attention(0, causal=arch == "decoder") is None


def test_flowformer_shows_its_flows():
    from pathlib import Path

    from formers.explain.api import Explainer
    from formers.explain.load import ByteText, Loaded

    base = ModelConfig(vocab_size=259, d_model=32, n_layers=1, n_heads=4, max_seq_len=16, attention="flowformer")
    model = build_model(base).eval()
    r = Explainer([Loaded(model, ByteText(), "flow", Path("."))]).forward({"text": "hello", "head": 2})
    a = r["attention"]
    assert not a["available"] and "not available for this mixer" in a["note"]
    t = capture(model, torch.tensor([list(b"hello")])).tensors
    assert a["per_token"]["flow.competition"] == pytest.approx(t["layer0.flow.competition"][0, 2].tolist(), abs=1e-6)


def test_moe_routing_shown():
    from pathlib import Path

    from formers.explain.api import Explainer
    from formers.explain.load import ByteText, Loaded
    from formers.nn.ffn.moe import moe

    model = build_model(moe(ModelConfig(vocab_size=259, d_model=32, n_layers=2, n_heads=4, max_seq_len=16))).eval()
    r = Explainer([Loaded(model, ByteText(), "moe", Path("."))]).forward({"text": "hello", "layer": 1})
    gates = r["extras"][1]["moe_gates_last"]
    assert len(gates) == 8 and sum(g > 0 for g in gates) <= 2 and sum(gates) == pytest.approx(1, abs=1e-5)
    assert "experts" in r["mlp"]["note"]
