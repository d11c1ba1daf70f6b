"""`torch-aoti`: torch.export (strict) + AOTInductor packages, CPU (tested here) and CUDA.

This module is the light half (metadata, toolchain, validation); the compile and the loader
live in :mod:`kiln.targets._aoti_engine`, imported only inside worker processes and engine
loaders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..spec import BuildSpec
from ._base import ResolvedSpec, Target, TargetOption
from ._hardware import cpu_class, cuda_class


@dataclass(frozen=True)
class TorchAotiTarget(Target):
    def hardware(self, spec: BuildSpec) -> str | None:
        return cuda_class() if spec.option("device", "cpu") == "cuda" else cpu_class()

    def validate(self, spec: BuildSpec, config: Mapping[str, Any]) -> ResolvedSpec:
        resolved = super().validate(spec, config)
        if resolved.spec.option("device") == "cpu":  # the default: `-o device=cpu` and nothing key alike
            opts = tuple((k, v) for k, v in resolved.spec.options if k != "device")
            return ResolvedSpec(resolved.spec.replace(options=opts), resolved.notes)
        return resolved

    def worker_argv(self, res: Any, out_dir: Path) -> list[str]:
        spec = res.spec
        return [
            "-m", "kiln.targets._aoti_worker",
            "--model-dir", str(res.model.path),
            "--out-dir", str(out_dir),
            "--batch-size", str(spec.batch_size),
            "--n-positions", str(spec.n_positions),
            "--dtype", str(spec.dtype),
            "--device", spec.option("device", "cpu") or "cpu",
        ]


TORCH_AOTI = TorchAotiTarget(
    name="torch-aoti",
    description="torch.export + AOTInductor .pt2 engine with a static KV cache (CPU or CUDA)",
    # transformers is in the toolchain because its model code is what gets exported.
    packages={"torch": "torch", "transformers": "transformers"},
    dtypes=("fp32", "bf16", "fp16"),
    default_dtype="fp32",
    architectures=("LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM"),
    max_tp_degree=1,
    options=(TargetOption("device", "where the engine runs: cpu or cuda", choices=("cpu", "cuda")),),
    install_hint="pip install 'kiln[torch]' (install torch first from the wheel for your platform)",
)
