"""Build matrices: one declarative YAML file → exactly the rows to build, each with a unique id.

docs/ci.md documents the format completely (every key, value forms, include/exclude, presets,
toolchain pins, limits, row ids, with a full example); in short::

    models: [org/model@<commit>, {id: /models/other}]
    targets: [torch-aoti]
    n_positions: [512, 1024]                      # a list, one value, or a range:
    batch_sizes: {start: 1, stop: 8, factor: 2}   # 1, 2, 4, 8  ({start, stop, step} too)
    quantization: [none, {smoothquant: 0.5, per_token: true}]
    options: {gqa_strategy: shard-over-heads}     # target options for every row
    toolchain: {trtllm: {tensorrt_llm: 0.21.0, tensorrt: 10.11.0, hardware: cuda-sm90}}
    include: [{model: org/x, target: neuron, n_positions: 4096, instance_type: ml.inf2.24xlarge}]
    exclude: [{target: torch-aoti, batch_size: 8}]
    presets: [{name: jumpstart-llama2-neuron, model: org/llama-2-7b}]

What this module promises (each was a defect once):

* **No row is dropped silently.** A row's identity is its whole spec: the model ref as written,
  target, every shape field, dtype, quantization, instance type, every option and its toolchain
  pins. Rows with equal identities are the same build and are *merged*, and the merge is
  reported (``MatrixRow.merged``); rows that differ are never merged, whatever their ids.
* **Ids are unique, readable and stable** for a given file:
  ``MODEL/TARGET/NxB/tpT/DTYPE/QUANT[/INSTANCE][/OPT=V+OPT=V]`` with the model ref as written.
  Characters outside ``[A-Za-z0-9._@=+:/-]`` become ``_``; where that (or anything else) makes
  two different rows read the same, or an id is longer than ``MAX_ID_CHARS``, each such row
  gets ``~`` and the first 10 hex digits of the sha256 of its identity.
* **Bad files are one clear error before any work** (:class:`SpecError`, exit 2): a file that
  is binary, not UTF-8/16/32, too large, not YAML, of the wrong shape (a number where a list or
  mapping belongs), with huge integers or ranges, or one that would expand to more than
  ``MAX_ROWS`` rows — the size is computed from the axes before anything is expanded.
  Every container is type-checked before it is walked and values are quoted through
  :func:`kiln._input.show`, so self-referencing YAML (``&a [*a]``) or a 5000-digit integer
  cannot hang or crash the reader.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from .._input import read_small_file, show
from ..errors import SpecError
from ..presets import load_preset
from ..spec import LIMITS, Field, normalize_dtype, parse_alpha, parse_bool, parse_positive_int
from ..targets import get_target, normalize_target

__all__ = ["MatrixRow", "load_matrix", "expand_matrix", "MAX_ROWS", "MAX_FILE_BYTES", "MAX_ID_CHARS"]

MAX_ROWS = 10_000  # rows one file may expand to (product + include + presets), checked before expanding
MAX_FILE_BYTES = 1 << 20  # a matrix file larger than this is refused before it is parsed
MAX_ID_CHARS = 200  # longer readable ids are cut and get the hash suffix
MAX_TEXT = 1000  # characters of one model ref, dtype, instance type, option value or version

# Top-level axis key -> the row field it fills.
_AXES = {"models": "model", "targets": "target", "n_positions": "n_positions", "batch_sizes": "batch_size",
         "tp_degrees": "tp_degree", "dtypes": "dtype", "quantization": "quantization",
         "instance_types": "instance_type", "consumers": "consumer"}
_KEYS = (*_AXES, "options", "toolchain", "allow_unpinned_toolchain", "include", "exclude", "presets")
_ROW_FIELDS = (*_AXES.values(), "options", "toolchain")
_RULE_FIELDS = tuple(f for f in _ROW_FIELDS if f != "toolchain")
_INT_FIELDS = ("n_positions", "batch_size", "tp_degree")
_QUANT_FLAGS = ("per_token", "per_channel", "int8_kv_cache")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._@=+:/-]")
_OPTION_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


@dataclass(frozen=True)
class MatrixRow:
    """One build of a matrix: its id, the spec fields it gives, and where it was written."""

    id: str
    fields: Mapping[str, Field]  # what kiln.core.spec_from_sources takes
    source: str  # where the row came from ("m.yaml (combination 3)"), for messages
    values: Mapping[str, Any] = field(default_factory=dict)  # normalised fields: identity and exclude matching
    toolchain: Mapping[str, str] = field(default_factory=dict)  # pins from the file for this row's target
    allow_unpinned_toolchain: bool = False  # the file's explicit (dangerous) opt-out, see kiln.compile.plan
    merged: tuple[str, ...] = ()  # sources of identical rows merged into this one

    @property
    def identity(self) -> str:
        """Canonical JSON of everything that makes this row a different build."""
        return _identity(self.values, self.toolchain)

    @property
    def target(self) -> str:
        return str(self.values["target"])


# --------------------------------------------------------------------------- reading the file


def load_matrix(path: Path) -> list[MatrixRow]:
    """Read, parse and expand a matrix file; every problem is one SpecError naming the fix."""
    import yaml

    data = read_small_file(path, MAX_FILE_BYTES, "matrix file", SpecError,
                           "pass the matrix YAML file (docs/ci.md describes the format)")
    text = _decode(data, str(path))
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"matrix file {path} is not valid YAML ({_yaml_problem(e)}); fix that line.") from None
    except RecursionError:
        raise SpecError(f"matrix file {path} nests lists or mappings too deeply for a matrix; flatten it.") from None
    except (ValueError, OverflowError) as e:
        # PyYAML's int() of a literal longer than Python's int-conversion limit (4300 digits)
        raise SpecError(f"matrix file {path} holds a number Kiln cannot read ({_flat(str(e))}); "
                        "write a realistic value.") from None
    return expand_matrix(doc, origin=str(path))


def _decode(data: bytes, where: str) -> str:
    """UTF-8 (with or without a BOM), or UTF-16/UTF-32 *with* a BOM; anything else is refused."""
    for bom, codec in ((b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe\x00\x00", "utf-32"),  # before UTF-16's
                       (b"\xfe\xff", "utf-16"), (b"\xff\xfe", "utf-16"), (b"\xef\xbb\xbf", "utf-8-sig")):
        if data.startswith(bom):
            break
    else:
        codec = "utf-8"
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as e:
        raise SpecError(
            f"matrix file {where} is not {codec.upper().replace('-SIG', '')} text (byte {e.start} cannot be "
            "decoded; is it binary?); save it as UTF-8 (or UTF-16/UTF-32 with a byte-order mark)."
        ) from None
    if "\x00" in text:
        raise SpecError(f"matrix file {where} contains NUL characters: it is binary, or UTF-16/UTF-32 without "
                        "a byte-order mark; save it as UTF-8.")
    return text


def _flat(text: str, limit: int = 160) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[:limit] + "…"


def _yaml_problem(e: Exception) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if problem and mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {_flat(str(problem))}"
    return _flat(str(e))


# --------------------------------------------------------------------------- values


def _text(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"{where}={show(value)} must be {what} (a non-empty string); quote it if YAML read "
                        "it as something else.")
    if len(value) > MAX_TEXT or not value.isprintable():
        raise SpecError(f"{where}={show(value)} must be printable and at most {MAX_TEXT} characters.")
    return value.strip()


def _model(value: Any, where: str) -> str:
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in ("id", "model", "revision")]
        if unknown:
            raise SpecError(f"{where}: unknown model key {show(unknown[0])}; a model is a string or {{id: ..., revision: ...}}.")
        ref = _text(value.get("id", value.get("model")), f"{where}.id", "a Hub id or a local directory")
        rev = value.get("revision")
        if rev is None:
            return ref
        rev = _text(rev, f"{where}.revision", "a revision (branch, tag or commit; quote digits)")
        return ref if "@" in ref else f"{ref}@{rev}"
    return _text(value, where, "a Hub id (org/name[@revision]) or a local directory")


def _target(value: Any, where: str) -> str:
    return normalize_target(_text(value, where, "a target name"), where)


def _int(name: str) -> Callable[[Any, str], int | None]:
    def parse(value: Any, where: str) -> int | None:
        if value is None:
            return None
        if not isinstance(value, (int, float, str)):
            raise SpecError(f"{where}={show(value)} must be a positive integer, for example 4096.")
        return parse_positive_int(value, where, maximum=LIMITS[name])
    return parse


def _dtype(value: Any, where: str) -> str | None:
    return None if value is None else normalize_dtype(_text(value, where, "a dtype"), where)


def _instance(value: Any, where: str) -> str | None:
    return None if value is None else _text(value, where, "an instance type such as ml.inf2.24xlarge")


def _consumer(value: Any, where: str) -> str | None:
    return None if value is None else _text(value, where, "a consumer such as lmi-neuronx:0.29.0").strip().lower()


def _quant(value: Any, where: str) -> dict[str, Any]:
    """A quantization variant, normalised: {} for none; alpha as a float; flags only when true."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}={show(value)} must be 'none' or a mapping like {{smoothquant: 0.5, per_token: true}}.")
    unknown = [k for k in value if k not in ("smoothquant", *_QUANT_FLAGS)]
    if unknown:
        raise SpecError(f"{where}: unknown quantization key {show(unknown[0])}; known: smoothquant, "
                        + ", ".join(_QUANT_FLAGS) + ".")
    out: dict[str, Any] = {}
    if value.get("smoothquant") is not None:
        out["smoothquant"] = parse_alpha(value["smoothquant"], f"{where}.smoothquant")
    for flag in _QUANT_FLAGS:
        if flag in value and value[flag] is not None and parse_bool(_scalar(value[flag], f"{where}.{flag}"), f"{where}.{flag}"):
            out[flag] = True
    return out


