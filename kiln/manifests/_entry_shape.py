"""The exact shape of an index entry document, checked field by field before anything uses it.

An entry is untrusted data (DESIGN invariant 5): remotes serve whatever was written to them,
and local index files can be damaged. Callers read its fields directly — ``spec["tp_degree"]``
to rank engines, ``model["tree_digest"]`` to build paths, ``Quantization.from_json`` to print
``kiln ls`` — so a document that is a list, has ``spec: {}``, a string where a number belongs
or a 10 000-character "dtype" must be refused *here*, with a message naming the field, not
surface later as a ``KeyError`` or a garbled table. The rules are what Kiln writes
(:meth:`IndexEntry.to_json`), no looser:

* ``key``: 64 lowercase hex; ``manifest``: ``sha256:<64 hex>`` (both become local paths);
* ``spec``: an engine's shape (target, n_positions, batch_size, tp_degree, dtype,
  quantization, options — exactly these, plus the model name) or, with ``"stage"``, a build
  stage's inputs (JSON scalars, and the shape fields typed as for engines; a stage holding
  n_positions or batch_size holds n_positions, batch_size and tp_degree);
* ``model``: ``tree_digest`` (an ``engine`` stage: ``architecture_digest`` instead; an engine
  of a weight-independent target: both) plus string-or-null fields (ref, repo_id, commit);
* ``toolchain``: strings to strings; ``size``/``files`` bounded integers; ``created`` ISO 8601.

Every string is bounded and free of control characters (it is printed in tables); every
mapping is bounded in size; integers stay within the bounds :class:`~kiln.spec.BuildSpec`
enforces, so :meth:`IndexEntry.build_spec` works on any accepted entry. Target names are
checked only for form: which targets exist is :mod:`kiln.targets`' business, and an unknown
one fails cleanly where it is looked up.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .._input import show
from ..errors import UnsafeManifestError
from ..spec import DTYPES, LIMITS
from ._manifest import MAX_ARTIFACT_SIZE, MAX_FILES

__all__ = ["ENTRY_SCHEMA", "MAX_ENTRY_BYTES", "check_entry", "check_spec"]

ENTRY_SCHEMA = 1
MAX_ENTRY_BYTES = 1 << 20  # real entries are ~1 KiB
MAX_TEXT = 4096  # model refs are paths; nothing Kiln writes is longer
MAX_FIELDS = 64  # per mapping (spec, options, model, toolchain)

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}\Z")  # target and stage names
_OPTION = re.compile(r"[a-z][a-z0-9_]{0,127}\Z")  # target option names, as BuildSpec requires them
_CREATED = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TOP = {"schema", "key", "manifest", "spec", "model", "toolchain", "size", "created", "files"}
_ENGINE = ("target", "n_positions", "batch_size", "tp_degree", "dtype", "quantization", "options")
_QUANT = {"smoothquant_alpha", "per_token", "per_channel", "int8_kv_cache"}


def _bad(where: str, problem: str) -> UnsafeManifestError:
    return UnsafeManifestError(f"{where} {problem}")


def _show(value: Any) -> str:
    return show(value)  # one home for values quoted in messages (bounded, one line)


def _text(value: Any, where: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise _bad(where, f"is {_show(value)}, not a string")
    if len(value) > limit:
        raise _bad(where, f"is {len(value)} characters long, more than {limit}")
    if _CONTROL.search(value):
        raise _bad(where, f"holds control characters ({_show(value)})")
    return value


def _optional_text(value: Any, where: str) -> str | None:
    return None if value is None else _text(value, where)


def _int(value: Any, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(where, f"is {_show(value)}, not an integer in [{low}, {high}]")
    return value


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(where, f"is {_show(value)}, not a JSON object")
    if len(value) > MAX_FIELDS:
        raise _bad(where, f"has {len(value)} fields, more than {MAX_FIELDS}")
    return value


def _strings(value: Any, where: str, value_limit: int) -> dict[str, str]:
    out = {}
    for k, v in _mapping(value, where).items():
        if not k:
            raise _bad(where, "has an empty field name")
        _text(k, f"{where} field name", 128)
        out[k] = _text(v, f"{where}.{k}", value_limit)
    return out


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise _bad(where, f"is {_show(value)}, not a name like 'torch-aoti' (lowercase letters, digits, '-', '_', '.')")
    return value


def _quantization(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    q = _mapping(value, where)
    if set(q) != _QUANT:
        missing, extra = sorted(_QUANT - set(q)), sorted(set(q) - _QUANT)
        raise _bad(where, f"must hold exactly {', '.join(sorted(_QUANT))}"
                   + (f"; missing {', '.join(missing)}" if missing else "")
                   + (f"; unknown {', '.join(map(_show, extra))}" if extra else ""))
    alpha = q["smoothquant_alpha"]
    if alpha is not None:
        # Kiln writes alpha as a string (floats never enter canonical JSON); readers float() it.
        try:
            number = float(alpha) if isinstance(alpha, str) and len(alpha) <= 32 else math.nan
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and 0.0 <= number <= 1.0):
            raise _bad(f"{where}.smoothquant_alpha", f"is {_show(alpha)}, not null or a number in [0, 1] written as a string")
    for flag in ("per_token", "per_channel", "int8_kv_cache"):
        if not isinstance(q[flag], bool):
            raise _bad(f"{where}.{flag}", f"is {_show(q[flag])}, not true or false")
    return dict(q)


def _shape_field(name: str, value: Any, where: str) -> Any:
    """One field of an engine shape, typed (also used for the same fields of a stage)."""
    if name in LIMITS:  # n_positions, batch_size, tp_degree: the bounds BuildSpec itself enforces
        return _int(value, where, 1, LIMITS[name])
    if name == "dtype":
        if not isinstance(value, str) or value not in DTYPES:
            raise _bad(where, f"is {_show(value)}, not one of {', '.join(DTYPES)}")
        return value
    if name == "quantization":
        return _quantization(value, where)
    if name == "options":
        options = _strings(value, where, MAX_TEXT)
        for option in options:
            if not _OPTION.match(option):
                raise _bad(where, f"has option name {_show(option)}, not lowercase letters, digits and '_'")
        return options
    return _name(value, where)  # target


def check_spec(value: Any, where: str = "spec") -> dict[str, Any]:
    """An entry's spec: an engine's exact shape plus its model name, or a build stage's inputs."""
    spec = _mapping(value, where)
    if "target" not in spec:
        raise _bad(where, "has no 'target' field")
    out: dict[str, Any] = {"target": _name(spec["target"], f"{where}.target")}
    if "model" in spec:
        out["model"] = _text(spec["model"], f"{where}.model")
    if "stage" not in spec:
        unknown = sorted(set(spec) - set(_ENGINE) - {"model"})
        if unknown:
            raise _bad(where, f"has unknown field(s) {', '.join(map(_show, unknown))} (an engine spec holds "
                       f"{', '.join(_ENGINE)} and model)")
        for name in _ENGINE:
            if name not in spec:
                raise _bad(where, f"has no {name!r} field")
            out[name] = _shape_field(name, spec[name], f"{where}.{name}")
        return out
    out["stage"] = _name(spec["stage"], f"{where}.stage")
    # A stage that is a compiled engine (a weight-independent target's "engine" stage) holds its
    # whole shape; `kiln ls` reads n_positions x batch_size tp_degree from any spec holding one of them.
    shaped = {"n_positions", "batch_size"} & set(spec)
    if shaped:
        for name in ("n_positions", "batch_size", "tp_degree"):
            if name not in spec:
                raise _bad(where, f"holds {', '.join(sorted(shaped))} but no {name!r} (a stage's shape is whole or absent)")
    for name, item in spec.items():
        if name in out:
            continue
        field = f"{where}.{name}"
        _text(name, f"{where} field name", 128)
        if name in _ENGINE:
            out[name] = _shape_field(name, item, field)
        elif item is None or isinstance(item, bool):
            out[name] = item
        elif isinstance(item, int):
            out[name] = _int(item, field, -(1 << 63), (1 << 63) - 1)
        else:
            out[name] = _text(item, field)  # stage inputs are scalars (canonical JSON: no floats)
    return out


