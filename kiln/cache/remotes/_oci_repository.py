"""One repository of an OCI distribution registry: its blobs, manifests and tags, over HTTP.

The distribution API as Kiln uses it (distribution-spec v1.1; CNCF distribution 2.8 is the
registry the tests run), with nothing of Kiln's layout: :mod:`.oci` maps the store onto it.
Blobs go up whole or, over CHUNK_SIZE, in ordered PATCH chunks, after a cross-repository mount
from each ``mount_from`` repository is tried (free when the blob is not there: the registry
then opens a normal upload). Every message names the registry and repository and goes through
:func:`kiln._redact.redact`; a registry's own words reach it only as OCI error codes.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

from ..._redact import redact
from ...errors import RemoteError
from .._progress import Progress
from ._bounded import FileSlice
from ._oci_client import RegistryClient, Response

__all__ = ["EMPTY", "EMPTY_DIGEST", "EMPTY_JSON", "IMAGE_INDEX", "MANIFEST", "Repository"]

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
IMAGE_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"  # the OCI 1.1 empty descriptor's media type and bytes
EMPTY_JSON = b"{}"
EMPTY_DIGEST = "sha256:" + hashlib.sha256(EMPTY_JSON).hexdigest()
MAX_TAG_PAGE = 16 << 20


class Repository:
    """``host/name`` through ``client``: blob and manifest requests, each one bounded in time and size."""

    CHUNK_SIZE = 64 << 20  # blobs larger than this are uploaded in PATCH chunks of this size
    MIN_RATE = 1 << 20  # bytes/s: a transfer's deadline is the request deadline + size / MIN_RATE
    MAX_TAG_PAGES = 1000  # of up to 1000 tags each

    def __init__(self, client: RegistryClient, host: str, name: str, *, deadline: float, mount_from: list[str],
                 describe: str) -> None:
        self.client, self.host, self.name = client, host, name
        self.deadline, self.mount_from, self.describe = deadline, mount_from, describe
        self.known_blobs: set[str] = set()  # blobs this process saw in the repository (the empty config, mostly)

    def error(self, message: str) -> RemoteError:
        return RemoteError(redact(message))

    # ------------------------------------------------------------------ registry paths and errors

    def blob_path(self, digest: str) -> str:
        return f"/v2/{self.name}/blobs/{digest}"

    def manifest_path(self, reference: str) -> str:
        return f"/v2/{self.name}/manifests/{quote(reference, safe=':')}"

    def fail(self, action: str, what: str, r: Response) -> RemoteError:
        code = r.error_code()
        if r.status == 403 or "DENIED" in code:
            return self.error(f"registry {self.host} denied {action} {what} in {self.describe} ({code}): check "
                              "that the credentials may push to (or pull from) this repository.")
        if r.status == 404 and "NAME_UNKNOWN" in code:
            return self.error(f"repository {self.name} does not exist on {self.host} ({code}); create it, or "
                              "fix the remote URL.")
        if r.status == 405:
            return self.error(f"registry {self.host} does not allow {action} {what} ({code}: the operation is "
                              "disabled or unsupported there).")
        return self.error(f"registry {self.host} answered {r.status} ({code}) to {action} {what} in {self.describe}.")

    def budget(self, size: int) -> float:
        return self.deadline + size / self.MIN_RATE

    # ------------------------------------------------------------------ blobs

    def stat_blob(self, digest: str) -> int | None:
        r = self.client.request("HEAD", self.blob_path(digest))
        if r.status == 404:
            return None
        if r.status != 200:
            raise self.fail("check", f"blob {digest}", r)
        self.known_blobs.add(digest)
        try:
            return int(r.header("content-length") or "")
        except ValueError:
            raise self.error(f"registry {self.host} gave blob {digest} no Content-Length.") from None

    def get_blob(self, digest: str, max_size: int) -> bytes | None:
        r = self.client.request("GET", self.blob_path(digest), max_bytes=max_size, budget=self.budget(max_size))
        if r.status == 404:
            return None
        if r.status != 200:
            raise self.fail("read", f"blob {digest}", r)
        return r.body

    def _start_upload(self, digest: str) -> str | None:
        """An upload session's URL, or None if a cross-repository mount already placed the blob."""
        opened = None  # a repository without the blob answers a mount with a normal upload session
        for source in self.mount_from:
            r = self.client.request("POST", f"/v2/{self.name}/blobs/uploads/?mount={digest}&from={source}")
            if r.status == 201:
                if opened:
                    self.client.request("DELETE", opened)  # best effort: the registry expires it anyway
                return None
            if r.status == 202 and r.header("location") and opened is None:
                opened = self._absolute(r.header("location") or "")
        if opened:
            return opened
        r = self.client.request("POST", f"/v2/{self.name}/blobs/uploads/")
        if r.status != 202 or not r.header("location"):
            raise self.fail("start an upload of", f"blob {digest}", r)
        return self._absolute(r.header("location") or "")

    def _absolute(self, location: str) -> str:
        return location if "://" in location else self.client.base + location

    def put_blob_bytes(self, digest: str, data: bytes) -> None:
        where = self._start_upload(digest)
        if where is not None:
            self._finish_upload(where, digest, data, len(data))
        self.known_blobs.add(digest)

    def _finish_upload(self, where: str, digest: str, body: Any, size: int) -> None:
        sep = "&" if "?" in where else "?"
        r = self.client.request("PUT", f"{where}{sep}digest={digest}", body=body, budget=self.budget(size),
                                headers={"content-type": "application/octet-stream", "content-length": str(size)})
        if r.status not in (201, 204):
            raise self.fail("upload", f"blob {digest}", r)

    def upload_file(self, path: Path, digest: str, size: int, progress: Progress | None) -> None:
        where = self._start_upload(digest)
        if where is None:  # mounted
            if progress:
                progress(size)
            return
        if size <= self.CHUNK_SIZE:
            self._finish_upload(where, digest, lambda: open(path, "rb"), size)
            if progress:
                progress(size)
            return
        # Chunked (distribution-spec "Pushing a blob in chunks"): PATCH each range in order to the
        # Location the registry gave last, then PUT ?digest= with no body.
        offset = 0
        while offset < size:
            length = min(self.CHUNK_SIZE, size - offset)
            start = offset

            def body(start: int = start, length: int = length) -> Any:
                return FileSlice(path, start, length)

            r = self.client.request("PATCH", where, body=body, budget=self.budget(length), headers={
                "content-type": "application/octet-stream", "content-length": str(length),
                "content-range": f"{start}-{start + length - 1}"})
            if r.status != 202 or not r.header("location"):
                raise self.fail("upload a chunk of", f"blob {digest}", r)
            where = self._absolute(r.header("location") or "")
            offset += length
            if progress:
                progress(length)
        self._finish_upload(where, digest, None, 0)

    def ensure_empty_config(self) -> None:
        """The empty descriptor's blob, which Kiln's small manifests name as their config."""
        if EMPTY_DIGEST not in self.known_blobs and self.stat_blob(EMPTY_DIGEST) is None:
            self.put_blob_bytes(EMPTY_DIGEST, EMPTY_JSON)

    # ------------------------------------------------------------------ manifests

    def try_put_manifest(self, reference: str, data: bytes, media_type: str = MANIFEST) -> Response:
        return self.client.request("PUT", self.manifest_path(reference), body=data, headers={"content-type": media_type})

    def put_manifest(self, reference: str, data: bytes, media_type: str = MANIFEST) -> Response:
        r = self.try_put_manifest(reference, data, media_type)
        if r.status != 201:
            raise self.fail("write", f"manifest {reference}", r)
        return r

    def get_manifest(self, reference: str, max_size: int, accept: str = MANIFEST) -> bytes | None:
        r = self.client.request("GET", self.manifest_path(reference), max_bytes=max_size, headers={"accept": accept})
        if r.status == 404:
            return None
        if r.status != 200:
            raise self.fail("read", f"manifest {reference}", r)
        if len(r.body) > max_size:
            raise self.error(f"manifest {reference} in {self.describe} is larger than {max_size} bytes: refusing it.")
        return r.body

    def manifest_size(self, digest: str) -> int | None:
        r = self.client.request("HEAD", self.manifest_path(digest), headers={"accept": MANIFEST})
        if r.status != 200:
            return None
        try:
            return int(r.header("content-length") or "")
        except ValueError:
            return None

    def tags(self) -> Iterator[str]:
        """Every tag of the repository: the registry's own record, race-free (pages followed by ``Link``)."""
        path: str | None = f"/v2/{self.name}/tags/list?n=1000"
        seen: set[str] = set()
        for _ in range(self.MAX_TAG_PAGES):
            if path is None or path in seen:  # the end, or a link back to a page already read
                return
            seen.add(path)
            r = self.client.request("GET", path, max_bytes=MAX_TAG_PAGE)
            if r.status == 404:
                return  # a repository nothing was pushed to yet
            if r.status != 200:
                raise self.fail("list", "tags", r)
            try:
                tags = json.loads(r.body).get("tags") or []
            except (ValueError, AttributeError):
                raise self.error(f"registry {self.host} answered a tag list that is not JSON.") from None
            if not tags:
                return
            yield from (t for t in tags if isinstance(t, str))
            link = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', r.header("link") or "")
            path = link.group(1) if link else None

    def manifest_digest(self, reference: str) -> str | None:
        """The digest a tag names (HEAD), or None if the tag is absent."""
        r = self.client.request("HEAD", self.manifest_path(reference), headers={"accept": MANIFEST})
        if r.status == 404:
            return None
        digest = r.header("docker-content-digest") if r.status == 200 else None
        if not digest:
            raise self.fail("find", f"manifest {reference}", r)
        return digest

    def delete(self, path: str, what: str) -> None:
        """DELETE a blob or a manifest (by digest: registries delete manifests by digest, tags with them)."""
        r = self.client.request("DELETE", path)
        if r.status not in (202, 404):
            raise self.fail("delete", what, r)

    def download_blob(self, digest: str, size: int, write: Callable[[bytes], None]) -> None:
        """The blob's bytes to ``write``, at most ``size`` + 1 of them (the caller checks the length)."""
        r = self.client.request("GET", self.blob_path(digest), max_bytes=size, sink=write, budget=self.budget(size))
        if r.status == 404:
            raise self.error(f"blob {digest} is missing from {self.describe}: the artifact there is incomplete.")
        if r.status != 200:
            raise self.fail("download", f"blob {digest}", r)
