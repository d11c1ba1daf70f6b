"""`torch-aoti`: torch.export (strict) + AOTInductor packages, CPU (tested here) and CUDA.

The one home of the torch-aoti backend:

``__init__``  the Target (light: metadata, toolchain, validation, build steps)
``_facts``    engine file names, format version, supported architectures (torch-free)
``worker``    ``python -m kiln.targets.torch_aoti.worker``: one build in its own process
``export``    the build half (torch + transformers): static-KV-cache wrapper, export, compile
``runtime``   the load half (torch only): :class:`~kiln.targets.torch_aoti.runtime.Engine`
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ...spec import BuildSpec
from ..base import PROVENANCE_CONFIG_FIELDS, BuildInputs, ResolvedSpec, Target, TargetOption
from ..hardware import cpu_class, cuda_class
from ._facts import ENGINE_FORMAT, ENGINE_FORMAT_VERSION, SUPPORTED_ARCHITECTURES

__all__ = ["TORCH_AOTI", "TorchAotiTarget"]


@dataclass(frozen=True)
class TorchAotiTarget(Target):
    def hardware(self, spec: BuildSpec) -> str | None:
        return cuda_class() if _device(spec) == "cuda" else cpu_class()

    def validate(self, spec: BuildSpec, config: Mapping[str, Any]) -> ResolvedSpec:
        resolved = super().validate(spec, config)
        if resolved.spec.option("device") == "cpu":  # the default: `-o device=cpu` and nothing key alike
            opts = tuple((k, v) for k, v in resolved.spec.options if k != "device")
            return ResolvedSpec(resolved.spec.replace(options=opts), resolved.notes)
        return resolved

    def worker_argv(self, res: BuildInputs, out_dir: Path, *, engine_only: bool = False) -> list[str]:
        spec = res.spec
        return [
            "-m", "kiln.targets.torch_aoti.worker",
            "--model-dir", str(res.model.path),
            "--out-dir", str(out_dir),
            "--batch-size", str(spec.batch_size),
            "--n-positions", str(spec.n_positions),
            "--dtype", str(spec.dtype),
            "--device", _device(spec),
        ] + (["--engine-only"] if engine_only else [])

    def weights_argv(self, res: BuildInputs, out_dir: Path, engine_dir: Path) -> list[str]:
        return ["-m", "kiln.targets.torch_aoti.worker", "--model-dir", str(res.model.path), "--out-dir", str(out_dir),
                "--weights-for", str(engine_dir)]

    def resources(self, res: BuildInputs, memory_bytes: int) -> dict[str, Any]:
        if _device(res.spec) == "cuda":
            return {"num_cpus": 1, "num_gpus": 1, "memory": memory_bytes}
        return super().resources(res, memory_bytes)

    def load_engine(self, directory: Path, device: str) -> Any:
        from .runtime import load_engine

        return load_engine(directory, device=device)


def _device(spec: BuildSpec) -> str:
    return spec.option("device", "cpu") or "cpu"


TORCH_AOTI = TorchAotiTarget(
    name="torch-aoti",
    aliases=("torch_aoti", "aoti"),
    description="torch.export + AOTInductor .pt2 engine with a static KV cache (CPU or CUDA)",
    # transformers is in the toolchain because its model code is what gets exported.
    packages={"torch": "torch", "transformers": "transformers"},
    # Kiln's export code shapes the engine as much as torch does: its format version is keyed.
    static_toolchain={ENGINE_FORMAT: str(ENGINE_FORMAT_VERSION)},
    dtypes=("fp32", "bf16", "fp16"),
    default_dtype="fp32",
    architectures=SUPPORTED_ARCHITECTURES,
    max_tp_degree=1,
    options=(TargetOption("device", "where the engine runs: cpu or cuda", choices=("cpu", "cuda")),),
    install_hint="pip install 'kiln-engines[torch]' (install torch first from the wheel for your platform)",
    loads_in_process=True,
    # Weights are not in the package (aot_inductor.package_constants_in_so=False, export.py): they are
    # loaded at run time, and an engine compiled for one model gives another model's eager tokens
    # exactly when that model has the same architecture (measured; tests/compile/test_finetune_reuse.py).
    weight_independent=True,
    # Read in transformers 5.24.0, models/{llama,mistral,mixtral}/modeling_*.py and utils/generic.py,
    # against the wrapper in export.py, which passes use_cache=True and its StaticCache explicitly:
    config_fields_without_compute={
        **PROVENANCE_CONFIG_FIELDS,
        "bos_token_id": "read by generation only; no modeling code of a supported architecture reads it",
        "eos_token_id": "read by generation only (Kiln's engine.json takes each model's own, from its artifact)",
        "pad_token_id": "becomes nn.Embedding's padding_idx, which changes gradients, never the forward lookup",
        "use_cache": "a default for the forward's use_cache argument (merge_with_config_defaults), which Kiln's "
                     "wrapper always passes",
    },
)
