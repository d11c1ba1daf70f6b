"""The local content-addressed store: :class:`Store`, the facade over its parts.

Layout under the store root (``KILN_HOME``)::

    blobs/sha256/ab/abcd…      every file, manifest and build record, by digest, read-only
    index/<model hex>/<key>.json   one entry per artifact (see manifests/_index.py)
    stamps/ab/abcd…            stat signature of a blob when it was last verified
    tmp/                       writers' temp files (same filesystem as blobs/)
    quarantine/                blobs that failed verification, kept for inspection
    hash-memo/                 memoised sha256 of model files
    locks/                     store.lock + gate.lock (gc vs writers), build-<key>.lock (single-flight)
    builds/<key>-<pid>-<rand>/ a live build's working directory (+ .lock, held while it builds)
    run/engine-<rand>/         per-process directories of engines loaded in-process
    logs/<key>-<time>-<pid>.log  logs of failed builds (gc removes them after 30 days)
    deployments/<hash>.json    what was materialised where (stat signatures), so a second
                               `kiln ensure` knows DEST is intact without re-hashing it
    signatures/<manifest hex>/ an artifact's signatures and signed provenance, by key
                               fingerprint (see _signatures.py); checked by ``Store.trust``
    models/<repo>/commits/<commit>.json, models/<repo>/revisions/<rev>/<commit>.json
                               model records: what a Hub id resolved to (files, tree digest,
                               config), so a machine without the weights can key it; gc keeps
                               them all (small; see _model_records.py)

The store owns every one of these directories (as uv's cache owns its buckets): other code
asks it for a build directory, a run directory or a place for a failed build's log, and gc
knows each by name. This module names each directory once, in :meth:`Store.__init__`, and
hands every part only the directories that part may touch:

    _blobs.py        the blob CAS: put, check (stamp fast path), quarantine, read, list
    _entries.py      index-entry files: path, get, list, write, remove, touch, last use
    _publish.py      publish order: blobs, record, manifest, then the entry (invariant 2)
    _materialize.py  an artifact's directory from its manifest, complete or absent
    _verify.py       ``kiln verify``: re-hash everything, check every entry
    _gc.py           the gc plan and applying it under the exclusive lock
    _buckets.py      builds/, run/, logs/: handing them out and telling which are dead
    _locks.py        the store lock (writers vs gc) and single-flight build locks
    _hashmemo.py     memoised sha256 of model files (``Store.memo``)
    _model_records.py  model records and revision pointers under models/ (``Store.model_records``)
    _signatures.py   signatures under signatures/ (``Store.signatures``); the trust policy
                     (``Store.trust``) decides from them whether an artifact may be served

Composition rather than inheritance or mixins: each part is a plain object or function with
its own docstring and invariants, testable alone, and none of them imports this module (so
there is no import cycle and the parts' dependencies read top-down). Store keeps every
public name callers use, each a one-line delegation, so ``Store`` is the one thing the rest
of Kiln needs.

Publish order (DESIGN invariant 2): blobs, then the build record and manifest (blobs too),
then the index entry, last, each by atomic rename. A reader that finds an index entry
therefore finds its manifest and every blob; a crash at any point leaves at worst
unreferenced blobs and temp files, which :meth:`Store.gc` removes.

Verification (invariant 3): blobs are hashed on the way in. On the way out, a blob whose stat
signature (inode, size, mtime, ctime) still equals the one recorded when it was last hashed
is trusted; any other blob is re-hashed first. Writing to a blob — even after chmod, even
restoring the mtime — changes its ctime, so tampering always forces a re-hash. A blob that
fails is moved to quarantine/ and the lookup or fetch becomes a loud miss.

Nothing is created on disk until something writes (``_writable``): lookups against a
missing or read-only store stay pure reads.

Read-only stores (a baked image layer, a read-only mount, another user's store) serve every
reader — lookup, fetch, ensure of a stored artifact, ls, show, verify: readers take the shared
lock only where they can (:meth:`Store.reader_lock`), and stamps, hash memos, last-use times
and deployment records are best effort. Everything that writes goes through ``_writable``,
which says, before any work, that the store is read-only and which command needs write access.

A reader's pin: a fetch holds the shared store lock from finding the artifact (pulling it,
or the local hit) until it is materialised, so gc (exclusive lock) cannot evict it in
between; an engine loaded in-process holds a lease on its run directory for as long as the
process lives (see :mod:`kiln.cache._buckets`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from .._input import show_path
from ..errors import StoreError, TrustError
from ..manifests._index import IndexEntry
from ..manifests._manifest import Manifest
from ..manifests._record import check_record_describes
from . import _buckets
from ._blobs import Blobs
from ._buckets import FAILED_LOG_MAX_AGE_S, RUN_DIR_MAX_AGE_S
from ._entries import IndexFiles
from ._hashmemo import HashMemo
from ._locks import SingleFlight, single_flight, store_lock, sweep_build_locks
from ._model_records import ModelRecordFiles
from ._progress import Progress
from ._signatures import PROVENANCE_SUFFIX, SignatureFiles

if TYPE_CHECKING:  # gc, verify, publish and signing are imported by the methods that run them: a lookup needs none
    from ..trust import Signature, SigningKey, TrustPolicy, Verified
    from ._gc import Collector, GcPlan
    from ._verify import VerifyReport

__all__ = [
    "FAILED_LOG_MAX_AGE_S",
    "Progress",
    "RUN_DIR_MAX_AGE_S",
    "Store",
    "default_store_root",
]


def default_trust_policy() -> TrustPolicy | None:
    """The policy ``KILN_TRUST_POLICY`` names (read whole now: a bad one is a SpecError), or None."""
    path = os.environ.get("KILN_TRUST_POLICY", "").strip()
    if not path:
        return None
    from ..trust import load_policy

    return load_policy(path)


def default_store_root() -> Path:
    if os.environ.get("KILN_HOME"):
        return Path(os.environ["KILN_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "kiln"


class Store:
    """The local content-addressed store at ``root`` (default: KILN_HOME, else ~/.cache/kiln).

    Blobs by digest, manifests, an index from build key to manifest; constructing one touches
    nothing on disk.
    """

    def __init__(self, root: Path | str | None = None, *, trust: TrustPolicy | None | str = "env") -> None:
        self.root = Path(root) if root is not None else default_store_root()
        # The deployment's trust policy: every artifact this Store hands out (lookup, fetch,
        # pull, load, a build's stage inputs) must satisfy it (DESIGN invariant 5). By default
        # the one KILN_TRUST_POLICY names, as KILN_HOME names the root: the Python API must not
        # serve what the CLI, in the same environment, would refuse. ``trust=None``: no policy.
        self.trust: TrustPolicy | None = default_trust_policy() if trust == "env" else trust  # type: ignore[assignment]
        self.blob_dir = self.root / "blobs" / "sha256"
        self.index_dir = self.root / "index"
        self.stamp_dir = self.root / "stamps"
        self.tmp_dir = self.root / "tmp"
        self.quarantine_dir = self.root / "quarantine"
        self.lock_dir = self.root / "locks"
        self.builds_dir = self.root / "builds"
        self.run_dir_root = self.root / "run"
        self.logs_dir = self.root / "logs"
        self.deployments_dir = self.root / "deployments"
        # Models downloaded from s3:// URIs (kiln.models._s3model): <repo>/<listing digest>/, renamed in complete.
        self.s3_models_dir = self.root / "s3-models"
        self.memo = HashMemo(self.root / "hash-memo")
        self.model_records = ModelRecordFiles(self.root)  # models/
        self.signatures = SignatureFiles(self.root)  # signatures/
        # What uses the store, named when it turns out to be read-only (the CLI sets "`kiln build`").
        self.command: str | None = None
        self._layout_ok = False
        # The parts (no I/O here: constructing a Store touches nothing on disk).
        self._blobs = Blobs(self.root, self.blob_dir, self.stamp_dir, self.quarantine_dir, self._new_temp)
        self._index = IndexFiles(self.index_dir)

    def _collector(self) -> Collector:
        from ._gc import Collector

        return Collector(
            self._blobs,
            self._index,
            lock_dir=self.lock_dir,
            tmp_dir=self.tmp_dir,
            atomic_write_dirs=(self.index_dir, self.stamp_dir, self.memo.root, self.model_records.dir,
                               self.signatures.dir),
            builds_dir=self.builds_dir,
            run_dir_root=self.run_dir_root,
            logs_dir=self.logs_dir,
            deployments_dir=self.deployments_dir,
            signatures=self.signatures,
        )

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # ------------------------------------------------------------------ layout & locks
    def _writable(self, action: str = "this operation", *, who: str | None = None) -> None:
        """Create the directories every writer needs, once per Store.

        Raises StoreError — saying the store is read-only and what needs write access (``who``,
        else the command using the store, else ``action``) — where they cannot be created or
        written (read-only mount, no permission).
        """
        if self._layout_ok:
            return
        reason = self._unwritable_reason()
        if reason is not None:
            raise StoreError(
                f"the store at {show_path(self.root)} is read-only ({reason}); {who or self.command or action} "
                "needs write access to it: set KILN_HOME to a writable directory."
            )
        self._layout_ok = True

    def require_writable(self, action: str, *, who: str | None = None) -> None:
        """Fail now, before any expensive work, unless the store can be written.

        The error names ``who`` needs write access (e.g. "`kiln ensure --on-miss build`"), else
        the command using the store (:attr:`command`), else ``action`` ("building").
        """
        self._writable(action, who=who)

    def _unwritable_reason(self) -> str | None:
        for d in (self.blob_dir, self.index_dir, self.stamp_dir, self.tmp_dir, self.lock_dir):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise StoreError(
                        f"cannot create the Kiln store at {show_path(self.root)}: {e.strerror}; set KILN_HOME "
                        "to a writable directory."
                    ) from None
                return _why_not_writable(_nearest_existing(d), e.errno)
            if not os.access(d, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
                return _why_not_writable(d, None)
        return None

    def _new_temp(self) -> Path:
        # tmp/<pid>-<random>: everything in tmp/ belongs to a writer holding the shared store
        # lock, so gc (exclusive lock) may remove whatever it finds there.
        self._writable()
        return self.tmp_dir / f"{os.getpid()}-{os.urandom(6).hex()}"

    def writer_lock(self) -> AbstractContextManager[None]:
        """The shared store lock: hold it from writing a blob until an entry references it."""
        self._writable()
        return store_lock(self.lock_dir, shared=True)

    def reader_lock(self, *, create: bool = False) -> AbstractContextManager[None]:
        """The shared store lock for a reader: hold it from finding an artifact until it is
        materialised, so gc cannot evict it in between.

        Needs no write access: on a read-only store an existing lock file is flocked
        read-only, and where there is none nothing is locked (nothing can gc that store
        through it either). A missing store is not created unless ``create`` (a fetch that
        may pull into it).
        """
        if create:
            with contextlib.suppress(OSError):
                self.root.mkdir(parents=True, exist_ok=True)
        if not self.root.is_dir():
            return contextlib.nullcontext()
        return store_lock(self.lock_dir, shared=True, required=False)

    def single_flight(self, key: str, timeout: float = -1) -> SingleFlight:
        self._writable("building")
        return single_flight(self.lock_dir, key, timeout)

    # ------------------------------------------------------------------ buckets handed out
    @contextlib.contextmanager
    def build_dir(self, key: str) -> Iterator[Path]:
        """A fresh build directory on the store's filesystem, owned by this process while in use.

        Its ``<dir>.lock`` is flocked before the directory exists, so gc never sees a live
        build's directory unlocked; a builder killed midway leaves a directory whose lock is
        free, which gc removes.
        """
        self._writable("building")
        with _buckets.build_dir(self.builds_dir, key) as path:
            yield path

    def keep_failed_log(self, key: str, log: Path) -> Path:
        """Copy a failed build's log where the user can read it (gc removes it after 30 days)."""
        return _buckets.keep_failed_log(self.logs_dir, key, log)

    def new_run_dir(self) -> Path:
        """A fresh directory for an engine loaded in this process (same filesystem: hard links).

        Leased by this process until :meth:`release_run_dir` or its exit: gc never removes a
        leased run directory, and removes one whose process died.
        """
        self._writable("loading an engine in-process")
        return _buckets.new_run_dir(self.run_dir_root)

    def release_run_dir(self, path: Path) -> None:
        """Remove a run directory from :meth:`new_run_dir` and drop its lease."""
        _buckets.release_run_dir(path)

    # ------------------------------------------------------------------ blobs
    def blob_path(self, digest: str) -> Path:
        return self._blobs.path(digest)

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        return self._blobs.has(digest, size)

    def put_file(self, src: Path, *, move: bool = False, progress: Progress | None = None) -> tuple[str, int]:
        """Store a file's bytes; return (digest, size). Each source byte is read once.

        ``move=True`` (for Kiln's own build outputs on the store's filesystem) renames the
        file into the store instead of copying it.
        """
        return self._blobs.put_file(src, move=move, progress=progress)

    def new_download_path(self) -> Path:
        """A temp path on the store's filesystem for a download (gc-safe under writer_lock)."""
        return self._new_temp()

    def put_downloaded(self, tmp: Path, digest: str, size: int, hashed: tuple[str, int] | None = None) -> None:
        """Adopt a downloaded temp file as blob ``digest`` after verifying its bytes (``hashed``:
        what :meth:`Remote.download` returned, see there).

        Raises CorruptBlobError (and deletes the temp file) when the bytes do not match.
        """
        self._blobs.put_downloaded(tmp, digest, size, hashed)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        return self._blobs.put_bytes(data)

    def read_blob(self, digest: str, max_size: int) -> bytes:
        """Read a small blob (manifest, record) and verify it against its digest."""
        return self._blobs.read(digest, max_size)

    def check_blob(self, digest: str, size: int) -> None:
        """Raise unless the blob exists with the right size and bytes (stamp fast path)."""
        self._blobs.check(digest, size)

    def all_blobs(self) -> Iterator[tuple[str, Path]]:
        return self._blobs.all()

    # ------------------------------------------------------------------ manifests & index
    def read_manifest(self, digest: str) -> Manifest:
        return self._blobs.read_manifest(digest)

    def read_record(self, manifest: Manifest) -> dict[str, Any]:
        return self._blobs.read_record(manifest)

    def entry_path(self, model_hex: str, key: str) -> Path:
        return self._index.path(model_hex, key)

    def get_entry(self, model_hex: str, key: str) -> IndexEntry | None:
        return self._index.get(model_hex, key)

    def iter_entries(self, model_hex: str | None = None) -> Iterator[IndexEntry]:
        return self._index.entries(model_hex)

    def write_entry(self, entry: IndexEntry) -> None:
        """Make ``entry`` visible: the last step of any publish (its blobs must be in place)."""
        self._writable("publishing")
        self._index.write(entry)

    def remove_entry(self, entry: IndexEntry) -> None:
        self._writable("removing artifacts")
        self._index.remove(entry)

    def last_used(self, entry: IndexEntry) -> float:
        return self._index.last_used(entry)

    def touch(self, entry: IndexEntry) -> None:
        """Record a use, for least-recently-used gc (the entry file's mtime)."""
        self._index.touch(entry)

    def check_artifact(self, entry: IndexEntry) -> Manifest:
        """The entry's manifest, after checking every blob it lists and that the entry says what
        its build record and manifest say (raises on damage: an entry is a claim, the record the truth)."""
        manifest = self.read_manifest(entry.manifest)
        check_record_describes(self.read_record(manifest), entry, manifest)
        for f in manifest.files:
            self.check_blob(f.digest, f.size)
        return manifest

    # ------------------------------------------------------------------ signatures & trust
    def signatures_of(self, entry: IndexEntry) -> list[Signature]:
        return self.signatures.signatures(entry.manifest)

    def check_trusted(self, entry: IndexEntry, manifest: Manifest, origins: list[str | None] | None = None,
                      requested: tuple[str, ...] = ()) -> Verified | None:
        """The signature that lets this store's trust policy serve ``entry`` (None: no policy, or
        one that requires nothing); TrustError if the policy refuses it. ``origins``: where the
        artifact comes from (default: the remotes its signatures were pulled from, else here)."""
        if self.trust is None or not self.trust.require_signed:
            return None
        if origins is None:
            origins = list(self.signatures.origins(entry.manifest)) or [None]
        return self.trust.check(entry, manifest, self.signatures_of(entry), origins, requested)

    def add_signatures(self, entry: IndexEntry, signatures: list[Signature], provenance: list[Signature] = (),
                       origin: str | None = None) -> None:
        """File signatures (and signed provenance) of ``entry``'s manifest, durably: a publish
        calls this after the manifest and before the index entry."""
        self._writable("storing signatures")
        for sig in signatures:
            self.signatures.add(entry.manifest, sig.fingerprint, sig.data)
        for sig in provenance:
            self.signatures.add(entry.manifest, sig.fingerprint, sig.data, PROVENANCE_SUFFIX)
        if origin is not None:
            self.signatures.add_origin(entry.manifest, origin)

    def pulled_from(self, entry: IndexEntry) -> list[str]:
        """The remotes ``entry``'s artifact was pulled from (empty: built or put here)."""
        return self.signatures.origins(entry.manifest)

    def sign(self, entry: IndexEntry, key: SigningKey, *, force: bool = False) -> Signature:
        """Sign a stored artifact (its files, key and manifest) and its provenance with ``key``.

        An artifact pulled from a remote is refused unless ``force``: a signature says "built
        by us", and a CI job that signs whatever its build found would sign what anyone with
        write access to the bucket planted there."""
        from ..trust import Signature, provenance_statement, sign_manifest, sign_statement

        origins = self.pulled_from(entry)
        if origins and not force:
            raise TrustError(f"artifact {entry.key[:12]} was pulled from {', '.join(origins)}, not built here: signing it "
                             "would vouch for bytes this machine did not build. Check it, then sign with --force; "
                             "or build it here.")
        manifest = self.check_artifact(entry)  # never vouch for a damaged artifact
        record = self.read_record(manifest)
        sig = Signature(key.fingerprint, sign_manifest(key, manifest, entry.key, entry.manifest))
        prov = Signature(key.fingerprint, sign_statement(key, provenance_statement(record, manifest)))
        with self.writer_lock():  # gc cannot take the manifest away under the new signature
            self.add_signatures(entry, [sig], [prov])
        return sig

    # ------------------------------------------------------------------ publish & materialise
    def publish(
        self,
        src_dir: Path,
        *,
        key: str,
        spec: Mapping[str, Any],
        model: Mapping[str, Any],
        toolchain: Mapping[str, str],
        record: Mapping[str, Any],
        move: bool = False,
        progress: Progress | None = None,
        before_index: Callable[[], None] | None = None,
    ) -> IndexEntry:
        """Store every file under ``src_dir`` and make the artifact visible under ``key``."""
        from ._publish import publish

        return publish(
            self._blobs, self._index, self.writer_lock, src_dir,
            key=key, spec=spec, model=model, toolchain=toolchain, record=record,
            move=move, progress=progress, before_index=before_index,
        )

    def materialize(
        self,
        manifest: Manifest,
        dest: Path,
        *,
        verify: bool = True,
        replace: bool = False,
        link: bool = False,
        copy: bool = False,
        progress: Progress | None = None,
        generated: Mapping[str, bytes] | None = None,
        remember_as: Manifest | None = None,
    ) -> Path:
        """Recreate the artifact at ``dest``: copy-on-write clones or hashed copies; hard links with ``link``.

        ``dest`` is complete or absent at every instant, never overlaps the store (except
        Kiln's own builds/ and run/ buckets), and a write into a materialised file never
        reaches the store unless ``link`` was asked for (see :mod:`kiln.cache._materialize`).
        ``copy`` is accepted for compatibility: copying (or cloning) is the default now.
        ``generated``: digest -> bytes of listed files that are not blobs (a layout's generated
        files). Needs no write access to the store. ``remember_as``: the manifest a later
        :meth:`holds` will check ``dest`` against, when it is not ``manifest`` itself.
        """
        from ._materialize import materialize, remember  # not on the lookup path

        del copy
        dest = Path(dest).absolute()
        self.check_destination(dest)
        out = materialize(self._blobs, self.reader_lock, manifest, dest, verify=verify, replace=replace, link=link,
                          progress=progress, generated=generated)
        if not link and self.root.exists():
            kept = remember_as or manifest
            remember(self.deployments_dir, kept, _digest(kept), out)
        return out

    def check_destination(self, dest: Path) -> None:
        """Refuse (StoreError) a destination that overlaps the store, before anything is touched."""
        from ._materialize import check_outside_store

        check_outside_store(Path(dest).absolute(), self.root, allowed=(self.builds_dir, self.run_dir_root))

    def holds(self, manifest: Manifest, dest: Path, ignore: frozenset[str] = frozenset()) -> tuple[bool, str]:
        """Does ``dest`` hold exactly this artifact? ``(True, "")``, or ``(False, the first difference)``.

        Fast when Kiln materialised it and nothing was written since (stat signatures), exact
        otherwise (every file hashed).
        """
        from ._materialize import holds

        return holds(self.deployments_dir, manifest, _digest(manifest), Path(dest).absolute(), ignore)

    # ------------------------------------------------------------------ maintenance
    def verify(self, progress: Progress | None = None) -> VerifyReport:
        from ._verify import verify

        return verify(self._blobs, self._index, progress)

    def gc(self, *, max_size: int | None = None, older_than: float | None = None, dry_run: bool = False) -> GcPlan:
        """Plan (and unless ``dry_run``, apply) removal of unreferenced and evicted data.

        Runs under the exclusive store lock: no publisher is between writing a blob and
        referencing it, and no live writer owns a file in tmp/.
        """
        from ._gc import GcPlan

        if not self.root.exists():
            return GcPlan((), (), (), 0, 0)  # `kiln gc` on no store creates none
        self._writable("gc")
        plan = self._collector().run(max_size=max_size, older_than=older_than, dry_run=dry_run)
        if not dry_run:
            # Free build locks of builders that died (removed under their own flock, so
            # single-flight holds; live builders unlink theirs themselves).
            sweep_build_locks(self.lock_dir)
        return plan


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _why_not_writable(path: Path, err: int | None) -> str:
    """"read-only file system", or "no write permission on PATH (owned by USER)"."""
    try:
        if err == errno.EROFS or os.statvfs(path).f_flag & os.ST_RDONLY:
            return "read-only file system"
        owner = os.stat(path).st_uid
    except OSError:
        return f"cannot write to {show_path(path)}"
    try:
        import pwd

        name = pwd.getpwuid(owner).pw_name
    except (ImportError, KeyError):
        name = f"uid {owner}"
    return f"no write permission on {show_path(path)}, owned by {name}"


def _digest(manifest: Manifest) -> str:
    return "sha256:" + hashlib.sha256(manifest.to_bytes()).hexdigest()
