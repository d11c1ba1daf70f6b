"""Push and pull artifacts between the local store and a remote, with nothing partial visible.

Push order (the remote mirror of DESIGN invariant 2): every file blob the remote lacks
(checked by name and size), then the build record, then the manifest, then the index entry,
last. Each object appears atomically, so a reader of the bucket never finds an index entry
whose manifest or blobs are missing, however a push is killed; a later push skips what
arrived and completes the rest. Two pushers of one artifact write identical blobs and the
same entry: either wins.

Pull verifies everything: the manifest and build record against the entry's digests, the
manifest's paths and sizes (it is untrusted data), and every blob against its digest and
size as it lands. A blob whose bytes are wrong is downloaded once more (it may have been
replaced mid-read) and then, still wrong, is a loud error naming the object; nothing is
published locally unless every blob verified.

Remote gc deletes only blobs that no manifest referenced from any index entry lists, and only
once they are older than a grace period, so it cannot race a push that has uploaded blobs
but not yet its index entry.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
import threading
from typing import Iterator

from ..errors import CorruptBlobError, NotFoundError, RemoteError, UnsafeManifestError
from ..manifests._index import IndexEntry
from ..manifests._manifest import MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Manifest, check_digest
from ._progress import Progress
from ._store import Store
from .remotes import Remote

__all__ = ["PushResult", "PullResult", "push", "pull", "remote_entry", "remote_entries", "remote_gc", "RemoteGcPlan"]

MAX_ENTRY_BYTES = 1 << 20
PARALLEL_FILES = 4


def blob_key(digest: str) -> str:
    return f"blobs/sha256/{digest.split(':', 1)[1]}"


def entry_key(model_hex: str, key: str) -> str:
    return f"index/{model_hex}/{key}.json"


@dataclass
class PushResult:
    entry: IndexEntry
    uploaded: int = 0
    uploaded_bytes: int = 0
    skipped: int = 0
    skipped_bytes: int = 0

    def to_json(self) -> dict[str, object]:
        return {"key": self.entry.key, "uploaded_blobs": self.uploaded, "uploaded_bytes": self.uploaded_bytes,
                "skipped_blobs": self.skipped, "skipped_bytes": self.skipped_bytes}


@dataclass
class PullResult:
    entry: IndexEntry
    downloaded: int = 0
    downloaded_bytes: int = 0
    reused: int = 0
    retried: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"key": self.entry.key, "downloaded_blobs": self.downloaded, "downloaded_bytes": self.downloaded_bytes,
                "reused_blobs": self.reused, "retried": self.retried}


# --------------------------------------------------------------------------- index on the remote


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _parse_entry(data: bytes | None, where: str) -> IndexEntry | None:
    """An index entry from the remote: untrusted data (DESIGN invariant 5).

    Its key and model digest become local paths when it is pulled (``Store.write_entry``),
    so both must be plain hex, and the entry must sit where its own content says it does:
    an entry at index/<model>/<key A>.json that describes key B would otherwise be served as
    a hit for A (a wrong hit), and a key like ``../../x`` would write outside the store.
    """
    if data is None:
        return None
    if len(data) > MAX_ENTRY_BYTES:
        raise RemoteError(f"index entry {where} is larger than {MAX_ENTRY_BYTES} bytes; refusing it.")
    try:
        entry = IndexEntry.from_json(json.loads(data))
        check_digest(entry.manifest, "manifest")
        check_digest(entry.model.get("tree_digest"), "model tree_digest")
    except (ValueError, KeyError, TypeError, AttributeError, UnsafeManifestError) as e:
        raise RemoteError(f"index entry {where} on the remote is malformed ({e}); refusing it.") from None
    if not _HEX64.fullmatch(entry.key) or where != entry_key(entry.model_hex, entry.key):
        raise RemoteError(
            f"index entry {where} on the remote describes key {entry.key[:80]!r} of model "
            f"{entry.model_hex[:80]!r}, not the place it is stored at; refusing it (a damaged or hostile remote)."
        )
    return entry


def remote_entry(remote: Remote, model_hex: str, key: str) -> IndexEntry | None:
    k = entry_key(model_hex, key)
    return _parse_entry(remote.get(k, MAX_ENTRY_BYTES), k)


def remote_entries(remote: Remote, model_hex: str | None = None) -> Iterator[IndexEntry]:
    prefix = f"index/{model_hex}/" if model_hex else "index/"
    for info in remote.list(prefix):
        if not info.key.endswith(".json"):
            continue
        try:
            entry = _parse_entry(remote.get(info.key, MAX_ENTRY_BYTES), info.key)
        except RemoteError:
            continue  # reported by remote gc / verify, never served
        if entry is not None:
            yield entry


# --------------------------------------------------------------------------- push


def push(store: Store, remote: Remote, entry: IndexEntry, progress: Progress | None = None) -> PushResult:
    """Upload what the remote lacks of one artifact, index entry last."""
    manifest = store.check_artifact(entry)  # never spread a damaged artifact
    result = PushResult(entry)
    files = {f.digest: f.size for f in manifest.files}
    count = threading.Lock()  # the counters are updated from the upload threads
    skipped: set[str] = set()

    def send(item: tuple[str, int]) -> None:
        digest, size = item
        k = blob_key(digest)
        if remote.stat(k) == size:
            skipped.add(digest)
            with count:
                result.skipped += 1
                result.skipped_bytes += size
            if progress:
                progress(size)
            return
        remote.upload(store.blob_path(digest), k, progress)
        with count:
            result.uploaded += 1
            result.uploaded_bytes += size

    with ThreadPoolExecutor(max_workers=PARALLEL_FILES) as pool:
        list(pool.map(send, sorted(files.items(), key=lambda kv: -kv[1])))
    # Record, then manifest: what an index entry points at must exist before the entry.
    send((manifest.config.digest, manifest.config.size))
    send((entry.manifest, store.blob_path(entry.manifest).stat().st_size))
    remote.put(entry_key(entry.model_hex, entry.key), entry.to_bytes())
    # A remote gc may have deleted an old, then-unreferenced blob that this push found and
    # skipped, between the check and the entry. Look once more and restore what is gone, so
    # the artifact this push announced is complete when it returns.
    all_blobs = {**files, manifest.config.digest: manifest.config.size,
                 entry.manifest: store.blob_path(entry.manifest).stat().st_size}
    for digest, size in all_blobs.items():
        if remote.stat(blob_key(digest)) != size:
            remote.upload(store.blob_path(digest), blob_key(digest))
            if digest in skipped:  # counted as already there; it was not, after all
                result.skipped -= 1
                result.skipped_bytes -= size
                result.uploaded += 1
                result.uploaded_bytes += size
    return result


# --------------------------------------------------------------------------- pull


def _fetch_small(remote: Remote, digest: str, limit: int) -> bytes:
    import hashlib

    k = blob_key(digest)
    data = remote.get(k, limit)
    if data is None:
        raise RemoteError(f"object {k} is missing from {remote.describe()}: the artifact there is incomplete.")
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise RemoteError(f"object {k} on {remote.describe()} does not match its digest: refusing it.")
    return data


def pull(store: Store, remote: Remote, entry: IndexEntry, progress: Progress | None = None) -> PullResult:
    """Download, verify and publish one remote artifact into the local store."""
    manifest_bytes = _fetch_small(remote, entry.manifest, MAX_MANIFEST_BYTES)
    try:
        manifest = Manifest.parse(manifest_bytes)
    except UnsafeManifestError as e:
        raise RemoteError(f"manifest {entry.manifest} on {remote.describe()} is unsafe: {e}") from None
    if manifest.annotations.get("dev.kiln.key") != entry.key:
        raise RemoteError(
            f"index entry {entry.key[:12]} on {remote.describe()} points at the manifest of another artifact "
            f"({manifest.annotations.get('dev.kiln.key', 'none')[:12]}): refusing it."
        )
    record_bytes = _fetch_small(remote, manifest.config.digest, MAX_CONFIG_BYTES)
    try:
        record_key = json.loads(record_bytes).get("key")
    except ValueError:
        record_key = None
    if record_key != entry.key:
        raise RemoteError(f"the build record of {entry.key[:12]} on {remote.describe()} names another key: refusing it.")
    result = PullResult(entry)
    count = threading.Lock()  # the counters are updated from the download threads
    with store.writer_lock():
        needed = {}
        for f in manifest.files:
            try:
                store.check_blob(f.digest, f.size)
                result.reused += 1
                if progress:
                    progress(f.size)
            except (NotFoundError, CorruptBlobError):
                needed[f.digest] = f.size

        def fetch(item: tuple[str, int]) -> None:
            digest, size = item
            k = blob_key(digest)
            for attempt in (1, 2):
                # Refuse a remote object larger than the manifest says before downloading it:
                # a hostile or damaged remote must not fill the disk.
                actual = remote.stat(k)
                if actual != size:
                    raise RemoteError(
                        f"object {k} on {remote.describe()} has {actual} bytes, the manifest says {size}: "
                        "refusing it; nothing was published."
                    )
                tmp = store.new_download_path()
                remote.download(k, tmp, progress)
                try:
                    store.put_downloaded(tmp, digest, size)
                except CorruptBlobError as e:
                    if attempt == 2:
                        # Push skips blobs already present with the right size, so a plain
                        # re-push would not replace this one: the object has to go first.
                        raise RemoteError(
                            f"object {k} on {remote.describe()} is corrupt or was changed behind Kiln's back "
                            f"({e}); nothing was published. Delete that object from the remote, then push "
                            "the artifact again from a good store."
                        ) from None
                    with count:
                        result.retried.append(k)
                    continue
                with count:
                    result.downloaded += 1
                    result.downloaded_bytes += size
                return

        with ThreadPoolExecutor(max_workers=PARALLEL_FILES) as pool:
            list(pool.map(fetch, sorted(needed.items(), key=lambda kv: -kv[1])))
        store.put_bytes(record_bytes)
        store.put_bytes(manifest_bytes)
        store.write_entry(entry)
    return result


# --------------------------------------------------------------------------- remote gc


@dataclass(frozen=True)
class RemoteGcPlan:
    blobs: tuple[tuple[str, int], ...]  # (object key, size) to delete
    kept: int
    young: int  # unreferenced but within the grace period
    broken_entries: tuple[str, ...]  # entries whose manifest is missing or bad (left alone, reported)

    @property
    def bytes(self) -> int:
        return sum(s for _, s in self.blobs)


def remote_gc(remote: Remote, *, grace_s: float = 86400.0, dry_run: bool = False) -> RemoteGcPlan:
    """Delete blobs no artifact on the remote references (older than ``grace_s``).

    Reading failures abort the collection instead of being skipped: an entry or a manifest
    that could not be *read* (timeout, throttling, a server error) may reference any blob, so
    guessing "unreferenced" there would delete live data. Only entries and manifests that were
    read and are malformed, missing or corrupt are reported as broken.
    """
    import hashlib

    referenced: set[str] = set()
    broken: list[str] = []
    for info in remote.list("index/"):
        if not info.key.endswith(".json"):
            continue
        data = remote.get(info.key, MAX_ENTRY_BYTES)  # a RemoteError here aborts gc
        try:
            entry = _parse_entry(data, info.key)
        except RemoteError as e:
            broken.append(str(e))  # malformed: it is never served either
            continue
        if entry is None:
            continue  # deleted since it was listed
        mkey = blob_key(entry.manifest)
        referenced.add(mkey)
        mdata = remote.get(mkey, MAX_MANIFEST_BYTES)  # a RemoteError here aborts gc
        try:
            if mdata is None:
                raise RemoteError(f"manifest {mkey} is missing")
            if "sha256:" + hashlib.sha256(mdata).hexdigest() != entry.manifest:
                raise RemoteError(f"manifest {mkey} does not match its digest")
            manifest = Manifest.parse(mdata)
        except (RemoteError, UnsafeManifestError) as e:
            broken.append(f"{info.key}: {e}")
            continue
        referenced.add(blob_key(manifest.config.digest))
        referenced.update(blob_key(f.digest) for f in manifest.files)
    now = time.time()
    dead, kept, young = [], 0, 0
    for info in remote.list("blobs/"):
        if info.key in referenced:
            kept += 1
        elif now - info.mtime < grace_s:
            young += 1  # maybe a push in flight: its index entry comes last
        else:
            dead.append((info.key, info.size))
    plan = RemoteGcPlan(tuple(dead), kept, young, tuple(broken))
    if not dry_run:
        for k, _ in plan.blobs:
            remote.delete(k)
        # Leftovers of killed pushes that hold storage without being objects: incomplete S3
        # multipart uploads, hidden temp files on a filesystem remote (older than the grace).
        remote.cleanup_partial_uploads(grace_s)
    return plan
