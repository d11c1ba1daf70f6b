"""The public API: a thin facade over Kiln's core, orchestration, store and targets.

What ``kiln`` exports (``kiln.__all__``) comes from here; the CLI imports nothing else of
Kiln's internals. Nothing here imports torch or a compiler toolchain at module level:
lookups and fetches run in serving containers that have neither. Builds (which do) run in
worker subprocesses.

Typical use::

    store = kiln.Store()                                   # KILN_HOME
    res = kiln.resolve(kiln.BuildSpec("torch-aoti", "org/model", n_positions=512), store=store)
    found = kiln.lookup(res, store=store, remote=kiln.open_remote("s3://bucket/prefix"))
    if not found.hit:
        kiln.build(res, store=store)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# Where each public name lives. The facade imports a module only when one of its names is
# first used: `kiln lookup` in a serving container must not pay for the build orchestration,
# the matrix machinery or YAML (DESIGN invariant 7, cheap where it is hot).
_HOMES: dict[str, tuple[str, ...]] = {
    "kiln.cache": (
        "GcPlan", "PullResult", "PushResult", "Remote", "RemoteGcPlan", "Store", "VerifyReport",
        "open_remote", "pull", "push", "read_remote_artifact", "remote_entries", "remote_gc", "remote_signatures"
    ),
    "kiln.compile": ("BuildResult", "build", "plan_build", "push_build"),
    "kiln.compile.executors": ("RowResult", "github_matrix", "run_local", "run_ray"),
    "kiln.compile.matrix": ("MatrixRow", "load_matrix"),
    "kiln.compile.plan": ("PlannedRow", "plan_rows", "shared_errors"),
    "kiln.core.artifacts": ("KeyLookup", "entry_consumer", "fetch_by_key", "lookup_key"),
    "kiln.core.load": ("LoadedEngine", "load_engine", "load_engine_by_key"),  # not on the lookup path
    "kiln.core": (
        "LookupResult", "Query", "Resolution", "SpecSource", "compute_key", "fetch",
        "find_artifact", "list_artifacts", "lookup",
        "parse_toolchain_pins", "put", "reporting_transfers", "resolve", "select",
        "spec_from_fields", "spec_from_sources", "with_each_consumer", "lookup_any"
    ),
    "kiln.errors": ("KilnError",),
    "kiln.manifests": ("IndexEntry", "Manifest"),
    "kiln.presets": ("PRESETS", "PresetRow", "load_preset"),
    "kiln.spec": ("BuildSpec", "Field", "Quantization", "file_digest", "normalize_dtype"),
    "kiln.targets": ("TARGETS", "get_target", "layout_names", "normalize_target"),
    "kiln.trust": ("SigningKey", "TrustPolicy", "describe_signers", "keys_policy", "load_policy", "load_signing_key"),
}
_WHERE = {name: module for module, names in _HOMES.items() for name in names}

if TYPE_CHECKING:  # the same names, for type checkers and readers
    from .cache import (
        GcPlan,
        PullResult,
        PushResult,
        Remote,
        RemoteGcPlan,
        Store,
        VerifyReport,
        open_remote,
        pull,
        push,
        read_remote_artifact,
        remote_entries,
        remote_gc,
        remote_signatures,
    )
    from .compile import BuildResult, build, plan_build, push_build
    from .compile.executors import RowResult, github_matrix, run_local, run_ray
    from .compile.matrix import MatrixRow, load_matrix
    from .compile.plan import PlannedRow, plan_rows, shared_errors
    from .core import (
        LookupResult,
        Query,
        Resolution,
        SpecSource,
        compute_key,
        fetch,
        find_artifact,
        list_artifacts,
        lookup,
        parse_toolchain_pins,
        put,
        reporting_transfers,
        resolve,
        select,
        spec_from_fields,
        spec_from_sources,
        with_each_consumer,
        lookup_any,
    )
    from .core.artifacts import KeyLookup, entry_consumer, fetch_by_key, lookup_key
    from .core.load import LoadedEngine, load_engine, load_engine_by_key
    from .errors import KilnError
    from .manifests import IndexEntry, Manifest
    from .presets import PRESETS, PresetRow, load_preset
    from .spec import BuildSpec, Field, Quantization, file_digest, normalize_dtype
    from .targets import TARGETS, get_target, layout_names, normalize_target
    from .trust import SigningKey, TrustPolicy, describe_signers, keys_policy, load_policy, load_signing_key


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'kiln.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "__version__",
    # specs and resolution
    "BuildSpec", "Field", "Quantization", "SpecSource", "Resolution", "spec_from_fields", "spec_from_sources",
    "parse_toolchain_pins", "resolve", "compute_key", "with_each_consumer", "normalize_dtype", "normalize_target", "file_digest",
    # finding, fetching, publishing
    "LookupResult", "lookup", "select", "lookup_any", "fetch", "put", "Query", "list_artifacts", "find_artifact",
    "KeyLookup", "lookup_key", "fetch_by_key", "entry_consumer",
    "IndexEntry", "Manifest",
    # building
    "BuildResult", "build", "plan_build", "push_build",
    # loading in-process
    "LoadedEngine", "load_engine", "load_engine_by_key",
    # store and remotes
    "Store", "GcPlan", "VerifyReport", "Remote", "open_remote", "push", "pull", "remote_entries", "read_remote_artifact", "remote_gc",
    "PushResult", "PullResult", "RemoteGcPlan", "reporting_transfers",
    # targets, presets, matrices
    "TARGETS", "get_target", "layout_names", "PRESETS", "PresetRow", "load_preset",
    "MatrixRow", "load_matrix", "PlannedRow", "plan_rows", "shared_errors", "RowResult", "run_local", "run_ray", "github_matrix",
    "KilnError",
]
