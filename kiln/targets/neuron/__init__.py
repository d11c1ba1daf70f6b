"""`neuron`: transformers-neuronx compiled graphs (NEFF) for Inferentia2 / Trainium.

The one home of the Neuron backend:

``__init__``  the Target (light: validation against instance types, LMI facts, build step)
``worker``    ``python -m kiln.targets.neuron.worker``: transformers-neuronx compile (needs the SDK)
``assemble``  ``python -m kiln.targets.neuron.assemble``: the weights step (engine stage + model files, no SDK)
``layouts``   ``lmi`` (LMI NeuronX model directory) and ``neuron-cache`` deployment layouts
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ...errors import ValidationError
from ...manifests import IndexEntry, Manifest
from ...spec import BuildSpec
from .._layouts import Layout
from .._plan import Step
from ..base import BuildInputs, LmiFacts, ResolvedSpec, Target, TargetOption
from ..instances import NEURON_CORES as INSTANCE_CORES
from ..instances import normalize_instance_type
from ._facts import MODEL_CLASSES
from .layouts import LAYOUTS, plan_neuron_layout

__all__ = ["NEURON", "NeuronTarget"]


@dataclass(frozen=True)
class NeuronTarget(Target):
    def hardware(self, spec: BuildSpec) -> str | None:
        instance = spec.option("instance_type")
        if not instance:
            return None
        family = normalize_instance_type(instance).split(".")[0]
        return "neuron-" + ("trn1" if family.startswith("trn1") else family)

    def validate(self, spec: BuildSpec, config: Mapping[str, Any]) -> ResolvedSpec:
        resolved = super().validate(spec, config)
        instance = spec.option("instance_type")
        if instance:
            name = normalize_instance_type(instance)
            cores = INSTANCE_CORES.get(name)
            if cores is None:
                raise ValidationError(
                    f"instance type {instance!r} is not a known Inferentia2/Trainium instance; use "
                    f"one of {', '.join('ml.' + k for k in INSTANCE_CORES)}."
                )
            if spec.tp_degree > cores:
                raise ValidationError(
                    f"tp_degree={spec.tp_degree} exceeds the {cores} NeuronCores of {instance}; use "
                    f"--tp-degree {cores} or less, or a larger instance."
                )
        cle = spec.option("context_length_estimate")
        if cle:
            try:
                buckets = [int(x) for x in cle.split(",")]
            except ValueError:
                buckets = []
            n = resolved.spec.n_positions or 0
            if not buckets or any(b <= 0 or b > n for b in buckets):
                raise ValidationError(
                    f"context_length_estimate={cle!r} must be comma-separated positive integers no larger "
                    f"than n_positions={n}, e.g. {min(n, 512)},{n}."
                )
        return resolved

    def _check_tp(self, tp: int, dims: Mapping[str, Any]) -> None:
        """transformers-neuronx pads attention heads up to a multiple of tp_degree (how JumpStart
        runs Llama-2-7B's 32 heads at tp 12), so for multi-head attention any tp that fits the
        instance works. With grouped-query attention, the KV heads must shard evenly over the
        ranks or replicate evenly across them."""
        heads, kv = dims["heads"], dims["kv_heads"]
        if tp == 1 or heads is None or not kv or kv == heads:
            return
        if (kv % tp if tp <= kv else tp % kv) != 0:
            valid = sorted({d for d in range(1, kv + 1) if kv % d == 0} | {kv * m for m in range(1, 5)})
            raise ValidationError(
                f"tp_degree={tp} does not fit the model's {kv} KV heads ({heads} attention heads, grouped-query "
                f"attention): with gqa_strategy shard-over-heads each rank needs whole KV heads; use tp_degree "
                f"in {', '.join(map(str, valid))}."
            )

    def weights_argv(self, res: BuildInputs, out_dir: Path, engine_dir: Path) -> list[str]:
        return ["-m", "kiln.targets.neuron.assemble", "--engine-dir", str(engine_dir), "--model-dir",
                str(res.model.path), "--out-dir", str(out_dir)]

    def build_steps(self, res: BuildInputs, *, calib_file: Path | None = None) -> tuple[Step, ...]:
        engine, weights = super().build_steps(res, calib_file=calib_file)
        return engine, dataclasses.replace(weights, needs_toolchain=False)  # file copies: no Neuron SDK

    def worker_argv(self, res: BuildInputs, out_dir: Path, *, engine_only: bool = False) -> list[str]:
        spec = res.spec
        argv = [
            "-m", "kiln.targets.neuron.worker",
            "--model-dir", str(res.model.path), "--out-dir", str(out_dir),
            "--batch-size", str(spec.batch_size), "--n-positions", str(spec.n_positions),
            "--tp-degree", str(spec.tp_degree), "--amp", AMP[spec.dtype],
        ]
        for option, flag in (("context_length_estimate", "--context-length-estimate"), ("gqa_strategy", "--gqa"),
                             ("optlevel", "--optlevel")):
            if spec.option(option):
                argv += [flag, str(spec.option(option))]
        return argv + (["--engine-only"] if engine_only else [])

    def resources(self, res: BuildInputs, memory_bytes: int) -> dict[str, Any]:
        return {"num_cpus": 1, "resources": {"neuron_cores": res.spec.tp_degree}, "memory": memory_bytes}

    def plan_consumer_layout(self, layout: str, entry: IndexEntry, manifest: Manifest,
                             read_blob: Callable[[str], bytes], container: str) -> Layout:
        return plan_neuron_layout(layout, entry, manifest, read_blob, container)


# Kiln dtype -> transformers-neuronx `amp`.
AMP = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}


NEURON = NeuronTarget(
    name="neuron",
    aliases=("neuronx", "tnx", "inferentia"),
    description="transformers-neuronx compiled graphs (NEFF) for Inferentia2 / Trainium",
    packages={"neuronx-cc": "neuronx-cc", "transformers-neuronx": "transformers-neuronx"},
    dtypes=("fp16", "bf16", "fp32"),
    default_dtype="fp16",
    architectures=tuple(MODEL_CLASSES),
    unsupported={"MixtralForCausalLM": "transformers-neuronx has no Mixtral (MoE) model class"},
    options=(
        TargetOption("instance_type", "Inferentia2/Trainium instance type (chooses the hardware class)", in_key=False),
        TargetOption("gqa_strategy", "GQA sharding strategy", choices=("shard-over-heads", "shard-over-batch", "replicated-heads", "all-gather-heads")),
        TargetOption("context_length_estimate", "context encoding buckets, e.g. 1024 or 512,1024"),
        TargetOption("optlevel", "neuronx-cc optimisation level", choices=("1", "2", "3")),
    ),
    # LMI NeuronX (djl-serving 0.28/0.29: djl_python.transformers_neuronx, properties_manager/tnx_properties.py).
    lmi=LmiFacts(
        entry_point_words=("transformers_neuronx", "neuron"),
        rolling_batch_names=("tnx",),
        serving_features=("tnx",),
        default_max_rolling_batch=32,
        default_n_positions=128,
        properties={
            "option.group_query_attention": "option.gqa_strategy",
            "option.context_length_estimate": "option.context_length_estimate",
            "option.neuron_optimize_level": "option.optlevel",
            "option.instance_type": "option.instance_type",
        },
    ),
    layouts=LAYOUTS,
    # transformers-neuronx compiles graphs from the config and the tensors' shapes; the weights are
    # loaded into them at load time (optimum-neuron keys its compile cache on the architecture, not the
    # weights, for that reason). Only the provenance fields of config.json are left out of the
    # architecture digest: which other fields its graphs read has not been checked field by field.
    weight_independent=True,
    install_hint=(
        "Neuron builds run where the Neuron SDK is installed: an Inferentia2/Trainium instance, or any "
        "x86_64 host for compile-only builds. The SDK is served from AWS's package index, not PyPI: "
        "`pip install neuronx-cc transformers-neuronx --extra-index-url https://pip.repos.neuron.amazonaws.com`. "
        "Build there into a shared remote (--push), then `kiln ensure` finds the engine here"
    ),
)
