"""The build record: the config blob of every manifest, and its published JSON Schema.

It says exactly what the artifact is (key and every key input, spec, model source with
per-file digests, toolchain) and how it came to be (provenance: Kiln version, host, start
time, duration, command). Provenance never enters the key.

A record pulled from a remote is untrusted: :func:`parse_record` checks it against the
published schema (with Kiln's own small checker, :mod:`._jsonschema`: ``jsonschema`` is only a
development dependency) within bounded size and depth, and :func:`check_record_describes`
proves that the index entry which led to it says the truth — its key is the hash of the
record's key inputs, and its spec, model and toolchain are the ones those inputs hold — so a
lying entry can never turn into a wrong hit for a query.
"""

from __future__ import annotations

import functools
import json
import socket
import sys
from datetime import datetime, timezone
from importlib import resources
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .._version import __version__
from ..errors import UnsafeManifestError
from ..spec import build_key
from ._json import load_json
from ._jsonschema import SchemaChecker, json_equal
from ._manifest import MAX_CONFIG_BYTES

if TYPE_CHECKING:
    from ._index import IndexEntry

RECORD_SCHEMA = "kiln.build-record/v1"

__all__ = ["RECORD_SCHEMA", "make_record", "record_json_schema", "utc_now", "parse_record", "check_record",
           "check_record_describes"]


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
            "host": socket.gethostname(),
            "started": started,
            "duration_s": round(float(duration_s), 3),
            "command": list(command if command is not None else sys.argv),
        },
    }
    if extra:
        record["extra"] = dict(extra)
    return record


def record_json_schema() -> dict[str, Any]:
    """The published JSON Schema of build records (a fresh copy: callers may change it)."""
    text = resources.files("kiln.manifests").joinpath("build_record.schema.json").read_text()
    return json.loads(text)


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


def check_record_describes(record: Mapping[str, Any], entry: "IndexEntry") -> None:
    """Raise UnsafeManifestError unless ``entry`` is exactly what ``record`` (already checked) was built as.

    The entry's key must be the hash of the record's key inputs, and the entry's spec, model
    digest and toolchain the values inside those inputs: queries match on the entry's fields,
    so an entry that lied about them would serve another artifact as a hit.
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
    if inputs["model"]["tree_digest"] != entry.model["tree_digest"]:
        raise UnsafeManifestError("index entry names another model than its build record")
    if not json_equal(dict(inputs["toolchain"]), dict(entry.toolchain)):
        raise UnsafeManifestError("index entry names another toolchain than its build record")
    claimed = {k: v for k, v in entry.spec.items() if k != "model"}
    if "stage" in inputs:
        built = {"target": inputs["target"], "stage": inputs["stage"], **inputs["inputs"]}
    else:
        built = dict(inputs["spec"])
    if not json_equal(claimed, built):
        diff = sorted(k for k in set(claimed) | set(built) if not json_equal(claimed.get(k), built.get(k)))
        raise UnsafeManifestError(f"index entry spec differs from its build record's key inputs in {', '.join(diff)}")
