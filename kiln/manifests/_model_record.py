"""Model records: what a Hub model ref resolved to, kept so a machine without its weights can use it.

A **model record** (``kiln.model-record/v2``, schema ``model_record.schema.json``) says that
the Hugging Face repository ``repo_id`` at ``commit`` holds exactly ``files`` (path, sha256,
size: every file that can change a build, as the model's tree listing has them), whose tree
digest is ``tree_digest``; the ref as given, the revision asked for, when it was resolved, and
config.json's bytes (as UTF-8 text, at most :data:`MAX_RECORD_CONFIG_BYTES`), which is all a
lookup needs to validate a spec without the weights, and the weights' tensor signature (v2;
null or absent in v1: not known), which with config.json gives the architecture digest a
weight-independent engine is keyed by (:mod:`kiln.models._architecture`). A **revision pointer**
(``kiln.model-revision/v1``) says that revision ``revision`` (a branch, a tag, main)
resolved to ``commit`` at ``resolved_at``. Records are indexed by (repo id, commit), pointers
by (repo id, revision) → commit (see :mod:`kiln.cache._model_records` for where they live).

Both are untrusted when read (a remote, or a local file anything may have written):
:meth:`ModelRecord.parse` bounds size and depth (:mod:`._json`), checks the published schema,
and then what the schema cannot say, each refusal an :class:`~kiln.errors.UnsafeManifestError`
naming the field:

* ``tree_digest`` must be the digest of ``files`` (a record that does not match its own files
  would key a lookup by a digest its files do not have: a wrong hit);
* ``config`` must be the bytes of the ``config.json`` the file list names (same sha256 and
  size), null only when there is none or it is larger than a record keeps;
* paths are safe relative paths, each listed once; repo id, revision and commit are matched
  whole (they become path components of the store and object keys of remotes).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..errors import UnsafeManifestError
from ._json import load_json
from ._jsonschema import SchemaChecker, shipped_schema
from ._manifest import safe_relpath

__all__ = ["MODEL_RECORD_SCHEMA", "REVISION_SCHEMA", "MAX_MODEL_RECORD_BYTES", "MAX_RECORD_CONFIG_BYTES",
           "MAX_REVISION_BYTES", "ModelRecord", "RevisionPointer", "model_tree_digest", "is_commit", "is_repo_id",
           "is_revision", "s3_listing_digest", "is_s3_repo"]

MODEL_RECORD_SCHEMA = "kiln.model-record/v2"  # v2 adds ``tensors``; v1 records are read (tensors unknown)
REVISION_SCHEMA = "kiln.model-revision/v1"
MAX_RECORD_CONFIG_BYTES = 1 << 20  # config.json is a few KiB; a larger one is not kept (lookups then need the model)
MAX_MODEL_RECORD_BYTES = 16 << 20  # the file list of a large repository (thousands of files) + the config
MAX_REVISION_BYTES = 4096
_COMMIT = re.compile(r"(?:[0-9a-f]{40}|[0-9a-f]{64})\Z")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(?:/[A-Za-z0-9][A-Za-z0-9_.\-]*)?\Z")
_REVISION = re.compile(r"[A-Za-z0-9_.\-/]{1,256}\Z")


def is_commit(text: object) -> bool:
    return isinstance(text, str) and bool(_COMMIT.match(text))


def is_repo_id(text: object) -> bool:
    return isinstance(text, str) and len(text) <= 256 and bool(_REPO.match(text))


def is_revision(text: object) -> bool:
    return isinstance(text, str) and bool(_REVISION.match(text))


def is_s3_repo(repo_id: str) -> bool:
    """An S3 model's repo id (``s3/<sha256 of bucket/prefix>``; :mod:`kiln.models._s3model`)."""
    return bool(re.match(r"s3/[0-9a-f]{64}\Z", repo_id))


