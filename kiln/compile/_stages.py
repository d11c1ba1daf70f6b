"""Stage artifacts: intermediate build outputs stored as content-addressed nodes of their own.

SmoothQuant calibration statistics are computed once per (model, calibration set, samples,
sequence length) and reused by every shape; a TensorRT-LLM checkpoint converted on a CPU
machine is compiled into engines on a GPU machine that shares the store or the remote.

A stage's key is sha256 over {key schema, stage name, target, its inputs, the model tree
digest, the toolchain that computes it}; its index entry lives beside the engines' (under the
model's directory) with ``"stage"`` in its spec, so engine lookups never match it, and push,
pull, ls and gc treat it like any artifact.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..api import _transfer_progress
from ..cache._remote import Remote
from ..cache._store import Store
from ..errors import CorruptBlobError, NotFoundError, RemoteError, UnsafeManifestError
from ..manifests._index import IndexEntry
from ..manifests._record import make_record
from ..spec import KEY_SCHEMA, canonical_json
from ._worker import WorkerResult

__all__ = ["Stage", "find_stage", "run_stage"]


@dataclass(frozen=True)
class Stage:
    name: str  # "calibration", "checkpoint"
    target: str
    inputs: Mapping[str, Any]  # canonical-JSON-able (no floats)
    model_tree: str
    model_summary: Mapping[str, Any]
    toolchain: Mapping[str, str]
    depends_on: tuple[str, ...] = field(default_factory=tuple)  # keys of stages this one consumes

    def key_inputs(self) -> dict[str, Any]:
        return {
            "kiln_key_schema": KEY_SCHEMA,
            "stage": self.name,
            "target": self.target,
            "inputs": dict(self.inputs),
            "model": {"tree_digest": self.model_tree},
            "toolchain": dict(sorted(self.toolchain.items())),
        }

    @property
    def key(self) -> str:
        return hashlib.sha256(canonical_json(self.key_inputs())).hexdigest()

    @property
    def model_hex(self) -> str:
        return self.model_tree.split(":", 1)[1]

    def entry_spec(self) -> dict[str, Any]:
        return {"target": self.target, "stage": self.name, **self.inputs, "model": self.model_summary.get("ref")}


def find_stage(store: Store, stage: Stage, remote: Remote | None = None) -> IndexEntry | None:
    """A verified local entry for the stage, pulling it from the remote if only there."""
    entry = store.get_entry(stage.model_hex, stage.key)
    if entry is not None:
        try:
            store.check_artifact(entry)
            return entry
        except (CorruptBlobError, NotFoundError, UnsafeManifestError):
            pass  # rebuilt below; the damage was reported by check_artifact's quarantine
    if remote is not None:
        from ..cache._sync import pull, remote_entry

        found = remote_entry(remote, stage.model_hex, stage.key)
        if found is not None:
            try:
                pull(store, remote, found, progress=_transfer_progress.get())
                store.check_artifact(found)
                return found
            except (RemoteError, CorruptBlobError, NotFoundError, UnsafeManifestError):
                return None
    return None


def run_stage(
    store: Store,
    stage: Stage,
    argv: Callable[[Path, Path], list[str]],
    *,
    remote: Remote | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> tuple[IndexEntry, bool]:
    """Find the stage's output or compute it in a worker (single-flight); return (entry, reused)."""
    from ._build import compile_and_publish

    found = find_stage(store, stage, remote)
    if found is not None:
        return found, True
    with store.single_flight(stage.key):
        found = find_stage(store, stage)
        if found is not None:
            return found, True

        def publish(out: Path, result: WorkerResult, started: str) -> IndexEntry:
            record = make_record(
                key=stage.key, inputs=stage.key_inputs(), spec=stage.entry_spec(), model=stage.model_summary,
                toolchain=stage.toolchain, started=started, duration_s=result.seconds,
                extra={"stage": stage.name, "depends_on": list(stage.depends_on)},
            )
            return store.publish(out, key=stage.key, spec=stage.entry_spec(), model=stage.model_summary,
                                 toolchain=stage.toolchain, record=record, move=True)

        entry, _ = compile_and_publish(store, stage.key, what=f"{stage.target} {stage.name}", argv=argv,
                                       publish=publish, on_stage=on_stage)
        return entry, False
