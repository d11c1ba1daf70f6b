"""Index entries: the small per-artifact summary that lookups and queries read.

One JSON file per artifact at ``index/<model tree hex>/<build key>.json``: an exact lookup
is one read (the path follows from the model digest and the key), and every query about one
model is one directory listing. The entry repeats the fields queries filter on (spec,
toolchain, model identity, size) so that `kiln ls` and miss explanations never open
manifests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from ..spec import BuildSpec

__all__ = ["IndexEntry", "spec_differences", "toolchain_differences", "ENTRY_SCHEMA"]

ENTRY_SCHEMA = 1


@dataclass(frozen=True)
class IndexEntry:
    key: str
    manifest: str  # manifest digest
    spec: Mapping[str, Any]  # BuildSpec.shape_json() of the resolved spec, plus "model"
    model: Mapping[str, Any]  # tree_digest, ref, repo_id, commit
    toolchain: Mapping[str, str]
    size: int
    created: str  # ISO 8601 UTC
    files: int

    @property
    def model_hex(self) -> str:
        return str(self.model["tree_digest"]).split(":", 1)[1]

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
    def from_json(cls, data: Mapping[str, Any]) -> "IndexEntry":
        return cls(
            key=str(data["key"]),
            manifest=str(data["manifest"]),
            spec=dict(data["spec"]),
            model=dict(data["model"]),
            toolchain={str(k): str(v) for k, v in dict(data["toolchain"]).items()},
            size=int(data["size"]),
            created=str(data["created"]),
            files=int(data.get("files", 0)),
        )


_SPEC_FIELDS = ("target", "n_positions", "batch_size", "tp_degree", "dtype", "quantization", "options")


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
