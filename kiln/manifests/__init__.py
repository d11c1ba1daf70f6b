"""Data formats: manifests (OCI image manifest shape), build records (+ JSON Schema), index entries.

Pure data and its validation: nothing here touches the store or knows a target. Every
document read from outside (a remote, a local file) goes through a parser here that bounds
its size and nesting and checks its exact shape: :meth:`Manifest.parse`,
:meth:`IndexEntry.parse`, :func:`parse_record` (see :mod:`._json` for the bounds)."""

from ._index import MAX_ENTRY_BYTES, IndexEntry, spec_differences, toolchain_differences
from ._json import MAX_DEPTH, load_json
from ._manifest import MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Descriptor, FileEntry, Manifest, safe_relpath
from ._record import (
    RECORD_SCHEMA,
    check_record,
    check_record_describes,
    entry_from_record,
    make_record,
    parse_record,
    record_json_schema,
    utc_now,
)

__all__ = [
    "Descriptor",
    "FileEntry",
    "IndexEntry",
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_ENTRY_BYTES",
    "MAX_MANIFEST_BYTES",
    "Manifest",
    "RECORD_SCHEMA",
    "check_record",
    "check_record_describes",
    "entry_from_record",
    "load_json",
    "make_record",
    "parse_record",
    "record_json_schema",
    "safe_relpath",
    "spec_differences",
    "toolchain_differences",
    "utc_now",
]
