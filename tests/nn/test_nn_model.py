"""Models: input checks, tied embeddings, per-layer patterns, save/load errors, capture."""

from __future__ import annotations

import json

import pytest
import torch

from formers.nn import (
    EncoderDecoder, LayerSpec, ModelConfig, TransformerLM, build_model, count_params, load_model,
    save_model,
)
from formers.nn.attention import core
from formers.nn.ffn.mlp import MLP, SwiGLU
from formers.nn.norm import LayerNorm, RMSNorm


def cfg(**over) -> ModelConfig:
    base = dict(vocab_size=31, d_model=16, n_heads=4, n_layers=2, max_seq_len=12, init_std=0.1)
    return ModelConfig(**{**base, **over})


def test_build_model_types():
    assert type(build_model(cfg())) is TransformerLM
    assert type(build_model(cfg(arch="encoder"))) is TransformerLM
    assert type(build_model(cfg(arch="encoder-decoder"))) is EncoderDecoder
    with pytest.raises(TypeError, match="dict"):
        build_model({"d_model": 16})
    with pytest.raises(ValueError, match="encoder-decoder"):
        TransformerLM(cfg(arch="encoder-decoder"))
    with pytest.raises(ValueError, match="decoder"):
        EncoderDecoder(cfg())


def test_too_long_sequence_raises():
    m = build_model(cfg())
    m(torch.zeros(1, 12, dtype=torch.long))
    with pytest.raises(ValueError, match="13 tokens.*max_seq_len = 12"):
        m(torch.zeros(1, 13, dtype=torch.long))
    cache = m.new_cache()
    m(torch.zeros(1, 10, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    s2s = build_model(cfg(arch="encoder-decoder"))
    with pytest.raises(ValueError, match="max_seq_len"):
        s2s(torch.zeros(1, 13, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.parametrize("bad", [-1, 31, 1000])
def test_ids_out_of_vocab_raise(bad):
    m = build_model(cfg())
    x = torch.zeros(2, 5, dtype=torch.long)
    x[1, 3] = bad
    with pytest.raises(ValueError, match=str(bad)):
        m(x)


def test_ids_must_be_2d():
    with pytest.raises(ValueError, match="batch, seq_len"):
        build_model(cfg())(torch.zeros(5, dtype=torch.long))


def test_tied_embeddings_share_storage():
    m = build_model(cfg())
    assert m.head.weight is m.embed.tok.weight
    assert m.head.weight.data_ptr() == m.embed.tok.weight.data_ptr()
    untied = build_model(cfg(tie_embeddings=False))
    assert untied.head.weight.data_ptr() != untied.embed.tok.weight.data_ptr()
    assert count_params(untied) - count_params(m) == 31 * 16
    s2s = build_model(cfg(arch="encoder-decoder"))
    assert s2s.head.weight.data_ptr() == s2s.embed.tok.weight.data_ptr()


def test_tied_embeddings_survive_save_load(tmp_path):
    m = build_model(cfg())
    save_model(m, tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert back.head.weight.data_ptr() == back.embed.tok.weight.data_ptr()
    torch.testing.assert_close(back.head.weight, m.head.weight, atol=0, rtol=0)


def test_per_layer_pattern_alternates():
    m = build_model(cfg(n_layers=4, layers=[LayerSpec(ffn="mlp"), LayerSpec(ffn="swiglu")]))
    kinds = [type(b.ffn) for b in m.stack.blocks]
    assert kinds == [MLP, SwiGLU, MLP, SwiGLU]
    m = build_model(cfg(n_layers=3, layers=[LayerSpec(ffn="swiglu", ffn_options={"d_ff": 8})]))
    assert all(type(b.ffn) is SwiGLU and b.ffn.up.out_features == 8 for b in m.stack.blocks)


def test_encoder_decoder_depths_and_cross_attention():
    m = build_model(cfg(arch="encoder-decoder", n_layers=3, n_encoder_layers=1))
    assert len(m.encoder.blocks) == 1 and len(m.decoder.blocks) == 3
    assert all(b.cross is not None for b in m.decoder.blocks)
    assert all(b.cross is None for b in m.encoder.blocks)


def test_norm_choice_and_postnorm():
    m = build_model(cfg(norm="rmsnorm"))
    assert type(m.stack.blocks[0].norm1) is RMSNorm and type(m.stack.norm_f) is RMSNorm
    m = build_model(cfg(prenorm=False))
    assert type(m.stack.blocks[0].norm1) is LayerNorm
    assert isinstance(m.stack.norm_f, torch.nn.Identity)


def test_gqa_projection_shapes():
    m = build_model(cfg(n_kv_heads=1))
    att = m.stack.blocks[0].mixer
    assert att.q.out_features == 16 and att.k.out_features == 4 and att.v.out_features == 4


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=50, d_model=64, n_heads=4, n_layers=8, init_std=0.02))
    o = m.stack.blocks[0].mixer.o.weight.std().item()
    q = m.stack.blocks[0].mixer.q.weight.std().item()
    assert abs(q - 0.02) < 0.003 and abs(o - 0.02 / 4) < 0.001  # 1/sqrt(2*8) = 1/4
    assert (m.stack.blocks[0].mixer.q.bias == 0).all()
    assert (m.stack.blocks[0].norm1.weight == 1).all()


def test_decoder_left_padding_is_finite_on_both_paths():
    """Decoder with left padding: the first padded query sees no key. Logits at real positions must
    be finite and equal on the default (SDPA) path and the capture (reference) path."""
    torch.manual_seed(0)
    m = build_model(cfg()).eval()
    x = torch.randint(0, 31, (2, 6))
    km = torch.ones(2, 6, dtype=torch.bool)
    km[0, :2] = False
    with torch.no_grad():
        fast = m(x, key_mask=km)
        ref = m(x, key_mask=km, capture={})
    assert torch.isfinite(fast[km]).all()
    assert torch.isfinite(ref[km]).all(), "reference path: NaN from a fully masked query row spreads"
    torch.testing.assert_close(ref[km], fast[km], atol=1e-5, rtol=1e-5)


def test_capture_does_not_change_outputs_and_records():
    torch.manual_seed(0)
    m = build_model(cfg(position="rope")).eval()
    x = torch.randint(0, 31, (2, 7))
    cap: dict = {}
    with torch.no_grad():
        a = m(x)
        core.CALLS.clear()
        b = m(x, capture=cap)
    # the output still comes from the usual (SDPA) path, so it is unchanged bit for bit; the
    # explainer's view comes from one extra reference-path call per layer
    assert torch.equal(a, b)
    assert core.CALLS.get("reference", 0) == 2
    assert cap["layer1.attn.weights"].shape == (2, 4, 7, 7)
    assert {"embed.tok", "logits", "layer0.resid"} <= set(cap)


def test_encoder_has_no_cache_and_seq2seq_shapes():
    with pytest.raises(ValueError, match="decoder"):
        build_model(cfg(arch="encoder")).new_cache()
    m = build_model(cfg(arch="encoder-decoder"))
    src, tgt = torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)
    assert m.encode(src).shape == (2, 5, 16)
    assert m(src, tgt).shape == (2, 3, 31)


def test_cache_reorder_and_nbytes():
    torch.manual_seed(0)
    m = build_model(cfg(n_kv_heads=2)).eval()
    cache = m.new_cache()
    x = torch.randint(0, 31, (3, 4))
    with torch.no_grad():
        m(x, cache=cache)
    # 2 layers * (k + v) * batch 3 * 2 kv heads * 4 tokens * head_dim 4 * 4 bytes
    assert cache.nbytes() == 2 * 2 * 3 * 2 * 4 * 4 * 4
    assert len(cache.layers[0]) == 4
    cache.reorder(torch.tensor([2, 0]))
    with torch.no_grad():
        step = m(torch.tensor([[5], [6]]), cache=cache)
        full = m(torch.cat([x[[2, 0]], torch.tensor([[5], [6]])], 1))
    torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ save / load
def test_load_mismatched_weights_raises(tmp_path):
    save_model(build_model(cfg()), tmp_path / "m")
    # config now says 3 layers: weights of layer 2 are missing
    c = json.loads((tmp_path / "m" / "config.json").read_text())
    c["n_layers"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match="missing|does not match"):
        load_model(tmp_path / "m")


def test_load_misshaped_weights_raises(tmp_path):
    save_model(build_model(cfg()), tmp_path / "m")
    c = json.loads((tmp_path / "m" / "config.json").read_text())
    c["d_ff"] = 24
    (tmp_path / "m" / "config.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match="model.safetensors"):
        load_model(tmp_path / "m")


def test_load_unexpected_weights_raises(tmp_path):
    save_model(build_model(cfg(n_layers=2)), tmp_path / "m")
    c = json.loads((tmp_path / "m" / "config.json").read_text())
    c["n_layers"] = 1
    (tmp_path / "m" / "config.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match="unexpected|does not match"):
        load_model(tmp_path / "m")


def test_load_corrupt_weights_raises(tmp_path):
    save_model(build_model(cfg()), tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: 200])
    with pytest.raises(ValueError, match="cannot load"):
        load_model(tmp_path / "m")
    f.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="cannot load"):
        load_model(tmp_path / "m")


def test_load_corrupt_or_invalid_config_raises(tmp_path):
    save_model(build_model(cfg()), tmp_path / "m")
    p = tmp_path / "m" / "config.json"
    p.write_text("{ not json")
    with pytest.raises(ValueError, match="config.json"):
        load_model(tmp_path / "m")
    p.write_text(json.dumps({"d_model": 30, "n_heads": 4}))
    with pytest.raises(ValueError, match="30"):
        load_model(tmp_path / "m")
    p.write_text(json.dumps({"d_modle": 16}))
    with pytest.raises(ValueError, match="d_modle"):
        load_model(tmp_path / "m")
    p.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError):
        load_model(tmp_path / "m")


def test_load_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "nothing")


def test_saved_files_are_not_pickles(tmp_path):
    save_model(build_model(cfg()), tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    assert ModelConfig.from_dict(json.loads((tmp_path / "m" / "config.json").read_text())) == cfg()
