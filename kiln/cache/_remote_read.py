"""Read one artifact's manifest and build record from a remote without pulling its blobs.

For ``kiln show --remote``: what a bucket holds, verified as :func:`~kiln.cache._sync.pull`
verifies it (the manifest against the entry's digest and its own safety rules, the record
against its digest, its schema and the entry), but nothing is written to the local store.
"""

from __future__ import annotations

from typing import Any

from ..errors import RemoteError, UnsafeManifestError
from ..manifests._index import IndexEntry
from ..manifests._manifest import MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Manifest
from ..manifests._record import check_record_describes, parse_record
from ._sync import _fetch_small, blob_key
from .remotes import Remote

__all__ = ["read_remote_artifact"]


def read_remote_artifact(remote: Remote, entry: IndexEntry) -> tuple[Manifest, dict[str, Any]]:
    """The manifest and build record of a remote artifact, verified; RemoteError if either is bad."""
    try:
        manifest = Manifest.parse(_fetch_small(remote, entry.manifest, MAX_MANIFEST_BYTES))
    except UnsafeManifestError as e:
        raise RemoteError(f"manifest {entry.manifest} on {remote.describe()} is unsafe: {e}") from None
    if manifest.annotations.get("dev.kiln.key") != entry.key:
        raise RemoteError(
            f"index entry {entry.key[:12]} on {remote.describe()} points at the manifest of another artifact: "
            "refusing it."
        )
    try:
        record = parse_record(_fetch_small(remote, manifest.config.digest, MAX_CONFIG_BYTES))
        check_record_describes(record, entry)
    except UnsafeManifestError as e:
        raise RemoteError(
            f"the build record of {entry.key[:12]} on {remote.describe()} ({blob_key(manifest.config.digest)}) "
            f"is refused: {e}"
        ) from None
    return manifest, record
