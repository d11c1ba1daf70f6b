"""Index-entry files: ``index/<model hex>/<key>.json``, one per artifact in the store.

The data format is :class:`~kiln.manifests.IndexEntry`; this module owns only the files:
where an entry lives, how it is written, listed, read, touched and removed. A small class
holding the one directory it touches (``index/``), so the store, verify and gc share it.

Invariants:

* An entry is the *last* thing a publish writes (DESIGN invariant 2), by atomic, durable
  rename: a reader that finds it finds its manifest and every blob. It is also the first
  thing gc removes, so a reader never finds an entry whose blobs are gone.
* The entry file's mtime is the artifact's last use (``touch`` on every hit), for
  least-recently-used gc. A read-only store still serves hits; it just cannot record them.
* Listing tolerates concurrent gc (an entry that vanishes between ``listdir`` and ``open`` is
  skipped) and damaged files (skipped here; ``on_bad`` hears of each, for ``kiln verify``); a
  direct lookup of a damaged entry is an error naming the file, never a silent miss.
* "Damaged" is anything :meth:`IndexEntry.parse` refuses (wrong JSON shape, wrong types, too
  large or too deeply nested) or an entry stored under another key or model than it
  describes: an entry that is returned at all has the exact shape callers index into.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import StoreError, UnsafeManifestError
from ..manifests._index import MAX_ENTRY_BYTES, IndexEntry
from ._fsutil import atomic_write_bytes, unlink_quiet

__all__ = ["IndexFiles"]


class IndexFiles:
    def __init__(self, index_dir: Path) -> None:
        self.index_dir = index_dir

    def path(self, model_hex: str, key: str) -> Path:
        return self.index_dir / model_hex / f"{key}.json"

    def _load(self, path: Path, model_hex: str, key: str) -> IndexEntry:
        """The entry in ``path`` (index/<model_hex>/<key>.json); UnsafeManifestError if damaged."""
        with open(path, "rb") as f:
            data = f.read(MAX_ENTRY_BYTES + 1)  # bounded: a 50 MB "entry" is refused unread
        entry = IndexEntry.parse(data, "the file")
        if entry.key != key or entry.model_hex != model_hex:
            raise UnsafeManifestError(
                f"it describes key {entry.key[:12]} of model {entry.model_hex[:12]}, not the place it is stored at"
            )
        return entry

    def get(self, model_hex: str, key: str) -> IndexEntry | None:
        path = self.path(model_hex, key)
        try:
            return self._load(path, model_hex, key)
        except FileNotFoundError:
            return None
        except UnsafeManifestError as e:
            raise StoreError(
                f"index entry {path} is damaged ({e}); remove that file, then build or pull the artifact again."
            ) from None

    def entries(self, model_hex: str | None = None, *,
                on_bad: Callable[[Path, str], None] | None = None) -> Iterator[IndexEntry]:
        """Every valid entry (of one model); damaged files are skipped, each reported to ``on_bad``."""
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
                    entry = self._load(d / name, d.name, name[: -len(".json")])
                except FileNotFoundError:
                    continue  # removed by gc while we listed
                except (UnsafeManifestError, IsADirectoryError) as e:
                    if on_bad is not None:
                        on_bad(d / name, str(e) if isinstance(e, UnsafeManifestError) else "it is a directory")
                    continue
                yield entry

    def write(self, entry: IndexEntry) -> None:
        """Make ``entry`` visible: the last step of any publish (its blobs must be in place)."""
        atomic_write_bytes(self.path(entry.model_hex, entry.key), entry.to_bytes(), durable=True)

    def remove(self, entry: IndexEntry) -> None:
        unlink_quiet(self.path(entry.model_hex, entry.key))
        try:
            (self.index_dir / entry.model_hex).rmdir()  # only succeeds once the model has no entries
        except OSError:
            pass

    def last_used(self, entry: IndexEntry) -> float:
        try:
            return os.stat(self.path(entry.model_hex, entry.key)).st_mtime
        except FileNotFoundError:
            return 0.0

    def touch(self, entry: IndexEntry) -> None:
        """Record a use, for least-recently-used gc (the entry file's mtime)."""
        try:
            os.utime(self.path(entry.model_hex, entry.key))
        except OSError:
            pass  # read-only stores still serve hits
