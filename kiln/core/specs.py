"""Specs from what users write: CLI flags, LMI ``OPTION_*`` variables, serving.properties.

Every source becomes raw :class:`~kiln.spec.Field` s (a value and where it was written), and
:func:`spec_from_fields` turns any mix of them into one :class:`~kiln.spec.BuildSpec`, so the
same settings give the same spec and key whichever way they were written.
"""

from __future__ import annotations

import os
import re
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from ..errors import SpecError, ToolchainError
from .._input import show
from ..spec import LIMITS, BuildSpec, Field, Quantization, normalize_dtype, parse_alpha, parse_bool, parse_positive_int
from ..targets import TARGETS, normalize_target
from ..targets.instances import instance_devices

__all__ = ["SpecSource", "spec_from_fields", "spec_from_sources", "parse_toolchain_pins", "with_each_consumer"]


_OPTION_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
_FIELD_NAMES = ("target", "model", "n_positions", "batch_size", "tp_degree", "dtype", "smoothquant_alpha",
                "per_token", "per_channel", "int8_kv_cache")


def spec_from_fields(fields: Mapping[str, Field]) -> BuildSpec:
    """Build a :class:`BuildSpec` from raw fields gathered by any of the three parsers.

    Known field names: target, model, n_positions, batch_size, tp_degree, dtype,
    smoothquant_alpha, per_token, per_channel, int8_kv_cache, and ``option.<name>`` for target
    options; any other name is an error (a misspelt field must not be silently dropped). A
    value that is not a :class:`Field` is taken as written under its own name (the Python API:
    ``spec_from_fields({"target": "torch-aoti", ...})``). Every bad value raises
    :class:`SpecError` naming its source; integers are bounded by :data:`kiln.spec.LIMITS`.
    """
    fields = {str(name): _printable(f if isinstance(f, Field) else Field(f, str(name))) for name, f in fields.items()}
    unknown = sorted(n for n in fields if n not in _FIELD_NAMES and not n.startswith("option."))
    if unknown:
        raise SpecError(
            f"{show(unknown[0])} is not a spec field; the fields are {', '.join(_FIELD_NAMES)} "
            "and option.NAME for target options."
        )

    def get(name: str) -> Field | None:
        f = fields.get(name)
        if f is None or f.value is None:
            return None
        if isinstance(f.value, str) and not f.value.strip():
            # `--smoothquant ""` or `-o device=` must not quietly mean "the default".
            raise SpecError(f"{f.source} is empty; give it a value, or leave it out for the default.")
        return f

    target_f = get("target")
    if target_f is None:
        raise SpecError(
            f"no target given; pass --target ({', '.join(TARGETS)}), or set "
            "OPTION_KILN_TARGET, or OPTION_ROLLING_BATCH / OPTION_ENTRYPOINT so Kiln can infer it."
        )
    if not isinstance(target_f.value, str):
        raise SpecError(f"{target_f.source}={show(target_f.value)} is not a Kiln target; write one of {', '.join(TARGETS)}.")
    target = normalize_target(target_f.value, target_f.source)
    model_f = get("model")
    if model_f is None:
        raise SpecError(
            "no model given; pass MODEL (a Hub id such as org/name[@revision] or a local "
            "directory), or set OPTION_MODEL_ID / HF_MODEL_ID, or option.model_id."
        )
    if not isinstance(model_f.value, (str, os.PathLike)):
        raise SpecError(f"{model_f.source}={show(model_f.value)} must be a Hub id (org/name[@revision]) or a directory.")
    model = os.fspath(model_f.value).strip()

    def int_or(name: str, default: int | None) -> int | None:
        f = get(name)
        return default if f is None else parse_positive_int(f.value, f.source, LIMITS[name])

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
            raise SpecError(f"{f.source}: {show(opt)} is not a valid target option name (letters, digits, _).")
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


def _printable(f: Field) -> Field:
    """Messages name a field's source: keep them one line whatever the user typed (``--option $'a\\nb=1'``)."""
    source = str(f.source)
    return f if source.isprintable() and source == f.source else Field(f.value, source if source.isprintable() else repr(source))


@dataclass(frozen=True)
class SpecSource:
    """A spec plus what its parser decided and ignored (for --explain)."""

    spec: BuildSpec
    ignored: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()
    given: frozenset[str] = frozenset()  # spec fields the user actually wrote (not defaults)
    # Query fields left open (``{"consumer"}``: an LMI configuration that names none, read for a lookup):
    # the caller tries each choice (:func:`with_each_consumer`).
    open_fields: frozenset[str] = frozenset()


