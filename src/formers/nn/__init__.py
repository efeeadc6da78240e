"""Generic transformer parts. Importing this package registers every part it holds."""

from formers.nn import attention, cache, ffn, norm, position, presets  # noqa: F401  (registers)
from formers.nn import residual, value_residual  # noqa: F401  (registers residual schemes, presets)
from formers.nn import lowrank  # noqa: F401  (registers the LRT parts and preset)
from formers.nn.config import LayerSpec, ModelConfig
from formers.nn.generate import SamplingConfig, generate
from formers.nn.io import load_model, save_model
from formers.nn.models import EncoderDecoder, TransformerLM, build_model, count_params

__all__ = [
    "EncoderDecoder", "LayerSpec", "ModelConfig", "SamplingConfig", "TransformerLM",
    "build_model", "count_params", "generate", "load_model", "save_model",
]
