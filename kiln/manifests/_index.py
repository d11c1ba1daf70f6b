"""Index entries: the small per-artifact summary that lookups and queries read.

One JSON file per artifact at ``index/<model tree hex>/<build key>.json``: an exact lookup
is one read (the path follows from the model digest and the key), and every query about one
model is one directory listing. The entry repeats the fields queries filter on (spec,
toolchain, model identity, size) so that `kiln ls` and miss explanations never open
manifests.

Entries are read from remotes nobody here controls and from local files anything may have
written, and every caller indexes into them (``spec["n_positions"]``, ``model["tree_digest"]``),
so :meth:`IndexEntry.from_json` accepts only the exact shape Kiln writes (see
:mod:`kiln.manifests._entry_shape`): a document of any other shape is refused there, with a
message naming the field, instead of crashing a caller later with a ``KeyError``. An engine's
spec must moreover be a complete, valid :class:`~kiln.spec.BuildSpec` in the canonical form
Kiln writes (``spec: {}``, ``per_token`` without SmoothQuant, an alpha written ``"0.50"`` are
refused), so :meth:`IndexEntry.build_spec` and every table that reads the spec work on any
accepted entry.

What an entry *claims* beyond its shape (its spec, model, size, …) is checked against the
build record and manifest it points at by :func:`kiln.manifests.check_record_describes`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import SpecError, UnsafeManifestError
from ..spec import BuildSpec
from ._entry_shape import ENTRY_SCHEMA, MAX_ENTRY_BYTES, check_entry
from ._json import load_json

__all__ = ["IndexEntry", "UnfamiliarSpecError", "spec_differences", "toolchain_differences", "ENTRY_SCHEMA",
           "MAX_ENTRY_BYTES"]


class UnfamiliarSpecError(UnsafeManifestError):
    """A well-formed entry whose engine spec this Kiln does not accept as written (not a valid
    BuildSpec, or not in the form this version writes): refused by readers like any bad entry,
    but possibly written by another Kiln version of the same entry schema — so local gc keeps
    it and its blobs, as it keeps a newer Kiln's, instead of deleting them as damage."""


@dataclass(frozen=True)
class IndexEntry:
    key: str
    manifest: str  # manifest digest
    spec: Mapping[str, Any]  # BuildSpec.shape_json() of the resolved spec, plus "model"
    model: Mapping[str, Any]  # tree_digest (and/or architecture_digest), ref, repo_id, commit
    toolchain: Mapping[str, str]
    size: int
    created: str  # ISO 8601 UTC
    files: int

    @property
    def model_hex(self) -> str:
        """The index directory the entry is filed under: its tree digest, or an engine stage's architecture digest."""
        digest = self.model.get("tree_digest") or self.model["architecture_digest"]
        return str(digest).split(":", 1)[1]

    def build_spec(self) -> BuildSpec:
        return BuildSpec.from_json(self.spec)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": ENTRY_SCHEMA,
            "key": self.key,
            "manifest": self.manifest,
            "spec": dict(self.spec),
            "model": dict(self.model),
            "toolchain": dict(self.toolchain),
            "size": self.size,
            "created": self.created,
            "files": self.files,
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: Any) -> "IndexEntry":
        """The entry a parsed JSON document describes; UnsafeManifestError unless it has the exact shape."""
        fields = check_entry(data)
        _check_build_spec(fields["spec"])
        return cls(**fields)

    @classmethod
    def parse(cls, data: bytes, what: str = "index entry") -> "IndexEntry":
        """An entry from raw bytes (bounded size and nesting); UnsafeManifestError naming ``what``."""
        return cls.from_json(load_json(data, what, max_bytes=MAX_ENTRY_BYTES))


_SPEC_FIELDS = ("target", "n_positions", "batch_size", "tp_degree", "dtype", "quantization", "options")


def _check_build_spec(spec: Mapping[str, Any]) -> None:
    """An engine spec (shape already checked) must be a valid BuildSpec, written as Kiln writes it.

    The shape check types each field alone; BuildSpec also checks how they combine
    (``per_token`` needs a SmoothQuant alpha), and readers build one from every entry they
    list (`kiln ls` prints its quantization), so an entry it refuses must be refused here,
    as malformed, not crash a reader later. The canonical form matters too: an alpha written
    ``"0.50"`` is the spec of ``"0.5"`` but would never equal it where entries are matched.
    Build stages' specs are not BuildSpecs (their inputs are the stage's own).
    """
    if "stage" in spec:
        return
    try:
        canonical = BuildSpec.from_json(spec).shape_json()
    except SpecError as e:
        raise UnfamiliarSpecError(f"spec is not a valid build spec: {e}") from None
    for name in _SPEC_FIELDS:
        if not _json_same(canonical[name], spec[name]):
            raise UnfamiliarSpecError(
                f"spec.{name} is {_show(spec[name])}, not in the form Kiln writes it ({_show(canonical[name])})"
            )


def _json_same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items())) or "none"
    return str(value)


def spec_differences(want: Mapping[str, Any], have: Mapping[str, Any]) -> list[str]:
    """``['batch_size: want 8, have 4', …]`` for the spec fields that differ."""
    out = []
    for name in _SPEC_FIELDS:
        if want.get(name) != have.get(name):
            out.append(f"{name}: want {_show(want.get(name))}, have {_show(have.get(name))}")
    return out


def toolchain_differences(want: Mapping[str, str | None], have: Mapping[str, str]) -> list[str]:
    """Differences only for the components ``want`` constrains (None = unconstrained)."""
    out = []
    for name in sorted(set(want) | set(have)):
        w = want.get(name)
        if w is None:
            continue
        if have.get(name) != w:
            out.append(f"toolchain {name}: want {w}, have {have.get(name, 'none')}")
    return out
