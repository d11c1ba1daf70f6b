"""Local gc: compute a plan of what to remove (with sizes), then apply it.

What goes:

* index entries evicted by ``older_than`` (last use, the entry file's mtime), by ``max_size``
  (least recently used first, until what stays fits), or because their manifest is unusable
  (they can never be served again);
* blobs no remaining entry references — its manifest, its build record and its files;
* leftovers of killed writers: everything in tmp/, hidden ``.*.tmp-*`` files of atomic writes
  in index/, stamps/ and hash-memo/, abandoned build directories, run directories older than
  :data:`~kiln.cache._buckets.RUN_DIR_MAX_AGE_S`;
* failed builds' logs older than :data:`~kiln.cache._buckets.FAILED_LOG_MAX_AGE_S`.

A small class, :class:`Collector`, because plan and apply need the same parts and
directories; the store builds one and calls :meth:`Collector.run`.

Concurrency: the whole of plan-and-apply runs under the *exclusive* store lock. Every
publisher and materialiser holds the shared lock for the whole of its work, so while gc runs
no publisher is between writing a blob and referencing it, and no live writer owns a file in
tmp/; a blob unreferenced now stays unreferenced until gc is done. Build directories are
the exception (a build runs for minutes without the store lock): they are judged by their
own flock (see :mod:`kiln.cache._buckets`).

Crash safety: index entries are removed before any blob, so a reader never finds an entry
whose blobs are gone; a gc killed midway leaves unreferenced blobs for the next gc.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import CorruptBlobError, NotFoundError, UnsafeManifestError
from ..manifests._index import IndexEntry
from ..manifests._manifest import Manifest
from ._blobs import Blobs
from ._buckets import (
    FAILED_LOG_MAX_AGE_S,
    RUN_DIR_MAX_AGE_S,
    abandoned_builds,
    stale_entries,
)
from ._entries import IndexFiles
from ._fsutil import unlink_quiet
from ._locks import store_lock
from ._materialize import stale_records

__all__ = ["Collector", "GcPlan"]


@dataclass(frozen=True)
class GcPlan:
    entries: tuple[IndexEntry, ...]  # artifacts evicted (LRU / age)
    blobs: tuple[tuple[str, int], ...]  # (digest, size) no longer referenced
    temp_paths: tuple[Path, ...]  # leftovers of killed writers
    blob_bytes: int
    kept_bytes: int
    logs: tuple[Path, ...] = ()  # failed builds' logs older than FAILED_LOG_MAX_AGE_S

    @property
    def empty(self) -> bool:
        return not (self.entries or self.blobs or self.temp_paths or self.logs)


class Collector:
    def __init__(
        self,
        blobs: Blobs,
        index: IndexFiles,
        *,
        lock_dir: Path,
        tmp_dir: Path,
        atomic_write_dirs: tuple[Path | None, ...],
        builds_dir: Path,
        run_dir_root: Path,
        logs_dir: Path,
        deployments_dir: Path,
    ) -> None:
        self.blobs = blobs
        self.index = index
        self.lock_dir = lock_dir
        self.tmp_dir = tmp_dir
        self.atomic_write_dirs = atomic_write_dirs  # where atomic_write_bytes leaves .*.tmp-* files
        self.builds_dir = builds_dir
        self.run_dir_root = run_dir_root
        self.logs_dir = logs_dir
        self.deployments_dir = deployments_dir

    def run(self, *, max_size: int | None, older_than: float | None, dry_run: bool) -> GcPlan:
        """Plan (and unless ``dry_run``, apply) under the exclusive store lock."""
        with store_lock(self.lock_dir, shared=False):
            plan = self.plan(max_size, older_than)
            if not dry_run:
                self.apply(plan)
        return plan

    def plan(self, max_size: int | None, older_than: float | None) -> GcPlan:
        """What gc would remove now (call under the exclusive store lock)."""
        entries = list(self.index.entries())
        manifests: dict[str, Manifest | None] = {}
        for e in entries:
            try:
                manifests[e.manifest] = self.blobs.read_manifest(e.manifest)
            except (NotFoundError, CorruptBlobError, UnsafeManifestError):
                manifests[e.manifest] = None

        def refs(e: IndexEntry) -> dict[str, int]:
            """Every blob the entry keeps alive, with its size."""
            m = manifests[e.manifest]
            try:
                out = {e.manifest: self.blobs.path(e.manifest).stat().st_size}
            except FileNotFoundError:
                out = {e.manifest: 0}
            if m is not None:
                out[m.config.digest] = m.config.size
                out.update({f.digest: f.size for f in m.files})
            return out

        # Reference counts, so a blob shared by several artifacts stays while any refers to it.
        refcount: dict[str, int] = {}
        sizes: dict[str, int] = {}
        for e in entries:
            for d, s in refs(e).items():
                refcount[d] = refcount.get(d, 0) + 1
                sizes[d] = s
        kept_bytes = sum(sizes.values())
        evict: list[IndexEntry] = []
        now = time.time()
        for e in sorted(entries, key=self.index.last_used):
            too_old = older_than is not None and now - self.index.last_used(e) > older_than
            too_big = max_size is not None and kept_bytes > max_size
            broken = manifests[e.manifest] is None  # can never be served again: drop the entry
            if not (too_old or too_big or broken):
                continue
            evict.append(e)
            for d in refs(e):
                refcount[d] -= 1
                if refcount[d] == 0:
                    kept_bytes -= sizes[d]
        live = {d for d, n in refcount.items() if n > 0}
        dead = []
        for digest, path in self.blobs.all():
            if digest not in live:
                try:
                    dead.append((digest, path.stat().st_size))
                except FileNotFoundError:
                    pass
        temps: list[Path] = []
        if self.tmp_dir.exists():
            temps.extend(sorted(self.tmp_dir.iterdir()))
        for d in self.atomic_write_dirs:
            if d is not None and d.exists():
                temps.extend(p for p in d.rglob(".*.tmp-*"))
        temps.extend(abandoned_builds(self.builds_dir))
        temps.extend(stale_entries(self.run_dir_root, max_age_s=RUN_DIR_MAX_AGE_S))
        temps.extend(stale_records(self.deployments_dir))
        logs = tuple(stale_entries(self.logs_dir, max_age_s=FAILED_LOG_MAX_AGE_S))
        return GcPlan(tuple(evict), tuple(dead), tuple(temps), sum(s for _, s in dead), kept_bytes, logs)

    def apply(self, plan: GcPlan) -> None:
        """Remove what ``plan`` lists (call under the exclusive store lock it was made under)."""
        # Index entries go first: a reader must never find an entry whose blobs are gone.
        for e in plan.entries:
            self.index.remove(e)
        for digest, _ in plan.blobs:
            self.blobs.remove(digest)
        for p in (*plan.temp_paths, *plan.logs):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                unlink_quiet(p)
