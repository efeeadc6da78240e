"""Named model variants (registry kind ``model``): each maps a base :class:`ModelConfig` (the task's
size) to a variant of it. ``formers compare TASK --models a,b`` picks them by name."""

from __future__ import annotations

from typing import Any, Callable

from formers.nn.config import LayerSpec, ModelConfig
from formers.registry import Paper, register

Preset = Callable[[ModelConfig], ModelConfig]


def preset(name: str, paper: Paper | None = None, summary: str = "") -> Callable[[Preset], Preset]:
    return register("model", name, config=ModelConfig, paper=paper, summary=summary)


@preset("baseline", Paper("Language Models are Unsupervised Multitask Learners (GPT-2)"),
        "GPT-2 style: learned positions, pre-LayerNorm, GELU MLP, MHA")
def baseline(c: ModelConfig) -> ModelConfig:
    return c


@preset("rope", Paper("RoFormer: Enhanced Transformer with Rotary Position Embedding", "2104.09864"),
        "baseline with rotary positions instead of learned ones")
def rope(c: ModelConfig) -> ModelConfig:
    return c.replace(position="rope")


@preset("alibi", Paper("Train Short, Test Long (ALiBi)", "2108.12409"), "baseline with ALiBi biases")
def alibi(c: ModelConfig) -> ModelConfig:
    return c.replace(position="alibi")


@preset("sinusoidal", Paper("Attention Is All You Need", "1706.03762"), "baseline with sinusoidal positions")
def sinusoidal(c: ModelConfig) -> ModelConfig:
    return c.replace(position="sinusoidal")


@preset("gqa", Paper("GQA: Training Generalized Multi-Query Transformer Models", "2305.13245"),
        "grouped-query attention: n_heads/2 key-value heads")
def gqa(c: ModelConfig) -> ModelConfig:
    return c.replace(n_kv_heads=max(1, c.n_heads // 2))


@preset("mqa", Paper("Fast Transformer Decoding: One Write-Head is All You Need", "1911.02150"),
        "multi-query attention: one key-value head")
def mqa(c: ModelConfig) -> ModelConfig:
    return c.replace(n_kv_heads=1)


@preset("postnorm", Paper("Attention Is All You Need", "1706.03762"), "post-LayerNorm blocks")
def postnorm(c: ModelConfig) -> ModelConfig:
    return c.replace(prenorm=False)


@preset("llama", Paper("LLaMA: Open and Efficient Foundation Language Models", "2302.13971", "§2.2"),
        "RoPE + RMSNorm + SwiGLU, no biases")
def llama(c: ModelConfig) -> ModelConfig:
    return c.replace(position="rope", norm="rmsnorm", ffn="swiglu", bias=False, d_ff=None)


def with_attention(c: ModelConfig, name: str, options: dict[str, Any] | None = None,
                   **layer: Any) -> ModelConfig:
    """``c`` with every layer's token mixer set to ``name`` with ``options`` (the old mixer's
    options dropped; each layer's feed-forward kept). ``layer``: further :class:`LayerSpec` fields
    set on every layer, e.g. ``cache="window", cache_options={"window": 64}``."""
    spec = dict(attention=name, attention_options=dict(options or {}), **layer)
    if c.layers is not None:
        return c.replace(attention=name, layers=[s.replace(**spec) for s in c.layers])
    if options or layer:
        return c.replace(attention=name, layers=[LayerSpec(ffn=c.ffn, **spec)])
    return c.replace(attention=name)


def apply_preset(name: str, base: ModelConfig) -> ModelConfig:
    """The config of variant ``name`` at the size of ``base`` (ValueError for an unknown name)."""
    from formers.registry import get

    cfg = get("model", name).obj(base)
    return ModelConfig.from_dict(cfg.to_dict())  # re-validate
