"""Local gc: compute a plan of what to remove (with sizes), then apply it.

What goes:

* index entries evicted by ``older_than`` (last use, the entry file's mtime) or by
  ``max_size`` (least recently used first, until what stays fits);
* damaged index entries, which can never be served: files that are not a valid entry (see
  :mod:`kiln.cache._entries`), and valid entries whose manifest is missing or whose manifest's
  bytes do not match its digest (reported in :attr:`GcPlan.damaged`);
* blobs no remaining entry references — its manifest, its build record and its files;
* leftovers of killed writers: everything in tmp/, hidden ``.*.tmp-*`` files of atomic writes
  in index/, stamps/ and hash-memo/, abandoned build directories, run directories older than
  :data:`~kiln.cache._buckets.RUN_DIR_MAX_AGE_S`;
* failed builds' logs older than :data:`~kiln.cache._buckets.FAILED_LOG_MAX_AGE_S`.

What gc cannot read is live, never garbage (issue 12). A manifest that is intact (it hashes
to its digest) but that this Kiln cannot parse — a newer Kiln's artifactType, more layers than
this version allows — and an index entry of a newer schema are another Kiln's live artifacts
in a shared store. Their entries stay (never evicted by this Kiln), and so does every blob
they may name: every 64-hex-digit string in their raw bytes that names a blob here is kept,
and each such blob that is itself a JSON document (a manifest, a build record) is scanned the
same way, transitively (:attr:`GcPlan.kept_unreadable`). When the bytes gc would have to scan
cannot be read, or are larger than :data:`MAX_SCAN_BYTES`, or an index entry file cannot be
read at all, gc cannot know what is live: it deletes nothing and raises StoreError saying
which and what to do. Compare ``remote_gc`` (kiln/cache/_sync.py), which stops on any
unreadable remote document: on a remote a corrupt manifest may be a push in flight or a
hostile server's answer, while locally, under the exclusive lock, a manifest whose bytes do
not match its digest is simply damage — that artifact can never be served from here.

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

import hashlib
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .._input import show_path
from ..errors import StoreError, UnsafeManifestError
from ..manifests._index import IndexEntry
from ..manifests._manifest import Manifest
from ._blobs import Blobs
from ._buckets import (
    FAILED_LOG_MAX_AGE_S,
    RUN_DIR_MAX_AGE_S,
    abandoned_builds,
    stale_entries,
)
from ._entries import DAMAGED, NEWER, UNREADABLE, BadEntry, IndexFiles
from ._fsutil import unlink_quiet
from ._locks import store_lock
from ._materialize import stale_records
from ._signatures import SignatureFiles

__all__ = ["Collector", "DamagedEntry", "GcPlan", "KeptUnreadable", "MAX_SCAN_BYTES"]

# The most bytes of one unreadable document gc scans for the blobs it names. Real manifests
# are far smaller (MAX_MANIFEST_BYTES is 16 MiB); above this gc refuses rather than guesses.
MAX_SCAN_BYTES = 64 * 1024 * 1024
# A blob digest's hex, wherever a document names it ("sha256:<hex>", or the bare hex).
_HEX64 = re.compile(rb"(?<![0-9a-fA-F])[0-9a-f]{64}(?![0-9a-fA-F])")


@dataclass(frozen=True)
class KeptUnreadable:
    """An artifact gc kept because this Kiln cannot read it (another Kiln's, in a shared store)."""

    path: Path  # its index entry file
    key: str
    manifest: str | None  # its manifest digest, when the entry could be read
    reason: str
    blobs: tuple[str, ...]  # the blobs kept alive for it (those named in its documents)

    def describe(self) -> str:
        what = "its manifest is" if self.manifest else "its index entry is"
        return (f"kept artifact {self.key[:12]}: {what} not one this Kiln reads ({self.reason}); "
                f"its {len(self.blobs)} blobs are kept")


@dataclass(frozen=True)
class DamagedEntry:
    """An index entry file gc removed because the artifact can never be served."""

    path: Path
    key: str
    reason: str
    entry: IndexEntry | None = None  # the entry, when the file was valid (its manifest is what is wrong)

    def describe(self) -> str:
        return f"damaged index entry {show_path(self.path)} ({self.reason})"


@dataclass(frozen=True)
class GcPlan:
    entries: tuple[IndexEntry, ...]  # artifacts evicted (LRU / age)
    blobs: tuple[tuple[str, int], ...]  # (digest, size) no longer referenced
    temp_paths: tuple[Path, ...]  # leftovers of killed writers
    blob_bytes: int
    kept_bytes: int
    logs: tuple[Path, ...] = ()  # failed builds' logs older than FAILED_LOG_MAX_AGE_S
    kept_unreadable: tuple[KeptUnreadable, ...] = ()  # live, though this Kiln cannot read them
    damaged: tuple[DamagedEntry, ...] = ()  # entry files removed: they can never be served
    last_used: Mapping[str, float] = field(default_factory=dict)  # key -> last use, of evicted entries
    signature_dirs: tuple[str, ...] = ()  # manifest digests whose manifest goes (or is gone): their signatures

    @property
    def empty(self) -> bool:
        return not (self.entries or self.blobs or self.temp_paths or self.logs or self.damaged or self.signature_dirs)


class _Refusal(Exception):
    """Something gc must read to know what is live, and cannot."""


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
        signatures: SignatureFiles,
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
        self.signatures = signatures

    def run(self, *, max_size: int | None, older_than: float | None, dry_run: bool) -> GcPlan:
        """Plan (and unless ``dry_run``, apply) under the exclusive store lock."""
        with store_lock(self.lock_dir, shared=False):
            plan = self.plan(max_size, older_than)
            if not dry_run:
                self.apply(plan)
        return plan

    # ------------------------------------------------------------------ what is live
    def _size(self, digest: str) -> int:
        try:
            return self.blobs.path(digest).stat().st_size
        except OSError:
            return 0

    def _read_scannable(self, digest: str, what: str) -> bytes | None:
        """The bytes of blob ``digest`` (None if absent); _Refusal if they cannot be scanned."""
        try:
            with open(self.blobs.path(digest), "rb") as f:
                data = f.read(MAX_SCAN_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _Refusal(f"{what} cannot be read ({e.strerror or e})") from None
        if len(data) > MAX_SCAN_BYTES:
            raise _Refusal(f"{what} is larger than the {MAX_SCAN_BYTES} bytes gc scans for the blobs it names")
        return data

    def _named_blobs(self, data: bytes) -> dict[str, int]:
        """Every blob here that ``data`` names, and, transitively, that the JSON blobs among them name.

        File blobs (anything not a JSON object) are kept but not scanned; a JSON blob too large
        to scan is a _Refusal."""
        out: dict[str, int] = {}
        todo = [data]
        while todo:
            for m in _HEX64.finditer(todo.pop()):
                digest = "sha256:" + m.group().decode()
                if digest in out or not self.blobs.has(digest):
                    continue
                out[digest] = self._size(digest)
                nested = self._json_blob(digest)
                if nested:
                    todo.append(nested)
        return out

    def _json_blob(self, digest: str) -> bytes:
        """A blob's bytes if it is a JSON object (a manifest, a record), else b""."""
        try:
            with open(self.blobs.path(digest), "rb") as f:
                if f.read(64).lstrip()[:1] != b"{":
                    return b""
        except OSError:
            return b""
        return self._read_scannable(digest, f"the document {digest}") or b""

    def _refs(self, e: IndexEntry) -> tuple[str, dict[str, int]] | DamagedEntry | KeptUnreadable:
        """What entry ``e`` keeps alive: ("ok", blobs with sizes), or why it is damaged or unreadable."""
        path = self.index.path(e.model_hex, e.key)
        data = self._read_scannable(e.manifest, f"the manifest {e.manifest} of index entry {show_path(path)}")
        if data is None:
            return DamagedEntry(path, e.key, f"its manifest {e.manifest} is missing", e)
        if "sha256:" + hashlib.sha256(data).hexdigest() != e.manifest:
            return DamagedEntry(path, e.key, f"its manifest {e.manifest} does not match its digest", e)
        try:
            m = Manifest.parse(data)
        except UnsafeManifestError as err:
            named = {e.manifest: len(data), **self._named_blobs(data)}
            return KeptUnreadable(path, e.key, e.manifest, str(err).rstrip("."), tuple(sorted(named)))
        refs = {e.manifest: len(data), m.config.digest: m.config.size}
        refs.update({f.digest: f.size for f in m.files})
        return "ok", refs

    def _newer_entry(self, bad: BadEntry) -> KeptUnreadable:
        return KeptUnreadable(bad.path, bad.key, None, bad.why, tuple(sorted(self._named_blobs(bad.raw))))

    # ------------------------------------------------------------------ the plan
    def plan(self, max_size: int | None, older_than: float | None) -> GcPlan:
        """What gc would remove now (call under the exclusive store lock); StoreError if it cannot know."""
        bad: list[BadEntry] = []
        entries = list(self.index.entries(on_bad=bad.append))
        refusals = [b.summary() for b in bad if b.kind == UNREADABLE]
        damaged = [DamagedEntry(b.path, b.key, b.why) for b in bad if b.kind == DAMAGED and not b.path.is_dir()]
        kept: list[KeptUnreadable] = []
        pinned: dict[str, int] = {}  # blobs kept alive by what this Kiln cannot read
        usable: list[IndexEntry] = []
        refs: dict[str, dict[str, int]] = {}
        for item in [*(b for b in bad if b.kind == NEWER), *entries]:
            try:
                got = self._newer_entry(item) if isinstance(item, BadEntry) else self._refs(item)
            except _Refusal as r:
                refusals.append(str(r))
                continue
            if isinstance(got, DamagedEntry):
                damaged.append(got)
            elif isinstance(got, KeptUnreadable):
                kept.append(got)
                pinned.update({d: self._size(d) for d in got.blobs})
            else:
                assert isinstance(item, IndexEntry)
                usable.append(item)
                refs[item.key] = got[1]
        if refusals:
            self._refuse(refusals)

        # Reference counts, so a blob shared by several artifacts stays while any refers to it.
        refcount: dict[str, int] = {}
        sizes: dict[str, int] = dict(pinned)
        for e in usable:
            for d, s in refs[e.key].items():
                refcount[d] = refcount.get(d, 0) + 1
                sizes[d] = s
        kept_bytes = sum(sizes.values())
        evict: list[IndexEntry] = []
        used = {e.key: self.index.last_used(e) for e in usable}
        now = time.time()
        for e in sorted(usable, key=lambda x: used[x.key]):
            too_old = older_than is not None and now - used[e.key] > older_than
            too_big = max_size is not None and kept_bytes > max_size
            if not (too_old or too_big):
                continue
            evict.append(e)
            for d in refs[e.key]:
                refcount[d] -= 1
                if refcount[d] == 0 and d not in pinned:
                    kept_bytes -= sizes[d]
        live = {d for d, n in refcount.items() if n > 0} | set(pinned)
        dead = []
        for digest, path in self.blobs.all():
            if digest not in live:
                try:
                    dead.append((digest, path.stat().st_size))
                except FileNotFoundError:
                    pass
        # A signature is of one manifest: it goes with it (written after it, so never before it).
        orphan_sigs = tuple(m for m in self.signatures.manifests() if m not in live)
        return GcPlan(
            tuple(evict), tuple(dead), tuple(self._temps()), sum(s for _, s in dead), kept_bytes,
            tuple(stale_entries(self.logs_dir, max_age_s=FAILED_LOG_MAX_AGE_S)),
            tuple(kept), tuple(damaged), {e.key: used[e.key] for e in evict}, orphan_sigs,
        )

    def _refuse(self, refusals: list[str]) -> None:
        shown = "; ".join(refusals[:10]) + (f"; and {len(refusals) - 10} more" if len(refusals) > 10 else "")
        raise StoreError(
            f"gc deleted nothing: {shown}; so which blobs are still in use is unknown. Make those files readable "
            "(or remove those index entries, or run gc with the Kiln version that wrote them), then run gc again."
        )

    def _temps(self) -> list[Path]:
        temps: list[Path] = []
        if self.tmp_dir.exists():
            temps.extend(sorted(self.tmp_dir.iterdir()))
        for d in self.atomic_write_dirs:
            if d is not None and d.exists():
                temps.extend(p for p in d.rglob(".*.tmp-*"))
        temps.extend(abandoned_builds(self.builds_dir))
        temps.extend(stale_entries(self.run_dir_root, max_age_s=RUN_DIR_MAX_AGE_S))
        temps.extend(stale_records(self.deployments_dir))
        return temps

    def apply(self, plan: GcPlan) -> None:
        """Remove what ``plan`` lists (call under the exclusive store lock it was made under)."""
        # Index entries go first: a reader must never find an entry whose blobs are gone.
        for e in plan.entries:
            self.index.remove(e)
        for d in plan.damaged:
            self.index.remove_file(d.path)
        for digest, _ in plan.blobs:
            self.blobs.remove(digest)
        for digest in plan.signature_dirs:
            self.signatures.remove(digest)
        for p in (*plan.temp_paths, *plan.logs):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                unlink_quiet(p)
