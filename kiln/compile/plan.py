"""Planning a build matrix: validate every row (all errors at once), mark hits, name shared stages.

Nothing is built or downloaded while planning: local hits are checked in the store, remote
hits are read from the remote's index alone (an index entry is written last by every push, so
its presence means the artifact is complete there).

A row must pin what its key needs. A CI plan job usually lacks the target's toolchain; a row
whose toolchain components are neither installed nor pinned would match a stored engine built
by *any* compiler, so a compiler upgrade would schedule no rebuilds. Such a row is invalid
unless the matrix file says ``allow_unpinned_toolchain: true``. Pins come from the file's
``toolchain:`` (per row) and from ``--toolchain`` (which wins, as flags win over files
everywhere); each pin applies to the rows whose target has that component.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..cache import Remote, remote_entries, remote_entry
from ..core import Resolution, lookup, matches, resolve, spec_from_sources
from ..errors import KilnError, ToolchainError
from ..manifests import IndexEntry
from ..targets import ENGINE_STAGE, get_target
from .matrix import MatrixRow

__all__ = ["PlannedRow", "plan_rows", "memory_estimate", "shared_errors", "open_toolchain_error"]


@dataclass
class PlannedRow:
    row: MatrixRow
    status: str  # "hit" (local/remote), "build", "invalid"
    key: str | None = None
    error: str | None = None
    source: str | None = None  # on a hit: "local" or "remote"
    stages: list[dict[str, Any]] = field(default_factory=list)  # shared stages this row needs
    memory_bytes: int = 0  # estimate, for the local executor
    resolution: Any = None
    entry: IndexEntry | None = None  # on a hit: the entry found (local store or remote index)

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row.id, "target": self.row.target, "model": self.row.values.get("model"),
                "status": self.status, "key": self.key, "error": self.error,
                "source": self.source, "stages": self.stages, "memory_estimate_bytes": self.memory_bytes,
                "size": self.entry.size if self.entry is not None else None,
                "defined_at": self.row.source, "merged_from": list(self.row.merged),
                "toolchain": dict(self.resolution.toolchain) if self.resolution is not None else None}


def plan_rows(rows: Iterable[MatrixRow], *, store: Any, remote: Any = None, pins: Mapping[str, str] | None = None,
              check_remote: bool = True) -> list[PlannedRow]:
    """Validate every row (collecting all errors) and mark hits; nothing is built or downloaded.

    ``pins`` (``--toolchain``) apply to the rows whose target has the component and override
    the file's; a pin that is a component of no row's target is an error (a typo would
    otherwise leave every row unpinned).
    """
    rows = list(rows)
    cli_pins = dict(pins or {})
    targets = sorted({r.target for r in rows})
    components = {c for t in targets for c in get_target(t).components}
    stray = sorted(set(cli_pins) - components)
    if stray:
        raise ToolchainError(
            f"--toolchain {', '.join(stray)}: not a toolchain component of any target in this matrix ("
            + "; ".join(f"{t}: {', '.join(get_target(t).components)}" for t in targets) + ")."
        )
    planned = []
    for row in rows:
        target = get_target(row.target)
        row_pins = {**row.toolchain, **{c: v for c, v in cli_pins.items() if c in target.components}}
        try:
            res = resolve(spec_from_sources(dict(row.fields)), store=store, toolchain=row_pins)
        except KilnError as e:
            planned.append(PlannedRow(row, "invalid", error=str(e)))
            continue
        if not res.complete and not row.allow_unpinned_toolchain:
            planned.append(PlannedRow(row, "invalid", error=open_toolchain_error(res), resolution=res))
            continue
        p = PlannedRow(row, "build", resolution=res, memory_bytes=memory_estimate(res))
        if res.complete:
            p.key = res.key
        found = lookup(res, store=store)  # local only: planning never downloads
        if found.hit:
            p.status, p.key, p.source, p.entry = "hit", found.entry.key, "local", found.entry  # type: ignore[union-attr]
        elif remote is not None and check_remote:
            entry = _remote_match(res, remote)
            if entry is not None:
                p.status, p.key, p.source, p.entry = "hit", entry.key, "remote", entry
        # An engine stage is keyed by the row's whole toolchain: no key while part of it is unknown.
        p.stages = [{"stage": s.name, "key": s.key} for s in target.stage_plan(res)
                    if res.complete or s.name != ENGINE_STAGE]
        planned.append(p)
    return planned


def open_toolchain_error(res: Resolution) -> str:
    """Why a row with an open toolchain is refused, and the three ways out (one line)."""
    missing = res.unknown_components
    example = ", ".join(f"{c}: {'CLASS' if c == 'hardware' else 'VERSION'}" for c in missing)
    return (
        f"the {res.spec.target} toolchain is left open: {', '.join(missing)} neither installed here nor pinned, so a "
        "stored engine built by any compiler would count as a hit (and a compiler upgrade would schedule no rebuilds); "
        f"pin them in the matrix file (toolchain: {{{res.spec.target}: {{{example}}}}}) or with --toolchain NAME=VERSION, "
        "plan where the toolchain is installed, or set allow_unpinned_toolchain: true (dangerous, see docs/ci.md)."
    )


def shared_errors(planned: Iterable[PlannedRow]) -> list[dict[str, Any]]:
    """Each distinct error once, with the rows it affects (a missing model is one error, not 28)."""
    groups: dict[str, list[str]] = {}
    for p in planned:
        if p.error:
            groups.setdefault(p.error, []).append(p.row.id)
    return [{"error": e, "rows": ids} for e, ids in groups.items()]


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
