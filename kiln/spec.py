"""Build specs: what an engine is compiled for, in one frozen value.

A :class:`BuildSpec` comes from one of three sources — CLI flags, SageMaker LMI ``OPTION_*``
environment variables, or an LMI ``serving.properties`` file (see :mod:`kiln.lmi`) — and all
three go through :func:`kiln.core.specs.spec_from_fields`, so the same settings give the same
spec and the same key whichever way they were written. This module holds the values and their
primitive parsers; which targets exist is the registry's business (:mod:`kiln.targets`).

The build key is ``sha256(canonical_json(key_inputs))`` where the key inputs are an explicit
allowlist: the key schema version, the resolved spec (minus the model *name*: weights are
identified by their tree digest, never by a name or path), the model's identity, and the
toolchain. The model's identity is ``{"tree_digest"}`` for an engine that embeds its weights,
and ``{"architecture_digest", "tree_digest"}`` for one that takes them at load (its compiled
part is then a build stage keyed by the architecture alone, which every fine-tune of the same
architecture reuses: :mod:`kiln.models._architecture`). Bump :data:`KEY_SCHEMA` whenever the
inputs change (2: the architecture digest).

Bounds. Every integer field has a documented maximum (:data:`LIMITS`): far above any real
engine, low enough that a typo (``--batch-size 1000000000000``) or a hostile value (an
integer of thousands of digits) is refused here, in one line, instead of reaching a compiler
or Python's int-conversion limit. A :class:`BuildSpec` checks its own fields when it is
constructed, so the Python API (``kiln.BuildSpec(...)``) refuses what the CLI refuses, with
the same messages. Which targets exist is checked by :func:`kiln.core.resolution.resolve`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ._input import show
from .errors import SpecError

__all__ = [
    "KEY_SCHEMA",
    "LIMITS",
    "MAX_INT",
    "CALIB_SET_OPTION",
    "DTYPES",
    "Quantization",
    "BuildSpec",
    "Field",
    "normalize_dtype",
    "parse_positive_int",
    "parse_bool",
    "parse_alpha",
    "file_digest",
    "canonical_json",
    "build_key",
    "key_inputs",
    "MODEL_DIGESTS",
]

KEY_SCHEMA = 2
# `--calib-file FILE` enters a spec as this option, holding the file's digest (file_digest).
CALIB_SET_OPTION = "calib_set"
DTYPES = ("fp32", "fp16", "bf16")
_DTYPE_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "f32": "fp32", "torch.float32": "fp32",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "f16": "fp16", "torch.float16": "fp16",
    "bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
}
# The largest value Kiln accepts for each integer spec field (see the module docstring).
# n_positions: 2**24 = 16,777,216 tokens, above the longest context any released model
# declares (Llama 4 Scout: max_position_embeddings 10,485,760). batch_size: 65,536 sequences
# (LMI's max_rolling_batch_size defaults are 32-256). tp_degree: 1024 ranks (a trn2
# UltraServer has 512 NeuronCores at LNC=1).
LIMITS = {"n_positions": 1 << 24, "batch_size": 1 << 16, "tp_degree": 1 << 10}
# Any other integer a parser reads (max_input_len, calibration sizes): what fits an int32,
# which is what the compilers take.
MAX_INT = (1 << 31) - 1
_MAX_DIGITS = len(str(MAX_INT)) + 1  # longer digit strings are refused before int() sees them
_OPTION_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
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

    def __post_init__(self) -> None:
        # The same checks (and messages) as kiln.core.specs.spec_from_fields, for the Python API.
        if self.smoothquant_alpha is not None:
            object.__setattr__(self, "smoothquant_alpha", parse_alpha(self.smoothquant_alpha, "smoothquant_alpha"))
        for name in ("per_token", "per_channel", "int8_kv_cache"):
            object.__setattr__(self, name, parse_bool(getattr(self, name), name))
        for name in ("per_token", "per_channel"):
            if getattr(self, name) and self.smoothquant_alpha is None:
                raise SpecError(
                    f"{name}=True asks for SmoothQuant {name.replace('_', '-')} scaling, but SmoothQuant is not "
                    "enabled; set smoothquant_alpha (--smoothquant ALPHA), or drop it."
                )

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
        return cls(
            smoothquant_alpha=data.get("smoothquant_alpha"),  # parsed (and checked) by __post_init__
            per_token=bool(data.get("per_token")),
            per_channel=bool(data.get("per_channel")),
            int8_kv_cache=bool(data.get("int8_kv_cache")),
        )


@dataclass(frozen=True)
class BuildSpec:
    """Target + model + shape + quantization + target options.

    ``n_positions`` and ``dtype`` may be ``None`` before resolution (they then default from the
    model config and the target); :meth:`resolved` must be true before a key is computed.
    ``options`` is a sorted tuple of ``(name, value)`` strings (a mapping is accepted and sorted).

    Constructing one checks every field with the parsers the CLI uses, so bad values raise
    :class:`~kiln.errors.SpecError` with the CLI's messages: integers must be positive and at
    most :data:`LIMITS` (strings of digits such as ``"128"`` are read as the CLI reads them),
    ``dtype`` aliases are normalised (``float16`` → ``fp16``). The target's name is checked
    against the registry by :func:`kiln.resolve` (this module does not know the targets).
    """

    target: str
    model: str
    n_positions: int | None = None
    batch_size: int = 1
    tp_degree: int = 1
    dtype: str | None = None
    quant: Quantization = field(default_factory=Quantization)
    options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        put = functools.partial(object.__setattr__, self)  # frozen: normalise in place, once
        if not isinstance(self.target, str) or not self.target.strip():
            raise SpecError(f"target={show(self.target)} must name a Kiln target, for example 'torch-aoti'.")
        if isinstance(self.model, os.PathLike):
            put("model", os.fspath(self.model))
        if not isinstance(self.model, str):
            raise SpecError(f"model={show(self.model)} must be a string: a Hub id (org/name[@revision]) or a directory.")
        if self.n_positions is not None:
            put("n_positions", parse_positive_int(self.n_positions, "n_positions", LIMITS["n_positions"]))
        put("batch_size", parse_positive_int(self.batch_size, "batch_size", LIMITS["batch_size"]))
        put("tp_degree", parse_positive_int(self.tp_degree, "tp_degree", LIMITS["tp_degree"]))
        if self.dtype is not None:
            put("dtype", normalize_dtype(self.dtype, "dtype"))
        if not isinstance(self.quant, Quantization):
            raise SpecError(f"quant={show(self.quant)} must be a kiln.Quantization, e.g. Quantization(smoothquant_alpha=0.5).")
        put("options", _options_tuple(self.options))

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

    def cli_flags(self) -> str:
        """The `kiln build` flags that give this spec back (what messages tell users to run)."""
        flags = [f"--target {self.target}"]
        flags += [f"--n-positions {self.n_positions}"] if self.n_positions is not None else []
        flags += [f"--batch-size {self.batch_size}", f"--tp-degree {self.tp_degree}"]
        flags += [f"--dtype {self.dtype}"] if self.dtype is not None else []
        q = self.quant
        if q.smoothquant:
            flags.append(f"--smoothquant {_canon_float(q.smoothquant_alpha)}")
            flags += ["--per-token"] if q.per_token else []
            flags += ["--per-channel"] if q.per_channel else []
        flags += ["--int8-kv-cache"] if q.int8_kv_cache else []
        for name, value in self.options:
            if name == CALIB_SET_OPTION:
                flags += ["--calib-file FILE"] if value.startswith("sha256:") else []  # the file whose digest it is
            else:
                flags.append(f"--option {name}={value}")
        return " ".join(flags)

    def summary(self) -> str:
        return (
            f"{self.target} n_positions={self.n_positions} batch_size={self.batch_size} "
            f"tp={self.tp_degree} dtype={self.dtype} quant={self.quant.describe()}"
        )


# --------------------------------------------------------------------------- parsing


def _options_tuple(options: Any) -> tuple[tuple[str, str], ...]:
    """Target options as the sorted ``(name, value)`` tuple a spec holds (names checked)."""
    if isinstance(options, Mapping):
        items = list(options.items())
    else:
        try:
            items = [tuple(item) for item in options]
        except TypeError:
            raise SpecError(f"options={show(options)} must be a mapping or (name, value) pairs.") from None
    out: dict[str, str] = {}
    for item in items:
        if len(item) != 2:
            raise SpecError(f"options: {show(item)} is not a (name, value) pair.")
        name, value = item
        if not isinstance(name, str) or not _OPTION_NAME.match(name):
            raise SpecError(f"options: {show(name)} is not a valid target option name (lowercase letters, digits, _).")
        if name in out:
            raise SpecError(f"options: {name!r} is given twice; give each target option once.")
        if isinstance(value, int) and value.bit_length() > 64:  # str() of a huge int raises; none is an option
            raise SpecError(f"options: {name}={show(value)} is too large for a target option value.")
        out[name] = value if isinstance(value, str) else str(value)
    return tuple(sorted(out.items()))


def normalize_dtype(value: str, source: str = "dtype") -> str:
    """``fp32``/``fp16``/``bf16`` from any spelling users write (``float16``, ``torch.bfloat16``, …)."""
    # str() of a torch.dtype is an alias ("torch.float16"); of a huge int it would raise.
    text = "" if isinstance(value, (int, float)) else str(value).strip().lower()
    if text in _DTYPE_ALIASES:
        return _DTYPE_ALIASES[text]
    raise SpecError(
        f"{source}={show(value)} is not a dtype Kiln builds for; write one of "
        f"{', '.join(DTYPES)} (aliases: float32, float16, bfloat16)."
    )


def parse_positive_int(value: Any, source: str, maximum: int = MAX_INT) -> int:
    """A positive integer of at most ``maximum`` from an int or a string of ASCII digits.

    ``source`` names where the value was written (``--batch-size``, ``OPTION_N_POSITIONS``).
    Digit strings longer than any allowed value are refused before ``int()`` sees them, so a
    value of thousands of digits is a SpecError, not Python's int-conversion ValueError.
    """
    if isinstance(value, bool):
        raise SpecError(f"{source}={value!r} must be a positive integer, for example 4096.")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)  # 4096.0 from YAML or JSON
    else:
        text = str(value).strip().replace("_", "")
        # Tolerate "4096.0" (YAML and some shells write numbers that way) but nothing fuzzier;
        # ASCII digits only (\d would take other scripts' digits too).
        m = re.fullmatch(r"([+-]?)0*([0-9]+)(?:\.0+)?", text)
        if m is None:
            raise SpecError(f"{source}={show(value)} must be a positive integer, for example 4096.")
        if m.group(1) == "-":
            raise SpecError(f"{source}={show(value)} must be a positive integer (at least 1).")
        if len(m.group(2)) > _MAX_DIGITS:
            raise SpecError(f"{source}={show(value)} is too large: at most {maximum}; write a smaller value.")
        number = int(m.group(2))
    if number <= 0:
        raise SpecError(f"{source}={show(value)} must be a positive integer (at least 1).")
    if number > maximum:
        raise SpecError(f"{source}={show(value)} is too large: at most {maximum}; write a smaller value.")
    return number


def parse_bool(value: Any, source: str) -> bool:
    """true/false, yes/no, on/off, 1/0 (any case) as a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else ""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SpecError(f"{source}={show(value)} must be true or false.")