def _scalar(value: Any, where: str) -> Any:
    if isinstance(value, (Mapping, list)):
        raise SpecError(f"{where} must be a single value, not a {'mapping' if isinstance(value, Mapping) else 'list'}.")
    return value


def _option_value(value: Any, where: str) -> str:
    _scalar(value, where)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > 63:
            raise SpecError(f"{where}={show(value)} is too large for a target option; write a realistic value.")
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError(f"{where}={show(value)} must be a finite number.")
        return repr(value)
    return _text(value, where, "a target option value")


def _options(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}={show(value)} must be a mapping of target option names to values, "
                        "e.g. {gqa_strategy: shard-over-heads}.")
    out = {}
    for k, v in value.items():
        # spelled the way kiln.core.specs reads option names, so {gqa-strategy: x} and
        # {gqa_strategy: x} are one row
        name = _text(k, f"{where} key", "an option name").lower().replace("-", "_")
        if not _OPTION_NAME.match(name):
            raise SpecError(f"{where}: {show(k)} is not a valid target option name (letters, digits, _).")
        if name == "instance_type":
            raise SpecError(f"{where}: instance_type is a row field; write instance_types: [...] (or instance_type: "
                            "in an include row) instead of an option.")
        out[name] = _option_value(v, f"{where}.{name}")
    return out


