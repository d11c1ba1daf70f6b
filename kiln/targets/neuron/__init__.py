"""`neuron`: transformers-neuronx compiled graphs (NEFF) for Inferentia2 / Trainium.

The one home of the Neuron backend:

``__init__``  the Target (light: validation against instance types, LMI facts, build step)
``worker``    ``python -m kiln.targets.neuron.worker``: transformers-neuronx compile (needs the SDK)
``assemble``  ``python -m kiln.targets.neuron.assemble``: the weights step (engine stage + model files, no SDK)
``consumers``    consumer profiles (LMI NeuronX releases, the plain library) as data, and their rules
``smart_defaults`` LMI NeuronX 0.30+ start-up defaults (tp, max_rolling_batch_size), as its Java computes them
``lmi_options``  the consumer's NEURON_* environment and the loader / compiler-flag properties, per release
``layouts``   ``lmi`` (LMI NeuronX model directory) and ``neuron-cache`` deployment layouts
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ...errors import ValidationError
from ...manifests import IndexEntry, Manifest
from ...spec import BuildSpec
from .._layouts import Layout
from .._plan import ENGINE_STAGE, Step
from ..base import BuildInputs, LmiFacts, ResolvedSpec, Target, TargetOption, model_dims
from ..instances import NEURON_CORES as INSTANCE_CORES
from ..instances import normalize_instance_type
from ._facts import MODEL_CLASSES, UNSUPPORTED
from .consumers import CONSUMERS, DEFAULT_CONSUMER, NeuronConsumer, detect_lmi_consumer, get_consumer
from .layouts import LAYOUTS, plan_neuron_layout
from .lmi_options import apply_environment, normalise_loader_options

__all__ = ["NEURON", "NeuronTarget"]

SAGEMAKER_MODEL_DIR = "/opt/ml/model"  # where SageMaker puts the model data an LMI container serves


@dataclass(frozen=True)
class NeuronTarget(Target):
    def hardware(self, spec: BuildSpec) -> str | None:
        instance = spec.option("instance_type")
        if not instance:
            return None
        family = normalize_instance_type(instance).split(".")[0]
        return "neuron-" + ("trn1" if family.startswith("trn1") else family)

    def consumer(self, spec: BuildSpec) -> NeuronConsumer:
        return get_consumer(spec.option("consumer") or DEFAULT_CONSUMER)

    def detect_consumer(self) -> tuple[str, str] | None:
        return detect_lmi_consumer()

    def detect_toolchain(self, spec: BuildSpec) -> dict[str, str | None]:
        """An LMI consumer's image ships its own SDK: that is the toolchain (no pins needed to look up)."""
        found = super().detect_toolchain(spec)
        consumer = self.consumer(spec)
        unpinned = {k: v for k, v in consumer.sdk_defaults.items() if found.get(k) is None}  # installed wins
        return {**found, **unpinned, **consumer.toolchain}

    def installed_toolchain(self, spec: BuildSpec) -> dict[str, str | None]:
        return super().detect_toolchain(spec)

    def toolchain_source(self, spec: BuildSpec, component: str) -> str:
        consumer = self.consumer(spec)
        if component in consumer.toolchain:
            return f"{consumer.ref} image"
        if component in consumer.sdk_defaults and super().detect_toolchain(spec).get(component) is None:
            return f"{consumer.ref}'s SDK release (the image does not pin it; installed, it wins)"
        return "detected"

    def validate(self, spec: BuildSpec, config: Mapping[str, Any]) -> ResolvedSpec:
        notes: list[str] = []
        if spec.option("consumer") is None:
            detected = self.detect_consumer()
            if detected is not None:
                spec = spec.replace(options=tuple(sorted({**dict(spec.options), "consumer": detected[0]}.items())))
                notes.append(f"consumer: {detected[0]}, detected from {detected[1]}")
            else:
                notes.append(f"consumer: {DEFAULT_CONSUMER} (a plain user of the library; pass --consumer "
                             "lmi-neuronx:RELEASE for graphs an LMI NeuronX container loads)")
        consumer = self.consumer(spec)  # an unknown one fails first, naming the choices
        spec, env_notes = apply_environment(spec, consumer)
        notes += env_notes
        changes: dict[str, Any] = {}
        if consumer.is_lmi:
            if spec.n_positions is None:
                n = consumer.default_n_positions
                if n is None:  # 0.30+ smart default: min(max_position_embeddings, 4096)
                    mpe = config.get("max_position_embeddings")
                    if not isinstance(mpe, int) or isinstance(mpe, bool) or mpe <= 0:
                        # LmiUtils getDefaultNPositions reads only max_position_embeddings; without it the
                        # smart defaults are skipped and the handler's n_positions stays unset.
                        raise ValidationError(f"{consumer.ref} derives an absent option.n_positions from config.json's "
                                              "max_position_embeddings, which this model's config lacks; write "
                                              "option.n_positions (--n-positions).")
                    n = min(mpe, 4096)
                changes["n_positions"] = n
                notes.append(f"n_positions: {consumer.ref}'s default ({n})")
            options = dict(spec.options)
            unset = set((options.pop("lmi_unset", None) or "").split(",")) - {""}
            if unset - {"tp_degree", "batch_size", "tp_degree:env"}:
                raise ValidationError(f"option lmi_unset={','.join(sorted(unset))!r}: Kiln sets it from LMI "
                                      "configuration (tp_degree, batch_size); do not pass it.")
            if "tp_degree:env" in unset:
                unset.discard("tp_degree:env")
                if consumer.absent_tp == "heuristic":
                    # setHeuristicDefaults fills option.tensor_parallel_degree before setTensorParallelDegree
                    # would read the variable (LmiConfigRecommender.configure, 0.30.0-dlc on).
                    unset.add("tp_degree")
                    notes.append(f"TENSOR_PARALLEL_DEGREE not read: {consumer.ref} fills tensor_parallel_degree by "
                                 "its start-up heuristic first")
            # LmiConfigRecommender picks the rolling batch from the written max_rolling_batch_size ("1" when
            # absent) before it fills the defaults.
            rolling = options["rolling_batch"] = consumer.rolling_batch(
                spec.option("rolling_batch"), 1 if "batch_size" in unset else spec.batch_size)
            if unset:
                instance = spec.option("instance_type")
                tp, batch = consumer.absent_defaults(
                    unset, config=config, n_positions=int(changes.get("n_positions", spec.n_positions) or 0),
                    cores=INSTANCE_CORES.get(normalize_instance_type(instance)) if instance else None,
                    quantized=not spec.quant.is_none, tp_degree=spec.tp_degree, batch_size=spec.batch_size,
                    rolling=rolling)
                if "tp_degree" in unset:
                    changes["tp_degree"] = tp
                    notes.append(f"tp_degree {tp}: {consumer.ref}'s default for an absent option.tensor_parallel_degree")
                if "batch_size" in unset and rolling != "disable":
                    changes["batch_size"] = batch
                    notes.append(f"batch_size {batch}: {consumer.ref}'s default for an absent "
                                 "option.max_rolling_batch_size")
            static = options.pop("static_batch_size", None)  # LMI's option.batch_size (only from LMI configuration)
            if static is not None:
                static_n = int(static) if static.isdigit() else 0
                if static_n < 1:
                    raise ValidationError(f"option.batch_size={static!r} must be a positive integer.")
                if rolling != "disable" and static_n > 1:
                    raise ValidationError(f"option.batch_size={static} with rolling batch on: {consumer.ref} refuses it "
                                          "(tnx_properties.py validate_batch_size: dynamic batching and rolling batch "
                                          "cannot be enabled at the same time); drop option.batch_size.")
                if rolling == "disable" and static_n != spec.batch_size:
                    changes["batch_size"] = static_n
                    notes.append(f"batch_size {static_n}: rolling batch is disabled, so {consumer.ref} compiles "
                                 "option.batch_size (max_rolling_batch_size is not read)")
            notes += normalise_loader_options(options, consumer)
            changes["options"] = tuple(sorted(options.items()))
        else:
            if spec.option("static_batch_size") is not None or spec.option("lmi_unset") is not None:
                changes["options"] = tuple((k, v) for k, v in spec.options if k not in ("static_batch_size", "lmi_unset"))
            for name in ("rolling_batch", "rolling_batch_strategy", "model_loader", "mixed_precision_accumulation",
                         "saturate_infinity"):
                if spec.option(name) is not None:
                    raise ValidationError(f"option {name} is LMI's; the {consumer.ref} consumer has no rolling batch "
                                          "(pass --consumer lmi-neuronx:RELEASE, or drop it).")
        spec = spec.replace(**changes) if changes else spec
        if spec.option("consumer") is None:
            spec = spec.replace(options=tuple(sorted({**dict(spec.options), "consumer": DEFAULT_CONSUMER}.items())))
        resolved = super().validate(spec, config)
        gqa = self.gqa_note(resolved.spec, config)
        resolved = ResolvedSpec(resolved.spec, tuple(notes) + resolved.notes + ((gqa,) if gqa else ()))
        self.invocation(resolved.spec, config)  # a configuration the consumer would not load fails here
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

    def invocation(self, spec: BuildSpec, config: Mapping[str, Any]) -> dict[str, Any]:
        """The exact transformers-neuronx call the consumer makes for ``spec`` (``kiln build --dry-run`` shows it)."""
        dims = model_dims(config)
        arch = str(dims["architecture"])
        if arch not in MODEL_CLASSES:
            raise ValidationError(f"the model's config.json names no architecture transformers-neuronx has a class for "
                                  f"({arch}); a Neuron build needs a Hugging Face config.json naming one of "
                                  f"{', '.join(MODEL_CLASSES)}.")
        cle = spec.option("context_length_estimate")
        return self.consumer(spec).invocation(
            architecture=arch, model_type=str(config.get("model_type") or ""), batch_size=spec.batch_size,
            tp_degree=spec.tp_degree, n_positions=int(spec.n_positions or 0), dtype=str(spec.dtype),
            rolling_batch=spec.option("rolling_batch") or "disable", strategy=spec.option("rolling_batch_strategy"),
            context_length_estimate=[int(x) for x in cle.split(",")] if cle else None,
            gqa=spec.option("gqa_strategy"), optlevel=spec.option("optlevel"), class_path=MODEL_CLASSES[arch],
            neuron_cc_flags=spec.option("neuron_cc_flags"), model_loader=spec.option("model_loader"),
            mixed_precision_accumulation=spec.option("mixed_precision_accumulation") is not None,
            saturate_infinity=spec.option("saturate_infinity") is not None)

    def step_invocation(self, res: BuildInputs, step: str) -> dict[str, Any] | None:
        return self.invocation(res.spec, res.model.config()) if step == ENGINE_STAGE else None

    def _check_tp(self, tp: int, dims: Mapping[str, Any]) -> None:
        """transformers-neuronx pads attention heads up to a multiple of tp_degree (how JumpStart runs
        Llama-2-7B's 32 heads at tp 12), and where grouped-query KV heads do not shard evenly it falls back
        to another strategy with a warning, never an error (v0.9 → v0.13 ``gqa.py``/``base.py``: shard-over-batch
        or all-gather-heads → shard-over-heads when their rule fails; shard-over-heads → replicated-heads when
        n_kv_heads % tp != 0). The consumer compiles the same fallback, so nothing is refused here;
        :meth:`gqa_note` says what it will do."""

    def gqa_note(self, spec: BuildSpec, config: Mapping[str, Any]) -> str | None:
        dims = model_dims(config)
        heads, kv, tp = dims["heads"], dims["kv_heads"], spec.tp_degree
        if tp == 1 or heads is None or not kv or kv == heads or kv % tp == 0:
            return None
        strategy = spec.option("gqa_strategy") or "shard-over-heads"
        return (f"tp_degree={tp} does not divide the model's {kv} KV heads: transformers-neuronx replaces "
                f"{strategy} by replicated-heads (with a warning), as the consumer's own load does")

    def weights_argv(self, res: BuildInputs, out_dir: Path, engine_dir: Path) -> list[str]:
        return ["-m", "kiln.targets.neuron.assemble", "--engine-dir", str(engine_dir), "--model-dir",
                str(res.model.path), "--out-dir", str(out_dir)]

    def build_steps(self, res: BuildInputs, *, calib_file: Path | None = None) -> tuple[Step, ...]:
        if not any(f.path.endswith(".safetensors") for f in res.model.files):
            # The artifact's model/ would hold no weights the runtime reads (and LMI 0.27+ loads .bin
            # checkpoints another way: save_pretrained_split, ML load path).
            raise ValidationError(f"model {res.model.ref} has no .safetensors weights: Neuron artifacts carry the "
                                  "safetensors files the runtime loads; convert the checkpoint (save_pretrained with "
                                  "safe_serialization=True) and build again.")
        engine, weights = super().build_steps(res, calib_file=calib_file)
        return engine, dataclasses.replace(weights, needs_toolchain=False)  # file copies: no Neuron SDK

    def worker_argv(self, res: BuildInputs, out_dir: Path, *, engine_only: bool = False) -> list[str]:
        invocation = self.invocation(res.spec, res.model.config())
        argv = ["-m", "kiln.targets.neuron.worker", "--model-dir", str(res.model.path), "--out-dir", str(out_dir),
                "--invocation", json.dumps(invocation, sort_keys=True)]
        return argv + (["--engine-only"] if engine_only else [])

    def resources(self, res: BuildInputs, memory_bytes: int) -> dict[str, Any]:
        return {"num_cpus": 1, "resources": {"neuron_cores": res.spec.tp_degree}, "memory": memory_bytes}

    def default_container_dir(self, layout: str, dest: str) -> str:
        """``lmi``: SageMaker mounts the model directory at /opt/ml/model, and LMI reads compiled_graph_path as a
        path in the container; inside an LMI NeuronX image DEST is that path already."""
        if layout != "lmi":
            return dest
        try:
            inside = self.detect_consumer() is not None
        except ValidationError:
            inside = True  # an LMI NeuronX image of a release Kiln has no profile for: still this container
        return dest if inside else SAGEMAKER_MODEL_DIR

    def plan_consumer_layout(self, layout: str, entry: IndexEntry, manifest: Manifest,
                             read_blob: Callable[[str], bytes], container: str) -> Layout:
        return plan_neuron_layout(layout, entry, manifest, read_blob, container)


