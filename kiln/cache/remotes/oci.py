"""An OCI distribution registry as a remote: ``oci://HOST[:PORT]/REPOSITORY``.

Kiln's store layout maps onto the registry like this (README "OCI registries" has the user's view):

* ``blobs/sha256/<hex>`` — registry blobs of the repository (HEAD before upload; files over
  ``Repository.CHUNK_SIZE`` in chunked uploads; first a cross-repository mount from each ``mount-from``
  repository, which costs nothing when the blob is not there: the registry then opens a
  normal upload). A Kiln manifest is a valid OCI image manifest (artifactType
  ``application/vnd.kiln.artifact.v1``, the build record as config, one layer per file with
  its path in ``org.opencontainers.image.title``), so it is also PUT as a *manifest* by its
  digest — before its blob copy, so the blob being there means the manifest is.
* ``index/<model hex>/<build key>.json`` — the index entry. Written, last of a push, as: the
  artifact's manifest tagged ``<build key>`` (what `skopeo inspect`, `oras pull` or a human
  reads), then the entry itself as a small object (below), then its directory index.
* everything else (index entries, signatures ``signatures/<manifest hex>/…``, model records
  ``models/…``) — a small *object*: one blob, described by an OCI manifest tagged
  ``k-<sha256 of the key>`` whose annotation ``org.kiln.key`` names the key. Entries and
  signatures carry a ``subject``, the artifact's manifest, so they are OCI referrers of it;
  a registry without the referrers API gets the referrers tag schema (``sha256-<hex>``) that
  distribution-spec v1.1 asks clients to maintain, for third-party tools (Kiln reads its own
  directory indexes, below).
* directory listings — registries cannot list by prefix (distribution 2.8 returns every tag,
  unsorted, ignoring ``n``/``last``), so each directory of objects has an *index artifact*:
  a manifest tagged ``d-<sha256 of the directory>`` whose config lists its names, sizes and
  when they were added. It is updated read-modify-write *after* the object it lists is
  complete (the single-writer-last rule: blobs, then manifest, then index), re-read to check
  that the update held, and retried when a concurrent writer's update replaced it.

Registries have no compare-and-swap on tags that distribution honours, so two writers adding
to one directory index at the same instant can still lose one addition (the later writer's
read preceded the earlier one's write and the earlier one's check). Nothing a lookup needs is
lost that way: an exact lookup reads ``k-<hash>`` of its entry directly, and the artifact's
tag stays; a lost listing reappears on the next push of that artifact (which re-adds it).

Time is bounded as for S3 (``timeout``/``deadline`` in the URL, KILN_OCI_TIMEOUT /
KILN_OCI_DEADLINE), credentials come from :mod:`._oci_auth`, and no message carries them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlparse

from ...errors import KilnError, RemoteError
from ...manifests import MAX_CONFIG_BYTES, Manifest, entry_from_record, parse_record
from ...manifests._manifest import ARTIFACT_TYPE
from .._fsutil import unlink_quiet
from .._progress import Progress
from ._base import ObjectInfo, Remote
from ._bounded import Sink
from ._oci_auth import find_credentials
from ._oci_client import RegistryClient
from ._oci_repository import EMPTY, EMPTY_JSON, IMAGE_INDEX, MANIFEST, Repository

__all__ = ["OCIRemote"]

DIRECTORY = "application/vnd.kiln.directory.v1+json"
KEY_ANNOTATION = "org.kiln.key"
TITLE = "org.opencontainers.image.title"
MAX_OBJECT_MANIFEST = 64 << 10
MAX_DIRECTORY = 16 << 20

_BLOB_KEY = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_KEY = re.compile(r"[0-9a-f]{64}")
_ENTRY_KEY = re.compile(r"index/([0-9a-f]{64})/([0-9a-f]{64})\.json")
_SIGNATURE_KEY = re.compile(r"signatures/([0-9a-f]{64})/[^/]+")
# distribution-spec: <name> components and the whole, lower case.
_REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
_TRUE = ("1", "true", "yes", "on")
_NAME = re.compile(r"(?!\.\.?/?$)[^/\x00-\x1f]{1,255}/?")  # one listing name: a file, or a directory with "/"
MAX_DEPTH = 4  # index/<model>/<key>.json, signatures/<hex>/<fp>.sig, models/<repo>/revisions/<rev>/<commit>.json


def _media_type(key: str) -> str:
    """The artifact/layer media type of a small object, by what it is (for tools that list referrers)."""
    if key.startswith("index/"):
        return "application/vnd.kiln.index-entry.v1+json"
    if key.startswith("signatures/"):
        # model-signing's bundle is a sigstore bundle v0.3; provenance is a DSSE in-toto statement in one too.
        return ("application/vnd.dev.sigstore.bundle.v0.3+json" if key.endswith(".sig")
                else "application/vnd.kiln.provenance.v1+json")
    if key.startswith("models/"):
        return "application/vnd.kiln.model-record.v1+json"
    return "application/vnd.kiln.object.v1+json"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(media_type: str, data_or_digest: bytes | str, size: int | None = None, **extra: Any) -> dict[str, Any]:
    digest = data_or_digest if isinstance(data_or_digest, str) else _sha(data_or_digest)
    n = size if size is not None else len(data_or_digest)
    return {"mediaType": media_type, "digest": digest, "size": n, **extra}


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def settle(gap: float) -> None:
    """Wait, after a read-modify-write that took ``gap`` seconds, before checking that it held.

    Another writer overwrites this update only if it read before this write and wrote after it;
    it writes within its own read-to-write gap of its read. Waiting longer than that (three of
    ours, plus jitter) before the check makes such an overwrite visible to the check, which then
    writes again — unless the other writer is more than three times slower than this one."""
    time.sleep(3 * gap + random.uniform(0.02, 0.06))


def is_kiln_manifest(data: bytes) -> bool:
    if not data.startswith(b"{"):
        return False
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("mediaType") == MANIFEST and doc.get("artifactType") == ARTIFACT_TYPE


class OCIRemote(Remote):
    """A repository in an OCI distribution registry (ECR, GHCR, Harbor, Artifactory, distribution).

    URL options: ``plain-http=true`` (a registry without TLS, as ORAS's ``--plain-http``),
    ``timeout=SECONDS`` / ``deadline=SECONDS`` (as for S3; KILN_OCI_TIMEOUT / KILN_OCI_DEADLINE),
    ``mount-from=REPO[,REPO…]`` (repositories of the same registry to mount blobs from).
    """

    TIMEOUT = 15.0
    DEADLINE = 60.0
    INDEX_ATTEMPTS = 8  # read-modify-write rounds of a directory index under contention
    lists_blobs = False  # the distribution API has no blob listing: remote gc leaves blobs to the registry's own gc
    # distribution refuses larger manifest bodies (registry/handlers/manifests.go maxManifestBodySize,
    # v2.8.2), and so do ECR, GHCR and Docker Hub: a push checks before a byte moves.
    max_manifest_bytes = 4 << 20

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = urlparse(url)
        if parsed.username or parsed.password:
            raise self.error(f"remote {url!r} carries credentials in the URL; Kiln reads registry credentials from the "
                             "docker config (docker login / skopeo login), a credential helper, or KILN_OCI_USERNAME and "
                             "KILN_OCI_PASSWORD. Remove them from the URL.")
        try:
            port = parsed.port
        except ValueError:
            raise self.error(f"remote {url!r} has a port that is not a number from 1 to 65535; "
                             "write oci://HOST[:PORT]/REPOSITORY.") from None
        hostname = (parsed.hostname or "").lower()
        # An IPv6 literal keeps its brackets, as URLs, docker config keys and trust policies write it.
        self.host = (f"[{hostname}]" if ":" in hostname else hostname) + (f":{port}" if port else "")
        self.repository = parsed.path.strip("/")
        if not parsed.hostname or not self.repository:
            raise self.error(f"remote {url!r} names no registry and repository; write oci://HOST[:PORT]/REPOSITORY.")
        if not _REPOSITORY.fullmatch(self.repository):
            raise self.error(f"repository {self.repository!r} in {url!r} is not a valid OCI repository name "
                             "(lower-case letters, digits and . _ - separators, components joined by /).")
        q = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        unknown = sorted(set(q) - {"plain-http", "timeout", "deadline", "mount-from"})
        if unknown:
            raise self.error(f"remote {url!r}: unknown option {unknown[0]!r}; OCI remotes take plain-http=true, "
                             "timeout=SECONDS, deadline=SECONDS and mount-from=REPO[,REPO…].")
        self.plain_http = q.get("plain-http", "").lower() in _TRUE
        self.timeout = self._seconds("timeout", q.get("timeout") or os.environ.get("KILN_OCI_TIMEOUT") or self.TIMEOUT)
        self.deadline = self._seconds("deadline", q.get("deadline") or os.environ.get("KILN_OCI_DEADLINE") or self.DEADLINE)
        self.mount_from = [r for r in (q.get("mount-from") or "").split(",") if r and r != self.repository]
        for r in self.mount_from:
            if not _REPOSITORY.fullmatch(r):
                raise self.error(f"mount-from repository {r!r} in {url!r} is not a valid OCI repository name.")
        client = RegistryClient("http" if self.plain_http else "https", self.host, lambda: find_credentials(self.host),
                                timeout=self.timeout, deadline=self.deadline, describe=self.describe())
        self.repo = Repository(client, self.host, self.repository, deadline=self.deadline, mount_from=self.mount_from,
                               describe=self.describe())

    def _seconds(self, name: str, value: object) -> float:
        try:
            seconds = float(value)  # type: ignore[arg-type]
            if not 0 < seconds < float("inf"):
                raise ValueError
        except (TypeError, ValueError):
            raise self.error(f"OCI {name} {value!r} is not a positive number of seconds "
                             f"({name}= / KILN_OCI_{name.upper()}).") from None
        return seconds

    def describe(self) -> str:
        return f"oci://{self.host}/{self.repository}"

    def origin(self) -> str:
        return self.describe()

    # ------------------------------------------------------------------ small objects

    @staticmethod
    def object_tag(key: str) -> str:
        return "k-" + hashlib.sha256(key.encode()).hexdigest()

    @staticmethod
    def directory_tag(directory: str) -> str:
        return "d-" + hashlib.sha256(directory.encode()).hexdigest()

    def _read_object_manifest(self, key: str) -> dict[str, Any] | None:
        data = self.repo.get_manifest(self.object_tag(key), MAX_OBJECT_MANIFEST)
        if data is None:
            return None
        try:
            doc = json.loads(data)
            layer = doc["layers"][0]
            if doc["annotations"][KEY_ANNOTATION] != key or not isinstance(layer["size"], int):
                raise ValueError
            str(layer["digest"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise self.error(f"object {key} in {self.describe()} (tag {self.object_tag(key)}) is not an object Kiln "
                             "wrote; refusing it (a damaged or hostile registry).") from None
        return doc

    def _read_object(self, key: str, max_size: int) -> bytes | None:
        doc = self._read_object_manifest(key)
        if doc is None:
            return None
        layer = doc["layers"][0]
        data = self.repo.get_blob(str(layer["digest"]), max_size)
        if data is None:
            return None  # its manifest without its blob: not (yet, or any longer) there
        if len(data) <= max_size and (len(data) != layer["size"] or _sha(data) != layer["digest"]):
            raise self.error(f"object {key} in {self.describe()} does not match its digest: refusing it.")
        return data

    def _subject(self, key: str, data: bytes) -> dict[str, Any] | None:
        """The artifact manifest an entry or a signature is about (its OCI ``subject``), if it is there."""
        digest = None
        if _ENTRY_KEY.fullmatch(key):
            try:
                digest = str(json.loads(data)["manifest"])
            except (ValueError, KeyError, TypeError):
                return None
        elif m := _SIGNATURE_KEY.fullmatch(key):
            digest = "sha256:" + m.group(1)
        if digest is None:
            return None
        size = self.repo.manifest_size(digest)
        return _descriptor(MANIFEST, digest, size, artifactType=ARTIFACT_TYPE) if size is not None else None

    def _write_object(self, key: str, data: bytes) -> None:
        self.repo.ensure_empty_config()
        digest = _sha(data)
        if digest not in self.repo.known_blobs and self.repo.stat_blob(digest) != len(data):
            self.repo.put_blob_bytes(digest, data)
        media_type = _media_type(key)
        doc: dict[str, Any] = {
            "schemaVersion": 2, "mediaType": MANIFEST, "artifactType": media_type,
            "config": _descriptor(EMPTY, EMPTY_JSON),
            "layers": [_descriptor(media_type, data, annotations={TITLE: key.rsplit("/", 1)[-1]})],
            "annotations": {KEY_ANNOTATION: key},
        }
        subject = self._subject(key, data)
        if subject is not None:
            doc["subject"] = subject
        if (m := _ENTRY_KEY.fullmatch(key)) and subject is None:
            raise self.error(f"index entry {key} names a manifest {self.describe()} does not hold: an entry is "
                             "written after its artifact, never before.")
        if m and subject is not None:
            # The artifact under its build key, for every other tool; before the entry (the index) is.
            artifact = self.repo.get_manifest(subject["digest"], self.max_manifest_bytes)
            if artifact is None:
                raise self.error(f"manifest {subject['digest']} vanished from {self.describe()} during the push.")
            self.repo.put_manifest(m.group(2), artifact)
        manifest = _canonical(doc)
        r = self.repo.put_manifest(self.object_tag(key), manifest)
        if subject is not None and not r.header("oci-subject"):
            self._edit_referrers(subject["digest"], add=_descriptor(MANIFEST, manifest, artifactType=media_type,
                                                                    annotations={KEY_ANNOTATION: key}))
        self._register(key, len(data))

    def _edit_referrers(self, subject: str, add: dict[str, Any] | None = None, drop: str | None = None) -> None:
        """The referrers tag schema (distribution-spec v1.1, for registries without the referrers API):
        an image index tagged ``sha256-<hex>`` listing the manifests whose subject is ``subject``.
        Read by other tools (oras discover); Kiln itself reads its directory indexes. Adds ``add``
        (replacing an older manifest of the same object) or drops the manifest ``drop``."""
        tag = subject.replace(":", "-")
        for _ in range(self.INDEX_ATTEMPTS):
            started = time.monotonic()
            current = self.repo.get_manifest(tag, MAX_DIRECTORY, accept=IMAGE_INDEX)
            if current is None and add is None:
                return
            try:
                index = json.loads(current) if current else {"schemaVersion": 2, "mediaType": IMAGE_INDEX, "manifests": []}
                listed = [d for d in index["manifests"] if isinstance(d, dict)]
            except (ValueError, KeyError, TypeError):
                return  # not an index Kiln can extend: leave another tool's tag alone (the spec: report and skip)
            if add is not None and any(d.get("digest") == add["digest"] for d in listed):
                return
            if add is None and not any(d.get("digest") == drop for d in listed):
                return
            key = (add or {}).get("annotations", {}).get(KEY_ANNOTATION)
            kept = [d for d in listed if d.get("digest") != drop
                    and (key is None or d.get("annotations", {}).get(KEY_ANNOTATION) != key)]
            index["manifests"] = kept + ([add] if add else [])
            r = self.repo.try_put_manifest(tag, _canonical(index), IMAGE_INDEX)
            if r.status != 201:
                if r.status != 400:
                    raise self.repo.fail("write", f"referrers index {tag}", r)
                # distribution refuses an index naming a manifest it no longer holds (one deleted
                # by hand, or by another gc): drop those and write again.
                index["manifests"] = [d for d in index["manifests"] if d is add or self.repo.manifest_size(str(d.get("digest"))) is not None]
                self.repo.put_manifest(tag, _canonical(index), IMAGE_INDEX)
            settle(time.monotonic() - started)  # then re-read: a concurrent writer may have replaced it

    # ------------------------------------------------------------------ directory indexes

    def _read_directory(self, directory: str) -> dict[str, dict[str, Any]]:
        data = self.repo.get_manifest(self.directory_tag(directory), MAX_OBJECT_MANIFEST)
        if data is None:
            return {}
        try:
            doc = json.loads(data)
            config = doc["config"]
            if doc.get("artifactType") != DIRECTORY or config["mediaType"] != DIRECTORY:
                raise ValueError
            body = self.repo.get_blob(str(config["digest"]), MAX_DIRECTORY)
            if body is None or len(body) > MAX_DIRECTORY or _sha(body) != config["digest"]:
                raise ValueError
            listing = json.loads(body)
            if listing["directory"] != directory or not isinstance(listing["entries"], dict):
                raise ValueError
            entries = listing["entries"]
            for name, info in entries.items():  # every name one segment (a directory's with its "/")
                if not (_NAME.fullmatch(name) and isinstance(info, dict) and type(info.get("size")) is int
                        and info["size"] >= 0 and type(info.get("added")) in (int, float)):
                    raise ValueError
            return entries
        except (ValueError, KeyError, TypeError):
            raise self.error(f"the directory index of {directory} in {self.describe()} (tag "
                             f"{self.directory_tag(directory)}) is damaged; refusing it. Pushing again rewrites it.") from None

    def _write_directory(self, directory: str, entries: dict[str, dict[str, Any]]) -> None:
        self.repo.ensure_empty_config()
        body = _canonical({"directory": directory, "entries": entries})
        digest = _sha(body)
        self.repo.put_blob_bytes(digest, body)
        doc = {"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": DIRECTORY,
               "config": _descriptor(DIRECTORY, body), "layers": [_descriptor(EMPTY, EMPTY_JSON)],
               "annotations": {"org.kiln.directory": directory}}
        self.repo.put_manifest(self.directory_tag(directory), _canonical(doc))

    def _update_directory(self, directory: str, name: str, value: dict[str, Any] | None) -> None:
        """Set (or, with None, remove) one name in a directory index, read-modify-write, checked."""
        def holds(entries: dict[str, dict[str, Any]]) -> bool:
            if value is None:
                return name not in entries
            have = entries.get(name)
            # An object put again is as young as this put (remote gc's grace counts from it, as from
            # an S3 object's LastModified); a directory keeps its first time (value["added"] is None).
            return have is not None and have["size"] == value["size"] and (
                value["added"] is None or have["added"] >= value["added"])

        for _ in range(self.INDEX_ATTEMPTS):
            started = time.monotonic()
            entries = self._read_directory(directory)
            if holds(entries):
                return
            if value is None:
                entries.pop(name, None)
            else:
                entries[name] = {**value, "added": value["added"] if value["added"] is not None else round(time.time(), 3)}
            self._write_directory(directory, entries)
            settle(time.monotonic() - started)
            if holds(self._read_directory(directory)):
                return
        raise self.error(f"the directory index of {directory} in {self.describe()} kept changing under concurrent "
                         f"writers ({self.INDEX_ATTEMPTS} attempts); push again.")

    def _register(self, key: str, size: int) -> None:
        """List ``key`` in its directory, then each directory in its parent, bottom-up (a parent names
        a directory only once that holds something). Every level is checked, not only the first: a
        push killed between two levels left the upper ones unlisted."""
        parts = key.split("/")
        now = round(time.time(), 3)
        self._update_directory("/".join(parts[:-1]) + "/", parts[-1], {"size": size, "added": now})
        for depth in range(len(parts) - 2, 0, -1):
            self._update_directory("/".join(parts[:depth]) + "/", parts[depth] + "/", {"size": 0, "added": None})

    def entry_names(self, key_prefix: str) -> list[tuple[str, str]]:
        """A full build key is found by its tag, listed or not (a lost listing must not turn a
        deployment's exact ``--key`` into a miss): the tag names the manifest, whose build record
        names the model. A prefix is found in the listings."""
        if not _KEY.fullmatch(key_prefix):
            return super().entry_names(key_prefix)
        names = set(super().entry_names(key_prefix))
        try:
            data = self.repo.get_manifest(key_prefix, self.max_manifest_bytes)
        except RemoteError:
            data = None  # a damaged tag: the listed entry's pull says precisely what is wrong
        if data is None:
            return sorted(names)
        try:
            config = json.loads(data)["config"]
            record = self.repo.get_blob(str(config["digest"]), MAX_CONFIG_BYTES)
            if record is None or _sha(record) != config["digest"]:
                return sorted(names)
            entry = entry_from_record(parse_record(record), _sha(data), Manifest.parse(data))
        except (ValueError, KeyError, TypeError, KilnError):
            return sorted(names)  # not a Kiln artifact Kiln can read: the pull that follows says why, if listed
        if entry.key == key_prefix:
            names.add((entry.model_hex, entry.key))
        return sorted(names)

    def repair_listings(self) -> int:
        """List again every object whose directory listing was lost (a push killed between an object
        and its listing, or two index updates at the very same instant), found through the tag list."""
        listed = {info.key for info in self.list("")}
        relisted = 0
        for tag in self.repo.tags():
            if not tag.startswith("k-"):
                continue
            data = self.repo.get_manifest(tag, MAX_OBJECT_MANIFEST)
            try:
                doc = json.loads(data or b"")
                key, size = str(doc["annotations"][KEY_ANNOTATION]), int(doc["layers"][0]["size"])
            except (ValueError, KeyError, IndexError, TypeError):
                continue  # not Kiln's: none of its business
            if self.object_tag(key) == tag and key not in listed:
                self._register(key, size)
                relisted += 1
        return relisted

    # ------------------------------------------------------------------ the Remote interface

    def get(self, key: str, max_size: int) -> bytes | None:
        if m := _BLOB_KEY.fullmatch(key):
            return self.repo.get_blob("sha256:" + m.group(1), max_size)
        return self._read_object(key, max_size)

    def put(self, key: str, data: bytes) -> None:
        """A small object or a blob; a blob that is a Kiln manifest is stored as a manifest too (for
        callers writing a whole artifact object by object, as :meth:`upload_manifest` does)."""
        if m := _BLOB_KEY.fullmatch(key):
            digest = "sha256:" + m.group(1)
            if is_kiln_manifest(data):
                self.repo.put_manifest(digest, data)
            self.repo.put_blob_bytes(digest, data)
        else:
            self._write_object(key, data)

    def stat(self, key: str) -> int | None:
        if m := _BLOB_KEY.fullmatch(key):
            return self.repo.stat_blob("sha256:" + m.group(1))
        doc = self._read_object_manifest(key)
        return None if doc is None else int(doc["layers"][0]["size"])

    def upload(self, path: Path, key: str, progress: Progress | None = None) -> None:
        m = _BLOB_KEY.fullmatch(key)
        if m is None:
            self._write_object(key, path.read_bytes())
            return
        self.repo.upload_file(path, "sha256:" + m.group(1), path.stat().st_size, progress)

    def upload_manifest(self, path: Path, key: str, progress: Progress | None = None) -> None:
        """The artifact's manifest as a registry manifest (what tags and tools name), then its blob copy
        (what pushes check for: the blob being there means the manifest is)."""
        m = _BLOB_KEY.fullmatch(key)
        size = path.stat().st_size
        if m is None or size > self.max_manifest_bytes:
            raise self.error(f"{key} ({size} bytes) cannot be stored as a manifest in {self.describe()}.")
        self.repo.put_manifest("sha256:" + m.group(1), path.read_bytes())
        self.repo.upload_file(path, "sha256:" + m.group(1), size, progress)

    def download(self, key: str, dest: Path, size: int, progress: Progress | None = None) -> tuple[str, int] | None:
        m = _BLOB_KEY.fullmatch(key)
        if m is None:
            raise self.error(f"{key} is not a blob; OCI remotes download only blobs.")
        digest = "sha256:" + m.group(1)
        sink = Sink(dest)  # writes and fsyncs that fail raise LocalWriteError, which passes every handler here
        written = [0]

        def write(chunk: bytes) -> None:
            keep = chunk[: max(size - written[0], 0)]
            if keep:
                sink.write_at(written[0], keep)
            written[0] += len(chunk)
            if progress and keep:
                progress(len(keep))

        try:
            try:
                self.repo.download_blob(digest, size, write)
                if written[0] != size:
                    raise self.size_error(key, size, written[0] if written[0] <= size else f"more than {size}")
                sink.fsync()
                return sink.sha256()
            finally:
                sink.close()
        except BaseException:
            unlink_quiet(dest)
            raise

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        if prefix.startswith("blobs"):
            raise self.error(f"{self.describe()} is an OCI registry: registries do not list their blobs.")
        # The deepest directory the prefix names in full; _walk prunes what does not match below it.
        yield from self._walk(prefix[: prefix.rfind("/") + 1], prefix)

    def _walk(self, directory: str, prefix: str) -> Iterator[ObjectInfo]:
        if not directory:
            tops = ("index/", "signatures/", "models/")
            for top in tops:
                if top.startswith(prefix) or prefix.startswith(top):
                    yield from self._walk(top, prefix)
            return
        for name, info in sorted(self._read_directory(directory).items()):
            key = directory + name
            if name.endswith("/"):
                if key.count("/") > MAX_DEPTH:  # deeper than Kiln's layout: not Kiln's, and not followed
                    continue
                if key.startswith(prefix) or prefix.startswith(key):
                    yield from self._walk(key, prefix)
            elif key.startswith(prefix):
                yield ObjectInfo(key, info["size"], float(info["added"]))

    def delete(self, key: str) -> None:
        if m := _BLOB_KEY.fullmatch(key):
            self.repo.delete(self.repo.blob_path("sha256:" + m.group(1)), f"blob sha256:{m.group(1)}")
            return
        # Unlist it first (a reader that lists finds no name without its object), then delete its
        # manifest by digest (registries delete manifests by digest; its tag goes with it). A
        # registry that refuses the delete gets the listing back before the error is raised.
        doc = self._read_object_manifest(key)
        digest = self.repo.manifest_digest(self.object_tag(key)) if doc is not None else None
        if doc is None or digest is None:
            return
        directory, _, name = key.rpartition("/")
        self._update_directory(directory + "/", name, None)
        try:
            self.repo.delete(self.repo.manifest_path(digest), f"object {key}")
        except RemoteError:
            self._register(key, int(doc["layers"][0]["size"]))
            raise
        if m := _SIGNATURE_KEY.fullmatch(key):  # out of the referrers tag too, so that index stays writable
            self._edit_referrers("sha256:" + m.group(1), drop=digest)
