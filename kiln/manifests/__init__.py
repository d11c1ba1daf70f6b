"""Data formats: manifests (OCI image manifest shape), build records (+ JSON Schema), index entries.

Pure data and its validation: nothing here touches the store or knows a target."""

from ._index import IndexEntry, spec_differences, toolchain_differences
from ._manifest import MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Descriptor, FileEntry, Manifest, safe_relpath
from ._record import RECORD_SCHEMA, make_record, record_json_schema, utc_now

__all__ = [
    "Descriptor",
    "FileEntry",
    "IndexEntry",
    "MAX_CONFIG_BYTES",
    "MAX_MANIFEST_BYTES",
    "Manifest",
    "RECORD_SCHEMA",
    "make_record",
    "record_json_schema",
    "safe_relpath",
    "spec_differences",
    "toolchain_differences",
    "utc_now",
]
