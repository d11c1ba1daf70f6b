"""Build specs: what an engine is compiled for, in one frozen value.

A :class:`BuildSpec` comes from one of three sources — CLI flags, SageMaker LMI ``OPTION_*``
environment variables, or an LMI ``serving.properties`` file (see :mod:`kiln._lmi`) — and all
three go through :func:`spec_from_fields`, so the same settings give the same spec and the
same key whichever way they were written.

The build key is ``sha256(canonical_json(key_inputs))`` where the key inputs are an explicit
allowlist: the key schema version, the resolved spec (minus the model *name*: weights are
identified by their tree digest, never by a name or path), the model tree digest, and the
toolchain. Bump :data:`KEY_SCHEMA` whenever the inputs change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import SpecError

__all__ = [
    "KEY_SCHEMA",
    "TARGETS",
    "DTYPES",
    "Quantization",
    "BuildSpec",
    "Field",
    "spec_from_fields",
    "normalize_dtype",
    "canonical_json",
    "build_key",
    "key_inputs",
]

KEY_SCHEMA = 1
TARGETS = ("torch-aoti", "trtllm", "neuron")
DTYPES = ("fp32", "fp16", "bf16")
_DTYPE_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "f32": "fp32", "torch.float32": "fp32",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "f16": "fp16", "torch.float16": "fp16",
    "bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
}
_TARGET_ALIASES = {
    "torch-aoti": "torch-aoti", "torch_aoti": "torch-aoti", "aoti": "torch-aoti",
    "trtllm": "trtllm", "tensorrt-llm": "trtllm", "tensorrt_llm": "trtllm", "trt-llm": "trtllm",
    "neuron": "neuron", "neuronx": "neuron", "tnx": "neuron", "inferentia": "neuron",
}
_TRUE = {"true", "1", "yes", "y", "on", "t"}
_FALSE = {"false", "0", "no", "n", "off", "f"}


@dataclass(frozen=True)
class Field:
    """A raw value together with where it came from, so errors can name the source.

    ``source`` reads like the user wrote it: ``--batch-size``, ``OPTION_DTYPE``,
    ``option.dtype (serving.properties line 4)``.
    """

    value: Any
    source: str


@dataclass(frozen=True)
class Quantization:
    """SmoothQuant settings; ``Quantization()`` means no quantization."""

    smoothquant_alpha: float | None = None
    per_token: bool = False
    per_channel: bool = False
    int8_kv_cache: bool = False

    @property
    def smoothquant(self) -> bool:
        return self.smoothquant_alpha is not None

    @property
    def is_none(self) -> bool:
        return not self.smoothquant and not self.int8_kv_cache

    def describe(self) -> str:
        if self.is_none:
            return "none"
        parts = []
        if self.smoothquant:
            parts.append(f"sq{_canon_float(self.smoothquant_alpha)}")
            parts.append("per-token" if self.per_token else "per-tensor-act")
            parts.append("per-channel" if self.per_channel else "per-tensor-w")
        if self.int8_kv_cache:
            parts.append("int8-kv")
        return ",".join(parts)

    def to_json(self) -> dict[str, Any] | None:
        if self.is_none:
            return None
        return {
            "smoothquant_alpha": None if self.smoothquant_alpha is None else _canon_float(self.smoothquant_alpha),
            "per_token": self.per_token,
            "per_channel": self.per_channel,
            "int8_kv_cache": self.int8_kv_cache,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> "Quantization":
        if not data:
            return cls()
        alpha = data.get("smoothquant_alpha")
        return cls(
            smoothquant_alpha=None if alpha is None else float(alpha),
            per_token=bool(data.get("per_token")),
            per_channel=bool(data.get("per_channel")),
            int8_kv_cache=bool(data.get("int8_kv_cache")),
        )


@dataclass(frozen=True)
class BuildSpec:
    """Target + model + shape + quantization + target options.

    ``n_positions`` and ``dtype`` may be ``None`` before resolution (they then default from the
    model config and the target); :meth:`resolved` must be true before a key is computed.
    ``options`` is a sorted tuple of ``(name, value)`` strings.
    """

    target: str
    model: str
    n_positions: int | None = None
    batch_size: int = 1
    tp_degree: int = 1
    dtype: str | None = None
    quant: Quantization = field(default_factory=Quantization)
    options: tuple[tuple[str, str], ...] = ()

    @property
    def resolved(self) -> bool:
        return self.n_positions is not None and self.dtype is not None

    def option(self, name: str, default: str | None = None) -> str | None:
        return dict(self.options).get(name, default)

    def replace(self, **changes: Any) -> "BuildSpec":
        return dataclasses.replace(self, **changes)

    def shape_json(self, key_options: frozenset[str] | None = None) -> dict[str, Any]:
        """The spec fields that go into the key (never the model name)."""
        options = dict(self.options)
        if key_options is not None:
            options = {k: v for k, v in options.items() if k in key_options}
        return {
            "target": self.target,
            "n_positions": self.n_positions,
            "batch_size": self.batch_size,
            "tp_degree": self.tp_degree,
            "dtype": self.dtype,
            "quantization": self.quant.to_json(),
            "options": options,
        }

    def to_json(self) -> dict[str, Any]:
        data = self.shape_json()
        data["model"] = self.model
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "BuildSpec":
        return cls(
            target=data["target"],
            model=data.get("model", ""),
            n_positions=data.get("n_positions"),
            batch_size=data.get("batch_size", 1),
            tp_degree=data.get("tp_degree", 1),
            dtype=data.get("dtype"),
            quant=Quantization.from_json(data.get("quantization")),
            options=tuple(sorted((str(k), str(v)) for k, v in (data.get("options") or {}).items())),
        )

    def summary(self) -> str:
        return (
            f"{self.target} n_positions={self.n_positions} batch_size={self.batch_size} "
            f"tp={self.tp_degree} dtype={self.dtype} quant={self.quant.describe()}"
        )


# --------------------------------------------------------------------------- parsing


def normalize_dtype(value: str, source: str = "dtype") -> str:
    text = str(value).strip().lower()
    if text in _DTYPE_ALIASES:
        return _DTYPE_ALIASES[text]
    raise SpecError(
        f"{source}={value!r} is not a dtype Kiln builds for; write one of "
        f"{', '.join(DTYPES)} (aliases: float32, float16, bfloat16)."
    )


def normalize_target(value: str, source: str = "target") -> str:
    text = str(value).strip().lower()
    if text in _TARGET_ALIASES:
        return _TARGET_ALIASES[text]
    raise SpecError(f"{source}={value!r} is not a Kiln target; write one of {', '.join(TARGETS)}.")


def parse_positive_int(value: Any, source: str) -> int:
    if isinstance(value, bool):
        raise SpecError(f"{source}={value!r} must be a positive integer.")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip().replace("_", "")
        # Tolerate "4096.0" (YAML and some shells write numbers that way) but nothing fuzzier.
        if re.fullmatch(r"[+]?\d+(\.0+)?", text):
            number = int(text.split(".")[0])
        else:
            raise SpecError(f"{source}={value!r} must be a positive integer, for example 4096.")
    if number <= 0:
        raise SpecError(f"{source}={value!r} must be a positive integer (at least 1).")
    return number


def parse_bool(value: Any, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SpecError(f"{source}={value!r} must be true or false.")


def parse_alpha(value: Any, source: str) -> float:
    try:
        alpha = float(str(value).strip())
    except ValueError:
        raise SpecError(f"{source}={value!r} must be a number between 0 and 1, for example 0.5.") from None
    if not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
        raise SpecError(
            f"{source}={value!r} is outside [0, 1]; SmoothQuant's alpha migrates that fraction of "
            "the activation range into the weights: write a value such as 0.5 or 0.8."
        )
    return alpha


_OPTION_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


def spec_from_fields(fields: Mapping[str, Field]) -> BuildSpec:
    """Build a :class:`BuildSpec` from raw fields gathered by any of the three parsers.

    Known field names: target, model, n_positions, batch_size, tp_degree, dtype,
    smoothquant_alpha, per_token, per_channel, int8_kv_cache, and ``option.<name>`` for target
    options. Every bad value raises :class:`SpecError` naming its source.
    """

    def get(name: str) -> Field | None:
        f = fields.get(name)
        if f is None or f.value is None or (isinstance(f.value, str) and not f.value.strip()):
            return None
        return f

    target_f = get("target")
    if target_f is None:
        raise SpecError(
            "no target given; pass --target (torch-aoti, trtllm or neuron), or set "
            "OPTION_ROLLING_BATCH / OPTION_ENTRYPOINT so Kiln can infer it."
        )
    target = normalize_target(target_f.value, target_f.source)
    model_f = get("model")
    if model_f is None:
        raise SpecError(
            "no model given; pass MODEL (a Hub id such as org/name[@revision] or a local "
            "directory), or set OPTION_MODEL_ID / HF_MODEL_ID, or option.model_id."
        )
    model = str(model_f.value).strip()

    def int_or(name: str, default: int | None) -> int | None:
        f = get(name)
        return default if f is None else parse_positive_int(f.value, f.source)

    n_positions = int_or("n_positions", None)
    batch_size = int_or("batch_size", 1)
    tp_degree = int_or("tp_degree", 1)
    dtype_f = get("dtype")
    dtype = None if dtype_f is None else normalize_dtype(dtype_f.value, dtype_f.source)

    alpha_f = get("smoothquant_alpha")
    alpha = None if alpha_f is None else parse_alpha(alpha_f.value, alpha_f.source)
    flags = {}
    for name in ("per_token", "per_channel", "int8_kv_cache"):
        f = get(name)
        flags[name] = False if f is None else parse_bool(f.value, f.source)
        if flags[name] and alpha is None and name != "int8_kv_cache":
            raise SpecError(
                f"{f.source} asks for SmoothQuant {name.replace('_', '-')} scaling, but SmoothQuant "
                "is not enabled; add --smoothquant ALPHA (or option.quantize=smoothquant with "
                "option.smoothquant_alpha), or drop the flag."
            )
    quant = Quantization(alpha, flags["per_token"], flags["per_channel"], flags["int8_kv_cache"])

    options: dict[str, str] = {}
    for name, f in fields.items():
        if not name.startswith("option.") or get(name) is None:
            continue
        opt = name[len("option."):].strip().lower().replace("-", "_")
        if not _OPTION_NAME.match(opt):
            raise SpecError(f"{f.source}: {opt!r} is not a valid target option name (letters, digits, _).")
        options[opt] = str(f.value).strip()
    return BuildSpec(
        target=target,
        model=model,
        n_positions=n_positions,
        batch_size=batch_size,  # type: ignore[arg-type]
        tp_degree=tp_degree,  # type: ignore[arg-type]
        dtype=dtype,
        quant=quant,
        options=tuple(sorted(options.items())),
    )


# --------------------------------------------------------------------------- keys


def _canon_float(value: float | None) -> str:
    # repr() is the shortest string that round-trips, so 0.5, 0.50 and .5 all write "0.5".
    # Floats never enter canonical JSON as numbers: other encoders write them differently.
    assert value is not None
    return repr(float(value))


def _reject_floats(obj: Any, path: str = "$") -> None:
    if isinstance(obj, float):
        raise TypeError(f"canonical JSON refuses floats (at {path}); encode them as strings")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _reject_floats(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _reject_floats(v, f"{path}[{i}]")


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no floats: one byte string per value."""
    _reject_floats(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def key_inputs(
    spec: BuildSpec,
    tree_digest: str,
    toolchain: Mapping[str, str],
    key_options: frozenset[str] | None = None,
) -> dict[str, Any]:
    """The complete, explicit list of what a build key depends on."""
    if not spec.resolved:
        raise SpecError("internal: a key needs a resolved spec (n_positions and dtype set)")
    return {
        "kiln_key_schema": KEY_SCHEMA,
        "spec": spec.shape_json(key_options),
        "model": {"tree_digest": tree_digest},
        "toolchain": dict(sorted(toolchain.items())),
    }


def build_key(inputs: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(inputs)).hexdigest()
