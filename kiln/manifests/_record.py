"""The build record: the config blob of every manifest, and its published JSON Schema.

It says exactly what the artifact is (key and every key input, spec, model source with
per-file digests, toolchain) and how it came to be (provenance: Kiln version, host, start
time, duration, command). Provenance never enters the key.

A record pulled from a remote is untrusted: :func:`parse_record` checks it against the
published schema (with Kiln's own small checker, :mod:`._jsonschema`: ``jsonschema`` is only a
development dependency) within bounded size and depth, and :func:`check_record_describes`
proves that the index entry which led to it says the truth — its key is the hash of the
record's key inputs, and every field it claims (spec, model, toolchain; size, file count and
creation time, from the manifest) is the one the record and manifest hold — so a lying entry
can never turn into a wrong hit for a query nor a deployment written for another shape.
:func:`entry_from_record` is that derivation: what a pull stores locally is the entry the
record describes, never the remote's claim. A record's own spec, model and toolchain must
agree with its key inputs.

Provenance keeps the command line with URL credentials redacted (:mod:`kiln._redact`).
"""

from __future__ import annotations

import functools
import json
import platform
import sys
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from .._redact import redact_args
from .._version import __version__
from ..errors import UnsafeManifestError
from ..spec import MODEL_DIGESTS, build_key
from ._entry_shape import ENTRY_SCHEMA
from ._index import IndexEntry
from ._json import load_json
from ._jsonschema import SchemaChecker, json_equal, shipped_schema
from ._manifest import MAX_CONFIG_BYTES, Manifest

RECORD_SCHEMA = "kiln.build-record/v1"

__all__ = ["RECORD_SCHEMA", "make_record", "record_json_schema", "utc_now", "parse_record", "check_record",
           "check_record_describes", "entry_from_record"]


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_record(
    *,
    key: str,
    inputs: Mapping[str, Any],
    spec: Mapping[str, Any],
    model: Mapping[str, Any],
    toolchain: Mapping[str, str],
    started: str,
    duration_s: float,
    notes: Sequence[str] = (),
    command: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "schema": RECORD_SCHEMA,
        "key": key,
        "key_inputs": dict(inputs),
        "spec": dict(spec),
        "model": dict(model),
        "toolchain": dict(toolchain),
        "notes": list(notes),
        "provenance": {
            "kiln_version": __version__,
            "host": platform.node(),  # socket.gethostname(), without importing socket on the lookup path
            "started": started,
            "duration_s": round(float(duration_s), 3),
            # URL credentials (--remote s3://…?endpoint=http://KEY:SECRET@host) never enter a
            # record: records are pushed to buckets and shown by `kiln show`.
            "command": redact_args(command if command is not None else sys.argv),
        },
    }
    if extra:
        record["extra"] = dict(extra)
    return record


def record_json_schema() -> dict[str, Any]:
    """The published JSON Schema of build records (a fresh copy: callers may change it)."""
    return shipped_schema("build_record.schema.json")


@functools.lru_cache(maxsize=1)
def _checker() -> SchemaChecker:
    return SchemaChecker(record_json_schema())


def check_record(record: Any) -> dict[str, Any]:
    """``record`` if it conforms to the published schema, else UnsafeManifestError saying where not."""
    error = _checker().first_error(record)
    if error is not None:
        raise UnsafeManifestError(f"build record does not match its schema: {error}")
    return record


def parse_record(data: bytes) -> dict[str, Any]:
    """A build record from raw bytes: bounded size and depth, then the schema."""
    return check_record(load_json(data, "build record", max_bytes=MAX_CONFIG_BYTES))


def check_record_describes(record: Mapping[str, Any], entry: IndexEntry, manifest: Manifest | None = None) -> None:
    """Raise UnsafeManifestError unless ``entry`` is exactly what ``record`` (already checked) was built as.

    The entry's key must be the hash of the record's key inputs, and every field the entry
    claims must be the one :func:`entry_from_record` derives from the record (and, given the
    ``manifest`` the entry's digest names, from it: size, file count, creation time).
    Queries match on the entry's fields and deployments are written from them (an LMI
    ``serving.properties`` takes its shape from the entry's spec), so an entry that lied
    about any of them would serve another artifact as a hit, or describe one wrongly. The
    message names the first field that differs.
    """
    if record["key"] != entry.key:
        raise UnsafeManifestError(f"build record names key {record['key'][:12]}, the index entry {entry.key[:12]}")
    inputs = record["key_inputs"]
    try:
        actual = build_key(inputs)
    except (TypeError, ValueError) as e:  # floats or NaN: never in inputs Kiln wrote
        raise UnsafeManifestError(f"build record key inputs are not canonical JSON ({e})") from None
    if actual != entry.key:
        raise UnsafeManifestError(f"build record key inputs hash to {actual[:12]}, not to the key {entry.key[:12]}")
    expected = _described(record, entry.manifest, manifest, entry.created)
    difference = _first_difference(entry.to_json(), expected)
    if difference is not None:
        raise UnsafeManifestError(difference)


