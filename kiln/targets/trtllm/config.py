"""The model side of a TensorRT-LLM conversion: shape, validation and the checkpoint's config.json.

Torch-free, so that a spec can be checked (and a bad one refused) in milliseconds before any
worker starts. Values follow ``tensorrt_llm/models/llama/config.py`` and
``tensorrt_llm/quantization/mode.py`` in NVIDIA/TensorRT-LLM (see ``checkpoint``'s docstring).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ...spec import parse_alpha
from .._worker_main import UnsupportedArchitectureError

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "TRT_DTYPES",
    "QUANT_ALGOS",
    "KV_CACHE_INT8",
    "UnsupportedArchitectureError",
    "ModelShape",
    "read_model_shape",
    "quant_algo_for",
    "unsupported_message",
    "validate_convert_args",
    "build_config",
]

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
TRT_DTYPES = {
    "fp32": "float32", "float32": "float32",
    "fp16": "float16", "float16": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
}  # fmt: skip
QUANT_ALGOS = {
    # (per_token, per_channel) -> TensorRT-LLM QuantAlgo (tensorrt_llm/quantization/mode.py)
    (True, True): "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN",
    (False, True): "W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN",
    (True, False): "W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN",
    (False, False): "W8A8_SQ_PER_TENSOR_PLUGIN",
}
KV_CACHE_INT8 = "INT8"
# Rope types the converter passes through to TensorRT-LLM (rotary_scaling); "default" is none.
_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")

def unsupported_message(architecture: str | None) -> str:
    return (
        f"architecture {architecture} is not supported by Kiln's TensorRT-LLM converter; "
        f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def quant_algo_for(per_token: bool, per_channel: bool) -> str:
    """TensorRT-LLM's ``quant_algo`` for SmoothQuant with these scaling choices."""
    return QUANT_ALGOS[(bool(per_token), bool(per_channel))]


# ----------------------------------------------------------------------------- model shape
@dataclass(frozen=True)
class ModelShape:
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int | None
    norm_epsilon: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    tie_word_embeddings: bool
    sliding_window: int | None
    hidden_act: str

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_size

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_size