def s3_listing_digest(objects: Iterable[tuple[str, str, int]]) -> str:
    """The "commit" of an S3 model: sha256 hex of the canonical list of (path, ETag, size), sorted by path."""
    listing = [[p, e, n] for p, e, n in sorted(objects, key=lambda f: f[0])]
    return hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()


def model_tree_digest(files: Iterable[tuple[str, str, int]]) -> str:
    """``sha256:<hex>`` of the canonical list of (path, sha256, size), sorted by path: the
    model's identity in build keys (:func:`kiln.models.resolve_model` computes it the same way)."""
    listing = [[p, s, n] for p, s, n in sorted(files, key=lambda f: f[0])]
    return "sha256:" + hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()


@functools.lru_cache(maxsize=2)
def _checker(name: str) -> SchemaChecker:
    return SchemaChecker(shipped_schema(name))


def _check_schema(data: Any, name: str, what: str) -> dict[str, Any]:
    error = _checker(name).first_error(data)
    if error is not None:
        raise UnsafeManifestError(f"{what} does not match its schema: {error}")
    assert isinstance(data, dict)
    return data


def _check_names(data: dict[str, Any], what: str) -> None:
    """The schema's patterns, matched whole (``$`` would let a trailing newline through)."""
    for name, ok in (("repo_id", is_repo_id), ("revision", is_revision), ("commit", is_commit)):
        if name in data and not ok(data[name]):
            raise UnsafeManifestError(f"{what}: {name} {data[name]!r} is not a valid {name.replace('_', ' ')}")


def _check_s3(doc: dict[str, Any], files: list[tuple[str, str, int]], etags: list[tuple[str, str]], what: str) -> None:
    """An S3 model's record names every file's ETag, and its commit is their listing digest (nothing else
    would tie the record to the objects it describes); any other record names none."""
    if not is_s3_repo(doc["repo_id"]):
        if etags:
            raise UnsafeManifestError(f"{what}: only an S3 model's record lists ETags")
        return
    if len(etags) != len(files):
        raise UnsafeManifestError(f"{what} of an S3 model does not list every file's ETag")
    tags = dict(etags)
    if s3_listing_digest((p, tags[p], n) for p, _s, n in files) != doc["commit"]:
        raise UnsafeManifestError(f"{what} of S3 model {doc['ref']!r}: its commit is not the digest of its files' "
                                  "ETags and sizes")