def entry_from_record(record: Mapping[str, Any], manifest_digest: str, manifest: Manifest,
                      created: str | None = None) -> IndexEntry:
    """The index entry a verified build record and its manifest describe: what a reader may believe.

    Everything comes from the record's key inputs (which hash to the key) and the record
    (covered, with the manifest, by the digest chain from ``manifest_digest``): key, spec,
    model, toolchain; size, file count and creation time from the manifest. ``created``
    stands in only for a manifest without a creation time (Kiln always writes one).
    Raises UnsafeManifestError when the record is inconsistent with itself or describes no
    valid entry.
    """
    return IndexEntry.from_json(_described(record, manifest_digest, manifest, created))


_CREATED = "org.opencontainers.image.created"
_ENTRY_MODEL = ("ref", "repo_id", "commit")  # what an entry repeats of a record's model, besides its digests


def _described(record: Mapping[str, Any], manifest_digest: str, manifest: Manifest | None,
               created: str | None) -> dict[str, Any]:
    """The JSON of the entry ``record`` describes; without a manifest, its size, files and
    creation time are left out (not compared)."""
    _check_consistent(record)
    inputs, spec = record["key_inputs"], record["spec"]
    if "stage" in inputs:
        described = {"target": inputs["target"], "stage": inputs["stage"], **inputs["inputs"]}
    else:
        described = dict(inputs["spec"])
    if isinstance(spec.get("model"), str):
        described["model"] = spec["model"]
    model = {**{k: inputs["model"][k] for k in MODEL_DIGESTS if k in inputs["model"]},
             **{k: record["model"].get(k) for k in _ENTRY_MODEL}}
    out: dict[str, Any] = {"schema": ENTRY_SCHEMA, "key": record["key"], "manifest": manifest_digest,
                           "spec": described, "model": model, "toolchain": dict(inputs["toolchain"])}
    if manifest is not None:
        out.update(size=manifest.total_size, files=len(manifest.files),
                   created=manifest.annotations.get(_CREATED) or created)
    return out


def _check_consistent(record: Mapping[str, Any]) -> None:
    """The record's own spec, model and toolchain must agree with its key inputs (what the key covers).

    ``kiln show`` prints the record; a record whose spec said tp 24 while its key inputs say
    tp 2 would describe the engine wrongly even though its key is right.
    """
    inputs, spec = record["key_inputs"], record["spec"]
    for name in MODEL_DIGESTS:
        if name in inputs["model"] and record["model"].get(name) != inputs["model"][name]:
            raise UnsafeManifestError(f"build record model.{name} differs from its key inputs")
    if not json_equal(dict(record["toolchain"]), dict(inputs["toolchain"])):
        raise UnsafeManifestError("build record toolchain differs from its key inputs")
    if "stage" in inputs:
        keyed = {"target": inputs["target"], "stage": inputs["stage"], **inputs["inputs"]}
        own = {k: v for k, v in spec.items() if k != "model"}
    else:
        # The record's spec is the whole spec; its key inputs hold the options that enter the key.
        keyed = {k: v for k, v in inputs["spec"].items() if k != "options"}
        own = {k: v for k, v in spec.items() if k not in ("model", "options")}
        options = spec.get("options") or {}
        for name, value in inputs["spec"]["options"].items():
            if not json_equal(options.get(name), value):
                raise UnsafeManifestError(f"build record spec.options.{name} differs from its key inputs")
    for name in sorted(set(keyed) | set(own)):
        if not json_equal(keyed.get(name), own.get(name)):
            raise UnsafeManifestError(f"build record spec.{name} differs from its key inputs")


def _first_difference(claimed: Mapping[str, Any], described: Mapping[str, Any]) -> str | None:
    """One line naming the first field where an entry's claim and its record differ, or None."""
    for section in ("key", "manifest", "spec", "model", "toolchain", "size", "files", "created"):
        if section not in described:
            continue  # not known without the manifest
        have, want = claimed.get(section), described[section]
        if isinstance(want, dict) and isinstance(have, dict):
            for name in sorted(set(have) | set(want)):
                if not json_equal(have.get(name), want.get(name)):
                    return _differs(f"{section}.{name}", have.get(name, "(none)"), want.get(name, "(none)"))
        elif not json_equal(have, want):
            return _differs(section, have, want)
    return None


def _differs(field: str, have: Any, want: Any) -> str:
    """The message, in words the older checks used (tests and users grep for them)."""
    section, _, name = field.partition(".")
    said = f"the entry says {_show(have)}, the build record {_show(want)}"
    if section == "spec":
        where = "its build record" if name == "model" else "its build record's key inputs"
        return f"index entry spec differs from {where} in {name} ({said})"
    if section == "model":
        return f"index entry names another model than its build record ({field}: {said})"
    if section == "toolchain":
        return f"index entry names another toolchain than its build record ({field}: {said})"
    if section in ("size", "files", "created"):
        return f"index entry {field} differs from its manifest (the entry says {_show(have)}, the manifest {_show(want)})"
    return f"index entry {field} differs from its build record ({said})"


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
