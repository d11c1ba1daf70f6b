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
* Only regular files are read, never followed links, and never a FIFO or device (opened
  non-blocking and checked first): a FIFO in index/ cannot hang a lookup, verify or gc.
* Listing tolerates concurrent gc (an entry that vanishes between ``listdir`` and ``open`` is
  skipped).

A file that is not a valid entry is a :class:`BadEntry`, of one of three kinds:

* ``damaged`` — anything :meth:`IndexEntry.parse` refuses (not JSON, wrong shape or types, too
  large or too deeply nested, truncated), an entry stored under another key or model than it
  describes, a link, FIFO or other non-regular file. No Kiln wrote it as it is: it can never
  be served. gc removes it (its blobs go once no valid entry references them).
* ``newer`` — a JSON object whose ``schema`` is a later version than this Kiln's: a newer Kiln
  sharing the store wrote it, and serves it. This Kiln cannot use it, but gc keeps it and
  every blob it may name (see :mod:`kiln.cache._gc`).
* ``unreadable`` — reading it failed (permissions, I/O error): nobody knows what it names, so
  gc deletes nothing while one exists.

How each reader reports one (one rule, so every command says the same): :meth:`IndexFiles.get`
and :meth:`IndexFiles.entries` treat a bad file as absent — a *loud* miss: by default each is
reported once per process as a ``kiln: WARNING`` line on the ``kiln`` logger (as refused remote
data is) naming the file and the way out ("`kiln build` rebuilds it, replacing the file;
`kiln gc` removes it"). So a lookup of a damaged key misses loudly (and still consults the
remote, whose pull replaces the file), and a build rebuilds it and its publish overwrites the
file. ``kiln verify`` and gc pass their own ``on_bad`` and report each themselves.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .._input import show_path
from .._warn import warn
from ..errors import UnsafeManifestError
from ..manifests._index import ENTRY_SCHEMA, MAX_ENTRY_BYTES, IndexEntry, UnfamiliarSpecError
from ..manifests._json import load_json
from ._fsutil import atomic_write_bytes, unlink_quiet

__all__ = ["BadEntry", "IndexFiles", "warn_bad_entry"]

DAMAGED, NEWER, UNREADABLE = "damaged", "newer", "unreadable"


@dataclass(frozen=True)
class BadEntry:
    """A file under index/ that is not a valid entry: where, why, and which kind (see above)."""

    path: Path
    why: str
    kind: str  # DAMAGED, NEWER or UNREADABLE
    raw: bytes = b""  # its bytes, when they could be read (gc scans a newer entry's for digests)

    @property
    def key(self) -> str:
        return self.path.name.removesuffix(".json")

    def summary(self) -> str:
        """``index entry P is damaged (why)``: what is wrong, naming the file."""
        where = f"index entry {show_path(self.path)}"
        state = {NEWER: "is not one this Kiln reads", UNREADABLE: "cannot be read"}.get(self.kind, "is damaged")
        return f"{where} {state} ({self.why})"

    def fix(self) -> str:
        """What to do about it (and what gc will do)."""
        if self.kind == NEWER:
            return ("the Kiln that wrote it still serves it and `kiln gc` keeps it; `kiln build` here rebuilds it "
                    "(replacing the file)")
        if self.kind == UNREADABLE:
            return "fix its permissions or remove it (`kiln gc` deletes nothing while it is unreadable)"
        return "`kiln build` rebuilds it (replacing the file), `kiln gc` removes it"

    def message(self) -> str:
        """One line for a reader that passes over it: a loud miss."""
        return f"{self.summary()}: treated as a miss; {self.fix()}."


class _Bad(Exception):
    def __init__(self, bad: BadEntry) -> None:
        self.bad = bad


def warn_bad_entry(bad: BadEntry) -> None:
    """The default report of a bad entry file: one ``kiln: WARNING`` line, once per process."""
    warn(bad.message(), once=True)


def _newer_schema(data: bytes) -> int | None:
    """The ``schema`` of a JSON object written by a newer Kiln, else None."""
    try:
        doc = load_json(data, "the file", max_bytes=MAX_ENTRY_BYTES)
    except UnsafeManifestError:
        return None
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if isinstance(schema, int) and not isinstance(schema, bool) and schema > ENTRY_SCHEMA:
        return schema
    return None


