"""SageMaker LMI (DJL Serving) configuration → Kiln spec fields.

Two ways LMI users write the same settings, both read here into one intermediate form
(property name → value and where it was written), then interpreted once, so the env form
and the file form of a configuration always give the same spec and key:

* ``serving.properties`` is read the way DJL Serving's Java server reads it —
  ``java.util.Properties.load``: ``=``, ``:`` or whitespace separate key and value; ``#`` and
  ``!`` start comment lines; a trailing backslash continues a line; ``\\t \\n \\uXXXX`` and
  ``\\=``-style escapes; the last duplicate wins. Two deliberate generosities: trailing
  whitespace is stripped (Java keeps it and then fails on ``=4 ``; LMI's Python tools strip
  it), and the file is decoded as UTF-8 with a Latin-1 fallback.
* ``OPTION_*`` environment variables map like DJL's ``ModelInfo``: ``OPTION_FOO_BAR`` →
  ``option.foo_bar`` (lowercased when written in caps), ``OPTION_ENTRYPOINT`` →
  ``option.entryPoint``, ``OPTION_ENGINE`` → ``engine``; empty values are skipped.
  ``HF_MODEL_ID``, ``HF_REVISION``, ``TENSOR_PARALLEL_DEGREE`` and the SageMaker/TGI names
  the LMI entrypoint translates (``SM_NUM_GPUS``, ``MAX_BATCH_SIZE``, ``HF_MODEL_QUANTIZE``)
  are honoured as fallbacks. When both are given, the file wins, as in DJL Serving.

Settings that do not change an engine are ignored on purpose and reported (``--explain``);
values Kiln cannot honour raise :class:`ConfigSourceError` naming the property and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .errors import ConfigSourceError
from .spec import Field, normalize_target, parse_bool, parse_positive_int

__all__ = ["LmiConfig", "read_serving_properties", "parse_properties_text", "properties_from_env", "interpret"]

# What LMI itself defaults to when a property is absent (DJL Serving 0.28+, see docs).
LMI_DEFAULT_N_POSITIONS_NEURON = 128
LMI_DEFAULT_MAX_ROLLING_BATCH = {"neuron": 32, "trtllm": 256}
LMI_DEFAULT_TRT_MAX_INPUT_LEN = 1024
LMI_DEFAULT_TRT_MAX_OUTPUT_LEN = 512
LMI_DEFAULT_SMOOTHQUANT_ALPHA = "0.8"

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
_USED = {
    "option.model_id", "option.n_positions", "option.tensor_parallel_degree", "option.max_rolling_batch_size",
    "option.batch_size", "option.dtype", "option.quantize", "option.smoothquant_alpha",
    "option.smoothquant_per_token", "option.smoothquant_per_channel", "option.int8_kv_cache",
    "option.kv_cache_quant_algo", "option.max_input_len", "option.max_output_len", "option.max_seq_len",
    "option.context_length_estimate", "option.group_query_attention", "option.neuron_optimize_level",
    "option.max_num_tokens", "option.instance_type", "option.kiln_target",
}


@dataclass(frozen=True)
class Prop:
    value: str
    source: str  # e.g. "OPTION_DTYPE" or "option.dtype (serving.properties:4)"


@dataclass(frozen=True)
class LmiConfig:
    """Spec fields read from an LMI configuration, with what was ignored and decided."""

    fields: Mapping[str, Field]
    ignored: tuple[tuple[str, str], ...]  # (source, value) of settings that do not change an engine
    notes: tuple[str, ...]


# --------------------------------------------------------------------------- reading


def parse_properties_text(text: str, origin: str = "serving.properties") -> dict[str, Prop]:
    """java.util.Properties.load semantics (plus trailing-whitespace stripping)."""
    props: dict[str, Prop] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        lineno = i + 1
        line = lines[i].lstrip(" \t\f")
        i += 1
        if not line or line[0] in "#!":
            continue
        # Join continuation lines: an odd number of trailing backslashes continues.
        while _continues(line) and i < len(lines):
            line = line[:-1] + lines[i].lstrip(" \t\f")
            i += 1
        if _continues(line):
            line = line[:-1]
        key, value = _split_key_value(line)
        props[key] = Prop(value.rstrip(" \t\f"), f"{key} ({origin}:{lineno})")
    return props


def _continues(line: str) -> bool:
    n = len(line) - len(line.rstrip("\\"))
    return n % 2 == 1


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2 : i + 6] or ""):
                out.append(chr(int(text[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _split_key_value(line: str) -> tuple[str, str]:
    i = 0
    while i < len(line):
        c = line[i]
        if c == "\\":
            i += 2
            continue
        if c in "=: \t\f":
            break
        i += 1
    key = line[:i]
    rest = line[i:].lstrip(" \t\f")
    if rest[:1] in ("=", ":") and (i >= len(line) or line[i] in " \t\f=:"):
        rest = rest[1:].lstrip(" \t\f")
    return _unescape(key), _unescape(rest)


def read_serving_properties(path: Path | str) -> dict[str, Prop]:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigSourceError(f"serving.properties file {p} does not exist; check the path.") from None
    except OSError as e:
        raise ConfigSourceError(f"cannot read {p}: {e.strerror}.") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # what java.util.Properties.load(InputStream) assumes
    return parse_properties_text(text, p.name)


_SNAKE_CAPS = re.compile(r"[A-Z0-9_]+\Z")
# Fallback names the LMI container entrypoint or server also reads, → the property they feed.
_ENV_FALLBACKS = {
    "HF_MODEL_ID": "option.model_id",
    "HF_REVISION": "option.revision",
    "TENSOR_PARALLEL_DEGREE": "option.tensor_parallel_degree",
    "SM_NUM_GPUS": "option.tensor_parallel_degree",
    "MAX_BATCH_SIZE": "option.max_rolling_batch_size",
    "HF_MODEL_QUANTIZE": "option.quantize",
}


def properties_from_env(env: Mapping[str, str]) -> dict[str, Prop]:
    props: dict[str, Prop] = {}
    for name in sorted(env):
        value = env[name]
        if not name.startswith("OPTION_") or value is None or not str(value).strip():
            continue
        key = name[len("OPTION_"):]
        if _SNAKE_CAPS.match(key):
            key = key.lower()
        if key.lower() == "entrypoint":
            prop = "option.entryPoint"
        elif key.lower() == "engine":
            prop = "engine"
        else:
            prop = "option." + key
        props[prop] = Prop(str(value).strip(), name)
    # Fallbacks only fill what OPTION_* left unset (DJL uses putIfAbsent / getenv fallbacks).
    for name, prop in _ENV_FALLBACKS.items():
        value = env.get(name)
        if value and value.strip() and prop not in props:
            props[prop] = Prop(value.strip(), name)
    return props


# --------------------------------------------------------------------------- interpreting


def _infer_target(props: Mapping[str, Prop], features: str | None) -> tuple[str | None, str | None]:
    explicit = props.get("option.kiln_target")
    if explicit:
        return explicit.value, explicit.source
    entry = props.get("option.entrypoint")
    if entry:
        v = entry.value.lower()
        if "transformers_neuronx" in v or "neuron" in v:
            return "neuron", entry.source
        if "tensorrt_llm" in v or "trtllm" in v:
            return "trtllm", entry.source
    rb = props.get("option.rolling_batch")
    if rb:
        v = rb.value.lower()
        if v == "tnx":
            return "neuron", rb.source
        if v == "trtllm":
            return "trtllm", rb.source
        if v in ("vllm", "lmi-dist", "scheduler", "deepspeed"):
            raise ConfigSourceError(
                f"{rb.source}={rb.value!r} selects a JIT backend that Kiln does not prebuild for; "
                "Kiln builds trtllm, neuron and torch-aoti engines: set option.rolling_batch to "
                "trtllm or tnx, or pass --target."
            )
    if features:
        f = features.lower()
        if "trtllm" in f:
            return "trtllm", "SERVING_FEATURES"
        if "tnx" in f:
            return "neuron", "SERVING_FEATURES"
    return None, None


def _tp_value(prop: Prop, instance_cores: int | None) -> tuple[str, str | None]:
    v = prop.value.strip()
    if v.lower() == "max":
        if instance_cores is None:
            raise ConfigSourceError(
                f"{prop.source}=max means 'all devices of the machine', which Kiln cannot know "
                "ahead of time; write the number (e.g. 2 for ml.inf2.xlarge, 8 for ml.g5.48xlarge), "
                "or pass --instance-type so Kiln can resolve it."
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
) -> LmiConfig:
    """Turn LMI properties into spec fields (target may be given or inferred)."""
    norm = {k if k == "engine" else "option." + k[len("option."):].lower() if k.startswith("option.") else k: p
            for k, p in props.items()}
    notes: list[str] = []
    fields: dict[str, Field] = {}
    ignored: list[tuple[str, str]] = []

    for k, p in sorted(norm.items()):
        if k not in _USED:
            ignored.append((p.source, p.value))

    src = None
    if target is None:
        target, src = _infer_target(norm, serving_features)
        if target:
            notes.append(f"target {target} inferred from {src}")
    if target:
        # Aliases (tensorrt-llm, tnx, …) must select the same LMI rules as the canonical names.
        target = normalize_target(target, src or "--target")
        fields["target"] = Field(target, src or "--target")

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
    if tp is not None:
        value, note = _tp_value(tp, instance_cores)
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
    elif rolling_on and target in LMI_DEFAULT_MAX_ROLLING_BATCH and rolling is not None:
        default = LMI_DEFAULT_MAX_ROLLING_BATCH[target]
        fields["batch_size"] = Field(default, f"LMI default max_rolling_batch_size for {target}")
        notes.append(f"batch_size {default}: LMI's default max_rolling_batch_size for {target}")

    if target == "trtllm" and "n_positions" not in fields:
        msl = norm.get("option.max_seq_len")
        if msl is not None:
            fields["n_positions"] = Field(msl.value, msl.source)
        else:
            mil, mol = norm.get("option.max_input_len"), norm.get("option.max_output_len")
            if mil is not None or mol is not None:
                i = parse_positive_int(mil.value, mil.source) if mil else LMI_DEFAULT_TRT_MAX_INPUT_LEN
                o = parse_positive_int(mol.value, mol.source) if mol else LMI_DEFAULT_TRT_MAX_OUTPUT_LEN
                fields["n_positions"] = Field(i + o, "option.max_input_len + option.max_output_len")
                notes.append(f"n_positions {i + o} = max_input_len {i} + max_output_len {o}")
    if target == "neuron" and "n_positions" not in fields and fields:
        fields["n_positions"] = Field(LMI_DEFAULT_N_POSITIONS_NEURON, "LMI default option.n_positions")
        notes.append(f"n_positions {LMI_DEFAULT_N_POSITIONS_NEURON}: LMI's default for transformers-neuronx")

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

    # Target options: only the ones the chosen target has; the rest cannot change its engine.
    per_target = {
        "neuron": {"option.group_query_attention": "option.gqa_strategy",
                   "option.context_length_estimate": "option.context_length_estimate",
                   "option.neuron_optimize_level": "option.optlevel",
                   "option.instance_type": "option.instance_type"},
        "trtllm": {"option.max_num_tokens": "option.max_num_tokens",
                   "option.instance_type": "option.instance_type"},
    }
    for prop_name in sorted({n for m in per_target.values() for n in m}):
        p = norm.get(prop_name)
        if p is None or not p.value:
            continue
        field_name = per_target.get(target or "", {}).get(prop_name)
        if field_name:
            fields[field_name] = Field(p.value, p.source)
        else:
            ignored.append((p.source, p.value))
    if instance_type and target in per_target:
        fields["option.instance_type"] = Field(instance_type, "--instance-type")
    return LmiConfig(fields, tuple(ignored), tuple(notes))
