"""Manifests (OCI image manifest shape), build records and index entries."""

from ._index import IndexEntry, spec_differences, toolchain_differences
from ._manifest import Descriptor, FileEntry, Manifest, safe_relpath
from ._record import RECORD_SCHEMA, make_record, record_json_schema

__all__ = [
    "Descriptor",
    "FileEntry",
    "IndexEntry",
    "Manifest",
    "RECORD_SCHEMA",
    "make_record",
    "record_json_schema",
    "safe_relpath",
    "spec_differences",
    "toolchain_differences",
]
