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
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
import threading
from typing import Callable, Iterator

from ..errors import CorruptBlobError, NotFoundError, RemoteError, UnsafeManifestError
from ..manifests._index import IndexEntry
from ..manifests._manifest import MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Manifest
from ._remote import Remote
from ._store import Store

__all__ = ["PushResult", "PullResult", "push", "pull", "remote_entry", "remote_entries", "remote_gc", "RemoteGcPlan"]

Progress = Callable[[int], None]
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


def _parse_entry(data: bytes | None, where: str) -> IndexEntry | None:
    if data is None:
        return None
    if len(data) > MAX_ENTRY_BYTES:
        raise RemoteError(f"index entry {where} is larger than {MAX_ENTRY_BYTES} bytes; refusing it.")
    try:
        return IndexEntry.from_json(json.loads(data))
    except (ValueError, KeyError, TypeError) as e:
        raise RemoteError(f"index entry {where} on the remote is malformed ({e}).") from None


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

    def send(item: tuple[str, int]) -> None:
        digest, size = item
        k = blob_key(digest)
        if remote.stat(k) == size:
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
    record_bytes = _fetch_small(remote, manifest.config.digest, MAX_CONFIG_BYTES)
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
                tmp = store.new_download_path()
                remote.download(k, tmp, progress)
                try:
                    store.put_downloaded(tmp, digest, size)
                except CorruptBlobError as e:
                    if attempt == 2:
                        raise RemoteError(
                            f"object {k} on {remote.describe()} is corrupt or was changed behind Kiln's back "
                            f"({e}); nothing was published. Re-push the artifact from a good store."
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
    referenced: set[str] = set()
    broken: list[str] = []
    for entry in remote_entries(remote):
        referenced.add(blob_key(entry.manifest))
        try:
            manifest = Manifest.parse(_fetch_small(remote, entry.manifest, MAX_MANIFEST_BYTES))
        except (RemoteError, UnsafeManifestError) as e:
            broken.append(f"{entry_key(entry.model_hex, entry.key)}: {e}")
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
    return plan