def _versions(value: Any, where: str) -> dict[str, str]:
    """{component: version}; versions must be strings (YAML reads 2.10 as the number 2.1)."""
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}={show(value)} must be a mapping of toolchain components to versions, "
                        "e.g. {neuronx-cc: '2.15.128', hardware: neuron-inf2}.")
    out = {}
    for comp, version in value.items():
        comp = _text(comp, f"{where} key", "a toolchain component")
        if isinstance(version, (int, float)) and not isinstance(version, bool):
            raise SpecError(f"{where}.{comp}={show(version)} is a number in YAML (2.10 would read as 2.1); "
                            f"quote the version as released, e.g. {comp}: '2.10.0'.")
        out[comp] = _text(version, f"{where}.{comp}", "a version")
    return out


_NORMALISE: dict[str, Callable[[Any, str], Any]] = {
    "model": _model, "target": _target, "n_positions": _int("n_positions"), "batch_size": _int("batch_size"),
    "tp_degree": _int("tp_degree"), "dtype": _dtype, "quantization": _quant, "instance_type": _instance,
    "consumer": _consumer, "options": _options,
}


def _range(raw: Mapping[str, Any], name: str, key: str, where: str) -> list[int]:
    """{start, stop, step} or {start, stop, factor}, both ends included; its length is checked first."""
    unknown = [k for k in raw if k not in ("start", "stop", "step", "factor")]
    if unknown or "start" not in raw or "stop" not in raw or ("step" in raw and "factor" in raw):
        raise SpecError(f"{where}: a range is {{start: N, stop: M}} with step: S or factor: F (not both); "
                        f"{key} has keys {', '.join(show(k) for k in raw)}.")
    limit = LIMITS[name]
    start = parse_positive_int(_scalar(raw["start"], f"{where}.start"), f"{where}.start", maximum=limit)
    stop = parse_positive_int(_scalar(raw["stop"], f"{where}.stop"), f"{where}.stop", maximum=limit)
    if start > stop:
        raise SpecError(f"{where}: range start {start} is above stop {stop}; the range would be empty.")
    if "factor" in raw:
        factor = parse_positive_int(_scalar(raw["factor"], f"{where}.factor"), f"{where}.factor", maximum=limit)
        if factor < 2:
            raise SpecError(f"{where}.factor={factor} must be at least 2 (use step: for arithmetic ranges).")
        out, v = [], start
        while v <= stop:  # at most log2(limit) values
            out.append(v)
            v *= factor
        return out
    step = parse_positive_int(_scalar(raw.get("step", 1), f"{where}.step"), f"{where}.step", maximum=limit)
    span = range(start, stop + 1, step)
    if len(span) > MAX_ROWS:
        raise SpecError(f"{where}: the range has {len(span)} values, more than the {MAX_ROWS} rows a matrix may have; "
                        "use a larger step or factor.")
    return list(span)


