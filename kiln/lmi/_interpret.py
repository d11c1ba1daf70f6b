"""Interpreting LMI properties: which target, which shape, which options, what is ignored.

Rules shared by every LMI backend live here; what differs per backend is each target's
:class:`~kiln.targets.base.LmiFacts` (entry points, rolling-batch names, defaults, properties).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

from .._input import show
from ..errors import ConfigSourceError
from ..spec import Field, parse_bool, parse_positive_int
from ..targets import TARGETS, get_target, normalize_target
from ..targets.instances import unknown_instance_hint
from ._read import ENV_PREFIX, GPU_ENV_FALLBACKS, Prop

__all__ = ["LmiConfig", "interpret"]

# What LMI itself defaults to when a property is absent (DJL Serving 0.28+, see docs); the
# per-backend defaults are the targets' LmiFacts.
LMI_DEFAULT_SMOOTHQUANT_ALPHA = "0.8"
# option.rolling_batch values that select a JIT backend Kiln does not prebuild for.
_JIT_BACKENDS = ("vllm", "lmi-dist", "scheduler", "deepspeed")

# Properties that never change the compiled engine: read, reported by --explain, not keyed.
_IGNORED = {
    "engine", "option.trust_remote_code", "option.revision", "option.task", "option.rolling_batch",
    "option.entrypoint", "option.mpi_mode", "option.max_rolling_batch_prefill_tokens",
    "option.model_loading_timeout", "option.predict_timeout", "option.output_formatter",
    "option.enable_streaming", "option.device_map", "option.load_split_model",
    "option.compiled_graph_path", "option.save_mp_checkpoint_path", "option.model_loader",
    "option.partition_schema", "option.rolling_batch_strategy", "option.enforce_eager",
    "option.gpu_memory_utilization", "option.kv_cache_free_gpu_mem_fraction", "option.job_queue_size",
    "option.batch_scheduler_policy", "option.enable_kv_cache_reuse", "option.tokens_per_block",
    "option.max_num_sequences", "option.enable_trt_overlap", "option.low_cpu_mem_usage",
    "option.parallel_loading", "option.max_idle_time", "option.max_batch_delay", "option.batch_size_for_shared_caches",
    "option.model_id_or_path", "job_queue_size", "batch_size", "max_batch_delay", "max_idle_time",
    "minworkers", "maxworkers", "gpu.minworkers", "gpu.maxworkers", "neuron.minworkers", "neuron.maxworkers",
    "option.use_custom_all_reduce", "option.num_checkpoint_workers", "option.num_engine_workers",
}
# Read by every backend; each target's LmiFacts.properties adds its own.
_USED_BY_ALL = {
    "option.model_id", "option.n_positions", "option.tensor_parallel_degree", "option.max_rolling_batch_size",
    "option.batch_size", "option.dtype", "option.quantize", "option.smoothquant_alpha",
    "option.smoothquant_per_token", "option.smoothquant_per_channel", "option.int8_kv_cache",
    "option.kv_cache_quant_algo", "option.max_input_len", "option.max_output_len", "option.max_seq_len",
    "option.instance_type", "option.kiln_target", "option.kiln_consumer",
}
_USED = _USED_BY_ALL | {name for t in TARGETS.values() for name in (*t.lmi.properties, *t.lmi.refused_properties)}


@dataclass(frozen=True)
class LmiConfig:
    """Spec fields read from an LMI configuration, with what was ignored and decided."""

    fields: Mapping[str, Field]
    ignored: tuple[tuple[str, str], ...]  # (source, value) of settings that do not change an engine
    notes: tuple[str, ...]


def _infer_target(props: Mapping[str, Prop], features: str | None) -> tuple[str | None, str | None]:
    explicit = props.get("option.kiln_target")
    if explicit:
        return explicit.value, explicit.source
    entry = props.get("option.entrypoint")
    if entry:
        v = entry.value.lower()
        for t in TARGETS.values():
            if any(word in v for word in t.lmi.entry_point_words):
                return t.name, entry.source
    rb = props.get("option.rolling_batch")
    if rb:
        v = rb.value.lower()
        for t in TARGETS.values():
            if v in t.lmi.rolling_batch_names:
                return t.name, rb.source
        if v in _JIT_BACKENDS:
            raise ConfigSourceError(
                f"{rb.source}={rb.value!r} selects a JIT backend that Kiln does not prebuild for; "
                f"Kiln builds {', '.join(TARGETS)} engines: set option.rolling_batch to "
                f"{' or '.join(n for t in TARGETS.values() for n in t.lmi.rolling_batch_names)}, or pass --target."
            )
    if features:
        f = features.lower()
        for t in TARGETS.values():
            if any(word in f for word in t.lmi.serving_features):
                return t.name, "SERVING_FEATURES"
    return None, None


def _tp_value(prop: Prop, instance_type: str | None, instance_cores: int | None) -> tuple[str, str | None]:
    v = prop.value.strip()
    if v.lower() == "max":
        if instance_cores is None and instance_type is not None:
            # The instance type was given: asking for it again would be no help.
            raise ConfigSourceError(
                f"{prop.source}=max means 'all devices of the machine', but Kiln does not know how many devices "
                f"instance type {show(instance_type)} has ({unknown_instance_hint(instance_type)}); pass "
                "--tp-degree N with the number of devices, or write that number instead of max."
            )
        if instance_cores is None:
            raise ConfigSourceError(
                f"{prop.source}=max means 'all devices of the machine', which Kiln cannot know "
                "ahead of time; write the number (e.g. 2 for ml.inf2.xlarge, 8 for ml.g5.48xlarge), "
                "pass --tp-degree N, or pass --instance-type so Kiln can resolve it."
            )
        return str(instance_cores), f"{prop.source}=max resolved to {instance_cores} for the instance type"
    if v in ("-1", "0"):
        return "1", f"{prop.source}={v} means no tensor parallelism in LMI: tp_degree 1"
    return v, None


def interpret(
    props: Mapping[str, Prop],
    *,
    target: str | None = None,
    instance_type: str | None = None,
    instance_cores: int | None = None,
    serving_features: str | None = None,
    tp_degree_given: bool = False,
) -> LmiConfig:
    """Turn LMI properties into spec fields (target may be given or inferred).

    ``tp_degree_given``: the caller sets tp_degree itself (a --tp-degree flag, which wins), so
    option.tensor_parallel_degree is not resolved (its ``max`` needs no instance type then).
    """
    norm = {k if k == "engine" else "option." + k[len("option."):].lower() if k.startswith("option.") else k: p
            for k, p in props.items()}
    notes: list[str] = []
    fields: dict[str, Field] = {}
    ignored: list[tuple[str, str]] = []

    for k, p in sorted(norm.items()):
        if k in _USED and not p.value.strip():
            # `option.n_positions=` in a file must not quietly mean LMI's default. (Empty OPTION_*
            # variables never get here: the environment reader skips them, as DJL Serving does.)
            raise ConfigSourceError(f"{p.source} is empty; give it a value, or remove the line for the default.")
        if k not in _USED and not k.startswith(ENV_PREFIX):
            ignored.append((p.source, p.value))

    src = None
    if target is None:
        target, src = _infer_target(norm, serving_features)
        if target:
            notes.append(f"target {target} inferred from {src}")
    facts = None
    if target:
        # Aliases (tensorrt-llm, tnx, …) must select the same LMI rules as the canonical names.
        target = normalize_target(target, src or "--target")
        fields["target"] = Field(target, src or "--target")
        facts = get_target(target).lmi
        if not facts.reads_gpu_env_fallbacks:
            for k, p in list(norm.items()):
                if p.source in GPU_ENV_FALLBACKS:
                    del norm[k]
                    ignored.append((p.source, p.value))
                    notes.append(f"{p.source} ignored: only LMI's GPU image reads it, not {target}'s")

    def put(name: str, prop_name: str) -> Prop | None:
        p = norm.get(prop_name)
        if p is not None and p.value != "":
            fields[name] = Field(p.value, p.source)
        return p

    model = put("model", "option.model_id")
    revision = norm.get("option.revision")
    if model is not None and revision is not None and revision.value and "@" not in model.value \
            and not model.value.startswith(("/", ".", "~", "s3://")):
        fields["model"] = Field(f"{model.value}@{revision.value}", f"{model.source} + {revision.source}")

    put("dtype", "option.dtype")
    if "dtype" in fields and facts is not None and facts.dtype_values is not None \
            and str(fields["dtype"].value).strip() not in facts.dtype_values:
        f = fields["dtype"]
        raise ConfigSourceError(f"{f.source}={f.value!r} is not a dtype {target}'s LMI handler accepts; write one of "
                                f"{', '.join(facts.dtype_values)}.")
    if "dtype" in fields:
        d = str(fields["dtype"].value).strip().lower()
        if d == "auto":
            del fields["dtype"]
            notes.append(f"{norm['option.dtype'].source}=auto: dtype follows the target default")
        elif d == "int8":
            raise ConfigSourceError(
                f"{norm['option.dtype'].source}=int8 is lmi-dist weight quantization, not an engine dtype; "
                "write fp16 or bf16, and use option.quantize=smoothquant for INT8 SmoothQuant engines."
            )

    # Shape.
    put("n_positions", "option.n_positions")
    tp = norm.get("option.tensor_parallel_degree")
    if tp is not None and not tp_degree_given:  # a --tp-degree flag wins: its property needs no resolving
        if facts is not None and not facts.tp_zero_means_one and tp.value.strip() in ("0", "-1"):
            raise ConfigSourceError(f"{tp.source}={tp.value!r}: {target}'s LMI handler needs a tensor-parallel degree "
                                    "of at least 1 (the NeuronCores to shard over); write the number, or max.")
        value, note = _tp_value(tp, instance_type, instance_cores)
        fields["tp_degree"] = Field(value, tp.source)
        if note:
            notes.append(note)

    rolling = norm.get("option.rolling_batch")
    rolling_on = rolling is None or rolling.value.lower() != "disable"
    mrb = norm.get("option.max_rolling_batch_size")
    bs = norm.get("option.batch_size")
    if rolling_on and mrb is not None:
        fields["batch_size"] = Field(mrb.value, mrb.source)
    elif bs is not None:
        fields["batch_size"] = Field(bs.value, bs.source)
    elif mrb is not None:
        fields["batch_size"] = Field(mrb.value, mrb.source)
    elif rolling_on and facts is not None and facts.default_max_rolling_batch and rolling is not None:
        default = facts.default_max_rolling_batch
        fields["batch_size"] = Field(default, f"LMI default max_rolling_batch_size for {target}")
        notes.append(f"batch_size {default}: LMI's default max_rolling_batch_size for {target}")

    if facts is not None and facts.unset_option:
        # What the configuration leaves to the consumer's defaults, which differ by release (the target decides).
        unset = [name for name, prop in (("tp_degree", "option.tensor_parallel_degree"),
                                         ("batch_size", "option.max_rolling_batch_size"))
                 if prop not in norm and not (name == "tp_degree" and tp_degree_given)]
        tp_prop = norm.get("option.tensor_parallel_degree")
        if tp_prop is not None and not tp_degree_given and tp_prop.source == "TENSOR_PARALLEL_DEGREE":
            unset.append("tp_degree:env")  # only the variable gave it: some releases never read it
        if unset:
            fields[f"option.{facts.unset_option}"] = Field(",".join(unset), "the LMI configuration")
    if facts is not None and facts.static_batch_option:
        fields[f"option.{facts.static_batch_option}"] = Field(bs.value, bs.source) if bs is not None \
            else Field("1", "LMI default option.batch_size")
    if facts is not None and facts.lengths_option and "n_positions" not in fields:
        # The consumer release decides what the lengths mean (its target reads them): given as written.
        lengths = {name: parse_positive_int(p.value, p.source) for name in ("max_input_len", "max_output_len",
                                                                            "max_seq_len")
                   if (p := norm.get(f"option.{name}")) is not None and p.value}
        fields[f"option.{facts.lengths_option}"] = Field(json.dumps(lengths, sort_keys=True), "the LMI configuration")
    if facts is not None and facts.default_n_positions and "n_positions" not in fields and fields:
        fields["n_positions"] = Field(facts.default_n_positions, "LMI default option.n_positions")
        notes.append(f"n_positions {facts.default_n_positions}: LMI's default for {target}")

    # Quantization.
    quant = norm.get("option.quantize")
    if quant is not None and quant.value:
        q = quant.value.strip().lower()
        if q != "smoothquant":
            raise ConfigSourceError(
                f"{quant.source}={quant.value!r}: Kiln prebuilds SmoothQuant (option.quantize=smoothquant) "
                "and unquantized engines; remove the property or use smoothquant."
            )
        alpha = norm.get("option.smoothquant_alpha")
        fields["smoothquant_alpha"] = (
            Field(alpha.value, alpha.source) if alpha is not None
            else Field(LMI_DEFAULT_SMOOTHQUANT_ALPHA, "LMI default option.smoothquant_alpha")
        )
        if alpha is None:
            notes.append(f"smoothquant_alpha {LMI_DEFAULT_SMOOTHQUANT_ALPHA}: LMI's default")
        put("per_token", "option.smoothquant_per_token")
        put("per_channel", "option.smoothquant_per_channel")
    else:
        for name in ("option.smoothquant_alpha", "option.smoothquant_per_token", "option.smoothquant_per_channel"):
            p = norm.get(name)
            if p is not None and p.value and (name.endswith("alpha") or parse_bool(p.value, p.source)):
                raise ConfigSourceError(
                    f"{p.source}={p.value!r} is set but option.quantize is not smoothquant; add "
                    "option.quantize=smoothquant or remove it."
                )
    put("int8_kv_cache", "option.int8_kv_cache")
    kvq = norm.get("option.kv_cache_quant_algo")
    if kvq is not None and kvq.value:
        if kvq.value.strip().upper() != "INT8":
            raise ConfigSourceError(f"{kvq.source}={kvq.value!r}: Kiln supports INT8 KV cache only; write INT8.")
        fields["int8_kv_cache"] = Field("true", kvq.source)

    # Properties that would change the chosen target's graphs in ways Kiln does not build: refused.
    refused = dict(facts.refused_properties) if facts is not None else {}
    for prop_name in sorted({n for t in TARGETS.values() for n in t.lmi.refused_properties}):
        p = norm.get(prop_name)
        if p is None or not p.value.strip():
            continue
        if prop_name in refused:
            raise ConfigSourceError(f"{p.source}={p.value!r} changes the graphs {target} compiles "
                                    f"({refused[prop_name]}), and Kiln does not build that variant: remove it, or "
                                    "compile in the container.")
        ignored.append((p.source, p.value))  # another backend's: it cannot change this one's engine
    # Target options: only the ones the chosen target reads; the rest cannot change its engine.
    mine = dict(facts.properties) if facts is not None else {}
    for prop_name in sorted({n for t in TARGETS.values() for n in t.lmi.properties}):
        p = norm.get(prop_name)
        if p is None or not p.value:
            continue
        if prop_name in mine:
            fields[mine[prop_name]] = Field(p.value, p.source)
        else:
            ignored.append((p.source, p.value))
    # The process environment a backend compiles under (NEURON_*): the target keys or refuses each.
    environment = {k[len(ENV_PREFIX):]: p.value for k, p in norm.items() if k.startswith(ENV_PREFIX)}
    if environment and facts is not None and facts.environment_option:
        fields[f"option.{facts.environment_option}"] = Field(json.dumps(environment, sort_keys=True),
                                                             "the NEURON_* environment")
    else:
        ignored.extend((norm[ENV_PREFIX + name].source, value) for name, value in sorted(environment.items()))
    consumer = norm.get("option.kiln_consumer")
    if consumer is not None and consumer.value:
        fields["option.consumer"] = Field(consumer.value.strip().lower(), consumer.source)
    if instance_type and target and get_target(target).has_option("instance_type"):
        fields["option.instance_type"] = Field(instance_type, "--instance-type")
    return LmiConfig(fields, tuple(ignored), tuple(notes))
