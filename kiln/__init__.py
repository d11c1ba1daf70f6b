"""Kiln: build accelerated LLM engines ahead of time and keep them in a content-addressed store.

The public API is what ``__all__`` lists (a test pins it, and that every name has a
docstring); it is re-exported from :mod:`kiln.api`. Everything else may change.

Typical use::

    store = kiln.Store()                                          # KILN_HOME
    remote = kiln.open_remote("s3://bucket/prefix")               # or None
    res = kiln.resolve(kiln.BuildSpec("torch-aoti", "org/model", n_positions=512), store=store)
    found = kiln.lookup(res, store=store, remote=remote)          # exit-code-free `kiln lookup`
    engine = kiln.load_engine(res, store=store, remote=remote)    # torch-aoti: runs in-process

Bad input raises a :class:`KilnError` subclass with the message the CLI prints.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:  # for type checkers and readers; at run time names load on first use
    from .api import (
        BuildResult,
        BuildSpec,
        Field,
        KilnError,
        LoadedEngine,
        LookupResult,
        Quantization,
        Query,
        Remote,
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
        open_remote,
        parse_toolchain_pins,
        put,
        resolve,
        select,
        spec_from_fields,
        spec_from_sources,
    )

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
    "Remote",
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
    "open_remote",
    "parse_toolchain_pins",
    "put",
    "resolve",
    "select",
    "spec_from_fields",
    "spec_from_sources",
]


def __getattr__(name: str) -> Any:
    # `import kiln` (and so `kiln lookup`) stays cheap: each name is taken from kiln.api,
    # itself lazy, when first used.
    if name not in __all__:
        raise AttributeError(f"module 'kiln' has no attribute {name!r}")
    value = getattr(importlib.import_module("kiln.api"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
