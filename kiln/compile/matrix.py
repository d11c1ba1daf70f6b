"""Build matrices: one declarative YAML file → exactly the builds that are missing.

A matrix file::

    models:                      # Hub ids (optionally pinned) or local directories
      - org/model@<revision>
      - {id: /models/other}
    targets: [torch-aoti]
    n_positions: [512, 1024]     # a list, a number, or a range:
    batch_sizes: {start: 1, stop: 8, factor: 2}   # 1, 2, 4, 8  ({start, stop, step} too)
    tp_degrees: [1]
    dtypes: [fp32]
    quantization:                # variants; "none" or SmoothQuant settings
      - none
      - {smoothquant: 0.5, per_token: true, per_channel: true, int8_kv_cache: false}
    instance_types: [ml.inf2.24xlarge]      # optional
    options: {gqa_strategy: shard-over-heads}  # target options for every row (where the target has them)
    include:                     # extra rows (fields as above, single values)
      - {model: org/model, target: neuron, n_positions: 4096, batch_size: 4, tp_degree: 8, dtype: fp16}
    exclude:                     # rows matching every field given are dropped
      - {target: torch-aoti, batch_size: 8}
    presets:                     # shipped presets as matrix entries
      - {name: jumpstart-llama2-neuron, model: org/llama-2-7b}   # model optional

Every row is validated before anything runs; all errors are reported at once, each naming its
row. Row ids are stable, readable strings (``model/target/NxB/tpT/dtype/quant[/instance]``), so a
CI job can run one row with ``kiln matrix build FILE --row ID``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import SpecError
from ..presets import load_preset
from ..spec import Field

__all__ = ["MatrixRow", "load_matrix", "expand_matrix"]

_KEYS = {"models", "targets", "n_positions", "batch_sizes", "tp_degrees", "dtypes", "quantization",
         "instance_types", "options", "include", "exclude", "presets"}
_ROW_FIELDS = {"model", "target", "n_positions", "batch_size", "tp_degree", "dtype", "quantization",
               "instance_type", "options"}


@dataclass(frozen=True)
class MatrixRow:
    id: str
    fields: Mapping[str, Field]
    source: str  # where the row came from, for error messages
    values: Mapping[str, Any] = field(default_factory=dict)  # the plain values, for include/exclude matching


def _values(raw: Any, name: str) -> list[Any]:
    if raw is None:
        return [None]
    if isinstance(raw, list):
        if not raw:
            raise SpecError(f"matrix: {name} is an empty list; remove it or give at least one value.")
        return raw
    if isinstance(raw, Mapping) and "start" in raw:
        try:
            start, stop = int(raw["start"]), int(raw["stop"])
            factor = int(raw["factor"]) if "factor" in raw else None
            step = int(raw.get("step", 1))
        except (KeyError, TypeError, ValueError):
            raise SpecError(f"matrix: {name} range {dict(raw)} needs integer start, stop and step/factor.") from None
        if factor is not None:
            if factor < 2 or start < 1:
                raise SpecError(f"matrix: {name} range factor must be >= 2 and start >= 1.")
            out, v = [], start
            while v <= stop:
                out.append(v)
                v *= factor
            return out
        if step < 1:
            raise SpecError(f"matrix: {name} range step must be >= 1.")
        return list(range(start, stop + 1, step))
    return [raw]


def _quant_fields(q: Any, src: str) -> dict[str, Field]:
    if q is None or (isinstance(q, str) and q.lower() == "none"):
        return {}
    if not isinstance(q, Mapping):
        raise SpecError(f"{src}: quantization {q!r} must be 'none' or a mapping like {{smoothquant: 0.5, per_token: true}}.")
    unknown = set(q) - {"smoothquant", "per_token", "per_channel", "int8_kv_cache"}
    if unknown:
        raise SpecError(f"{src}: unknown quantization keys {', '.join(sorted(unknown))}.")
    out = {}
    if q.get("smoothquant") is not None:
        out["smoothquant_alpha"] = Field(str(q["smoothquant"]), src)
    for k in ("per_token", "per_channel", "int8_kv_cache"):
        if k in q:
            out[k] = Field(q[k], src)
    return out


def _quant_label(q: Any) -> str:
    if q is None or (isinstance(q, str) and q.lower() == "none"):
        return "none"
    parts = [f"sq{q.get('smoothquant')}"] if q.get("smoothquant") is not None else []
    parts += [k.replace("_", "-") for k in ("per_token", "per_channel", "int8_kv_cache") if q.get(k)]
    return "+".join(parts) or "none"


def _model_id(m: Any) -> str:
    if isinstance(m, Mapping):
        mid = str(m.get("id") or m.get("model") or "")
        rev = m.get("revision")
        return f"{mid}@{rev}" if rev and "@" not in mid else mid
    return str(m)


def _short(model: str) -> str:
    base = model.rstrip("/").split("/")[-1]
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", base)


def _row(values: dict[str, Any], options: Mapping[str, Any], src: str) -> MatrixRow:
    fields: dict[str, Field] = {}
    for name in ("model", "target", "n_positions", "batch_size", "tp_degree", "dtype"):
        if values.get(name) is not None:
            fields[name] = Field(values[name], src)
    fields.update(_quant_fields(values.get("quantization"), src))
    if values.get("instance_type"):
        fields["option.instance_type"] = Field(values["instance_type"], src)
    for k, v in {**options, **(values.get("options") or {})}.items():
        fields[f"option.{k}"] = Field(str(v), src)
    rid = "/".join([
        _short(str(values.get("model"))), str(values.get("target")),
        f"{values.get('n_positions') or 'auto'}x{values.get('batch_size') or 1}", f"tp{values.get('tp_degree') or 1}",
        str(values.get("dtype") or "auto"), _quant_label(values.get("quantization")),
    ] + ([str(values["instance_type"]).removeprefix("ml.")] if values.get("instance_type") else []))
    return MatrixRow(rid, fields, src, dict(values))


def _matches(rule: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    return all(values.get(k) == v for k, v in rule.items())


def expand_matrix(doc: Mapping[str, Any], origin: str = "matrix") -> list[MatrixRow]:
    """All rows of a parsed matrix document (not yet validated against models and targets)."""
    if not isinstance(doc, Mapping):
        raise SpecError(f"{origin}: the matrix file must be a YAML mapping (models:, targets:, …).")
    unknown = set(doc) - _KEYS
    if unknown:
        raise SpecError(f"{origin}: unknown keys {', '.join(sorted(unknown))}; known: {', '.join(sorted(_KEYS))}.")
    options = doc.get("options") or {}
    if not isinstance(options, Mapping):
        raise SpecError(f"{origin}: options must be a mapping of target option names to values.")
    rows: list[MatrixRow] = []
    if "models" in doc:
        models = [_model_id(m) for m in _values(doc.get("models"), "models")]
        axes = {
            "model": models,
            "target": _values(doc.get("targets"), "targets"),
            "n_positions": _values(doc.get("n_positions"), "n_positions"),
            "batch_size": _values(doc.get("batch_sizes"), "batch_sizes"),
            "tp_degree": _values(doc.get("tp_degrees"), "tp_degrees"),
            "dtype": _values(doc.get("dtypes"), "dtypes"),
            "quantization": _values(doc.get("quantization"), "quantization"),
            "instance_type": _values(doc.get("instance_types"), "instance_types"),
        }
        names = list(axes)
        for i, combo in enumerate(itertools.product(*axes.values())):
            rows.append(_row(dict(zip(names, combo)), options, f"{origin} (combination {i + 1})"))
    for i, inc in enumerate(doc.get("include") or []):
        if not isinstance(inc, Mapping) or set(inc) - _ROW_FIELDS:
            raise SpecError(f"{origin}: include entry {i + 1} must map fields of {', '.join(sorted(_ROW_FIELDS))}.")
        values = dict(inc)
        values["model"] = _model_id(values.get("model"))
        rows.append(_row(values, options, f"{origin} (include {i + 1})"))
    for i, p in enumerate(doc.get("presets") or []):
        name = p.get("name") if isinstance(p, Mapping) else p
        model = p.get("model") if isinstance(p, Mapping) else None
        for prow in load_preset(str(name), model=model):
            values = {"model": prow.model, "target": prow.target, "n_positions": prow.n_positions,
                      "batch_size": prow.batch_size, "tp_degree": prow.tp_degree, "dtype": prow.dtype,
                      "instance_type": prow.instance_type}
            rows.append(_row(values, options, f"{origin} (preset {name} row {prow.id})"))
    excludes = doc.get("exclude") or []
    for i, rule in enumerate(excludes):
        if not isinstance(rule, Mapping) or set(rule) - _ROW_FIELDS:
            raise SpecError(f"{origin}: exclude entry {i + 1} must map fields of {', '.join(sorted(_ROW_FIELDS))}.")
    out, seen = [], set()
    for r in rows:
        if any(_matches(rule, r.values) for rule in excludes) or r.id in seen:
            continue
        seen.add(r.id)
        out.append(r)
    if not out:
        raise SpecError(f"{origin}: the matrix has no rows (no models/include/presets, or everything excluded).")
    return out


def load_matrix(path: Path) -> list[MatrixRow]:
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise SpecError(f"matrix file {path} does not exist.") from None
    except yaml.YAMLError as e:
        raise SpecError(f"matrix file {path} is not valid YAML: {e}") from None
    return expand_matrix(doc, origin=str(path))
