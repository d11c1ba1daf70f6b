"""`trtllm`: TensorRT-LLM checkpoint conversion (CPU) + `trtllm-build` engines (CUDA GPU)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ValidationError
from ..spec import BuildSpec
from ._base import ResolvedSpec, Target, TargetOption
from ._hardware import cuda_class


CONVERTER_VERSION = "1"
CALIB_DEFAULTS = {"calib_set": "default", "calib_samples": "512", "calib_seq_len": "512"}


@dataclass(frozen=True)
class TrtllmTarget(Target):
    def hardware(self, spec: BuildSpec) -> str | None:
        return cuda_class()

    def validate(self, spec: BuildSpec, config: Mapping[str, Any]) -> ResolvedSpec:
        resolved = super().validate(spec, config)
        opts = dict(resolved.spec.options)
        given = {k for k in CALIB_DEFAULTS if k in opts}
        if not (spec.quant.smoothquant or spec.quant.int8_kv_cache):
            if given:
                raise ValidationError(
                    f"{', '.join(sorted(given))} only apply to calibrated builds (SmoothQuant, INT8 KV cache); "
                    "add --smoothquant ALPHA or drop them."
                )
            return resolved
        for k in ("calib_samples", "calib_seq_len"):
            if k in opts and not (opts[k].isdigit() and int(opts[k]) > 0):
                raise ValidationError(f"target option {k}={opts[k]!r} must be a positive integer.")
        cs = opts.get("calib_set")
        if cs is not None and cs != "default" and not re.fullmatch(r"sha256:[0-9a-f]{64}", cs):
            raise ValidationError(f"calib_set={cs!r} must be 'default' or the sha256 of a --calib-file.")
        notes = list(resolved.notes)
        for k, v in CALIB_DEFAULTS.items():
            if k not in opts:
                opts[k] = v
                notes.append(f"{k}: default {v}")
        return ResolvedSpec(resolved.spec.replace(options=tuple(sorted(opts.items()))), tuple(notes))

    def worker_argv(self, res: Any, out_dir: Any) -> list[str]:  # engines: see kiln.compile._trtllm_build
        raise NotImplementedError


TRTLLM = TrtllmTarget(
    name="trtllm",
    description="TensorRT-LLM engines (rank{N}.engine) built with trtllm-build; SmoothQuant W8A8",
    packages={"tensorrt_llm": "tensorrt_llm", "tensorrt": "tensorrt"},
    dtypes=("fp16", "bf16", "fp32"),
    default_dtype="fp16",
    architectures=("LlamaForCausalLM", "MistralForCausalLM"),
    supports_smoothquant=True,
    options=(
        TargetOption("instance_type", "SageMaker instance type (validation only)", in_key=False),
        TargetOption("max_num_tokens", "trtllm-build --max_num_tokens"),
        TargetOption("calib_set", "SmoothQuant calibration texts: 'default' or sha256:<digest of --calib-file>"),
        TargetOption("calib_samples", "SmoothQuant calibration samples (TensorRT-LLM default 512)"),
        TargetOption("calib_seq_len", "SmoothQuant calibration sequence length (TensorRT-LLM default 512)"),
    ),
    # The checkpoint converter and SmoothQuant math are Kiln's own code: bump on any change.
    static_toolchain={"kiln-trtllm-converter": CONVERTER_VERSION},
    install_hint=(
        "TensorRT-LLM is served from NVIDIA's package index, not PyPI: on a CUDA machine run "
        "`pip install tensorrt_llm --extra-index-url https://pypi.nvidia.com`"
    ),
)