def _axis(doc: Mapping[str, Any], key: str, where: str) -> list[Any]:
    """The normalised values of one top-level axis: [None] when absent."""
    name = _AXES[key]
    raw = doc.get(key)
    if raw is None:
        if key == "models" and key in doc:
            raise SpecError(f"{where}: models is empty; list at least one model, or remove the key.")
        return [None]
    if isinstance(raw, list):
        if not raw:
            raise SpecError(f"{where}: {key} is an empty list; remove it or give at least one value.")
        items: list[Any] = raw
    elif isinstance(raw, Mapping) and name in _INT_FIELDS:
        return _range(raw, name, key, f"{where}: {key}")
    elif isinstance(raw, Mapping) and name not in ("model", "quantization"):
        raise SpecError(f"{where}: {key} must be a value or a list of values, not a mapping.")
    else:  # one value (a model mapping or a quantization variant counts as one)
        return [_NORMALISE[name](raw, f"{where}: {key}")]
    if len(items) > MAX_ROWS:
        raise SpecError(f"{where}: {key} has {len(items)} values, more than the {MAX_ROWS} rows a matrix may have.")
    return [_NORMALISE[name](item, f"{where}: {key}[{i}]") for i, item in enumerate(items)]


def _entries(doc: Mapping[str, Any], key: str, where: str) -> list[Any]:
    raw = doc.get(key)
    if raw is None:
        return []
    if not isinstance(raw, list):
        what = {"include": "row", "exclude": "rule", "presets": "preset"}[key]
        raise SpecError(f"{where}: {key} must be a list (one '- ' entry per {what}), "
                        f"not {show(raw) if not isinstance(raw, Mapping) else 'a mapping'}.")
    if len(raw) > MAX_ROWS:
        raise SpecError(f"{where}: {key} has {len(raw)} entries, more than the {MAX_ROWS} rows a matrix may have.")
    return raw


