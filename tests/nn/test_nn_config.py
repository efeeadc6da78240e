"""ModelConfig / LayerSpec validation and serialisation (dict, JSON, YAML)."""

from __future__ import annotations

import json

import pytest
import yaml

from formers.nn import LayerSpec, ModelConfig, build_model
from formers.nn.generate import SamplingConfig


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(d_model=30, n_heads=4), "30"),                       # not divisible
        (dict(d_model=20, n_heads=4, position="rope"), "head_dim = 5|= 5"),  # odd, with rope
        (dict(d_model=16, n_heads=4, n_kv_heads=3), "3"),           # kv heads do not divide
        (dict(vocab_size=0), "vocab_size"),
        (dict(d_model=-8), "-8"),
        (dict(n_layers=0), "n_layers"),
        (dict(n_heads=0), "n_heads"),
        (dict(n_kv_heads=0), "n_kv_heads"),
        (dict(d_ff=-1), "-1"),
        (dict(max_seq_len=0), "max_seq_len"),
        (dict(n_encoder_layers=-2), "-2"),
        (dict(rope_base=0.0), "rope_base"),
        (dict(norm_eps=-1e-5), "norm_eps"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout=-0.1), "-0.1"),
        (dict(arch="seq2seq"), "seq2seq"),
        (dict(position="xpos"), "xpos"),
        (dict(n_layers=4, layers=[LayerSpec()] * 3), "3"),         # pattern length must divide
        (dict(n_layers=4, layers=[]), "layers"),
    ],
)
def test_invalid_config_raises_naming_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(attention="hyena"), "hyena"),
        (dict(ffn="moe_xl"), "moe_xl"),
        (dict(norm="batchnorm"), "batchnorm"),
        (dict(layers=[LayerSpec(attention="nope")]), "nope"),
        (dict(layers=[LayerSpec(ffn="nofn")]), "nofn"),
        (dict(layers=[LayerSpec(cache="lru")]), "lru"),
        (dict(layers=[LayerSpec(attention_options={"window": 4})]), "window"),
        (dict(layers=[LayerSpec(ffn_options={"experts": 4})]), "experts"),
    ],
)
def test_unknown_parts_and_options_raise_at_build(kwargs, needle):
    """Unknown registry names (attention, ffn, norm, cache policy) and per-layer options the part
    does not take are refused when the model is built, naming the value."""
    with pytest.raises(ValueError, match=needle):
        build_model(ModelConfig(d_model=16, n_heads=2, n_layers=2, **kwargs))


def test_known_option_is_passed():
    m = build_model(ModelConfig(d_model=16, n_heads=2, n_layers=1,
                                layers=[LayerSpec(attention_options={"backend": "reference"},
                                                  ffn_options={"d_ff": 12})]))
    blk = m.stack.blocks[0]
    assert blk.mixer.backend == "reference" and blk.ffn.up.out_features == 12


def test_defaults_and_derived_values():
    c = ModelConfig(d_model=64, n_heads=8)
    assert c.head_dim == 8 and c.kv_heads == 8 and c.ffn_hidden == 256
    assert ModelConfig(d_model=24, n_heads=4, position="rope").head_dim == 6  # even: fine
    c = ModelConfig(d_model=64, n_heads=8, n_kv_heads=2, d_ff=100)
    assert c.kv_heads == 2 and c.ffn_hidden == 100
    assert c.layer_spec(3) == LayerSpec(attention="softmax", ffn="mlp")
    c = ModelConfig(n_layers=4, layers=[LayerSpec(ffn="mlp"), LayerSpec(ffn="swiglu")])
    assert [c.layer_spec(i).ffn for i in range(4)] == ["mlp", "swiglu", "mlp", "swiglu"]


def test_layers_from_plain_dicts():
    c = ModelConfig(n_layers=2, layers=[{"ffn": "swiglu"}])
    assert c.layers == [LayerSpec(ffn="swiglu")]
    with pytest.raises(ValueError, match="bogus"):
        ModelConfig(n_layers=2, layers=[{"bogus": 1}])


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="d_modle"):
        ModelConfig.from_dict({"d_modle": 32})
    with pytest.raises(ValueError, match="atention"):
        ModelConfig.from_dict({"layers": [{"atention": "softmax"}]})
    with pytest.raises(TypeError):
        ModelConfig.from_dict([("d_model", 32)])


def _rich() -> ModelConfig:
    return ModelConfig(
        arch="encoder-decoder", vocab_size=99, d_model=48, n_layers=4, n_heads=6, n_kv_heads=2,
        d_ff=80, max_seq_len=77, position="alibi", norm="rmsnorm", prenorm=False, bias=False,
        n_encoder_layers=3, tie_embeddings=False, dropout=0.1,
        layers=[LayerSpec(ffn="mlp", ffn_options={"d_ff": 12}),
                LayerSpec(ffn="swiglu", attention_options={"backend": "sdpa"})],
    )


def test_dict_round_trip():
    c = _rich()
    d = c.to_dict()
    assert isinstance(d["layers"][1], dict) and d["layers"][1]["ffn"] == "swiglu"
    back = ModelConfig.from_dict(d)
    assert back == c
    assert all(isinstance(s, LayerSpec) for s in back.layers)
    assert json.loads(json.dumps(d)) == d  # plain data only


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_file_round_trip(tmp_path, suffix):
    c = _rich()
    path = tmp_path / f"cfg{suffix}"
    c.save(path)
    text = path.read_text()
    data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    assert data["layers"][0]["ffn_options"] == {"d_ff": 12}
    assert ModelConfig.load(path) == c


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        ModelConfig.load(tmp_path / "missing.yaml")
    p = tmp_path / "typo.yaml"
    p.write_text("d_model: 32\nn_head: 4\n")
    with pytest.raises(ValueError, match="n_head"):
        ModelConfig.load(p)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"d_model": 30, "n_heads": 4}))
    with pytest.raises(ValueError, match="30"):
        ModelConfig.load(p)


def test_replace_revalidates():
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelConfig(n_heads=4).replace(n_kv_heads=3)


@pytest.mark.parametrize(
    "kwargs,needle",
    [(dict(max_new_tokens=-1), "-1"), (dict(temperature=-0.5), "-0.5"), (dict(top_k=-2), "-2"),
     (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "1.5")],
)
def test_sampling_config_errors(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        SamplingConfig(**kwargs)
