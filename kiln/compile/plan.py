"""Planning a build matrix: validate every row (all errors at once), mark hits, name shared stages.

Nothing is built or downloaded while planning: local hits are checked in the store, remote
hits are read from the remote's index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..cache import Remote, remote_entries, remote_entry
from ..core import Resolution, lookup, matches, resolve, spec_from_sources
from ..errors import KilnError
from ..manifests import IndexEntry
from ..targets import get_target
from .matrix import MatrixRow

__all__ = ["PlannedRow", "plan_rows", "memory_estimate"]


@dataclass
class PlannedRow:
    row: MatrixRow
    status: str  # "hit" (local/remote), "build", "invalid"
    key: str | None = None
    error: str | None = None
    source: str | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)  # shared stages this row needs
    memory_bytes: int = 0  # estimate, for the local executor
    resolution: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row.id, "status": self.status, "key": self.key, "error": self.error,
                "source": self.source, "stages": self.stages, "memory_estimate_bytes": self.memory_bytes}


def plan_rows(rows: Iterable[MatrixRow], *, store: Any, remote: Any = None, pins: Mapping[str, str] | None = None,
              check_remote: bool = True) -> list[PlannedRow]:
    """Validate every row (collecting all errors) and mark hits; nothing is built."""
    planned = []
    for row in rows:
        try:
            res = resolve(spec_from_sources(dict(row.fields)), store=store, toolchain=pins)
        except KilnError as e:
            planned.append(PlannedRow(row, "invalid", error=str(e)))
            continue
        p = PlannedRow(row, "build", resolution=res, memory_bytes=memory_estimate(res))
        if res.complete:
            p.key = res.key
        found = lookup(res, store=store)  # local only: planning never downloads
        if found.hit:
            p.status, p.key, p.source = "hit", found.entry.key, "local"  # type: ignore[union-attr]
        elif remote is not None and check_remote:
            entry = _remote_match(res, remote)
            if entry is not None:
                p.status, p.key, p.source = "hit", entry.key, "remote"
        p.stages = [{"stage": s.name, "key": s.key} for s in get_target(res.spec.target).stage_plan(res)]
        planned.append(p)
    return planned


def memory_estimate(res: Resolution) -> int:
    """Peak memory of one build: weights once in the model dtype, a working copy, plus the
    compiler's own footprint — measured here as ~1.5 GiB for AOTInductor on small models."""
    weights = sum(f.size for f in res.model.files if f.path.endswith((".safetensors", ".bin", ".gguf")))
    return 3 * weights + (3 << 29)


def _remote_match(res: Resolution, remote: Remote) -> IndexEntry | None:
    """A remote entry for the row, from the remote's index alone (nothing downloaded)."""
    if res.complete:
        return remote_entry(remote, res.model_hex, res.key)
    found = sorted((e for e in remote_entries(remote, res.model_hex) if matches(res, e)), key=lambda e: e.created)
    return found[-1] if found else None
