"""`trtllm`: TensorRT-LLM checkpoint conversion (CPU) + `trtllm-build` engines (CUDA GPU)."""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import BuildSpec
from ._base import Target, TargetOption
from ._hardware import cuda_class


@dataclass(frozen=True)
class TrtllmTarget(Target):
    def hardware(self, spec: BuildSpec) -> str | None:
        return cuda_class()


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
    ),
    install_hint=(
        "TensorRT-LLM is served from NVIDIA's package index, not PyPI: on a CUDA machine run "
        "`pip install tensorrt_llm --extra-index-url https://pypi.nvidia.com`"
    ),
)