# LMI NeuronX properties that shape the compiled graphs (djl-serving model_loader.py get_neuron_config /
# tnx_properties.py, 0.27.0 → 0.30.0-dlc) and that Kiln's consumer profiles do not build: each would turn
# a Kiln hit into "Could not find a matching NEFF" at start-up, so it is refused, never ignored.
_GRAPH_FIELD = "a NeuronConfig field of the loader"
_REFUSED_LMI_PROPERTIES = {
    **{f"option.{name}": _GRAPH_FIELD for name in (
        "fuse_qkv", "fuse_mlp", "fused_rmsnorm_qkv", "qkv_tiling", "weight_tiling", "attention_layout",
        "collectives_layout", "cache_layout", "all_reduce_dtype", "cast_logits_dtype", "on_device_embedding",
        "on_device_embedding_config", "on_device_generation", "shard_over_sequence", "sequence_parallel")},
    "option.speculative_draft_model": "enable_speculative_decoder adds the draft's graphs",
    "option.speculative_length": "enable_speculative_decoder(speculative_length)",
    "option.load_split_model": "the loader's split-model path builds the model another way",
    "option.load_in_8bit": "quantization (QuantizationConfig s8) in the NeuronConfig",
}

NEURON = NeuronTarget(
    name="neuron",
    aliases=("neuronx", "tnx", "inferentia"),
    description="transformers-neuronx compiled graphs (NEFF) for Inferentia2 / Trainium",
    # libneuronxla serialises the HLO and drives the compile cache (its version is in every cached module's path).
    packages={"neuronx-cc": "neuronx-cc", "transformers-neuronx": "transformers-neuronx", "torch-neuronx": "torch-neuronx",
              "libneuronxla": "libneuronxla"},
    dtypes=("fp16", "bf16", "fp32"),
    default_dtype="fp16",
    architectures=tuple(MODEL_CLASSES),
    unsupported=UNSUPPORTED,
    options=(
        TargetOption("instance_type", "Inferentia2/Trainium instance type (chooses the hardware class)", in_key=False),
        TargetOption("gqa_strategy", "GQA sharding strategy", choices=("shard-over-heads", "shard-over-batch", "replicated-heads", "all-gather-heads")),
        TargetOption("context_length_estimate", "context encoding buckets, e.g. 1024 or 512,1024"),
        TargetOption("optlevel", "neuronx-cc optimisation level", choices=("1", "2", "3")),
        TargetOption("consumer", "who loads the graphs (they must be compiled exactly as it would): "
                     + ", ".join(CONSUMERS), choices=tuple(CONSUMERS)),
        TargetOption("rolling_batch", "LMI's option.rolling_batch (tnx, disable, or vllm where the release hands "
                     "transformers-neuronx graphs to vLLM; auto and lmi-dist as the consumer resolves them)",
                     choices=("tnx", "disable", "vllm", "auto", "lmi-dist")),
        TargetOption("rolling_batch_strategy", "LMI's option.rolling_batch_strategy",
                     choices=("continuous_batching", "naive_rolling_batch")),
        TargetOption("model_loader", "LMI's option.model_loader: tnx (optimum, vllm and nxdi build other graphs)"),
        TargetOption("mixed_precision_accumulation", "LMI's option.enable_mixed_precision_accumulation: the handler "
                     "appends --enable-mixed-precision-accumulation to NEURON_CC_FLAGS whatever the value"),
        TargetOption("saturate_infinity", "LMI's option.enable_saturate_infinity: the handler appends "
                     "--enable-saturate-infinity to NEURON_CC_FLAGS whatever the value"),
        TargetOption("neuron_cc_flags", "NEURON_CC_FLAGS of the consumer's process (default: its image's; "
                     "the plain library: none): the compiler's flags name the graphs"),
        TargetOption("neuron_env", "the consumer's NEURON_* environment (from --from-env), keyed or refused "
                     "variable by variable", in_key=False),
        TargetOption("lmi_unset", "which of tp_degree / batch_size the LMI configuration leaves to the consumer's "
                     "defaults (they differ by release)", in_key=False),
        TargetOption("static_batch_size", "LMI's option.batch_size: the batch when rolling batch is disabled "
                     "(read from LMI configuration; it decides batch_size, which is keyed)", in_key=False),
    ),
    consumers=tuple(CONSUMERS),
    # LMI NeuronX (djl-serving 0.28/0.29: djl_python.transformers_neuronx, properties_manager/tnx_properties.py).
    lmi=LmiFacts(
        entry_point_words=("transformers_neuronx", "neuron"),
        rolling_batch_names=("tnx",),
        serving_features=("tnx",),
        default_max_rolling_batch=None,  # per consumer release (NeuronTarget.validate: lmi_unset)
        default_n_positions=None,  # per consumer release (128 up to 0.29; 0.30: min(max_position_embeddings, 4096))
        properties={
            "option.group_query_attention": "option.gqa_strategy",
            "option.context_length_estimate": "option.context_length_estimate",
            "option.neuron_optimize_level": "option.optlevel",
            "option.instance_type": "option.instance_type",
            "option.rolling_batch": "option.rolling_batch",
            "option.rolling_batch_strategy": "option.rolling_batch_strategy",
            "option.model_loader": "option.model_loader",
            "option.enable_mixed_precision_accumulation": "option.mixed_precision_accumulation",
            "option.enable_saturate_infinity": "option.saturate_infinity",
        },
        refused_properties=_REFUSED_LMI_PROPERTIES,
        reads_gpu_env_fallbacks=False,  # pytorch-inf2.Dockerfile's entrypoint has no TGI-style translation
        dtype_values=("fp32", "fp16", "bf16"),  # tnx_properties.py Dtype enum (every release 0.26 → 0.30)
        tp_zero_means_one=False,
        static_batch_option="static_batch_size",
        environment_option="neuron_env",
        unset_option="lmi_unset",
        consumers=tuple(ref for ref, c in CONSUMERS.items() if c.is_lmi),
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
