import math

import pytest
import torch

from formers.nn.models import build_model, count_params
from formers.train.config import TrainConfig
from formers.train.optim import build_optimizer, param_groups
from formers.train.schedule import lr_at

from _train_synth import tiny_model_config


def test_lr_by_hand():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.25)
    assert lr_at(1, cfg) == pytest.approx(0.5)
    assert lr_at(3, cfg) == pytest.approx(1.0)
    assert lr_at(4, cfg) == pytest.approx(1.0)  # start of decay: p = 0
    # p = 2/10: 0.1 + 0.9 * (1 + cos(0.2 pi)) / 2 = 0.1 + 0.45 * 1.8090170 = 0.9140576
    assert lr_at(6, cfg) == pytest.approx(0.9140576, abs=1e-7)
    assert lr_at(9, cfg) == pytest.approx(0.55)  # p = 1/2
    assert lr_at(14, cfg) == pytest.approx(0.1)  # max_steps: lr * min_lr_ratio
    assert lr_at(100, cfg) == pytest.approx(0.1)


def test_lr_no_warmup_and_errors():
    cfg = TrainConfig(lr=2e-3, warmup_steps=0, max_steps=10, min_lr_ratio=0.0)
    assert lr_at(0, cfg) == pytest.approx(2e-3)
    assert lr_at(5, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(0.0)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(12))
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, cfg)
    short = TrainConfig(lr=1.0, warmup_steps=10, max_steps=5)
    assert lr_at(4, short) == pytest.approx(0.5)
    assert math.isfinite(lr_at(20, short))


def test_decay_groups():
    model = build_model(tiny_model_config(tie_embeddings=True))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "embed.tok.weight" in decay["names"] and "embed.position.table.weight" in decay["names"]
    assert "stack.blocks.0.mixer.q.weight" in decay["names"]
    assert "head.weight" not in decay["names"] + no_decay["names"]  # tied: counted once
    assert all(n.endswith("bias") or "norm" in n for n in no_decay["names"])
    assert "stack.blocks.0.norm1.weight" in no_decay["names"]
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n == count_params(model)
    ids = {id(p) for g in (decay, no_decay) for p in g["params"]}
    assert len(ids) == len(decay["params"]) + len(no_decay["params"])

    opt = build_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.05, beta1=0.8, beta2=0.9))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert opt.param_groups[0]["betas"] == (0.8, 0.9)
    assert not opt.param_groups[0].get("fused")  # CPU: the plain kernel


def test_untied_head_decays():
    model = build_model(tiny_model_config(tie_embeddings=False))
    decay, _ = param_groups(model, 0.1)
    assert "head.weight" in decay["names"]
    frozen = build_model(tiny_model_config())
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer(frozen, TrainConfig())


def test_decay_mixing_weights_switch_moves_dwa_and_value_lambdas_into_decay():
    import formers.nn  # noqa: F401
    from formers.nn import ModelConfig, build_model
    from formers.train.optim import param_groups

    cfg = ModelConfig(n_layers=3, d_model=16, n_heads=2, residual="dwa", value_residual="learned")
    model = build_model(cfg)
    mixing = lambda names: sorted(n for n in names if "alphas" in n or "lambdas" in n)  # noqa: E731
    off = param_groups(model, 0.1)
    on = param_groups(model, 0.1, decay_mixing_weights=True)
    assert mixing(off[0]["names"]) == []
    assert mixing(on[0]["names"]) == mixing(off[1]["names"]) and len(mixing(on[0]["names"])) == 5
    assert len(on[0]["params"]) + len(on[1]["params"]) == len(list(model.parameters()))