def _row_mapping(entry: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise SpecError(f"{where} must be a mapping of {', '.join(allowed)}, not {show(entry) if not isinstance(entry, list) else 'a list'}.")
    unknown = [k for k in entry if k not in allowed]
    if unknown:
        raise SpecError(f"{where}: unknown field {show(unknown[0])}; a row has {', '.join(allowed)}.")
    return {k: _NORMALISE[k](v, f"{where}.{k}") for k, v in entry.items() if k != "toolchain"}


# --------------------------------------------------------------------------- toolchain pins


@dataclass(frozen=True)
class _Pins:
    flat: Mapping[str, str]  # component -> version, for every row whose target has the component
    by_target: Mapping[str, Mapping[str, str]]  # target -> its own pins

    def for_target(self, target: str, row: Mapping[str, str]) -> dict[str, str]:
        components = get_target(target).components
        unknown = [c for c in row if c not in components]
        if unknown:
            raise SpecError(f"toolchain {show(unknown[0])} is not a component of the {target} toolchain; "
                            f"its components are {', '.join(components)}.")
        return {**{c: v for c, v in self.flat.items() if c in components}, **self.by_target.get(target, {}), **row}


def _top_pins(raw: Any, where: str) -> _Pins:
    if raw is None:
        return _Pins({}, {})
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}: toolchain={show(raw)} must be a mapping: {{component: version}} for every row, "
                        "or {target: {component: version}} per target.")
    flat = {k: v for k, v in raw.items() if not isinstance(v, Mapping)}
    by_target: dict[str, dict[str, str]] = {}
    for name, pins in raw.items():
        if isinstance(pins, Mapping):
            target = _target(name, f"{where}: toolchain key")
            comps = _versions(pins, f"{where}: toolchain.{name}")
            unknown = [c for c in comps if c not in get_target(target).components]
            if unknown:
                raise SpecError(f"{where}: toolchain.{name}: {show(unknown[0])} is not a component of the {target} "
                                f"toolchain; its components are {', '.join(get_target(target).components)}.")
            by_target[target] = comps
    return _Pins(_versions(flat, f"{where}: toolchain"), by_target)


# --------------------------------------------------------------------------- rows and ids


def _identity(values: Mapping[str, Any], toolchain: Mapping[str, str]) -> str:
    return json.dumps({**values, "toolchain": dict(toolchain)}, sort_keys=True, separators=(",", ":"))


def _quant_label(q: Mapping[str, Any]) -> str:
    parts = [f"sq{q['smoothquant']:g}"] if "smoothquant" in q else []
    parts += [k.replace("_", "-") for k in _QUANT_FLAGS if q.get(k)]
    return "+".join(parts) or "none"


def _readable_id(v: Mapping[str, Any]) -> str:
    parts = [v["model"], v["target"], f"{v['n_positions'] or 'auto'}x{v['batch_size']}", f"tp{v['tp_degree']}",
             v["dtype"] or "auto", _quant_label(v["quantization"])]
    if v["instance_type"]:
        parts.append(v["instance_type"].removeprefix("ml."))
    if v["options"]:
        parts.append("+".join(f"{k}={val}" for k, val in sorted(v["options"].items())))
    return _ID_UNSAFE.sub("_", "/".join(parts))


def _fields(v: Mapping[str, Any], src: str) -> dict[str, Field]:
    fields = {name: Field(v[name], src) for name in ("model", "target", *_INT_FIELDS, "dtype") if v[name] is not None}
    q = v["quantization"]
    if "smoothquant" in q:
        fields["smoothquant_alpha"] = Field(q["smoothquant"], src)
    fields.update({flag: Field(True, src) for flag in _QUANT_FLAGS if q.get(flag)})
    if v["instance_type"]:
        fields["option.instance_type"] = Field(v["instance_type"], src)
    fields.update({f"option.{k}": Field(val, src) for k, val in v["options"].items()})
    return fields


