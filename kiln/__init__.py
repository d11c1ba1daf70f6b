"""Kiln: build accelerated LLM engines ahead of time and keep them in a content-addressed store.

The public API is what ``__all__`` lists; everything in underscore modules may change.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import (
    LookupResult,
    Query,
    Resolution,
    compute_key,
    fetch,
    find_artifact,
    list_artifacts,
    lookup,
    parse_toolchain_pins,
    put,
    resolve,
    select,
    spec_from_sources,
)
from ._engines import LoadedEngine, load_engine, load_engine_by_key
from .cache import Store
from .compile import BuildResult, build
from .errors import KilnError
from .spec import BuildSpec, Field, Quantization, spec_from_fields

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