def spec_from_sources(
    flags: Mapping[str, Field],
    *,
    from_env: bool = False,
    env: Mapping[str, str] | None = None,
    serving_properties: Path | None = None,
    open_consumer: bool = False,
) -> SpecSource:
    """Merge CLI flags with an LMI env and/or serving.properties into one spec.

    Precedence: explicit CLI flags > serving.properties > OPTION_* env (the file beats the
    environment, as in DJL Serving). An LMI configuration of a target with consumers must name one
    (or run inside one); ``open_consumer`` (a lookup) leaves it open instead, in ``open_fields``.
    """
    if not from_env and serving_properties is None:
        return _with_detected_consumer(SpecSource(spec_from_fields(flags), given=frozenset(flags)), from_lmi=False)
    from ..lmi import interpret, properties_from_env, read_serving_properties  # only LMI configurations need it

    env_map = os.environ if env is None else env
    props = {}
    if from_env:
        props.update(properties_from_env(env_map))
    if serving_properties is not None:
        props.update(read_serving_properties(serving_properties))
    instance = flags.get("option.instance_type")
    target_flag = flags.get("target")
    cfg = interpret(
        props,
        target=str(target_flag.value) if target_flag is not None else None,
        instance_type=str(instance.value) if instance is not None else None,
        instance_cores=instance_devices(str(instance.value)) if instance is not None else None,
        serving_features=env_map.get("SERVING_FEATURES"),
        tp_degree_given="tp_degree" in flags,  # --tp-degree wins over a tensor_parallel_degree=max
    )
    merged = {**cfg.fields, **flags}
    unset_option = TARGETS[normalize_target(str(merged["target"].value), "target")].lmi.unset_option \
        if "target" in merged else None
    if unset_option and f"option.{unset_option}" in merged:  # a flag that gives a field: no longer left to LMI
        left = [n for n in str(merged[f"option.{unset_option}"].value).split(",") if n not in flags]
        if left:
            merged[f"option.{unset_option}"] = Field(",".join(left), merged[f"option.{unset_option}"].source)
        else:
            del merged[f"option.{unset_option}"]
    given = frozenset(k for k, f in merged.items() if not f.source.startswith("LMI default"))
    source = _with_detected_consumer(SpecSource(spec_from_fields(merged), cfg.ignored, cfg.notes, given), from_lmi=True)
    spec = source.spec
    choices = TARGETS[spec.target].lmi.consumers
    if choices and spec.option("consumer") is None and open_consumer:
        return dataclasses.replace(source, open_fields=frozenset({"consumer"}))
    if choices and spec.option("consumer") is None:
        # LMI's defaults (n_positions, batching, the SDK its image ships) differ by release: guessing
        # would build graphs the container cannot load.
        raise SpecError(
            f"an LMI configuration of a {spec.target} engine must name its consumer: the LMI release decides how "
            f"the engine is compiled. Pass --consumer (or set OPTION_KILN_CONSUMER) to one of {', '.join(choices)}.")
    return source


def with_each_consumer(source: SpecSource) -> list[tuple[str, SpecSource]]:
    """One closed source per consumer of the target, newest release first (for an open consumer)."""
    if "consumer" not in source.open_fields:
        return [(str(source.spec.option("consumer")), source)]
    out = []
    for consumer in reversed(TARGETS[source.spec.target].lmi.consumers):
        options = tuple(sorted({**dict(source.spec.options), "consumer": consumer}.items()))
        out.append((consumer, dataclasses.replace(source, spec=source.spec.replace(options=options),
                                                  open_fields=source.open_fields - {"consumer"})))
    return out


def _with_detected_consumer(source: SpecSource, *, from_lmi: bool) -> SpecSource:
    """A spec that names no consumer, read inside one of its target's consumers (an LMI NeuronX image),
    is for that consumer: what this container loads."""
    spec = source.spec
    target = TARGETS[spec.target]
    if not target.consumers or spec.option("consumer") is not None:
        return source
    detected = target.detect_consumer()
    if detected is None:
        return source
    options = tuple(sorted({**dict(spec.options), "consumer": detected[0]}.items()))
    notes = (f"consumer: {detected[0]}, detected from {detected[1]}",)
    left = [f for f in ("tp_degree", "batch_size", "n_positions") if f not in source.given]
    if left and not from_lmi:
        # Flags, not LMI configuration: what they leave out is Kiln's default, not the release's.
        notes += (f"{', '.join(left)} not given: Kiln's defaults, not {detected[0]}'s (read the container's "
                  "configuration with --from-env for those)",)
    return dataclasses.replace(source, spec=spec.replace(options=options), notes=source.notes + notes,
                               given=source.given | {"option.consumer"})


def parse_toolchain_pins(pins: Iterable[str]) -> dict[str, str]:
    """``--toolchain NAME=VERSION[,NAME=VERSION]`` values → {component: version}."""
    out: dict[str, str] = {}
    for pin in pins:
        for part in str(pin).split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, version = part.partition("=")
            if not sep or not name.strip() or not version.strip():
                raise ToolchainError(
                    f"--toolchain {part!r} is not NAME=VERSION; write e.g. --toolchain neuronx-cc=2.15.128 "
                    "or --toolchain hardware=cuda-sm90."
                )
            out[name.strip()] = version.strip()
    return out
