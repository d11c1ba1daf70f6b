"""The blob CAS: every file, manifest and build record of the store, named by its sha256.

Directories it touches (handed in by :class:`~kiln.cache._store.Store`, which names them)::

    blobs/sha256/ab/abcd…   the blobs, read-only (mode 0444)
    stamps/ab/abcd…         stat signature of a blob when it was last hashed
    quarantine/             blobs that failed verification, kept for inspection
    tmp/                    temp files, via the ``new_temp`` callable the store hands in

A class rather than functions because every operation needs the same four things (the blob,
stamp and quarantine directories and the temp-file source); :class:`Blobs` holds them once
and the store, materialise, verify, publish and gc all share one instance.

Crash safety (DESIGN invariant 2): a blob appears only by ``os.replace`` of a complete,
fsynced temp file on the same filesystem, followed by an fsync of its directory, so a
blob's name always means all of its bytes, and the rename is durable before any index entry
can name it. A writer killed midway leaves only a temp file in tmp/, which gc removes.

Verification (invariant 3): bytes are hashed on the way in. On the way out, a blob whose
stat signature (inode, size, mtime, ctime) equals its stamp is trusted; any other blob is
re-hashed first. Writing to a blob — even after chmod, even restoring the mtime — changes its
ctime, so tampering always forces a re-hash. A blob that fails is moved to quarantine/ and
the caller gets :class:`~kiln.errors.CorruptBlobError` (a loud miss, never a silent hit).

A full disk (ENOSPC, EDQUOT, EFBIG) while a blob is written is a one-line StoreError naming
the temp file being written, the store and the fix (:func:`~kiln.cache._fsutil.store_writes`),
and the partial temp file is removed before it is raised.

Concurrency: two writers of one digest write identical bytes, and the rename makes either
one win whole. A stamp is only a cache of "these bytes were hashed": a missing or stale one
costs a re-hash, never a wrong answer. Callers that add blobs hold the store's shared lock
(``Store.writer_lock``) so gc cannot delete a blob before its manifest references it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .._input import show_path
from ..errors import CorruptBlobError, NotFoundError, StoreError, UnsafeManifestError
from ..manifests._manifest import (
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    Manifest,
    check_digest,
)
from ..manifests._record import parse_record
from ._fsutil import atomic_write_bytes, fsync_dir, store_writes, unlink_quiet
from ._hashmemo import hash_stream, stat_signature
from ._progress import Progress

__all__ = ["Blobs", "hash_file"]


def _hex(digest: str) -> str:
    return check_digest(digest, "digest").split(":", 1)[1]


def hash_file(path: Path, progress: Progress | None) -> tuple[str, int]:
    """``("sha256:<hex>", size)`` of a file, each byte read once."""
    hexdigest, size = hash_stream(path, None, progress)
    return "sha256:" + hexdigest, size


class Blobs:
    def __init__(
        self, root: Path, blob_dir: Path, stamp_dir: Path, quarantine_dir: Path, new_temp: Callable[[], Path]
    ) -> None:
        self.root = root  # for messages only: "missing from the store at …"
        self.blob_dir = blob_dir
        self.stamp_dir = stamp_dir
        self.quarantine_dir = quarantine_dir
        # A fresh temp path in tmp/ (same filesystem as blobs/); the store creates its layout
        # first and names the file <pid>-<random>, which gc relies on to collect leftovers.
        self.new_temp = new_temp

    # ------------------------------------------------------------------ names
    def path(self, digest: str) -> Path:
        h = _hex(digest)
        return self.blob_dir / h[:2] / h

    def stamp_path(self, digest: str) -> Path:
        h = _hex(digest)
        return self.stamp_dir / h[:2] / h

    def has(self, digest: str, size: int | None = None) -> bool:
        try:
            st = os.stat(self.path(digest))
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def all(self) -> Iterator[tuple[str, Path]]:
        """Every blob as (digest, path), in sorted order; hidden names (temp files) skipped."""
        try:
            prefixes = sorted(os.listdir(self.blob_dir))
        except FileNotFoundError:
            return
        for prefix in prefixes:
            for name in sorted(os.listdir(self.blob_dir / prefix)):
                if len(name) == 64 and not name.startswith("."):
                    yield "sha256:" + name, self.blob_dir / prefix / name

    # ------------------------------------------------------------------ stamps & quarantine
    def restamp(self, digest: str) -> None:
        """Record the blob's current stat signature as verified (call only after hashing it,
        or after an operation that changes its ctime but not its bytes, like a hard link)."""
        try:
            sig = stat_signature(os.stat(self.path(digest)))
            atomic_write_bytes(self.stamp_path(digest), sig.encode())
        except OSError:
            pass  # stamps only save work; without one the blob is re-hashed next time

    def quarantine(self, digest: str) -> None:
        """Move a bad blob aside (a later publish of the right bytes repairs the store)."""
        path = self.path(digest)
        try:
            self.quarantine_dir.mkdir(parents=True, exist_ok=True)
            os.replace(path, self.quarantine_dir / f"{_hex(digest)}.{int(time.time())}")
        except OSError:
            pass
        unlink_quiet(self.stamp_path(digest))

    def remove(self, digest: str) -> None:
        """Delete a blob and its stamp (gc only, under the exclusive store lock)."""
        unlink_quiet(self.path(digest))
        unlink_quiet(self.stamp_path(digest))

    # ------------------------------------------------------------------ checks on the way out
    def check(self, digest: str, size: int, progress: Progress | None = None) -> None:
        """Raise unless the blob exists with the right size and bytes (stamp fast path).

        ``progress`` sees the chunks of a re-hash (a blob whose stamp no longer vouches for it)."""
        path = self.path(digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is missing from the store at {self.root}.") from None
        if st.st_size != size:
            self.quarantine(digest)
            raise CorruptBlobError(
                f"blob {digest} has {st.st_size} bytes, the manifest says {size} (moved to quarantine).", digest
            )
        try:
            stamp = self.stamp_path(digest).read_text()
        except OSError:
            stamp = ""
        if stamp == stat_signature(st):
            return
        actual, _ = hash_file(path, progress)
        if actual != digest:
            self.quarantine(digest)
            raise CorruptBlobError(
                f"blob {digest} is corrupt: its bytes hash to {actual} (moved to quarantine at "
                f"{self.quarantine_dir}); rebuild or re-pull the artifact.",
                digest,
            )
        self.restamp(digest)

    def ok(self, digest: str, size: int) -> bool:
        try:
            self.check(digest, size)  # stamp fast path; re-hashes only a changed blob
        except (NotFoundError, CorruptBlobError):
            return False
        return True

    def read(self, digest: str, max_size: int) -> bytes:
        """Read a small blob (manifest, record) and verify it against its digest."""
        path = self.path(digest)
        try:
            # Non-blocking, and only a regular file: a FIFO planted in blobs/ must not hang a reader.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is not in the store at {self.root}.") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafeManifestError(f"blob {digest} at {path} is not a regular file; remove it and run kiln gc.")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(max_size + 1)
        finally:
            os.close(fd)
        if len(data) > max_size:
            raise UnsafeManifestError(f"blob {digest} is larger than the {max_size} bytes allowed for it.")
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            self.quarantine(digest)
            raise CorruptBlobError(f"blob {digest} does not match its digest (moved to quarantine).", digest)
        return data

    def read_manifest(self, digest: str) -> Manifest:
        return Manifest.parse(self.read(digest, MAX_MANIFEST_BYTES))

    def read_record(self, manifest: Manifest) -> dict[str, Any]:
        """The build record a manifest names, verified against its digest and its schema."""
        data = self.read(manifest.config.digest, MAX_CONFIG_BYTES)
        if len(data) != manifest.config.size:  # the manifest must not lie about sizes either
            raise UnsafeManifestError(
                f"build record {manifest.config.digest} has {len(data)} bytes, its manifest says {manifest.config.size}."
            )
        return parse_record(data)

    # ------------------------------------------------------------------ writes on the way in
    def ingest(self, tmp: Path, digest: str) -> None:
        """Make a complete, fsynced temp file the blob ``digest`` (atomic rename)."""
        final = self.path(digest)
        with store_writes(final.parent, self.root):
            final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        if self.ok(digest, os.stat(tmp).st_size):
            # Identical bytes are already there; keep the existing inode (it may be
            # hard-linked into materialised artifacts).
            os.unlink(tmp)
            return
        # Absent, or damaged (check moved it to quarantine): publishing the same bytes
        # again must repair the store, not keep a bad blob because its name exists.
        os.replace(tmp, final)
        fsync_dir(final.parent)  # the rename is durable before any index entry can name it
        self.restamp(digest)

    def put_file(self, src: Path, *, move: bool = False, progress: Progress | None = None) -> tuple[str, int]:
        """Store a file's bytes; return (digest, size). Each source byte is read once.

        ``move=True`` (for Kiln's own build outputs on the store's filesystem) renames the
        file into the store instead of copying it.
        """
        if move:
            digest, size = hash_file(src, progress)
            with open(src, "rb") as f:
                os.fsync(f.fileno())
            tmp = self.new_temp()
            try:
                os.rename(src, tmp)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                move = False  # another filesystem: fall back to a copy
            else:
                self.ingest(tmp, digest)  # on failure the moved file stays in tmp/, for gc
                return digest, size
        tmp = self.new_temp()
        try:
            with store_writes(f"{tmp} (storing {src})", self.root):
                hexdigest, size = hash_stream(src, tmp, progress)
            written = os.stat(tmp).st_size
            if written != size:  # never name a short copy by the source's digest
                raise StoreError(f"cannot write {show_path(tmp)} (storing {show_path(src)}): only {written} of {size} "
                                 f"bytes reached the Kiln store at {show_path(self.root)}; check that filesystem "
                                 "(free space, quotas, `ulimit -f`), or set KILN_HOME elsewhere.")
            digest = "sha256:" + hexdigest
            self.ingest(tmp, digest)
        except BaseException:
            unlink_quiet(tmp)
            raise
        return digest, size

    def put_downloaded(self, tmp: Path, digest: str, size: int, hashed: tuple[str, int] | None = None) -> None:
        """Adopt a downloaded temp file as blob ``digest`` after verifying its bytes.

        ``hashed``: ``(digest, size)`` of the bytes as the download wrote them (and fsynced
        them), which saves reading the file again; without it the file is hashed (and fsynced)
        here. Raises CorruptBlobError (and deletes the temp file) when the bytes do not match.
        """
        try:
            if hashed is None:
                hashed = hash_file(tmp, None)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            actual, actual_size = hashed
            if actual != digest or actual_size != size or os.stat(tmp).st_size != size:
                raise CorruptBlobError(
                    f"downloaded bytes for {digest} hash to {actual} ({actual_size} bytes, expected {size})", digest
                )
            self.ingest(tmp, digest)
        except BaseException:
            unlink_quiet(tmp)
            raise

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.ok(digest, len(data)):
            tmp = self.new_temp()
            try:
                with store_writes(tmp, self.root), open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                self.ingest(tmp, digest)
            except BaseException:
                unlink_quiet(tmp)
                raise
        return digest, len(data)