def _read_regular(path: Path) -> bytes:
    """At most MAX_ENTRY_BYTES + 1 bytes of ``path``, a regular file; _Bad for anything else.

    FileNotFoundError passes through (gc removed it while we listed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _Bad(BadEntry(path, "it is a symbolic link", DAMAGED)) from None
        raise _Bad(BadEntry(path, e.strerror or str(e), UNREADABLE)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise _Bad(BadEntry(path, f"it is {what}", DAMAGED))
        chunks, size = [], 0
        while size <= MAX_ENTRY_BYTES:  # bounded: a 50 MB "entry" is refused unread
            chunk = os.read(fd, MAX_ENTRY_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise _Bad(BadEntry(path, e.strerror or str(e), UNREADABLE)) from None
    finally:
        os.close(fd)


class IndexFiles:
    def __init__(self, index_dir: Path) -> None:
        self.index_dir = index_dir

    def path(self, model_hex: str, key: str) -> Path:
        return self.index_dir / model_hex / f"{key}.json"

    def _load(self, path: Path, model_hex: str, key: str) -> IndexEntry:
        """The entry in ``path`` (index/<model_hex>/<key>.json); _Bad unless it is a valid one."""
        data = _read_regular(path)
        try:
            entry = IndexEntry.parse(data, "the file")
        except UnsafeManifestError as e:
            schema = _newer_schema(data)
            if schema is not None:
                raise _Bad(BadEntry(path, f"entry schema {schema}, written by a newer Kiln", NEWER, data)) from None
            if isinstance(e, UnfamiliarSpecError):  # maybe another Kiln version's: kept, like a newer one's
                raise _Bad(BadEntry(path, f"{str(e).rstrip('.')}; written by another Kiln version?", NEWER, data)) from None
            raise _Bad(BadEntry(path, str(e).rstrip("."), DAMAGED, data)) from None
        if entry.key != key or entry.model_hex != model_hex:
            raise _Bad(BadEntry(
                path, f"it describes key {entry.key[:12]} of model {entry.model_hex[:12]}, not the place it is stored at",
                DAMAGED, data))
        return entry

    def get(self, model_hex: str, key: str, on_bad: Callable[[BadEntry], None] | None = None) -> IndexEntry | None:
        """The entry for ``key``, or None when there is none — or only a bad file, reported to
        ``on_bad`` (default :func:`warn_bad_entry`: a loud miss, see the module docstring)."""
        path = self.path(model_hex, key)
        try:
            return self._load(path, model_hex, key)
        except FileNotFoundError:
            return None
        except _Bad as e:
            (on_bad or warn_bad_entry)(e.bad)
            return None

    def entries(self, model_hex: str | None = None, *,
                on_bad: Callable[[BadEntry], None] | None = None) -> Iterator[IndexEntry]:
        """Every valid entry (of one model); every bad file is skipped and reported to ``on_bad``
        (default :func:`warn_bad_entry`)."""
        report = on_bad or warn_bad_entry
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
            except OSError as e:
                report(BadEntry(d, f"its directory cannot be listed: {e.strerror or e}", UNREADABLE))
                continue
            for name in names:
                if not name.endswith(".json") or name.startswith("."):
                    continue
                try:
                    entry = self._load(d / name, d.name, name[: -len(".json")])
                except FileNotFoundError:
                    continue  # removed by gc while we listed
                except _Bad as e:
                    report(e.bad)
                    continue
                yield entry

    def write(self, entry: IndexEntry) -> None:
        """Make ``entry`` visible: the last step of any publish (its blobs must be in place)."""
        atomic_write_bytes(self.path(entry.model_hex, entry.key), entry.to_bytes(), durable=True,
                           store_root=self.index_dir.parent)

    def remove(self, entry: IndexEntry) -> None:
        self.remove_file(self.path(entry.model_hex, entry.key))

    def remove_file(self, path: Path) -> None:
        """Remove an entry file (valid or damaged: gc only, under the exclusive store lock)."""
        unlink_quiet(path)
        try:
            path.parent.rmdir()  # only succeeds once the model has no entries
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
