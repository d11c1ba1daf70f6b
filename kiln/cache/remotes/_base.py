"""The one small interface every remote implements, and what a listing returns.

A remote holds the same layout as the local store, as objects::

    <prefix>/blobs/sha256/<hex>            files, manifests, build records (immutable)
    <prefix>/index/<model hex>/<key>.json  index entries, written last

Contract for implementations: ``put`` and ``upload`` make an object appear *atomically*
(whole or not at all, never partial under its final name), because the order of writes in
:mod:`kiln.cache._sync` is all that keeps readers from partial artifacts. Reads return what
the remote holds, unverified: remote data is untrusted, and callers check every blob against
its digest after download, and ``download`` writes at most the size the caller declares
(plus one byte, to see that an object is longer) and removes its partial file on every
failure: a hostile remote cannot fill the disk. Errors are :class:`~kiln.errors.RemoteError`
with a message that names the object and never prints credentials: every message, and
:meth:`Remote.describe`, goes through :func:`kiln._redact.redact` (URL userinfo and secret
query values become ``***``).

Its own module (not the package ``__init__``) so that the backends can subclass it while
``remotes/__init__.py`` imports the backends for :func:`open_remote`, without an import cycle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..._redact import redact
from ...errors import RemoteError
from .._progress import Progress

__all__ = ["ENTRY_NAME", "ObjectInfo", "Remote"]

ENTRY_NAME = re.compile(r"index/([0-9a-f]{64})/([0-9a-f]{64})\.json")  # index/<model hex>/<build key>.json


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the remote's prefix
    size: int
    mtime: float  # seconds since the epoch


class Remote(ABC):
    """A shared store (an S3 bucket prefix or a filesystem path): open one with :func:`kiln.open_remote`."""

    url: str
    lists_blobs = True  # False where the service cannot list blobs (OCI registries): remote gc leaves them alone
    max_manifest_bytes: int | None = None  # the largest manifest the service stores, where it has a limit

    def describe(self) -> str:
        return redact(self.url.split("?", 1)[0])

    def origin(self) -> str:
        """This remote's canonical name, as a trust policy's ``remotes`` patterns match it: no
        credentials, no options that do not change *where* (timeouts, profiles), the endpoint
        kept when it is not the service's own (another server's bucket of the same name is
        another remote). Compared segment by segment (kiln.trust._policy.origin_matches)."""
        return self.describe()

    def error(self, message: str) -> RemoteError:
        """A RemoteError for ``message``, credentials redacted (every backend message goes here)."""
        return RemoteError(redact(message))

    def size_error(self, key: str, size: int, actual: int | str) -> RemoteError:
        """The one message for an object whose length is not the one declared to :meth:`download`."""
        return self.error(
            f"object {key} on remote {self.describe()} has {actual} bytes, but {size} were declared "
            "(by the manifest): refusing it; nothing was published. Delete that object from the remote, "
            "then push the artifact again from a good store."
        )

    @abstractmethod
    def get(self, key: str, max_size: int) -> bytes | None:
        """A small object's bytes, or None if absent."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write a small object atomically."""

    @abstractmethod
    def stat(self, key: str) -> int | None:
        """The object's size, or None if absent."""

    @abstractmethod
    def upload(self, path: Path, key: str, progress: Progress | None = None) -> None:
        """Upload a file as one object, atomically (large files in parallel parts)."""

    def upload_manifest(self, path: Path, key: str, progress: Progress | None = None) -> None:
        """Upload an artifact's manifest blob (a push's, never any other file): where the service
        knows manifests (OCI registries), it is stored as one too."""
        self.upload(path, key, progress)

    def entry_names(self, key_prefix: str) -> list[tuple[str, str]]:
        """(model hex, build key) of every index entry whose key starts with ``key_prefix``.
        From the listing here; a remote that can find a full key without one (an OCI registry's
        build-key tag) also finds entries a lost listing no longer names."""
        return sorted({(m.group(1), m.group(2)) for info in self.list("index/")
                       if (m := ENTRY_NAME.fullmatch(info.key)) and m.group(2).startswith(key_prefix)})

    @abstractmethod
    def download(self, key: str, dest: Path, size: int, progress: Progress | None = None) -> tuple[str, int] | None:
        """Download an object of ``size`` bytes into ``dest`` (large objects with parallel ranged reads).

        Writes at most ``size`` bytes: an object longer or shorter than ``size`` is a RemoteError
        naming both sizes. On every failure ``dest`` is removed.

        Returns ``("sha256:<hex>", n)`` of the bytes written, hashed as they arrived, with
        ``dest`` fsynced (the pull then verifies without reading the file again), or None:
        then the pull hashes and fsyncs ``dest`` itself.
        """

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` (relative keys)."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def repair_listings(self) -> int:
        """Where listings are kept apart from the objects (OCI directory indexes), list again what a
        killed or concurrent write left unlisted; returns how many. Others list the objects themselves."""
        return 0

    def cleanup_partial_uploads(self, older_than_s: float) -> int:
        """Remove what killed uploads left behind (not objects); returns how many."""
        return 0