@dataclass(frozen=True)
class ModelRecord:
    """A parsed, checked model record (see the module docstring)."""

    ref: str
    repo_id: str
    revision: str
    commit: str
    files: tuple[tuple[str, str, int], ...]  # (path, sha256 hex, size), sorted by path
    tree_digest: str
    resolved_at: str
    config: bytes | None  # config.json's bytes; None: no config.json, or larger than MAX_RECORD_CONFIG_BYTES
    # An S3 model (repo id s3/…): every file's ETag, (path, etag) sorted; the commit is their listing digest.
    etags: tuple[tuple[str, str], ...] = ()
    # The weights' tensor signature (kiln.models._architecture): {"scheme", "digest", "count"}; None: not known.
    tensors: Mapping[str, Any] | None = None

    @classmethod
    def make(cls, *, ref: str, repo_id: str, revision: str, commit: str, files: Iterable[tuple[str, str, int]],
             resolved_at: str, config: bytes | None, etags: Iterable[tuple[str, str]] = (),
             tensors: Mapping[str, Any] | None = None) -> "ModelRecord":
        """A record of a model just resolved (its tree digest computed here); checked like a parsed one."""
        listing = tuple(sorted(files))
        kept = config if config is not None and len(config) <= MAX_RECORD_CONFIG_BYTES else None
        record = cls(ref, repo_id, revision, commit, listing, model_tree_digest(listing), resolved_at, kept,
                     tuple(sorted(etags)), dict(tensors) if tensors is not None else None)
        return cls.parse(record.to_bytes())  # one set of rules for what Kiln writes and what it reads

    @property
    def config_file(self) -> tuple[str, str, int] | None:
        return next((f for f in self.files if f[0] == "config.json"), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": MODEL_RECORD_SCHEMA,
            "ref": self.ref,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "tree_digest": self.tree_digest,
            "files": [self._file_json(p, s, n) for p, s, n in self.files],
            "resolved_at": self.resolved_at,
            "config": self.config.decode("utf-8") if self.config is not None else None,
            "tensors": dict(self.tensors) if self.tensors is not None else None,
        }

    def _file_json(self, path: str, sha256: str, size: int) -> dict[str, Any]:
        out: dict[str, Any] = {"path": path, "sha256": sha256, "size": size}
        etag = dict(self.etags).get(path)
        if etag is not None:
            out["etag"] = etag
        return out

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, indent=1, ensure_ascii=False).encode("utf-8")

    @classmethod
    def parse(cls, data: bytes, what: str = "model record") -> "ModelRecord":
        """A record from raw bytes: bounded, schema-checked, and consistent with its own files."""
        doc = _check_schema(load_json(data, what, max_bytes=MAX_MODEL_RECORD_BYTES), "model_record.schema.json", what)
        _check_names(doc, what)
        files = []
        etags: list[tuple[str, str]] = []
        seen: set[str] = set()
        for f in doc["files"]:
            try:
                path = safe_relpath(f["path"])
            except UnsafeManifestError as e:
                raise UnsafeManifestError(f"{what}: {e}") from None
            if path in seen:
                raise UnsafeManifestError(f"{what} lists the file {path!r} twice")
            seen.add(path)
            files.append((path, f["sha256"], int(f["size"])))
            if "etag" in f:
                etags.append((path, f["etag"]))
        files.sort()
        _check_s3(doc, files, etags, what)
        digest = model_tree_digest(files)
        if digest != doc["tree_digest"]:
            raise UnsafeManifestError(
                f"{what} of {doc['repo_id']}@{doc['commit'][:12]} does not match its own files: its tree digest is "
                f"{doc['tree_digest'][:19]}…, its file list hashes to {digest[:19]}…"
            )
        config = doc["config"].encode("utf-8") if doc["config"] is not None else None
        tensors = doc.get("tensors")  # absent in v1 records: not known
        record = cls(doc["ref"], doc["repo_id"], doc["revision"], doc["commit"], tuple(files), digest,
                     doc["resolved_at"], config, tuple(sorted(etags)), dict(tensors) if tensors else None)
        listed = record.config_file
        if config is not None:
            if listed is None:
                raise UnsafeManifestError(f"{what} holds a config but lists no config.json")
            if (hashlib.sha256(config).hexdigest(), len(config)) != (listed[1], listed[2]):
                raise UnsafeManifestError(f"{what}: its config is not the config.json its file list names "
                                          "(sha256 or size differ)")
        elif listed is not None and listed[2] <= MAX_RECORD_CONFIG_BYTES:
            raise UnsafeManifestError(f"{what} lists a config.json of {listed[2]} bytes but does not keep it")
        return record


@dataclass(frozen=True)
class RevisionPointer:
    """Revision ``revision`` of ``repo_id`` resolved to ``commit`` at ``resolved_at``."""

    repo_id: str
    revision: str
    commit: str
    resolved_at: str

    def to_json(self) -> dict[str, Any]:
        return {"schema": REVISION_SCHEMA, "repo_id": self.repo_id, "revision": self.revision,
                "commit": self.commit, "resolved_at": self.resolved_at}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, indent=1).encode()

    @classmethod
    def parse(cls, data: bytes, what: str = "model revision pointer") -> "RevisionPointer":
        doc = _check_schema(load_json(data, what, max_bytes=MAX_REVISION_BYTES), "model_revision.schema.json", what)
        _check_names(doc, what)
        return cls(doc["repo_id"], doc["revision"], doc["commit"], doc["resolved_at"])
