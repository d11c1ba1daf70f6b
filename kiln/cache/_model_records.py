"""Where model records live: ``models/`` in the store, the same keys on a remote.

Layout (the same relative keys locally under ``KILN_HOME/models/`` and on a remote under
``models/``)::

    models/<repo>/commits/<commit>.json              the model record of (repo id, commit)
    models/<repo>/revisions/<revision>/<commit>.json  a pointer: that revision resolved to that commit

``<repo>`` and ``<revision>`` are percent-encoded into one path component each (``acme%2Ftiny``,
``feature%2Fx``; a leading dot too), so no repo id or branch name can climb out of its
directory or collide with another's. Pointers are one file per (revision, commit), never
rewritten in place by another commit, so two machines resolving ``main`` to different commits
both land; the newest ``resolved_at`` is what ``main`` means offline.

Local files are written as every store file is (:func:`~kiln.cache._fsutil.atomic_write_bytes`:
temp name in the same directory, then rename; gc sweeps stale temps). Records are small and
**gc keeps them all**: a record is what lets a machine without the weights key the model's
artifacts, it may serve an entry of another store sharing the remote, and a thousand of them
are a few MB. Reading one (local or remote) parses it as untrusted data
(:meth:`~kiln.manifests._model_record.ModelRecord.parse`); one that fails is skipped with a
warning, never used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable
from urllib.parse import quote

from .._input import read_small_file, show_path
from .._warn import warn
from ..errors import KilnError, StoreError, UnsafeManifestError
from ..manifests._model_record import (
    MAX_MODEL_RECORD_BYTES,
    MAX_REVISION_BYTES,
    ModelRecord,
    RevisionPointer,
    is_commit,
)
from ._fsutil import atomic_write_bytes

if TYPE_CHECKING:  # annotations only: a remote's module is imported when one is opened
    from .remotes import Remote

__all__ = ["ModelRecordFiles", "record_key", "pointer_prefix", "pointer_key", "remote_model_record",
           "remote_revision_pointers", "push_model_records"]

BadReport = Callable[[str], None]


def _component(text: str) -> str:
    enc = quote(text, safe="-_.")
    return "%2E" + enc[1:] if enc.startswith(".") else enc


def record_key(repo_id: str, commit: str) -> str:
    return f"models/{_component(repo_id)}/commits/{commit}.json"


def pointer_prefix(repo_id: str, revision: str) -> str:
    return f"models/{_component(repo_id)}/revisions/{_component(revision)}/"


def pointer_key(p: RevisionPointer) -> str:
    return pointer_prefix(p.repo_id, p.revision) + f"{p.commit}.json"


class ModelRecordFiles:
    """The store's ``models/`` directory (``root`` is the store root: keys are relative to it)."""

    def __init__(self, store_root: Path) -> None:
        self.store_root = store_root
        self.dir = store_root / "models"

    def _path(self, key: str) -> Path:
        return self.store_root / key

    def _read(self, path: Path, limit: int) -> bytes | None:
        if not os.path.lexists(path):
            return None
        if path.is_symlink():
            raise StoreError(f"{show_path(path)} is a link, not a file Kiln wrote")
        return read_small_file(path, limit, "model record file", StoreError, "remove it (Kiln writes it again)")

    def get(self, repo_id: str, commit: str, on_bad: BadReport | None = None) -> ModelRecord | None:
        """The record of (repo id, commit) in this store, or None (absent, or refused: reported)."""
        if not is_commit(commit):
            return None
        path = self._path(record_key(repo_id, commit))
        try:
            data = self._read(path, MAX_MODEL_RECORD_BYTES)
            if data is None:
                return None
            record = ModelRecord.parse(data, f"model record {show_path(path)}")
        except (KilnError, OSError) as e:
            (on_bad or warn)(f"{e}; ignoring it (remove it: Kiln writes it again when it resolves the model)")
            return None
        if (record.repo_id, record.commit) != (repo_id, commit):
            (on_bad or warn)(f"model record {show_path(path)} describes {record.repo_id}@{record.commit[:12]}, "
                              "not the place it is stored at; ignoring it")
            return None
        return record

    def pointers(self, repo_id: str, revision: str, on_bad: BadReport | None = None) -> list[RevisionPointer]:
        """Every pointer of (repo id, revision) in this store, newest first."""
        d = self._path(pointer_prefix(repo_id, revision))
        try:
            names = sorted(os.listdir(d))
        except OSError:
            return []
        out = []
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                data = self._read(d / name, MAX_REVISION_BYTES)
                if data is None:
                    continue
                p = RevisionPointer.parse(data, f"model revision pointer {show_path(d / name)}")
            except (KilnError, OSError) as e:
                (on_bad or warn)(f"{e}; ignoring it")
                continue
            if (p.repo_id, p.revision, f"{p.commit}.json") == (repo_id, revision, name):
                out.append(p)
        return sorted(out, key=lambda p: p.resolved_at, reverse=True)

    def pointers_to(self, repo_id: str, commit: str) -> list[RevisionPointer]:
        """Every pointer of ``repo_id`` (any revision) to ``commit``: what a push publishes with its record."""
        base = self._path(f"models/{_component(repo_id)}/revisions")
        out: list[RevisionPointer] = []
        try:
            revs = sorted(os.listdir(base))
        except OSError:
            return out
        for rev_dir in revs:
            path = base / rev_dir / f"{commit}.json"
            try:
                data = self._read(path, MAX_REVISION_BYTES)
                if data is not None:
                    p = RevisionPointer.parse(data)
                    if pointer_key(p) == f"models/{_component(repo_id)}/revisions/{rev_dir}/{commit}.json":
                        out.append(p)  # it is what its place says
            except (KilnError, OSError):
                continue
        return out

    def put(self, record: ModelRecord) -> None:
        """Keep ``record``, unless an intact one of that commit is here already — except that one
        without the tensor signature yields to one of the same files with it (an older Kiln's record,
        or one kept by a target that needs no signature: an architecture key needs it)."""
        path = self._path(record_key(record.repo_id, record.commit))
        kept = self.get(record.repo_id, record.commit, on_bad=lambda _m: None)
        upgrade = kept is not None and kept.tensors is None and record.tensors is not None \
            and kept.tree_digest == record.tree_digest
        if kept is None or upgrade:
            atomic_write_bytes(path, record.to_bytes(), store_root=self.store_root)

    def put_pointer(self, pointer: RevisionPointer) -> None:
        """Record that the revision resolved to the commit, unless that is already the newest pointer of it.

        Re-resolving the same commit rewrites nothing (a `kiln key` on every start costs no
        write); a revision that moved back to an older commit gets that pointer's time renewed.
        """
        current = self.pointers(pointer.repo_id, pointer.revision, on_bad=lambda _m: None)
        if current and current[0].commit == pointer.commit:
            return
        atomic_write_bytes(self._path(pointer_key(pointer)), pointer.to_bytes(), store_root=self.store_root)

    def keep(self, record: ModelRecord, pointer: RevisionPointer | None) -> None:
        """Best effort: a read-only store, a full disk, a racing writer lose only the record."""
        try:
            self.put(record)
            if pointer is not None:
                self.put_pointer(pointer)
        except (KilnError, OSError):
            pass


