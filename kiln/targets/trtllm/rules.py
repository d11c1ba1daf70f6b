"""What TensorRT-LLM and its consumers would refuse or decide, checked before any stage runs.

Each rule names where it comes from (``docs/research/trtllm-consumers.md`` holds the citations):

* the engine's sequence length from LMI's ``max_input_len`` / ``max_output_len`` / ``max_seq_len``, as the
  consumer release reads them (:func:`lmi_n_positions`);
* consumers whose server cannot start, and releases older than the build interface Kiln drives;
* rope scalings Kiln's reference executor cannot check (an engine Kiln cannot verify is not built);
* ``trtllm-build``'s own refusals on SM 100–119 (B200/GB200), made before the CPU stages instead of after;
* INT8 KV cache: the builder turns paged context FMHA off, so a prompt must fit in ``max_num_tokens``.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from ..._packages import installed_version
from ...errors import ValidationError
from ...spec import LIMITS, BuildSpec
from ..base import model_dims
from .consumers import CONSUMERS, TrtllmConsumer, version_tuple

__all__ = ["lmi_n_positions", "check_build", "build_defaults", "attention_window", "DEFAULT_MAX_NUM_TOKENS",
           "MIN_TENSORRT_LLM"]

# trtllm-build --max_num_tokens default (tensorrt_llm/builder.py BuildConfig.max_num_tokens = 8192).
DEFAULT_MAX_NUM_TOKENS = 8192
# The oldest TensorRT-LLM Kiln builds for: its engine step passes trtllm-build --max_seq_len, which replaced
# --max_output_len in 0.11, and SmoothQuantAttention before it sized heads as hidden / heads without rope scaling
# (tensorrt_llm/quantization/layers.py@2340c776; issue 15's reading of 0.9/0.10).
MIN_TENSORRT_LLM = (0, 11)
# LMI's documented defaults (UG@0.28.0-dlc L86-88): option.max_input_len 1024, option.max_output_len 512.
_LMI_MAX_INPUT_LEN, _LMI_MAX_OUTPUT_LEN = 1024, 512
# Rope scalings the reference executor implements (kiln/targets/trtllm/reference.py _rope_inv_freq).
CHECKED_ROPE_TYPES = ("linear", "llama3")


def _lengths(spec: BuildSpec) -> dict[str, int] | None:
    raw = spec.option("lmi_lengths")
    return None if raw is None else {k: int(v) for k, v in json.loads(raw).items()}


def lmi_n_positions(spec: BuildSpec, consumer: TrtllmConsumer, config: Mapping[str, Any]) -> tuple[BuildSpec, list[str]]:
    """n_positions from the LMI lengths (option ``lmi_lengths``, written by kiln.lmi), as ``consumer`` reads them:

    * ``option.max_seq_len`` when given (the engine's max_seq_len);
    * LMI 0.30-0.32, 0.34: ``option.max_output_len`` "now maps to max_seq_len in TRTLLM" (UG@0.30.0-dlc L85-87),
      default 512;
    * LMI 0.28, 0.29: max_input_len + max_output_len (defaults 1024 + 512, UG@0.28.0-dlc L86-88);
    * LMI 0.33+ (trt_llm_partition.py builds with BuildConfig, where max_output_len is no field and is dropped by
      parse_known_args: PART@0.35.0-dlc L22-23, L57-71): TensorRT-LLM's own deduction, max_position_embeddings
      times a linear rope factor (builder.py ``_init_max_seq_len``; 2048 without max_position_embeddings).
    """
    lengths = _lengths(spec)
    if lengths is None:
        return spec, []
    options = tuple((k, v) for k, v in spec.options if k != "lmi_lengths")
    spec = spec.replace(options=options)
    if spec.n_positions is not None:
        return spec, []
    if "max_seq_len" in lengths:
        n, why = lengths["max_seq_len"], "option.max_seq_len"
    elif consumer.is_lmi and consumer.layout == "lmi-pbtxt" and consumer.max_output_len_is_seq_len:
        n = lengths.get("max_output_len", _LMI_MAX_OUTPUT_LEN)
        why = (f"option.max_output_len{'' if 'max_output_len' in lengths else ' (default)'}, which {consumer.ref} maps "
               "to TensorRT-LLM's max_seq_len")
    elif consumer.is_lmi and consumer.layout == "lmi-pbtxt":
        i, o = lengths.get("max_input_len", _LMI_MAX_INPUT_LEN), lengths.get("max_output_len", _LMI_MAX_OUTPUT_LEN)
        n, why = i + o, f"option.max_input_len {i} + option.max_output_len {o}"
    else:
        dims = model_dims(config)
        mpe = dims["max_positions"] or 2048
        rope = config.get("rope_scaling") or {}
        factor = float(rope.get("factor", 1.0)) if dims["rope_scaling"] == "linear" else 1.0
        n = int(mpe * max(factor, 1.0))
        why = (f"no option.max_seq_len: {consumer.ref} lets TensorRT-LLM deduce it from max_position_embeddings"
               + (f" × rope factor {factor:g}" if factor > 1 else "")
               + (" (option.max_output_len is not a build setting there)" if "max_output_len" in lengths else ""))
    if n > LIMITS["n_positions"]:
        raise ValidationError(f"n_positions from {why}={n} is too large: at most {LIMITS['n_positions']}; write smaller "
                              "LMI lengths (option.max_seq_len).")
    return spec.replace(n_positions=n), [f"n_positions {n}: {why}"]


def _installed_tensorrt_llm() -> str | None:
    return installed_version("tensorrt_llm")


def check_build(spec: BuildSpec, config: Mapping[str, Any], consumer: TrtllmConsumer,
                sm: tuple[int, str] | None) -> None:
    """Refuse, before any work, what the consumer or TensorRT-LLM's builder would refuse, or Kiln cannot check."""
    if consumer.defect:
        same = [c.ref for c in CONSUMERS.values()
                if c.tensorrt_llm == consumer.tensorrt_llm and c.tensorrt == consumer.tensorrt and not c.defect]
        raise ValidationError(f"consumer {consumer.ref}: {consumer.defect}. Build for lmi-trtllm:0.33.0, or for "
                              f"{' / '.join(same) or 'another consumer'} (the same TensorRT-LLM {consumer.tensorrt_llm}).")
    version = consumer.tensorrt_llm or _installed_tensorrt_llm()
    if version is not None and version_tuple(version) < MIN_TENSORRT_LLM:
        raise ValidationError(
            f"consumer {consumer.ref} runs TensorRT-LLM {version}; Kiln builds for TensorRT-LLM 0.11 and later (its "
            "engine step passes trtllm-build --max_seq_len, which older releases lack, and their SmoothQuant attention "
            "has no rope scaling); choose a newer consumer release.")
    dims = model_dims(config)
    rope = dims["rope_scaling"]
    if rope is not None and rope not in CHECKED_ROPE_TYPES:
        why = " (and TensorRT-LLM's Llama path does not implement longrope)" if rope == "longrope" else ""
        raise ValidationError(
            f"the model's rope scaling {rope!r} is one Kiln's reference executor cannot check{why}, so Kiln does not "
            f"build TensorRT-LLM engines for it; supported: none, {', '.join(CHECKED_ROPE_TYPES)}.")
    q = spec.quant
    if sm is not None and 100 <= sm[0] < 120 and (q.smoothquant or q.int8_kv_cache):
        what = "SmoothQuant" if q.smoothquant else "INT8 KV cache"
        raise ValidationError(
            f"{what} on SM {sm[0]} ({sm[1]}): TensorRT-LLM's builder refuses INT8 and SmoothQuant on SM 100-119 "
            "(builder.py build(): \"… is not supported on SM>=100\"); build for another GPU (--instance-type), or "
            "drop --smoothquant / --int8-kv-cache.")


def attention_window(config: Mapping[str, Any], n_positions: int) -> int | None:
    """The sliding attention window a consumer must be told (Mistral), when the engine's sequence exceeds it.

    TensorRT-LLM's Llama config reads no sliding_window (models/llama/config.py ``from_hugging_face``): the
    window is a runtime KV-cache setting (max_attention_window), which Kiln's layouts write."""
    if config.get("architectures") != ["MistralForCausalLM"] and config.get("model_type") != "mistral":
        return None
    window = config.get("sliding_window")
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0 or window >= n_positions:
        return None
    return window


def build_defaults(spec: BuildSpec, config: Mapping[str, Any]) -> tuple[BuildSpec, list[str]]:
    """What the engine needs set so it serves the spec as asked (keyed: it changes what trtllm-build makes)."""
    notes: list[str] = []
    n = int(spec.n_positions or 0)
    if spec.quant.int8_kv_cache:
        # builder.py: "Paged Context FMHA is disabled because it doesn't work with int8 kv cache currently", so a
        # context is processed whole: max_num_tokens must hold the longest prompt.
        given = spec.option("max_num_tokens")
        tokens = int(given) if given else DEFAULT_MAX_NUM_TOKENS
        if tokens < n:
            spec = spec.replace(options=tuple(sorted({**dict(spec.options), "max_num_tokens": str(n)}.items())))
            notes.append(f"max_num_tokens {n} (was {tokens}): with INT8 KV cache TensorRT-LLM disables paged context "
                         "FMHA, so a prompt of n_positions tokens must fit in one step")
    window = attention_window(config, n)
    given = spec.option("attention_window")
    if given is not None and str(window) != given:
        raise ValidationError(f"option attention_window={given!r}: Kiln sets it from the model's config.json "
                              f"({window or 'no window below n_positions'}); do not pass it.")
    if window is not None:
        spec = spec.replace(options=tuple(sorted({**dict(spec.options), "attention_window": str(window)}.items())))
        notes.append(f"attention window {window}: the model slides its attention over {window} tokens; TensorRT-LLM "
                     "applies that at run time (max_attention_window), which the lmi and triton layouts write")
    return spec, notes