def _rope_of(cfg: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) across transformers 4 (rope_theta/rope_scaling) and 5 (rope_parameters)."""
    params = cfg.get("rope_parameters")
    scaling = cfg.get("rope_scaling")
    theta = cfg.get("rope_theta")
    if isinstance(params, Mapping):
        theta = params.get("rope_theta", theta)
        if scaling is None:
            scaling = params
    if isinstance(scaling, Mapping):
        kind = scaling.get("rope_type") or scaling.get("type") or "default"
        if kind not in _ROPE_TYPES:
            raise ValueError(f"rope type {kind!r} is not supported; supported: {', '.join(_ROPE_TYPES)}")
        if kind == "default":
            scaling = None
        else:
            scaling = {k: v for k, v in scaling.items() if k not in ("rope_theta", "type", "rope_type")}
            scaling = {"type": kind, "rope_type": kind, **dict(sorted(scaling.items()))}
    else:
        scaling = None
    return float(theta if theta is not None else 10000.0), scaling


def read_model_shape(model_dir: Path | str) -> ModelShape:
    """The shape facts of a Hugging Face model directory, from config.json alone (no torch)."""
    model_dir = Path(model_dir)
    path = model_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    try:
        cfg = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    archs = cfg.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(unsupported_message(arch))
    if cfg.get("attention_bias") or cfg.get("mlp_bias") or cfg.get("bias"):
        raise ValueError("models with attention or MLP biases are not supported by the TensorRT-LLM converter yet")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"hidden_act {act!r} is not supported (Llama/Mistral use 'silu')")
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    head_size = cfg.get("head_dim") or hidden // heads
    theta, scaling = _rope_of(cfg)
    sw = cfg.get("sliding_window") if arch == "MistralForCausalLM" else None
    return ModelShape(
        architecture=arch,
        hidden_size=hidden,
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_size=int(head_size),
        intermediate_size=int(cfg["intermediate_size"]),
        vocab_size=int(cfg["vocab_size"]),
        max_position_embeddings=cfg.get("max_position_embeddings"),
        norm_epsilon=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        sliding_window=int(sw) if sw else None,
        hidden_act=act,
    )


def validate_convert_args(
    model_dir: Path | str,
    *,
    dtype: str,
    tp_degree: int,
    smoothquant_alpha: float | None,
    per_token: bool,
    per_channel: bool,
    int8_kv_cache: bool,
    stats_dir: Path | str | None,
) -> tuple[ModelShape, str]:
    """Check everything before any work; return ``(shape, trt_dtype)`` or raise ValueError."""
    if smoothquant_alpha is not None:
        parse_alpha(smoothquant_alpha)
    elif per_token or per_channel:
        which = "per-token" if per_token else "per-channel"
        raise ValueError(
            f"{which} scaling is a SmoothQuant option, but SmoothQuant is off; pass smoothquant_alpha "
            "(--smoothquant ALPHA) or drop the flag"
        )
    if not isinstance(dtype, str) or dtype.lower() not in TRT_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use fp32, fp16 or bf16")
    if isinstance(tp_degree, bool) or not isinstance(tp_degree, int) or tp_degree < 1:
        raise ValueError(f"tp_degree must be a positive integer, got {tp_degree!r}")
    if not Path(model_dir).is_dir():
        raise ValueError(f"model directory {model_dir} does not exist")
    shape = read_model_shape(model_dir)
    tp = tp_degree
    if shape.num_heads % tp:
        raise ValueError(
            f"tp_degree {tp} does not divide the {shape.num_heads} attention heads; "
            f"use a divisor of {shape.num_heads}"
        )
    if shape.num_kv_heads % tp and tp % shape.num_kv_heads:
        raise ValueError(
            f"tp_degree {tp} and the {shape.num_kv_heads} KV heads do not fit: tp must divide the KV heads "
            "or be a multiple of them (KV heads are then replicated)"
        )
    if shape.intermediate_size % tp:
        raise ValueError(f"tp_degree {tp} does not divide intermediate_size {shape.intermediate_size}")
    if stats_dir is not None and (smoothquant_alpha is not None or int8_kv_cache) and not Path(stats_dir).is_dir():
        raise ValueError(f"stats directory {stats_dir} does not exist; run the calibrate stage first")
    return shape, TRT_DTYPES[dtype.lower()]


# ----------------------------------------------------------------------------- config out
def build_config(
    shape: ModelShape,
    *,
    trt_dtype: str,
    tp_degree: int,
    quant_algo: str | None,
    kv_cache_quant_algo: str | None,
    smoothquant_alpha: float | None,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architecture": shape.architecture,
        "dtype": trt_dtype,
        "logits_dtype": "float32",
        "vocab_size": shape.vocab_size,
        "max_position_embeddings": shape.max_position_embeddings,
        "hidden_size": shape.hidden_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads,
        "head_size": shape.head_size,
        "intermediate_size": shape.intermediate_size,
        "hidden_act": shape.hidden_act,
        "norm_epsilon": shape.norm_epsilon,
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": shape.rope_theta,
        "rotary_scaling": shape.rope_scaling,
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "mlp_bias": False,
        "attn_bias": False,
        "residual_mlp": False,
        "mapping": {"world_size": tp_degree, "tp_size": tp_degree, "pp_size": 1},
        "quantization": {
            "quant_algo": quant_algo,
            "kv_cache_quant_algo": kv_cache_quant_algo,
            "group_size": 128,
            "smoothquant_val": 0.5 if smoothquant_alpha is None else float(smoothquant_alpha),
            "has_zero_point": False,
            "pre_quant_scale": False,
            "exclude_modules": None,
        },
    }
    if shape.sliding_window is not None:
        # Not a TensorRT-LLM Llama field (extra fields are accepted and kept as attributes):
        # the runtime applies it as max_attention_window_size. The reference executor reads it.
        config["sliding_window"] = shape.sliding_window
    return config
