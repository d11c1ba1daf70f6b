"""Push and pull artifacts between the local store and a remote, with nothing partial visible.

Push order (the remote mirror of DESIGN invariant 2): every file blob the remote lacks
(checked by name and size), then the build record, then the manifest, then the model record
of a Hub model (and its revision pointers, :mod:`kiln.cache._model_records`), then the
artifact's signatures and signed provenance (``signatures/<manifest hex>/``, see
:mod:`kiln.cache._signatures`), then the index entry, last: a reader that requires signatures
never finds an entry whose signature has not landed yet. Each object appears atomically, so a
reader of the bucket never finds an index entry whose manifest or blobs are missing, however a
push is killed; a later push skips what
arrived and completes the rest. Two pushers of one artifact write identical blobs and the
same entry: either wins.

Pull verifies everything: the manifest and build record against the entry's digests, the
manifest's paths and sizes (it is untrusted data), the store's trust policy against the
remote's signatures (before a single file blob is downloaded), and every blob against its
digest and size as it lands. A blob whose bytes are wrong is downloaded once more (it may have
been replaced mid-read) and then, still wrong, is a loud error naming the object; nothing is
published locally unless every blob verified.

Remote gc deletes only blobs that no manifest referenced from any index entry lists, and only
once they are older than a grace period, so it cannot race a push that has uploaded blobs
but not yet its index entry.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
import threading
from typing import Any, Callable, Iterator

from .._warn import warn
from ..errors import CorruptBlobError, KilnError, NotFoundError, RemoteError, UnsafeManifestError
from ..manifests._index import MAX_ENTRY_BYTES, IndexEntry
from ..manifests._manifest import MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Manifest
from ..manifests._record import check_record_describes, entry_from_record, parse_record
from ..trust import Signature, Verified
from ._model_records import push_model_records, remote_model_record
from ._per_file import each_file
from ._progress import Progress
from ._signatures import (MAX_SIGNATURES, PROVENANCE_SUFFIX, SIG_SUFFIX, manifest_hex, parse_name, signature_bound,
                          signature_name)
from ._store import Store
from .remotes import Remote
from .remotes._bounded import LocalWriteError

__all__ = ["PushResult", "PullResult", "push", "pull", "read_remote_artifact", "remote_entry", "remote_entries", "remote_gc",
           "RemoteGcPlan", "remote_signatures", "push_signatures", "warn_bad_remote_data"]

PARALLEL_FILES = 4  # blobs in flight to or from a remote at once (each S3 blob also has its parts in parallel)


def blob_key(digest: str) -> str:
    return f"blobs/sha256/{digest.split(':', 1)[1]}"


def entry_key(model_hex: str, key: str) -> str:
    return f"index/{model_hex}/{key}.json"


def signatures_prefix(manifest_digest: str) -> str:
    return f"signatures/{manifest_hex(manifest_digest)}/"


def remote_signatures(remote: Remote, manifest_digest: str, files: int) -> tuple[list[Signature], list[Signature]]:
    """The signatures and signed provenance filed beside a manifest (of ``files`` files) on the
    remote, unverified (the trust policy verifies what it uses): at most MAX_SIGNATURES of each,
    each within :func:`signature_bound` (a larger object is skipped unread)."""
    prefix = signatures_prefix(manifest_digest)
    bound = signature_bound(files)
    sigs: list[Signature] = []
    prov: list[Signature] = []
    for info in sorted(remote.list(prefix), key=lambda i: i.key):
        parsed = parse_name(info.key[len(prefix):]) if info.key.startswith(prefix) else None
        if parsed is None or info.size > bound:
            continue
        into = sigs if parsed[1] == SIG_SUFFIX else prov
        if len(into) >= MAX_SIGNATURES:
            continue
        data = remote.get(info.key, bound)
        if data is not None:
            into.append(Signature(parsed[0], data))
    return sigs, prov


def push_signatures(store: Store, remote: Remote, entry: IndexEntry) -> int:
    """Every signature and signed provenance the store holds for ``entry``, onto the remote."""
    prefix = signatures_prefix(entry.manifest)
    sent = 0
    for sigs, suffix in ((store.signatures.signatures(entry.manifest), SIG_SUFFIX),
                         (store.signatures.provenance(entry.manifest), PROVENANCE_SUFFIX)):
        for sig in sigs:
            remote.put(prefix + signature_name(sig.fingerprint, suffix), sig.data)
            sent += 1
    return sent


@dataclass
class PushResult:
    """What one push moved. JSON shares its vocabulary with :class:`PullResult` (docs/json.md):
    ``<verb>_blobs``/``<verb>_bytes`` for what was transferred, ``skipped_blobs``/``skipped_bytes``
    for what the destination already had."""

    entry: IndexEntry
    uploaded: int = 0
    uploaded_bytes: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    signatures: int = 0  # signature and provenance files sent

    def to_json(self) -> dict[str, object]:
        return {"key": self.entry.key, "direction": "push",
                "uploaded_blobs": self.uploaded, "uploaded_bytes": self.uploaded_bytes,
                "skipped_blobs": self.skipped, "skipped_bytes": self.skipped_bytes,
                "signatures": self.signatures}


@dataclass
class PullResult:
    """What one pull moved (``reused``: file blobs already in the local store, not downloaded)."""

    entry: IndexEntry
    downloaded: int = 0
    downloaded_bytes: int = 0
    reused: int = 0
    retried: list[str] = field(default_factory=list)
    reused_bytes: int = 0
    trusted: Verified | None = None  # the signature the store's trust policy accepted, if it requires one

    def to_json(self) -> dict[str, object]:
        return {"key": self.entry.key, "direction": "pull",
                "downloaded_blobs": self.downloaded, "downloaded_bytes": self.downloaded_bytes,
                "skipped_blobs": self.reused, "skipped_bytes": self.reused_bytes, "retried": self.retried}


# --------------------------------------------------------------------------- index on the remote


class _MalformedEntry(RemoteError):
    """An index entry that was read but is not a valid entry (as opposed to one that could not be read)."""


# (message) -> None: how a reader reports remote data it refuses and skips.
BadDataReport = Callable[[str], None]


def warn_bad_remote_data(message: str) -> None:
    """The default report of refused remote data: one ``kiln: WARNING: …`` line, once per process
    (one lookup may list a model's entries more than once: the exact read, then the miss explanation)."""
    warn(message, once=True)


def _parse_entry(data: bytes | None, where: str, remote: Remote) -> IndexEntry | None:
    """An index entry from the remote: untrusted data (DESIGN invariant 5).

    Its exact shape is checked (:meth:`IndexEntry.parse`: size, nesting, every field), so no
    reader crashes on it later. Its key and model digest become local paths when it is pulled
    (``Store.write_entry``), and the entry must sit where its own content says it does: an
    entry at index/<model>/<key A>.json that describes key B would otherwise be served as a
    hit for A (a wrong hit). Raises :class:`_MalformedEntry` naming the object.
    """
    if data is None:
        return None
    try:
        entry = IndexEntry.parse(data, "the document")
    except UnsafeManifestError as e:
        raise _MalformedEntry(f"index entry {where} on {remote.describe()} is malformed ({e}); refusing it.") from None
    if where != entry_key(entry.model_hex, entry.key):
        raise _MalformedEntry(
            f"index entry {where} on {remote.describe()} describes key {entry.key[:12]} of model "
            f"{entry.model_hex[:12]}, not the place it is stored at; refusing it (a damaged or hostile remote)."
        )
    return entry


def _read_entry(remote: Remote, k: str) -> bytes | None:
    """The bytes of the entry object ``k``; RemoteError only when the *remote* fails, not the object.

    An object that is there but cannot be read as one (a directory, a FIFO or a device in a
    file remote, a permission-denied file) is bad data like a malformed document: refused as
    :class:`_MalformedEntry`, so readers skip and report it and ``ensure --on-miss build``
    builds. Which of the two a failed read was is told by asking the remote about an object
    that does not exist: if it answers, the remote is up and only this object is bad; if that
    fails too, the remote cannot be used and the original error stands (exit 2: an outage is
    not a miss).
    """
    try:
        return remote.get(k, MAX_ENTRY_BYTES)
    except RemoteError as e:
        try:
            remote.stat(k.rsplit("/", 1)[0] + "/.kiln-absent-probe")
        except RemoteError:
            raise e from None
        raise _MalformedEntry(f"index entry {k} on {remote.describe()} cannot be read ({e}); refusing it.") from None


def remote_entry(remote: Remote, model_hex: str, key: str, *, on_bad: BadDataReport | None = None) -> IndexEntry | None:
    """The remote's entry for exactly this key, or None if it has none — or only a malformed one
    (reported through ``on_bad``, default :func:`warn_bad_remote_data`: a loud miss, never a crash)."""
    k = entry_key(model_hex, key)
    try:
        return _parse_entry(_read_entry(remote, k), k, remote)
    except _MalformedEntry as e:
        (on_bad or warn_bad_remote_data)(str(e))
        return None


def remote_entries(remote: Remote, model_hex: str | None = None, *,
                   on_bad: BadDataReport | None = None) -> Iterator[IndexEntry]:
    """Every valid entry on the remote (of one model); malformed ones are reported and skipped.

    A failure to *read* an entry (network, permissions) is not skipped: it raises
    RemoteError, since an entry that could not be read may be exactly the one looked for.
    """
    prefix = f"index/{model_hex}/" if model_hex else "index/"
    for info in remote.list(prefix):
        if not info.key.endswith(".json"):
            continue
        try:
            entry = _parse_entry(_read_entry(remote, info.key), info.key, remote)
        except _MalformedEntry as e:
            (on_bad or warn_bad_remote_data)(str(e))
            continue  # never served
        if entry is not None:
            yield entry


# --------------------------------------------------------------------------- push


def push(store: Store, remote: Remote, entry: IndexEntry, progress: Progress | None = None, *,
         replace_signed: bool = False) -> PushResult:
    """Upload what the remote lacks of one artifact, index entry last.

    The remote holds one entry per key: an unsigned artifact does not replace a signed one there
    (every `require: signed` deployment of that key would go from a hit to a refusal) unless
    ``replace_signed``."""
    manifest = store.check_artifact(entry)  # never spread a damaged artifact
    if not replace_signed and not store.signatures_of(entry):
        _refuse_unsigning(remote, entry)
    manifest_size = store.blob_path(entry.manifest).stat().st_size
    if remote.max_manifest_bytes is not None and manifest_size > remote.max_manifest_bytes:
        raise RemoteError(  # before a byte moves: the registry would refuse the manifest after all the files
            f"artifact {entry.key[:12]}'s manifest is {manifest_size} bytes ({len(manifest.files)} files), over the "
            f"{remote.max_manifest_bytes >> 20} MiB that {remote.describe()} stores as a manifest (registries' limit): "
            "push it to an S3 or file remote, or pack its many small files into fewer.")
    result = PushResult(entry)
    files = {f.digest: f.size for f in manifest.files}
    count = threading.Lock()  # the counters are updated from the upload threads
    skipped: set[str] = set()

    def send(item: tuple[str, int], advance: Progress | None, as_manifest: bool = False) -> None:
        digest, size = item
        k = blob_key(digest)
        if remote.stat(k) == size:
            skipped.add(digest)
            with count:
                result.skipped += 1
                result.skipped_bytes += size
            if advance:
                advance(size)
            return
        (remote.upload_manifest if as_manifest else remote.upload)(store.blob_path(digest), k, advance)
        with count:
            result.uploaded += 1
            result.uploaded_bytes += size

    # The first blob that fails stops the others at their next chunk (each_file).
    each_file(sorted(files.items(), key=lambda kv: -kv[1]), send, progress=progress, threads=PARALLEL_FILES,
              name="kiln-upload")
    # Record, then manifest: what an index entry points at must exist before the entry.
    send((manifest.config.digest, manifest.config.size), progress)
    send((entry.manifest, manifest_size), progress, as_manifest=True)
    # The model record (a Hub model's files, commit and config): a machine without the weights
    # finds the entry through it, so it lands before the entry.
    push_model_records(store.model_records, remote, entry.model.get("repo_id"), entry.model.get("commit"))
    # Signatures before the entry: a `require: signed` reader must never find the entry first.
    result.signatures = push_signatures(store, remote, entry)
    remote.put(entry_key(entry.model_hex, entry.key), entry.to_bytes())
    # A remote gc may have deleted an old, then-unreferenced blob that this push found and
    # skipped, between the check and the entry. Look once more and restore what is gone, so
    # the artifact this push announced is complete when it returns.
    all_blobs = {**files, manifest.config.digest: manifest.config.size, entry.manifest: manifest_size}
    for digest, size in all_blobs.items():
        if remote.stat(blob_key(digest)) != size:
            (remote.upload_manifest if digest == entry.manifest else remote.upload)(store.blob_path(digest), blob_key(digest))
            if digest in skipped:  # counted as already there; it was not, after all
                result.skipped -= 1
                result.skipped_bytes -= size
                result.uploaded += 1
                result.uploaded_bytes += size
    return result


def _refuse_unsigning(remote: Remote, entry: IndexEntry) -> None:
    """RemoteError if the remote's entry for ``entry.key`` names another manifest that is signed."""
    there = remote_entry(remote, entry.model_hex, entry.key, on_bad=lambda _m: None)
    if there is None or there.manifest == entry.manifest:
        return
    signed = remote_signatures(remote, there.manifest, there.files)[0]
    if signed:
        raise RemoteError(
            f"artifact {entry.key[:12]} on {remote.describe()} is signed (by {signed[0].fingerprint}) and this one "
            "is not: pushing would replace a signed artifact with an unsigned one. Sign it first (--sign-key, or "
            "`kiln sign`), or replace it anyway with `kiln push --force`.")


# --------------------------------------------------------------------------- pull


def _fetch_small(remote: Remote, digest: str, limit: int, size: int | None = None) -> bytes:
    """A small blob (manifest, build record), checked against its digest and, where the manifest
    declares one, its size: a manifest whose sizes lie is not believed even where the bytes are right."""
    k = blob_key(digest)
    data = remote.get(k, limit)
    if data is None:
        raise RemoteError(f"object {k} is missing from {remote.describe()}: the artifact there is incomplete.")
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise RemoteError(f"object {k} on {remote.describe()} does not match its digest: refusing it.")
    if size is not None and len(data) != size:
        raise RemoteError(
            f"object {k} on {remote.describe()} has {len(data)} bytes, its manifest says {size}: refusing the artifact."
        )
    return data


def _remote_documents(remote: Remote, entry: IndexEntry) -> tuple[Manifest, bytes, dict[str, Any], bytes]:
    """An artifact's manifest and build record from the remote, verified, with their bytes.

    Both are untrusted: the manifest is checked against the entry's digest and its own safety
    rules (paths, sizes) and must name the entry's key; the record against its digest, its
    schema and the entry: every field the entry claims (spec, model, toolchain, size, files,
    creation time) must be what the record and manifest say, field by field (an entry must not
    lie about what it holds). RemoteError otherwise.
    """
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
    record_bytes = _fetch_small(remote, manifest.config.digest, MAX_CONFIG_BYTES, manifest.config.size)
    try:
        record = parse_record(record_bytes)
        check_record_describes(record, entry, manifest)  # every field the entry claims, or refused
    except UnsafeManifestError as e:
        raise RemoteError(
            f"the build record of {entry.key[:12]} on {remote.describe()} ({blob_key(manifest.config.digest)}) "
            f"is refused: {e}; nothing was published."
        ) from None
    return manifest, manifest_bytes, record, record_bytes


def read_remote_artifact(remote: Remote, entry: IndexEntry) -> tuple[Manifest, dict[str, Any]]:
    """The manifest and build record of a remote artifact, verified, without pulling its blobs
    (`kiln show --remote`); RemoteError if either is bad."""
    manifest, _, record, _ = _remote_documents(remote, entry)
    return manifest, record


def pull(store: Store, remote: Remote, entry: IndexEntry, progress: Progress | None = None,
         requested: tuple[str, ...] = ()) -> PullResult:
    """Download, verify and publish one remote artifact into the local store (``requested``: the
    model names the deployment asked for, which the trust policy's ``models`` must admit too)."""
    manifest, manifest_bytes, record, record_bytes = _remote_documents(remote, entry)
    # What is stored locally is what the verified record and manifest describe, never the
    # remote's claim (equal to it once _remote_documents accepted the entry).
    believed = entry_from_record(record, entry.manifest, manifest, entry.created)
    # The trust policy decides before any file blob moves: a refused artifact costs a few
    # small reads and leaves nothing behind (TrustError).
    sigs, prov = remote_signatures(remote, entry.manifest, len(manifest.files))
    origin = remote.origin()
    trusted = None
    if store.trust is not None and store.trust.require_signed:
        trusted = store.trust.check(believed, manifest, sigs, [origin], requested)
    result = PullResult(believed, trusted=trusted)
    count = threading.Lock()  # the counters are updated from the download threads
    with store.writer_lock():
        needed = {}
        for f in manifest.files:
            try:
                store.check_blob(f.digest, f.size)
                result.reused += 1
                result.reused_bytes += f.size
                if progress:
                    progress(f.size)
            except (NotFoundError, CorruptBlobError):
                needed[f.digest] = f.size

        def fetch(item: tuple[str, int], advance: Progress) -> None:
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
                try:
                    # The remote writes at most `size` bytes (a longer object is refused, not
                    # written until the disk is full) and removes its partial file on failure.
                    hashed = remote.download(k, tmp, size, advance)  # hashed as the bytes arrived
                    store.put_downloaded(tmp, digest, size, hashed)
                except BaseException as e:
                    from ._fsutil import store_write_error, unlink_quiet

                    unlink_quiet(tmp)  # on every failure (an error, an interrupt): no temp file stays
                    if isinstance(e, LocalWriteError):  # this store's disk, not the remote: say so, with the fix
                        raise store_write_error(e.error, e.path, store.root) from None
                    if not isinstance(e, CorruptBlobError):
                        raise
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

        # The first blob that fails stops the others at their next chunk (each_file).
        each_file(sorted(needed.items(), key=lambda kv: -kv[1]), fetch, progress=progress, threads=PARALLEL_FILES,
                  name="kiln-download")
        store.put_bytes(record_bytes)
        store.put_bytes(manifest_bytes)
        store.add_signatures(believed, sigs, prov, origin)  # before the entry; where it came from, always
        store.write_entry(believed)
    _pull_model_record(store, remote, believed)
    return result


def _pull_model_record(store: Store, remote: Remote, entry: IndexEntry) -> None:
    """Keep the remote's record of the artifact's model, if it has one and this store does not (or
    has one without the tensor signature): best effort, the artifact is complete without it; a later
    offline lookup by Hub id needs it."""
    repo_id, commit = entry.model.get("repo_id"), entry.model.get("commit")
    if not isinstance(repo_id, str) or not isinstance(commit, str):
        return
    local = store.model_records.get(repo_id, commit, on_bad=lambda _m: None)
    if local is not None and local.tensors is not None:
        return
    try:
        record = remote_model_record(remote, repo_id, commit)
    except KilnError:
        return
    # Kept where this store has none, or has one without the tensor signature the remote's holds.
    if record is not None and record.tree_digest == entry.model.get("tree_digest") and \
            (local is None or record.tensors is not None):
        store.model_records.keep(record, None)


# --------------------------------------------------------------------------- remote gc


@dataclass(frozen=True)
class RemoteGcPlan:
    blobs: tuple[tuple[str, int], ...]  # (object key, size) to delete
    kept: int
    young: int  # unreferenced but within the grace period
    broken_entries: tuple[str, ...]  # entries whose manifest is missing (left alone, reported)
    not_removed: str | None = None  # what this remote cannot remove, and who can
    relisted: int = 0  # objects listed again (Remote.repair_listings)

    @property
    def bytes(self) -> int:
        return sum(s for _, s in self.blobs)


def remote_gc(remote: Remote, *, grace_s: float = 86400.0, dry_run: bool = False) -> RemoteGcPlan:
    """Delete blobs no artifact on the remote references, and the signatures of manifests no entry
    references (older than ``grace_s``).

    Whatever might reference a blob that gc cannot see stops it before it deletes anything:
    an entry or a manifest that could not be *read* (timeout, throttling, a server error)
    aborts with that RemoteError, and so does one that was read but cannot be understood —
    a malformed index entry (of any shape: a list, an empty spec, a newer Kiln's schema) or a
    manifest that is present but corrupt or unparseable — because it may reference any blob,
    and guessing "unreferenced" there would delete live data. Only an entry whose manifest is
    simply gone (its blobs are then unreachable anyway) is reported as broken and passed over.
    """
    # First what a killed or concurrent push left unlisted, so gc sees every entry (a write: not on a dry run).
    relisted = 0 if dry_run else remote.repair_listings()
    referenced: set[str] = set()
    broken: list[str] = []
    unreadable: list[str] = []
    for info in remote.list("index/"):
        if not info.key.endswith(".json"):
            continue
        data = remote.get(info.key, MAX_ENTRY_BYTES)  # a RemoteError here aborts gc
        try:
            entry = _parse_entry(data, info.key, remote)
        except _MalformedEntry as e:
            unreadable.append(str(e))
            continue
        if entry is None:
            continue  # deleted since it was listed
        mkey = blob_key(entry.manifest)
        referenced.add(mkey)
        mdata = remote.get(mkey, MAX_MANIFEST_BYTES)  # a RemoteError here aborts gc
        if mdata is None:
            broken.append(f"{info.key}: manifest {mkey} is missing")
            continue
        try:
            if "sha256:" + hashlib.sha256(mdata).hexdigest() != entry.manifest:
                raise UnsafeManifestError("it does not match its digest")
            manifest = Manifest.parse(mdata)
        except UnsafeManifestError as e:
            unreadable.append(f"the manifest {mkey} of index entry {info.key} cannot be read ({e})")
            continue
        referenced.add(blob_key(manifest.config.digest))
        referenced.update(blob_key(f.digest) for f in manifest.files)
    if unreadable:
        shown = "; ".join(unreadable[:10]) + (f"; and {len(unreadable) - 10} more" if len(unreadable) > 10 else "")
        raise RemoteError(
            f"remote gc deleted nothing: {len(unreadable)} index entr{'y' if len(unreadable) == 1 else 'ies'} on "
            f"{remote.describe()} cannot be read, so which blobs are still in use is unknown: {shown} "
            "Delete or repair those objects (or push those artifacts again from a good store), then run gc again."
        )
    now = time.time()
    dead, kept, young = [], 0, 0
    for info in (remote.list("blobs/") if remote.lists_blobs else ()):
        if info.key in referenced:
            kept += 1
        elif now - info.mtime < grace_s:
            young += 1  # maybe a push in flight: its index entry comes last
        else:
            dead.append((info.key, info.size))
    # Signatures are of one manifest: they go when it is no longer referenced (after the grace,
    # as a push writes them before its entry).
    for info in remote.list("signatures/"):
        mhex = info.key.split("/")[1] if info.key.count("/") >= 2 else ""
        if f"blobs/sha256/{mhex}" in referenced:
            kept += 1
        elif now - info.mtime < grace_s:
            young += 1
        else:
            dead.append((info.key, info.size))
    not_removed = None if remote.lists_blobs else (
        f"{remote.describe()} is an OCI registry, which cannot list its blobs: Kiln removed only the objects it "
        "lists (signatures of artifacts no entry references). Unreferenced blobs and untagged manifests are "
        "reclaimed by the registry's own garbage collection (distribution: `registry garbage-collect "
        "--delete-untagged`; ECR, GHCR, Harbor, Artifactory: their retention or cleanup policies).")
    plan = RemoteGcPlan(tuple(dead), kept, young, tuple(broken), not_removed, relisted)
    if not dry_run:
        for k, _ in plan.blobs:
            remote.delete(k)
        # Leftovers of killed pushes that hold storage without being objects: incomplete S3
        # multipart uploads, hidden temp files on a filesystem remote (older than the grace).
        remote.cleanup_partial_uploads(grace_s)
    return plan
