"""The local content-addressed store.

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

The store owns every one of these directories (as uv's cache owns its buckets): other code
asks it for a build directory, a run directory or a place for a failed build's log, and gc
knows each by name.

Publish order (DESIGN invariant 2): blobs, then the build record and manifest (blobs too),
then the index entry, last, each by atomic rename. A reader that finds an index entry
therefore finds its manifest and every blob; a crash at any point leaves at worst
unreferenced blobs and temp files, which :meth:`Store.gc` removes.

Verification (invariant 3): blobs are hashed on the way in. On the way out, a blob whose stat
signature (inode, size, mtime, ctime) still equals the one recorded when it was last hashed
is trusted; any other blob is re-hashed first. Writing to a blob — even after chmod, even
restoring the mtime — changes its ctime, so tampering always forces a re-hash. A blob that
fails is moved to quarantine/ and the lookup or fetch becomes a loud miss.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from ..errors import CorruptBlobError, NotFoundError, StoreError, UnsafeManifestError
from ..manifests._index import IndexEntry
from ..manifests._manifest import (
    CONFIG_MEDIA_TYPE,
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    Descriptor,
    FileEntry,
    Manifest,
    check_digest,
)
from ..manifests._record import utc_now
from ._fsutil import atomic_write_bytes, exchange, fsync_dir
from ._hashmemo import HashMemo, hash_stream, stat_signature
from ._locks import single_flight, store_lock

__all__ = ["Store", "default_store_root", "GcPlan", "VerifyReport", "Progress"]

Progress = Callable[[int], None]  # called with byte counts as work advances

RUN_DIR_MAX_AGE_S = 86400  # engine directories of processes that did not exit cleanly
FAILED_LOG_MAX_AGE_S = 30 * 86400  # failed builds' logs: kept a month for the user to read


def default_store_root() -> Path:
    if os.environ.get("KILN_HOME"):
        return Path(os.environ["KILN_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "kiln"


def _hex(digest: str) -> str:
    return check_digest(digest, "digest").split(":", 1)[1]


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


@dataclass(frozen=True)
class VerifyReport:
    blobs_checked: int
    bytes_checked: int
    corrupt: tuple[str, ...]  # messages
    missing: tuple[str, ...]  # messages
    entries_checked: int

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing


class Store:
    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_store_root()
        self.blob_dir = self.root / "blobs" / "sha256"
        self.index_dir = self.root / "index"
        self.stamp_dir = self.root / "stamps"
        self.tmp_dir = self.root / "tmp"
        self.quarantine_dir = self.root / "quarantine"
        self.lock_dir = self.root / "locks"
        self.builds_dir = self.root / "builds"
        self.run_dir_root = self.root / "run"
        self.logs_dir = self.root / "logs"
        self.memo = HashMemo(self.root / "hash-memo")

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # ------------------------------------------------------------------ layout
    def _writable(self) -> None:
        if getattr(self, "_layout_ok", False):
            return
        try:
            for d in (self.blob_dir, self.index_dir, self.stamp_dir, self.tmp_dir, self.lock_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create the Kiln store at {self.root}: {e.strerror}; set KILN_HOME to a "
                "writable directory."
            ) from None
        self._layout_ok = True

    def writer_lock(self):  # type: ignore[no-untyped-def]
        self._writable()
        return store_lock(self.lock_dir, shared=True)

    def single_flight(self, key: str, timeout: float = -1):  # type: ignore[no-untyped-def]
        self._writable()
        return single_flight(self.lock_dir, key, timeout)

    # ------------------------------------------------------------------ buckets handed out
    @contextlib.contextmanager
    def build_dir(self, key: str) -> Iterator[Path]:
        """A fresh build directory on the store's filesystem, owned by this process while in use.

        Its ``<dir>.lock`` is flocked before the directory exists, so gc never sees a live
        build's directory unlocked; a builder killed midway leaves a directory whose lock is
        free, which gc removes.
        """
        import fcntl
        import secrets

        self._writable()
        self.builds_dir.mkdir(parents=True, exist_ok=True)
        path = self.builds_dir / f"{key[:16]}-{os.getpid()}-{secrets.token_hex(3)}"
        fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            path.mkdir()
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            _unlink_quiet(Path(str(path) + ".lock"))
            os.close(fd)

    def keep_failed_log(self, key: str, log: Path) -> Path:
        """Copy a failed build's log where the user can read it (gc removes it after 30 days)."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        saved = self.logs_dir / f"{key[:16]}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
        shutil.copyfile(log, saved)
        return saved

    def new_run_dir(self) -> Path:
        """A fresh directory for an engine loaded in this process (same filesystem: hard links).

        gc removes run directories older than a day (processes that did not exit cleanly).
        """
        import tempfile

        self.run_dir_root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="engine-", dir=self.run_dir_root))

    # ------------------------------------------------------------------ blobs
    def blob_path(self, digest: str) -> Path:
        h = _hex(digest)
        return self.blob_dir / h[:2] / h

    def _stamp_path(self, digest: str) -> Path:
        h = _hex(digest)
        return self.stamp_dir / h[:2] / h

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        try:
            st = os.stat(self.blob_path(digest))
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def _restamp(self, digest: str) -> None:
        try:
            sig = stat_signature(os.stat(self.blob_path(digest)))
            atomic_write_bytes(self._stamp_path(digest), sig.encode())
        except OSError:
            pass  # stamps only save work; without one the blob is re-hashed next time

    def _ingest(self, tmp: Path, digest: str) -> None:
        """Make a complete, fsynced temp file the blob ``digest`` (atomic rename)."""
        final = self.blob_path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        if self._blob_ok(digest, os.stat(tmp).st_size):
            # Identical bytes are already there; keep the existing inode (it may be
            # hard-linked into materialised artifacts).
            os.unlink(tmp)
            return
        # Absent, or damaged (check_blob moved it to quarantine): publishing the same bytes
        # again must repair the store, not keep a bad blob because its name exists.
        os.replace(tmp, final)
        fsync_dir(final.parent)  # the rename is durable before any index entry can name it
        self._restamp(digest)

    def _blob_ok(self, digest: str, size: int) -> bool:
        try:
            self.check_blob(digest, size)  # stamp fast path; re-hashes only a changed blob
        except (NotFoundError, CorruptBlobError):
            return False
        return True

    def _new_temp(self) -> Path:
        import secrets

        self._writable()
        return self.tmp_dir / f"{os.getpid()}-{secrets.token_hex(6)}"

    def put_file(self, src: Path, *, move: bool = False, progress: Progress | None = None) -> tuple[str, int]:
        """Store a file's bytes; return (digest, size). Each source byte is read once.

        ``move=True`` (for Kiln's own build outputs on the store's filesystem) renames the
        file into the store instead of copying it.
        """
        if move:
            digest, size = _hash_file(src, progress)
            with open(src, "rb") as f:
                os.fsync(f.fileno())
            tmp = self._new_temp()
            try:
                os.rename(src, tmp)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                move = False  # another filesystem: fall back to a copy
            else:
                self._ingest(tmp, digest)
                return digest, size
        tmp = self._new_temp()
        try:
            hexdigest, size = hash_stream(src, tmp, progress)
            digest = "sha256:" + hexdigest
            self._ingest(tmp, digest)
        except BaseException:
            _unlink_quiet(tmp)
            raise
        return digest, size

    def new_download_path(self) -> Path:
        """A temp path on the store's filesystem for a download (gc-safe under writer_lock)."""
        self._writable()
        return self._new_temp()

    def put_downloaded(self, tmp: Path, digest: str, size: int) -> None:
        """Adopt a downloaded temp file as blob ``digest`` after verifying its bytes.

        Raises CorruptBlobError (and deletes the temp file) when the bytes do not match.
        """
        try:
            actual, actual_size = _hash_file(tmp, None)
            if actual != digest or actual_size != size:
                raise CorruptBlobError(
                    f"downloaded bytes for {digest} hash to {actual} ({actual_size} bytes, expected {size})", digest
                )
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            self._ingest(tmp, digest)
        except BaseException:
            _unlink_quiet(tmp)
            raise

    def write_entry(self, entry: IndexEntry) -> None:
        """Make ``entry`` visible: the last step of any publish (its blobs must be in place)."""
        atomic_write_bytes(self.entry_path(entry.model_hex, entry.key), entry.to_bytes(), durable=True)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self._blob_ok(digest, len(data)):
            tmp = self._new_temp()
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                self._ingest(tmp, digest)
            except BaseException:
                _unlink_quiet(tmp)
                raise
        return digest, len(data)

    def read_blob(self, digest: str, max_size: int) -> bytes:
        """Read a small blob (manifest, record) and verify it against its digest."""
        path = self.blob_path(digest)
        try:
            with open(path, "rb") as f:
                data = f.read(max_size + 1)
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is not in the store at {self.root}.") from None
        if len(data) > max_size:
            raise UnsafeManifestError(f"blob {digest} is larger than the {max_size} bytes allowed for it.")
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            self._quarantine(digest)
            raise CorruptBlobError(f"blob {digest} does not match its digest (moved to quarantine).", digest)
        return data

    def check_blob(self, digest: str, size: int) -> None:
        """Raise unless the blob exists with the right size and bytes (stamp fast path)."""
        path = self.blob_path(digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is missing from the store at {self.root}.") from None
        if st.st_size != size:
            self._quarantine(digest)
            raise CorruptBlobError(
                f"blob {digest} has {st.st_size} bytes, the manifest says {size} (moved to quarantine).", digest
            )
        try:
            stamp = self._stamp_path(digest).read_text()
        except OSError:
            stamp = ""
        if stamp == stat_signature(st):
            return
        actual, _ = _hash_file(path, None)
        if actual != digest:
            self._quarantine(digest)
            raise CorruptBlobError(
                f"blob {digest} is corrupt: its bytes hash to {actual} (moved to quarantine at "
                f"{self.quarantine_dir}); rebuild or re-pull the artifact.",
                digest,
            )
        self._restamp(digest)

    def _quarantine(self, digest: str) -> None:
        path = self.blob_path(digest)
        try:
            self.quarantine_dir.mkdir(parents=True, exist_ok=True)
            os.replace(path, self.quarantine_dir / f"{_hex(digest)}.{int(time.time())}")
        except OSError:
            pass
        _unlink_quiet(self._stamp_path(digest))

    # ------------------------------------------------------------------ manifests & index
    def read_manifest(self, digest: str) -> Manifest:
        return Manifest.parse(self.read_blob(digest, MAX_MANIFEST_BYTES))

    def read_record(self, manifest: Manifest) -> dict[str, Any]:
        return json.loads(self.read_blob(manifest.config.digest, MAX_CONFIG_BYTES))

    def entry_path(self, model_hex: str, key: str) -> Path:
        return self.index_dir / model_hex / f"{key}.json"

    def get_entry(self, model_hex: str, key: str) -> IndexEntry | None:
        try:
            return IndexEntry.from_json(json.loads(self.entry_path(model_hex, key).read_bytes()))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(
                f"index entry {self.entry_path(model_hex, key)} is unreadable ({e}); run `kiln verify`."
            ) from None

    def iter_entries(self, model_hex: str | None = None) -> Iterator[IndexEntry]:
        dirs: Iterable[Path]
        if model_hex is not None:
            dirs = [self.index_dir / model_hex]
        else:
            try:
                dirs = sorted(p for p in self.index_dir.iterdir() if p.is_dir())
            except FileNotFoundError:
                return
        for d in dirs:
            try:
                names = sorted(os.listdir(d))
            except FileNotFoundError:
                continue
            for name in names:
                if not name.endswith(".json") or name.startswith("."):
                    continue
                try:
                    yield IndexEntry.from_json(json.loads((d / name).read_bytes()))
                except FileNotFoundError:
                    continue  # removed by gc while we listed
                except (ValueError, KeyError, TypeError):
                    continue  # reported by `kiln verify`

    def last_used(self, entry: IndexEntry) -> float:
        try:
            return os.stat(self.entry_path(entry.model_hex, entry.key)).st_mtime
        except FileNotFoundError:
            return 0.0

    def touch(self, entry: IndexEntry) -> None:
        """Record a use, for least-recently-used gc (the entry file's mtime)."""
        try:
            os.utime(self.entry_path(entry.model_hex, entry.key))
        except OSError:
            pass  # read-only stores still serve hits

    def check_artifact(self, entry: IndexEntry) -> Manifest:
        """The entry's manifest, after checking every blob it lists (raises on damage)."""
        manifest = self.read_manifest(entry.manifest)
        for f in manifest.files:
            self.check_blob(f.digest, f.size)
        return manifest

    # ------------------------------------------------------------------ publish
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
        src_dir = Path(src_dir)
        paths = _artifact_files(src_dir)
        created = utc_now()
        with self.writer_lock():
            files = []
            for rel, path in paths:
                digest, size = self.put_file(path, move=move, progress=progress)
                files.append(FileEntry(rel, digest, size))
            record_bytes = json.dumps(dict(record), sort_keys=True, indent=1).encode()
            cdigest, csize = self.put_bytes(record_bytes)
            manifest = Manifest(
                Descriptor(CONFIG_MEDIA_TYPE, cdigest, csize),
                tuple(files),
                {"org.opencontainers.image.created": created, "dev.kiln.key": key},
            )
            mdigest, _ = self.put_bytes(manifest.to_bytes())
            for d in {self.blob_path(f.digest).parent for f in files}:
                fsync_dir(d)
            entry = IndexEntry(
                key=key,
                manifest=mdigest,
                spec=dict(spec),
                model=dict(model),
                toolchain=dict(toolchain),
                size=manifest.total_size,
                created=created,
                files=len(files),
            )
            if before_index is not None:
                before_index()  # test hook: the moment between manifest and index entry
            self.write_entry(entry)
        return entry

    # ------------------------------------------------------------------ materialise
    def materialize(
        self,
        manifest: Manifest,
        dest: Path,
        *,
        verify: bool = True,
        replace: bool = False,
        copy: bool = False,
        progress: Progress | None = None,
    ) -> Path:
        """Recreate the artifact at ``dest``: hard links on the same filesystem, else copies.

        Files appear in a fresh staging directory beside ``dest`` and the whole directory is
        renamed into place, so ``dest`` is complete or absent. Manifest paths were validated
        when it was parsed (relative, normalised, no ``..``), and the staging directory is
        ours alone, so no file can land outside ``dest``.
        """
        dest = Path(dest).absolute()
        if dest.is_symlink():
            raise StoreError(f"destination {dest} is a symbolic link; pass a real directory.")
        if dest.exists():
            if not dest.is_dir():
                raise StoreError(f"destination {dest} exists and is not a directory.")
            if any(dest.iterdir()) and not replace:
                raise StoreError(f"destination {dest} is not empty; pass --force to replace it.")
        dest.parent.mkdir(parents=True, exist_ok=True)
        import secrets

        staging = dest.parent / f".{dest.name}.kiln-{os.getpid()}-{secrets.token_hex(4)}"
        staging.mkdir()
        try:
            with store_lock(self.lock_dir, shared=True) if self.lock_dir.exists() else contextlib.nullcontext():
                for f in manifest.files:
                    target = staging.joinpath(*f.path.split("/"))
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if verify:
                        self.check_blob(f.digest, f.size)
                    blob = self.blob_path(f.digest)
                    linked = False
                    if not copy:
                        try:
                            os.link(blob, target)
                            linked = True
                        except OSError as e:
                            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP):
                                raise
                    if linked:
                        if verify:
                            self._restamp(f.digest)  # the link changed the blob's ctime, not its bytes
                        if progress:
                            progress(f.size)
                    else:
                        _copy_verified(blob, target, f.digest, progress)
            if dest.exists():
                if exchange(staging, dest):
                    # One atomic swap: dest is the old tree or the new one at every instant;
                    # staging now holds the old tree.
                    shutil.rmtree(staging, ignore_errors=True)
                else:
                    old = dest.parent / f".{dest.name}.kiln-old-{os.getpid()}-{secrets.token_hex(4)}"
                    os.rename(dest, old)
                    os.rename(staging, dest)
                    shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return dest

    # ------------------------------------------------------------------ maintenance
    def all_blobs(self) -> Iterator[tuple[str, Path]]:
        try:
            prefixes = sorted(os.listdir(self.blob_dir))
        except FileNotFoundError:
            return
        for prefix in prefixes:
            for name in sorted(os.listdir(self.blob_dir / prefix)):
                if len(name) == 64 and not name.startswith("."):
                    yield "sha256:" + name, self.blob_dir / prefix / name

    def verify(self, progress: Progress | None = None) -> VerifyReport:
        corrupt, missing = [], []
        checked = nbytes = 0
        for digest, path in self.all_blobs():
            actual, size = _hash_file(path, progress)
            checked += 1
            nbytes += size
            if actual != digest:
                corrupt.append(f"blob {digest} is corrupt (hashes to {actual})")
            else:
                self._restamp(digest)
        entries = 0
        for entry in self.iter_entries():
            entries += 1
            where = f"artifact {entry.key[:12]} ({entry.spec.get('model')}, {entry.spec.get('target')})"
            try:
                manifest = self.read_manifest(entry.manifest)
            except (NotFoundError, CorruptBlobError, UnsafeManifestError) as e:
                missing.append(f"{where}: manifest unusable: {e}")
                continue
            for f in manifest.files:
                if not self.has_blob(f.digest):
                    missing.append(f"{where}: file {f.path} ({f.digest}) is missing")
                elif not self.has_blob(f.digest, f.size):
                    corrupt.append(f"{where}: file {f.path} ({f.digest}) has the wrong size")
        return VerifyReport(checked, nbytes, tuple(corrupt), tuple(missing), entries)

    def remove_entry(self, entry: IndexEntry) -> None:
        _unlink_quiet(self.entry_path(entry.model_hex, entry.key))
        try:
            (self.index_dir / entry.model_hex).rmdir()
        except OSError:
            pass

    def _gc_plan_locked(self, max_size: int | None, older_than: float | None) -> GcPlan:
        entries = list(self.iter_entries())
        manifests: dict[str, Manifest | None] = {}
        for e in entries:
            try:
                manifests[e.manifest] = self.read_manifest(e.manifest)
            except (NotFoundError, CorruptBlobError, UnsafeManifestError):
                manifests[e.manifest] = None

        def refs(e: IndexEntry) -> dict[str, int]:
            m = manifests[e.manifest]
            try:
                out = {e.manifest: self.blob_path(e.manifest).stat().st_size}
            except FileNotFoundError:
                out = {e.manifest: 0}
            if m is not None:
                out[m.config.digest] = m.config.size
                out.update({f.digest: f.size for f in m.files})
            return out

        refcount: dict[str, int] = {}
        sizes: dict[str, int] = {}
        for e in entries:
            for d, s in refs(e).items():
                refcount[d] = refcount.get(d, 0) + 1
                sizes[d] = s
        kept_bytes = sum(sizes.values())
        evict: list[IndexEntry] = []
        now = time.time()
        for e in sorted(entries, key=self.last_used):
            too_old = older_than is not None and now - self.last_used(e) > older_than
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
        for digest, path in self.all_blobs():
            if digest not in live:
                try:
                    dead.append((digest, path.stat().st_size))
                except FileNotFoundError:
                    pass
        temps: list[Path] = []
        if self.tmp_dir.exists():
            temps.extend(sorted(self.tmp_dir.iterdir()))
        for d in (self.index_dir, self.stamp_dir, self.memo.root):
            if d is not None and d.exists():
                temps.extend(p for p in d.rglob(".*.tmp-*"))
        temps.extend(_abandoned_builds(self.builds_dir))
        temps.extend(_stale_dirs(self.run_dir_root, max_age_s=RUN_DIR_MAX_AGE_S))
        logs = tuple(_stale_dirs(self.logs_dir, max_age_s=FAILED_LOG_MAX_AGE_S))
        return GcPlan(tuple(evict), tuple(dead), tuple(temps), sum(s for _, s in dead), kept_bytes, logs)

    def gc(self, *, max_size: int | None = None, older_than: float | None = None, dry_run: bool = False) -> GcPlan:
        """Plan (and unless ``dry_run``, apply) removal of unreferenced and evicted data.

        Runs under the exclusive store lock: no publisher is between writing a blob and
        referencing it, and no live writer owns a file in tmp/.
        """
        if not self.root.exists():
            return GcPlan((), (), (), 0, 0)
        self._writable()
        with store_lock(self.lock_dir, shared=False):
            plan = self._gc_plan_locked(max_size, older_than)
            if dry_run:
                return plan
            # Index entries go first: a reader must never find an entry whose blobs are gone.
            for e in plan.entries:
                self.remove_entry(e)
            for digest, _ in plan.blobs:
                _unlink_quiet(self.blob_path(digest))
                _unlink_quiet(self._stamp_path(digest))
            for p in (*plan.temp_paths, *plan.logs):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    _unlink_quiet(p)
        return plan