def _row(given: Mapping[str, Any], ctx: "_Context", src: str, row_pins: Mapping[str, str] | None = None) -> MatrixRow:
    values = {name: given.get(name) for name in _RULE_FIELDS}
    values["quantization"] = dict(given.get("quantization") or {})
    target = get_target(values["target"])
    # Top-level options reach the rows whose target has them (a matrix of trtllm and neuron rows
    # shares one options: block); a row's own options are its own and validated as written.
    shared = {k: v for k, v in ctx.options.items() if target.has_option(k)}
    values["options"] = {**shared, **(given.get("options") or {})}
    if values.get("consumer"):  # who loads the row's engine: keyed as the spec's consumer option
        values["options"]["consumer"] = values["consumer"]
    values["batch_size"] = values["batch_size"] or 1  # the spec's defaults, so "absent" and "1" are one row
    values["tp_degree"] = values["tp_degree"] or 1
    try:
        pins = ctx.pins.for_target(values["target"], row_pins or {})
    except SpecError as e:
        raise SpecError(f"{src}: {e}") from None
    return MatrixRow("", _fields(values, src), src, values, pins, ctx.allow_unpinned)


@dataclass(frozen=True)
class _Context:
    options: Mapping[str, str]
    pins: _Pins
    allow_unpinned: bool


