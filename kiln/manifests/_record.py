"""The build record: the config blob of every manifest, and its published JSON Schema.

It says exactly what the artifact is (key and every key input, spec, model source with
per-file digests, toolchain) and how it came to be (provenance: Kiln version, host, start
time, duration, command). Provenance never enters the key.
"""

from __future__ import annotations

import json
import socket
import sys
from datetime import datetime, timezone
from importlib import resources
from typing import Any, Mapping, Sequence

from .._version import __version__

RECORD_SCHEMA = "kiln.build-record/v1"

__all__ = ["RECORD_SCHEMA", "make_record", "record_json_schema", "utc_now"]


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
    text = resources.files("kiln.manifests").joinpath("build_record.schema.json").read_text()
    return json.loads(text)
