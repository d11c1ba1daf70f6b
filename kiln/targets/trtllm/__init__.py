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
``consumers``      consumer profiles (LMI TensorRT-LLM releases, Triton tensorrtllm_backend tags, the runtime)
``rules``          what the consumer or trtllm-build would refuse or decide, checked before any work
``layouts``        ``lmi`` and ``triton`` deployment layouts, per consumer release
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
from ..hardware import cuda_class, cuda_sm
from ..instances import instance_gpu
from . import stages as _stages
from .config import SUPPORTED_ARCHITECTURES
from .consumers import CONSUMERS, DEFAULT_CONSUMER, TrtllmConsumer, detect_lmi_consumer, get_consumer, lmi_consumers
from .layouts import LAYOUTS, plan_trtllm_layout
from .rules import build_defaults, check_build, lmi_n_positions

__all__ = ["TRTLLM", "TrtllmTarget", "CALIB_DEFAULTS"]

CALIB_DEFAULTS = {"calib_set": "default", "calib_samples": "512", "calib_seq_len": "512"}


@dataclass(frozen=True)
class TrtllmTarget(Target):
    def hardware(self, spec: BuildSpec) -> str | None:
        return cuda_class()

    def consumer(self, spec: BuildSpec) -> TrtllmConsumer:
        return get_consumer(spec.option("consumer") or DEFAULT_CONSUMER)

    def detect_consumer(self) -> tuple[str, str] | None:
        return detect_lmi_consumer()

    def detect_toolchain(self, spec: BuildSpec) -> dict[str, str | None]:
        """A consumer's image ships its own TensorRT-LLM and TensorRT: that is the engine's toolchain."""
        return {**super().detect_toolchain(spec), **self.consumer(spec).toolchain}

    def installed_toolchain(self, spec: BuildSpec) -> dict[str, str | None]:
        return super().detect_toolchain(spec)

    def toolchain_source(self, spec: BuildSpec, component: str) -> str:
        consumer = self.consumer(spec)
        return f"{consumer.ref} image" if component in consumer.toolchain else "detected"

    def validate(self, spec: BuildSpec, config: Mapping[str, Any]) -> ResolvedSpec:
        spec, notes = self._resolve_consumer(spec)
        consumer = self.consumer(spec)
        spec, length_notes = lmi_n_positions(spec, consumer, config)
        notes += length_notes
        resolved = super().validate(spec, config)
        notes += resolved.notes
        spec = resolved.spec
        check_build(spec, config, consumer, self._sm(spec))
        spec, build_notes = build_defaults(spec, config)
        notes += build_notes
        return ResolvedSpec(*self._calibration_defaults(spec, notes))

    def _resolve_consumer(self, spec: BuildSpec) -> tuple[BuildSpec, list[str]]:
        notes: list[str] = []
        if spec.option("consumer") is None:
            detected = self.detect_consumer()
            if detected is not None:
                ref = detected[0]
                notes.append(f"consumer: {ref}, detected from {detected[1]}")
            else:
                ref = DEFAULT_CONSUMER
                notes.append(f"consumer: {DEFAULT_CONSUMER} (the installed runtime; pass --consumer lmi-trtllm:RELEASE or "
                             "triton-trtllm:RELEASE for an engine that container loads)")
            spec = spec.replace(options=tuple(sorted({**dict(spec.options), "consumer": ref}.items())))
        consumer = self.consumer(spec)  # an unknown one fails here, naming the choices
        if consumer.ref != spec.option("consumer"):  # canonical spelling in the key
            spec = spec.replace(options=tuple(sorted({**dict(spec.options), "consumer": consumer.ref}.items())))
        return spec, notes

    def _sm(self, spec: BuildSpec) -> tuple[int, str] | None:
        """The GPU's SM the engine is for, and where that was read: --instance-type, else this machine's GPU."""
        instance = spec.option("instance_type")
        if instance:
            gpu = instance_gpu(instance)
            if gpu is not None:
                return gpu[1], f"{instance} ({gpu[0]})"
        sm = cuda_sm(self.hardware(spec) or "")
        return (sm, f"this machine's GPU ({self.hardware(spec)})") if sm is not None else None

    def _calibration_defaults(self, spec: BuildSpec, notes: list[str]) -> tuple[BuildSpec, tuple[str, ...]]:
        opts = dict(spec.options)
        # Counts are keyed in canonical form: "0512" and "512" build the same thing.
        for k in ("calib_samples", "calib_seq_len", "max_num_tokens"):
            if k in opts:
                opts[k] = str(parse_positive_int(opts[k], f"target option {k}"))
        given = {k for k in CALIB_DEFAULTS if k in opts}
        if not (spec.quant.smoothquant or spec.quant.int8_kv_cache):
            if given:
                raise ValidationError(
                    f"{', '.join(sorted(given))} only apply to calibrated builds (SmoothQuant, INT8 KV cache); "
                    "add --smoothquant ALPHA or drop them."
                )
            return spec.replace(options=tuple(sorted(opts.items()))), tuple(notes)
        cs = opts.get("calib_set")
        if cs is not None and cs != "default" and not re.fullmatch(r"sha256:[0-9a-f]{64}", cs):
            raise ValidationError(f"calib_set={cs!r} must be 'default' or the sha256 of a --calib-file.")
        for k, v in CALIB_DEFAULTS.items():
            if k not in opts:
                opts[k] = v
                notes.append(f"{k}: default {v}")
        return spec.replace(options=tuple(sorted(opts.items()))), tuple(notes)

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
        TargetOption("instance_type", "SageMaker instance type (validation: its GPU's SM)", in_key=False),
        TargetOption("consumer", "who loads the engine (its image's TensorRT-LLM and TensorRT build it, and its "
                     "layout is written): " + ", ".join(CONSUMERS), choices=tuple(CONSUMERS)),
        TargetOption("max_num_tokens", "trtllm-build --max_num_tokens"),
        TargetOption("attention_window", "the model's sliding attention window, when the engine's sequence exceeds "
                     "it (set from config.json): a runtime setting the lmi and triton layouts write"),
        TargetOption("calib_set", "SmoothQuant calibration texts: 'default' or sha256:<digest of --calib-file>"),
        TargetOption("calib_samples", "SmoothQuant calibration samples (TensorRT-LLM default 512)"),
        TargetOption("calib_seq_len", "SmoothQuant calibration sequence length (TensorRT-LLM default 512)"),
        TargetOption("lmi_lengths", "LMI's max_input_len / max_output_len / max_seq_len as written (read from LMI "
                     "configuration; the consumer release decides n_positions from them, which is keyed)", in_key=False),
    ),
    consumers=tuple(CONSUMERS),
    static_toolchain={"kiln-trtllm-converter": _stages.CONVERTER_VERSION},
    # LMI's TensorRT-LLM service (djl-serving: LmiUtils / LmiConfigRecommender / trt_properties.py per release:
    # consumers.py).
    lmi=LmiFacts(
        entry_point_words=("tensorrt_llm", "trtllm"),
        rolling_batch_names=("trtllm",),
        serving_features=("trtllm",),
        default_max_rolling_batch=256,
        lengths_option="lmi_lengths",
        properties={"option.max_num_tokens": "option.max_num_tokens", "option.instance_type": "option.instance_type"},
        consumers=lmi_consumers(),
    ),
    layouts=LAYOUTS,
    install_hint=(
        "TensorRT-LLM is served from NVIDIA's package index, not PyPI: on a CUDA machine run "
        "`pip install tensorrt_llm --extra-index-url https://pypi.nvidia.com`"
    ),
)