def _matches(rule: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    """Every field the rule gives equals the row's (options: each option given equals the row's)."""
    for k, want in rule.items():
        if k == "options":
            if any(values["options"].get(name) != val for name, val in want.items()):
                return False
        elif values.get(k) != (want or 1 if k in ("batch_size", "tp_degree") else want):
            return False
    return True


def _assign_ids(rows: list[MatrixRow]) -> list[MatrixRow]:
    by_id: dict[str, list[int]] = {}
    readable = [_readable_id(r.values) for r in rows]
    for i, rid in enumerate(readable):
        by_id.setdefault(rid, []).append(i)
    out = []
    for i, (row, rid) in enumerate(zip(rows, readable)):
        if len(by_id[rid]) > 1 or len(rid) > MAX_ID_CHARS:
            digest = hashlib.sha256(row.identity.encode()).hexdigest()[:10]
            rid = f"{rid[:MAX_ID_CHARS - 11]}~{digest}"
        out.append(replace(row, id=rid))
    return out


def expand_matrix(doc: Any, origin: str = "matrix") -> list[MatrixRow]:
    """All rows of a parsed matrix document (validated in shape; models and targets are checked by planning)."""
    if doc is None:
        raise SpecError(f"{origin}: the matrix file is empty; docs/ci.md shows the format (models:, targets:, …).")
    if not isinstance(doc, Mapping):
        raise SpecError(f"{origin}: the matrix file must be a YAML mapping (models:, targets:, …), not {show(doc) if not isinstance(doc, list) else 'a list'}.")
    unknown = [k for k in doc if k not in _KEYS]
    if unknown:
        raise SpecError(f"{origin}: unknown key {show(unknown[0])}; known: {', '.join(sorted(_KEYS))}.")
    allow = doc.get("allow_unpinned_toolchain") or False
    if not isinstance(allow, bool):
        raise SpecError(f"{origin}: allow_unpinned_toolchain={show(allow)} must be true or false.")
    ctx = _Context(_options(doc.get("options"), f"{origin}: options"), _top_pins(doc.get("toolchain"), origin), allow)
    axes = {name: _axis(doc, key, origin) for key, name in _AXES.items()} if "models" in doc else {}
    if "models" not in doc and any(k in doc for k in _AXES):
        raise SpecError(f"{origin}: {', '.join(k for k in _AXES if k in doc)} given without models:; add models: "
                        "(or write the rows under include:).")
    includes = _entries(doc, "include", origin)
    presets = [_preset(p, f"{origin}: presets[{i}]") for i, p in enumerate(_entries(doc, "presets", origin))]
    product = math.prod(len(v) for v in axes.values()) if axes else 0
    total = product + len(includes) + sum(len(rows) for _, rows in presets)
    if total > MAX_ROWS:
        sizes = " × ".join(f"{len(v)} {k}" for k, v in zip(_AXES, axes.values()) if len(v) > 1)
        raise SpecError(f"{origin}: the matrix would have {total} rows ({sizes or 'product'} = {product}, plus "
                        f"{total - product} from include/presets), more than the limit of {MAX_ROWS}; split it into "
                        "several files or narrow the axes.")
    if axes and axes["target"] == [None]:
        raise SpecError(f"{origin}: targets: is missing; name the target(s) to build for, e.g. targets: [torch-aoti].")
    rows: list[MatrixRow] = []
    for i, combo in enumerate(itertools.product(*axes.values()) if axes else ()):
        rows.append(_row(dict(zip(axes, combo)), ctx, f"{origin} (combination {i + 1})"))
    for i, inc in enumerate(includes):
        where = f"{origin}: include[{i}]"
        given = _row_mapping(inc, _ROW_FIELDS, where)
        if given.get("model") is None or given.get("target") is None:
            raise SpecError(f"{where} needs model: and target: (an include entry is a whole row).")
        pins = _versions(inc["toolchain"], f"{where}.toolchain") if inc.get("toolchain") is not None else {}
        rows.append(_row(given, ctx, f"{origin} (include {i + 1})", pins))
    for name, prows in presets:
        for prow in prows:
            values = {"model": prow.model, "target": prow.target, "n_positions": prow.n_positions,
                      "batch_size": prow.batch_size, "tp_degree": prow.tp_degree,
                      "dtype": normalize_dtype(prow.dtype), "instance_type": prow.instance_type}
            rows.append(_row(values, ctx, f"{origin} (preset {name} row {prow.id})"))
    _check_shared(ctx, rows, origin)
    rules = []
    for i, rule in enumerate(_entries(doc, "exclude", origin)):
        normalised = _row_mapping(rule, _RULE_FIELDS, f"{origin}: exclude[{i}]")
        if not normalised:
            raise SpecError(f"{origin}: exclude[{i}] is empty and would drop every row; give the fields to match.")
        rules.append(normalised)
    kept: dict[str, MatrixRow] = {}
    for r in rows:
        if any(_matches(rule, r.values) for rule in rules):
            continue
        first = kept.get(r.identity)
        kept[r.identity] = r if first is None else replace(first, merged=(*first.merged, r.source))
    if not kept:
        raise SpecError(f"{origin}: the matrix has no rows (no models/include/presets, or everything excluded).")
    return _assign_ids(list(kept.values()))


def _preset(entry: Any, where: str) -> tuple[str, list[Any]]:
    if isinstance(entry, Mapping):
        unknown = [k for k in entry if k not in ("name", "model")]
        if unknown:
            raise SpecError(f"{where}: unknown key {show(unknown[0])}; a preset entry is a name or {{name: ..., model: ...}}.")
        name = _text(entry.get("name"), f"{where}.name", "a preset name (`kiln presets` lists them)")
        model = _model(entry["model"], f"{where}.model") if entry.get("model") is not None else None
    else:
        name, model = _text(entry, where, "a preset name (`kiln presets` lists them)"), None
    try:
        return name, load_preset(name, model=model)
    except SpecError as e:
        raise SpecError(f"{where}: {e}") from None


def _check_shared(ctx: _Context, rows: list[MatrixRow], origin: str) -> None:
    """Top-level options and flat pins apply where a target has them, so each must fit some target."""
    targets = sorted({r.target for r in rows})
    stray = [k for k in ctx.options if not any(get_target(t).has_option(k) for t in targets)]
    if stray:
        raise SpecError(f"{origin}: options: {show(stray[0])} is not an option of any target in this matrix ("
                        + "; ".join(f"{t}: {', '.join(o.name for o in get_target(t).options) or 'none'}" for t in targets)
                        + ").")
    _check_flat_pins(ctx.pins, rows, origin)


def _check_flat_pins(pins: _Pins, rows: list[MatrixRow], origin: str) -> None:
    targets = sorted({r.target for r in rows})
    components = {c for t in targets for c in get_target(t).components}
    stray = [c for c in pins.flat if c not in components]
    if stray:
        raise SpecError(f"{origin}: toolchain {show(stray[0])} is not a component of any target in this matrix ("
                        + "; ".join(f"{t}: {', '.join(get_target(t).components)}" for t in targets) + ").")
