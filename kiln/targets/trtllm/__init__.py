"""`trtllm`: TensorRT-LLM checkpoint conversion (CPU) + `trtllm-build` engines (CUDA GPU).

The one home of the TensorRT-LLM backend:

``__init__``       the Target (light: validation, LMI facts, stage plan, layouts)
``stages``         the three build steps (calibration, checkpoint, engine) and their keys
``calibrate``      SmoothQuant activation statistics (torch + transformers, in a worker)
``smoothquant``    the SmoothQuant math as TensorRT-LLM defines it
``checkpoint``     HF → TensorRT-LLM checkpoint writer; ``config`` the model shape and config.json
``reference``      a plain-torch executor of a written checkpoint (verification, tests)
``worker``         ``python -m kiln.targets.trtllm.worker calibrate|convert``
``engine_worker``  ``python -m kiln.targets.trtllm.engine_worker``: trtllm-build (needs a GPU)
``layouts``        ``lmi`` and ``triton`` deployment layouts
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ...errors import KilnError, ValidationError
from ...manifests import IndexEntry, Manifest
from ...spec import BuildSpec, parse_positive_int
from .._layouts import Layout
from .._plan import Stage, Step
from ..base import BuildInputs, LmiFacts, ResolvedSpec, StoredStep, Target, TargetOption
from ..hardware import cuda_class
from . import stages as _stages
from .config import SUPPORTED_ARCHITECTURES
from .layouts import LAYOUTS, plan_trtllm_layout

__all__ = ["TRTLLM", "TrtllmTarget", "CALIB_DEFAULTS"]

CALIB_DEFAULTS = {"calib_set": "default", "calib_samples": "512", "calib_seq_len": "512"}


@dataclass(frozen=True)
class TrtllmTarget(Target):
    def hardware(self, spec: BuildSpec) -> str | None:
        return cuda_class()

    def validate(self, spec: BuildSpec, config: Mapping[str, Any]) -> ResolvedSpec:
        resolved = super().validate(spec, config)
        opts = dict(resolved.spec.options)
        # Counts are keyed in canonical form: "0512" and "512" build the same thing.
        for k in ("calib_samples", "calib_seq_len", "max_num_tokens"):
            if k in opts:
                opts[k] = str(parse_positive_int(opts[k], f"target option {k}"))
        resolved = ResolvedSpec(resolved.spec.replace(options=tuple(sorted(opts.items()))), resolved.notes)
        given = {k for k in CALIB_DEFAULTS if k in opts}
        if not (spec.quant.smoothquant or spec.quant.int8_kv_cache):
            if given:
                raise ValidationError(
                    f"{', '.join(sorted(given))} only apply to calibrated builds (SmoothQuant, INT8 KV cache); "
                    "add --smoothquant ALPHA or drop them."
                )
            return resolved
        cs = opts.get("calib_set")
        if cs is not None and cs != "default" and not re.fullmatch(r"sha256:[0-9a-f]{64}", cs):
            raise ValidationError(f"calib_set={cs!r} must be 'default' or the sha256 of a --calib-file.")
        notes = list(resolved.notes)
        for k, v in CALIB_DEFAULTS.items():
            if k not in opts:
                opts[k] = v
                notes.append(f"{k}: default {v}")
        return ResolvedSpec(resolved.spec.replace(options=tuple(sorted(opts.items()))), tuple(notes))

    def stage_plan(self, res: BuildInputs) -> tuple[Stage, ...]:
        return _stages.stage_plan(res)

    def build_steps(self, res: BuildInputs, *, calib_file: Path | None = None) -> tuple[Step, ...]:
        return _stages.build_steps(res, calib_file=calib_file)

    def step_invocation(self, res: BuildInputs, step: str) -> dict[str, Any] | None:
        """The engine step's trtllm-build call (CHECKPOINT and OUT stand for the stage directories); it runs with
        the build host's environment (no variable of it is set by Kiln)."""
        if step != "engine":
            return None
        from .engine_worker import trtllm_build_argv  # light: the worker module imports no vendor package

        spec = res.spec
        return {"argv": trtllm_build_argv("CHECKPOINT", "OUT", spec.batch_size, int(spec.n_positions or 0),
                                          spec.option("max_num_tokens")), "env": {}}

    def missing_toolchain_error(self, res: BuildInputs, missing: Sequence[str], stored: Sequence[StoredStep],
                                where: str) -> KilnError:
        if stored:  # the conversion stages are in the store: say how to finish on a GPU machine
            return _stages.incomplete_error(res, missing, stored, where)
        return super().missing_toolchain_error(res, missing, stored, where)

    def resources(self, res: BuildInputs, memory_bytes: int) -> dict[str, Any]:
        if all(v is not None for v in res.toolchain.values()):
            return {"num_cpus": 1, "num_gpus": res.spec.tp_degree, "memory": memory_bytes}
        return super().resources(res, memory_bytes)  # the conversion stages: CPU and memory only

    def plan_consumer_layout(self, layout: str, entry: IndexEntry, manifest: Manifest,
                             read_blob: Callable[[str], bytes], container: str) -> Layout:
        return plan_trtllm_layout(layout, entry, manifest, container)


TRTLLM = TrtllmTarget(
    name="trtllm",
    aliases=("tensorrt-llm", "tensorrt_llm", "trt-llm"),
    description="TensorRT-LLM engines (rank{N}.engine) built with trtllm-build; SmoothQuant W8A8",
    packages={"tensorrt_llm": "tensorrt_llm", "tensorrt": "tensorrt"},
    dtypes=("fp16", "bf16", "fp32"),
    default_dtype="fp16",
    architectures=SUPPORTED_ARCHITECTURES,
    supports_smoothquant=True,
    options=(
        TargetOption("instance_type", "SageMaker instance type (validation only)", in_key=False),
        TargetOption("max_num_tokens", "trtllm-build --max_num_tokens"),
        TargetOption("calib_set", "SmoothQuant calibration texts: 'default' or sha256:<digest of --calib-file>"),
        TargetOption("calib_samples", "SmoothQuant calibration samples (TensorRT-LLM default 512)"),
        TargetOption("calib_seq_len", "SmoothQuant calibration sequence length (TensorRT-LLM default 512)"),
    ),
    static_toolchain={"kiln-trtllm-converter": _stages.CONVERTER_VERSION},
    # LMI's TensorRT-LLM service (djl-serving: djl_python.tensorrt_llm, properties_manager/trt_properties.py).
    lmi=LmiFacts(
        entry_point_words=("tensorrt_llm", "trtllm"),
        rolling_batch_names=("trtllm",),
        serving_features=("trtllm",),
        default_max_rolling_batch=256,
        n_positions_from_seq_len=True,
        default_max_input_len=1024,
        default_max_output_len=512,
        properties={"option.max_num_tokens": "option.max_num_tokens", "option.instance_type": "option.instance_type"},
    ),
    layouts=LAYOUTS,
    install_hint=(
        "TensorRT-LLM is served from NVIDIA's package index, not PyPI: on a CUDA machine run "
        "`pip install tensorrt_llm --extra-index-url https://pypi.nvidia.com`"
    ),
)