# --------------------------------------------------------------------------- remote side


def remote_model_record(remote: Remote, repo_id: str, commit: str, on_bad: BadReport | None = None) -> ModelRecord | None:
    """The remote's record of (repo id, commit): None when absent or refused (reported); RemoteError
    when the remote cannot be read."""
    k = record_key(repo_id, commit)
    data = remote.get(k, MAX_MODEL_RECORD_BYTES)
    if data is None:
        return None
    try:
        record = ModelRecord.parse(data, f"model record {k} on {remote.describe()}")
    except UnsafeManifestError as e:
        (on_bad or warn)(f"{e}; refusing it (a damaged or hostile remote: push the artifact again from a good store)")
        return None
    if (record.repo_id, record.commit) != (repo_id, commit):
        (on_bad or warn)(f"model record {k} on {remote.describe()} describes {record.repo_id}@{record.commit[:12]}, "
                          "not the place it is stored at; refusing it")
        return None
    return record


def remote_revision_pointers(remote: Remote, repo_id: str, revision: str,
                             on_bad: BadReport | None = None) -> list[RevisionPointer]:
    """Every valid pointer of (repo id, revision) on the remote, newest first."""
    prefix = pointer_prefix(repo_id, revision)
    out = []
    for info in remote.list(prefix):
        name = info.key[len(prefix):]
        if "/" in name or not name.endswith(".json") or not is_commit(name[:-5]):
            continue
        data = remote.get(info.key, MAX_REVISION_BYTES)
        if data is None:
            continue
        try:
            p = RevisionPointer.parse(data, f"model revision pointer {info.key} on {remote.describe()}")
        except UnsafeManifestError as e:
            (on_bad or warn)(f"{e}; refusing it")
            continue
        if pointer_key(p) != info.key:
            (on_bad or warn)(f"model revision pointer {info.key} on {remote.describe()} describes "
                              f"{p.repo_id}@{p.revision} → {p.commit[:12]}, not the place it is stored at; refusing it")
            continue
        out.append(p)
    return sorted(out, key=lambda p: p.resolved_at, reverse=True)


def push_model_records(files: ModelRecordFiles, remote: Remote, repo_id: object, commit: object) -> int:
    """Upload the local record of (repo id, commit) and its revision pointers the remote lacks.

    Called by a push before the index entry (a reader that finds the entry finds the record).
    Returns how many objects were uploaded; nothing when this store holds no record of it (an
    artifact of a local directory, or built by an older Kiln).
    """
    if not isinstance(repo_id, str) or not is_commit(commit):
        return 0
    assert isinstance(commit, str)
    record = files.get(repo_id, commit, on_bad=lambda _m: None)
    if record is None:
        return 0
    sent = 0
    k = record_key(repo_id, commit)
    there = remote_model_record(remote, repo_id, commit, on_bad=lambda _m: None)
    # Absent or damaged: (re)place it. Without the tensor signature this record has (an older Kiln's):
    # replace it too, or a deployment resolving from it could not compute an architecture-keyed key.
    if there is None or (there.tensors is None and record.tensors is not None):
        remote.put(k, record.to_bytes())
        sent += 1
    for p in files.pointers_to(repo_id, commit):
        pk = pointer_key(p)
        if remote.stat(pk) is None:
            remote.put(pk, p.to_bytes())
            sent += 1
    return sent
