"""The core the public API wraps: specs from their sources, resolution, finding, publishing.

Layered between the orchestration (``kiln.compile``, which may import it) and the parts
(targets, store, manifests, LMI parsing, model resolution). ``kiln.api`` re-exports the public
names; everything here is importable by Kiln's own packages. Loading an engine in-process
(``kiln.core.load``) is imported from its module: a lookup never needs it.
"""

from .artifacts import Query, fetch, find_artifact, list_artifacts, materialize_layout, put
from .find import Found, LookupResult, explain_miss, find_entry, first_verified, lookup, lookup_any, matches, select
from .progress import current_progress, reporting_transfers
from .resolution import Resolution, compute_key, resolve
from .specs import SpecSource, parse_toolchain_pins, spec_from_fields, spec_from_sources, with_each_consumer

__all__ = [
    "Found",
    "LookupResult",
    "Query",
    "Resolution",
    "SpecSource",
    "with_each_consumer",
    "lookup_any",
    "compute_key",
    "current_progress",
    "explain_miss",
    "fetch",
    "find_artifact",
    "find_entry",
    "first_verified",
    "list_artifacts",
    "lookup",
    "matches",
    "materialize_layout",
    "parse_toolchain_pins",
    "put",
    "reporting_transfers",
    "resolve",
    "select",
    "spec_from_fields",
    "spec_from_sources",
]
