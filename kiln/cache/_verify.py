"""``kiln verify``: re-hash every blob and check that every index entry can be served.

A full check, unlike the stamp fast path of :meth:`~kiln.cache._blobs.Blobs.check`: every
blob's bytes are hashed again, whatever its stamp says. A blob that verifies is restamped,
so the next lookup trusts it without hashing. A function over the blob CAS and the index
files: it holds no state of its own.

It takes no lock and changes nothing but stamps — and quarantine/, when an entry's manifest
blob fails its digest as it is read (the same rule as on the serving path). Blobs whose bytes
are wrong are reported, not moved: the next lookup or fetch that needs one quarantines it and
misses loudly, and a publish of the right bytes repairs it.

Every index file that is not a valid entry is reported (:class:`~kiln.cache._entries.BadEntry`:
damaged — not JSON, the wrong shape, stored under another key, a link or FIFO —, of a newer
Kiln's schema, or unreadable), and so is every valid entry whose manifest is missing, does
not match its digest, with what to do about it: a store verify passes is one every entry
of which can be served. Entries and manifests of a newer Kiln (a store shared across
versions) are reported as not checked, without failing verify: that Kiln serves them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CorruptBlobError, NotFoundError, UnsafeManifestError
from ._blobs import Blobs, hash_file
from ._entries import NEWER, BadEntry, IndexFiles
from ._progress import Progress

__all__ = ["VerifyReport", "verify"]


@dataclass(frozen=True)
class VerifyReport:
    blobs_checked: int
    bytes_checked: int
    corrupt: tuple[str, ...]  # messages
    missing: tuple[str, ...]  # messages
    entries_checked: int
    # Artifacts of a newer Kiln sharing the store: not checked here, and no failure (that Kiln
    # serves them, gc keeps them); reported so nobody mistakes "not checked" for "verified".
    unread: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing


def verify(blobs: Blobs, index: IndexFiles, progress: Progress | None = None) -> VerifyReport:
    corrupt, missing, unread = [], [], []
    checked = nbytes = 0
    for digest, path in blobs.all():
        actual, size = hash_file(path, progress)
        checked += 1
        nbytes += size
        if actual != digest:
            corrupt.append(f"blob {digest} is corrupt (hashes to {actual})")
        else:
            blobs.restamp(digest)
    entries = 0

    def bad_entry(bad: BadEntry) -> None:
        (unread if bad.kind == NEWER else missing).append(f"{bad.summary()}; {bad.fix()}")

    for entry in index.entries(on_bad=bad_entry):
        entries += 1
        where = f"artifact {entry.key[:12]} ({entry.spec.get('model')}, {entry.spec.get('target')})"
        try:
            manifest = blobs.read_manifest(entry.manifest)
        except (NotFoundError, CorruptBlobError) as e:
            missing.append(f"{where}: manifest unusable: {e} Its index entry {index.path(entry.model_hex, entry.key)} "
                           "can never be served: `kiln gc` removes it, `kiln build` rebuilds it.")
            continue
        except UnsafeManifestError as e:
            unread.append(f"{where}: manifest unusable: {e} This Kiln cannot read it (a newer Kiln's artifact?); "
                           "`kiln gc` keeps it and every blob it names.")
            continue
        for f in manifest.files:
            if not blobs.has(f.digest):
                missing.append(f"{where}: file {f.path} ({f.digest}) is missing")
            elif not blobs.has(f.digest, f.size):
                corrupt.append(f"{where}: file {f.path} ({f.digest}) has the wrong size")
    return VerifyReport(checked, nbytes, tuple(corrupt), tuple(missing), entries, tuple(unread))