def parse_alpha(value: Any, source: str = "SmoothQuant alpha") -> float:
    """SmoothQuant's alpha as a float in [0, 1]: the one check every reader of an alpha uses."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SpecError(f"{source}={show(value)} must be a number between 0 and 1, for example 0.5.")
    try:
        # Digit strings of any length parse as floats (no int-conversion limit); huge ones
        # become inf and are refused below.
        alpha = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        raise SpecError(f"{source}={show(value)} must be a number between 0 and 1, for example 0.5.") from None
    if not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
        raise SpecError(
            f"{source}={show(value)} is outside [0, 1]: SmoothQuant alpha must be in [0, 1] (it migrates "
            "that fraction of the activation range into the weights); write a value such as 0.5 or 0.8."
        )
    return alpha + 0.0  # -0.0 → 0.0: one engine, one key


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


MODEL_DIGESTS = ("architecture_digest", "tree_digest")  # what may identify a model in key inputs


def key_inputs(
    spec: BuildSpec,
    model: Mapping[str, str],
    toolchain: Mapping[str, str],
    key_options: frozenset[str] | None = None,
) -> dict[str, Any]:
    """The complete, explicit list of what a build key depends on.

    ``model`` is the model's identity: ``{"tree_digest": …}``, plus ``"architecture_digest"``
    for an engine that takes its weights at load.
    """
    if not spec.resolved:
        raise SpecError("internal: a key needs a resolved spec (n_positions and dtype set)")
    if "tree_digest" not in model or set(model) - set(MODEL_DIGESTS):
        raise SpecError(f"internal: a build key's model identity is {sorted(model)}, not a tree digest (and an "
                        "architecture digest)")
    return {
        "kiln_key_schema": KEY_SCHEMA,
        "spec": spec.shape_json(key_options),
        "model": dict(sorted(model.items())),
        "toolchain": dict(sorted(toolchain.items())),
    }


def file_digest(path: Any) -> str:
    """``sha256:<hex>`` of a file's bytes: how a spec names an input file (a --calib-file)."""
    from pathlib import Path

    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build_key(inputs: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(inputs)).hexdigest()