def check_entry(data: Any) -> dict[str, Any]:
    """The constructor arguments of the IndexEntry ``data`` describes, or UnsafeManifestError."""
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else "null" if data is None else f"a {type(data).__name__}"
        raise UnsafeManifestError(f"the document is {kind}, not a JSON object")
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise UnsafeManifestError(f"unknown field(s) {', '.join(map(_show, unknown[:5]))}")
    for name in sorted(_TOP - {"schema", "files"}):
        if name not in data:
            raise UnsafeManifestError(f"required field {name!r} is missing")
    schema = data.get("schema", ENTRY_SCHEMA)
    if schema != ENTRY_SCHEMA or isinstance(schema, bool):
        raise UnsafeManifestError(
            f"entry schema {_show(schema)} is not one this Kiln reads ({ENTRY_SCHEMA}); it was written by another "
            "Kiln version: upgrade Kiln to read it"
        )
    key, manifest = data["key"], data["manifest"]
    if not isinstance(key, str) or not _HEX64.match(key):
        raise _bad("key", f"is {_show(key)}, not 64 lowercase hex digits")
    if not isinstance(manifest, str) or not _DIGEST.match(manifest):
        raise _bad("manifest", f"is {_show(manifest)}, not a sha256 digest (sha256:<64 hex>)")
    model = _mapping(data["model"], "model")
    spec = check_spec(data["spec"])
    # Every entry is filed under its model's tree digest, except the compiled engine of a
    # weight-independent target (a build stage) keyed by an architecture digest, filed under that
    # digest (one whose model has no architecture digest is keyed, and filed, by its tree digest).
    engine_stage = spec.get("stage") == "engine"  # kiln.targets.ENGINE_STAGE (this layer cannot import it)
    needed = "architecture_digest" if engine_stage and "tree_digest" not in model else "tree_digest"
    for name in ("tree_digest", "architecture_digest"):
        digest = model.get(name)
        if (digest is not None or name == needed) and (not isinstance(digest, str) or not _DIGEST.match(digest)):
            raise _bad(f"model.{name}", f"is {_show(digest)}, not a sha256 digest (sha256:<64 hex>)")
    if engine_stage and "tree_digest" in model and "architecture_digest" in model:
        raise _bad("model", "of an engine stage holds both a tree_digest and an architecture_digest: it is keyed by "
                            "one of them")
    model_out = {k: _optional_text(v, f"model.{_text(k, 'model field name', 128)}") for k, v in model.items()}
    created = data["created"]
    if not isinstance(created, str) or not _CREATED.match(created):
        raise _bad("created", f"is {_show(created)}, not an ISO 8601 UTC time like 2026-01-31T12:00:00.000000Z")
    return {
        "key": key,
        "manifest": manifest,
        "spec": spec,
        "model": model_out,
        "toolchain": _strings(data["toolchain"], "toolchain", 1024),
        "size": _int(data["size"], "size", 0, MAX_ARTIFACT_SIZE),
        "created": created,
        "files": _int(data.get("files", 0), "files", 0, MAX_FILES),
    }
