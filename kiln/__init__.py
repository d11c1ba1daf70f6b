"""Kiln: build accelerated LLM engines ahead of time and keep them in a content-addressed store.

The public API is what ``__all__`` lists (a test pins it); it is re-exported from
:mod:`kiln.api`. Everything else may change.
"""

from __future__ import annotations

from ._version import __version__
from .api import (
    BuildResult,
    BuildSpec,
    Field,
    LoadedEngine,
    LookupResult,
    Quantization,
    Query,
    Resolution,
    Store,
    build,
    compute_key,
    fetch,
    find_artifact,
    list_artifacts,
    load_engine,
    load_engine_by_key,
    lookup,
    parse_toolchain_pins,
    put,
    resolve,
    select,
    spec_from_fields,
    spec_from_sources,
)
from .errors import KilnError

__all__ = [
    "__version__",
    "BuildResult",
    "BuildSpec",
    "Field",
    "KilnError",
    "LoadedEngine",
    "LookupResult",
    "Quantization",
    "Query",
    "Resolution",
    "Store",
    "build",
    "compute_key",
    "fetch",
    "find_artifact",
    "list_artifacts",
    "load_engine",
    "load_engine_by_key",
    "lookup",
    "parse_toolchain_pins",
    "put",
    "resolve",
    "select",
    "spec_from_fields",
    "spec_from_sources",
]