# ---------------------------------------------------------------------- helpers


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _abandoned_builds(builds: Path) -> list[Path]:
    """Build directories whose builder is gone (its flock on ``<dir>.lock`` is free)."""
    import fcntl

    out: list[Path] = []
    if not builds.is_dir():
        return out
    for d in sorted(p for p in builds.iterdir() if p.is_dir()):
        lock = Path(str(d) + ".lock")
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            out.append(d)  # no lock file at all: no live builder owns it
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live build holds it
        finally:
            os.close(fd)
        out.extend([d, lock])
    return out


def _stale_dirs(root: Path, max_age_s: float) -> list[Path]:
    """Entries of a bucket (run dirs, failed-build logs) not modified for ``max_age_s``."""
    if not root.is_dir():
        return []
    cutoff = time.time() - max_age_s
    return [p for p in sorted(root.iterdir()) if p.stat().st_mtime < cutoff]


def _hash_file(path: Path, progress: Progress | None) -> tuple[str, int]:
    hexdigest, size = hash_stream(path, None, progress)
    return "sha256:" + hexdigest, size


def _copy_verified(src: Path, dest: Path, digest: str, progress: Progress | None) -> None:
    if "sha256:" + hash_stream(src, dest, progress)[0] != digest:
        raise CorruptBlobError(f"blob {digest} changed while it was copied out; run `kiln verify`.", digest)


def _artifact_files(src_dir: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) for every regular file; links and specials are refused."""
    if not src_dir.is_dir():
        raise StoreError(f"{src_dir} is not a directory; pass the artifact directory to publish.")
    out = []
    for dirpath, dirnames, filenames in os.walk(src_dir):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            if p.is_symlink():
                raise StoreError(
                    f"{p} is a symbolic link; artifacts hold regular files only (copy the target in)."
                )
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if not p.is_file():
                raise StoreError(f"{p} is not a regular file; artifacts hold regular files only.")
            out.append((p.relative_to(src_dir).as_posix(), p))
    if not out:
        raise StoreError(f"{src_dir} holds no files: an empty artifact is never published.")
    return out
