"""Generic transformer parts. Importing this package registers every part it holds."""

# importing these modules registers their parts and presets
from formers.nn import attention, cache, ffn, norm, position, presets  # noqa: F401
from formers.nn import brainformer, layernorm_geometry, lowrank, matformer, residual  # noqa: F401
from formers.nn import value_residual  # noqa: F401
from formers.nn import masformer  # noqa: F401
from formers.nn.config import LayerSpec, ModelConfig
from formers.nn.generate import SamplingConfig, generate
from formers.nn.io import load_model, save_model
from formers.nn.models import EncoderDecoder, TransformerLM, build_model, count_params

__all__ = [
    "EncoderDecoder", "LayerSpec", "ModelConfig", "SamplingConfig", "TransformerLM",
    "build_model", "count_params", "generate", "load_model", "save_model",
]
