"""Model refs → model sources: where the files are, what their bytes are, one tree digest.

A model ref is a local directory or a Hugging Face Hub id ``org/name[@revision]``
(:mod:`kiln.models._refs` tells them apart). Hub ids resolve through huggingface_hub's cache
(offline with ``HF_HUB_OFFLINE=1``, the normal case on build machines without Hub access;
:mod:`kiln.models._hub`). The tree digest is sha256 over the canonical list of (path,
sha256, size) of every file that can change a build's output; it, never the model's name or
path, is what identifies weights in a build key.

Resolving is two steps so that bad input fails before any hashing: :func:`locate_model`
finds the directory (and :meth:`ModelLocation.config` reads config.json, a bounded read of a
JSON object), then :func:`resolve_model` hashes it.

What is hashed is the model's *listing* (:mod:`kiln.models._tree`, which defines the model's
tree and says which entries are refused): every file a build can read from the directory, links
followed within the tree, checked when the model is located, so that an unreadable entry, a
link out of the tree or a FIFO fails before config.json is parsed and long before any hashing.
A file that changed between listing and hashing is an error, not a hash of something else.

Hashing each byte once: in the HF cache, LFS files (the weights) are stored as blobs named by
their sha256, so that name is reused (for blobs of the snapshot's own repository folder only);
every other file is hashed through the store's :class:`~kiln.cache.HashMemo`.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._input import read_small_file, show_path
from ..cache import HashMemo
from ..errors import ModelError
from ..manifests._model_record import ModelRecord
from ._hub import hub_offline, hub_snapshot
from ._refs import missing_directory_error, parse_model_ref
from ._architecture import TensorSignature, local_signature
from ._tree import MODEL_FILE_IGNORES, ModelFile, TreeFile, TreeListing, scan_tree
from ._tree import tree_digest as _tree_digest  # the one digest of a file list (the Hub metadata path uses it too)

if TYPE_CHECKING:  # the Hub API and S3 halves are imported where a Hub id or an s3:// URI is resolved
    from ._hub_api import HubMetadata
    from ._s3model import S3Listing

__all__ = ["ModelFile", "ModelLocation", "ModelSource", "fetch_model_files", "locate_model", "read_config", "resolve_model",
           "parse_model_ref", "MODEL_FILE_IGNORES", "MAX_CONFIG_BYTES"]

MAX_CONFIG_BYTES = 16 << 20  # config.json: a few KiB in practice (large id2label maps: hundreds of KiB)
_JSON_KINDS = {list: "an array", str: "a string", type(None): "null", bool: "a boolean", int: "a number", float: "a number"}
_SHA256_HEX = re.compile(r"[0-9a-f]{64}\Z")


def read_config(model_dir: Path) -> dict[str, Any]:
    """config.json of ``model_dir`` as a dict ({} when there is none, e.g. a GGUF-only directory).

    Raises ModelError naming the file when it is not a regular file of at most
    :data:`MAX_CONFIG_BYTES` holding one JSON object.
    """
    cfg = model_dir / "config.json"
    if not os.path.lexists(cfg):
        return {}
    raw = read_small_file(cfg, MAX_CONFIG_BYTES, "model config", ModelError, _CONFIG_FIX)
    return parse_config(raw, show_path(cfg))


_CONFIG_FIX = "re-download the model, or fix config.json (a JSON object of the model's settings)"


def parse_config(raw: bytes, shown: str) -> dict[str, Any]:
    """config.json's bytes as a dict; ModelError naming ``shown`` (where they came from) unless one JSON object."""
    fix = _CONFIG_FIX
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ModelError(f"model config {shown} is not valid JSON ({reason}); {fix}.") from None
    if not isinstance(data, dict):
        kind = _JSON_KINDS.get(type(data), type(data).__name__)
        raise ModelError(
            f"model config {shown} holds {kind}, not a JSON object; a config.json is an object such as "
            f'{{"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096, ...}}: {fix}.'
        )
    return data


def _record_config(record: ModelRecord, shown: str) -> dict[str, Any]:
    if record.config is not None:
        return parse_config(record.config, shown)
    if record.config_file is None:
        return {}
    raise ModelError(f"{shown} is larger than a model record keeps, and the model's files are not on this machine; "
                     f"download {record.repo_id}@{record.commit} (`hf download {record.repo_id} --revision "
                     f"{record.commit}`) to look it up.")


@dataclass(frozen=True)
class ModelLocation:
    """Where a model ref's files are, before any of them is hashed."""

    ref: str
    kind: str  # "local" or "hub"
    path: Path | None  # None: resolved from a model record, no file of it is here (record, recorded_in)
    repo_id: str | None = None
    revision: str | None = None
    # What resolve_model hashes (listed and checked by locate_model); None: listed when hashed.
    listing: TreeListing | None = field(default=None, compare=False, repr=False)
    # A Hub id resolved from the Hub's file metadata (nothing to hash; ``path`` holds its small files only).
    metadata: HubMetadata | None = field(default=None, compare=False, repr=False)
    # A Hub id resolved from a model record (:mod:`._recorded`): where it was found, and the note saying how.
    record: ModelRecord | None = field(default=None, compare=False, repr=False)
    recorded_in: str | None = None
    note: str | None = None
    # An s3:// model (:mod:`._s3model`): its listing, and its directory in the store's model cache.
    s3: S3Listing | None = field(default=None, compare=False, repr=False)
    s3_cache: Path | None = None

    @property
    def config_path(self) -> Path | str:
        """config.json's path (a recorded model: what to call the record's copy in messages)."""
        if self.path is None:
            assert self.record is not None
            if self.s3 is not None:
                return f"config.json of {self.ref} (model record in {self.recorded_in})"
            return f"config.json of {self.record.repo_id}@{self.record.commit[:12]} (model record in {self.recorded_in})"
        return self.path / "config.json"

    def config(self) -> dict[str, Any]:
        """config.json as a dict (see :func:`read_config`; a recorded model: the record's copy)."""
        if self.path is None:
            assert self.record is not None
            return _record_config(self.record, str(self.config_path))
        return read_config(self.path)


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: its directory, every file that can change a build, and the tree digest."""

    ref: str
    kind: str  # "local" or "hub"
    path: Path | None  # None: resolved from a model record (record, recorded_in); see require_local
    files: tuple[ModelFile, ...]
    tree_digest: str  # "sha256:<hex>"
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None
    # False: resolved from the Hub's metadata, ``path`` holds only the small files; a build
    # calls fetch_model_files first.
    files_local: bool = True
    record: ModelRecord | None = field(default=None, compare=False, repr=False)
    recorded_in: str | None = None
    s3: S3Listing | None = field(default=None, compare=False, repr=False)
    # Every tensor's name, dtype and shape (:mod:`._architecture`); None: not known, and signature_note says why.
    signature: TensorSignature | None = None
    signature_note: str | None = None

    @property
    def config_path(self) -> Path:
        return self.require_local("read config.json") / "config.json"

    def config(self) -> dict[str, Any]:
        """config.json as a dict ({} when the model has none, e.g. a GGUF-only directory)."""
        if self.path is None or (self.record is not None and not self.files_local):
            assert self.record is not None
            return _record_config(self.record, f"config.json of {self.ref} (model record in {self.recorded_in})")
        return read_config(self.path)

    def require_local(self, action: str = "build") -> Path:
        """The model's directory; for a model resolved from a record, a ModelError saying its files are not here."""
        if self.path is not None:
            return self.path
        raise ModelError(
            f"cannot {action}: the files of model {self.ref} ({self.repo_id}@{self.commit}) are not on this machine: "
            f"it was resolved from a model record in {self.recorded_in}, which identifies the weights but does not "
            f"hold them; download them (`hf download {self.repo_id} --revision {self.commit}` where the Hub is "
            "reachable, sharing HF_HOME, or unset HF_HUB_OFFLINE) or pass a local directory, then run again; a "
            "deployment of an artifact already built needs no weights (`kiln ensure` without --on-miss build)."
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "kind": self.kind,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "tree_digest": self.tree_digest,
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files],
            "tensors": self.signature.to_json() if self.signature else None,
        }


def _lfs_sha256(f: TreeFile, tree: Path) -> str | None:
    """In an HF cache snapshot, LFS files link to blobs of their repository named by their sha256."""
    if f.real.parent != tree / "blobs" or not _SHA256_HEX.match(f.real.name):
        return None
    return f.real.name


def _sha256(f: TreeFile, memo: HashMemo) -> str:
    """The memoised sha256 of a listed file, refusing one replaced since it was listed.

    The stat right before hashing keeps a file swapped for a FIFO since the listing from
    being opened by the hasher (which would wait for a writer).
    """
    try:
        st = os.stat(f.real)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != f.ident:
            raise ModelError(f"model file {show_path(f.path)} changed while Kiln read the model directory; "
                             "run again once nothing is writing to it.")
        return memo.sha256(f.real)
    except FileNotFoundError:
        raise ModelError(f"model file {show_path(f.path)} disappeared while Kiln read the model directory; "
                         "run again once nothing is writing to it.") from None
    except OSError as e:
        raise ModelError(f"cannot read model file {show_path(f.path)}: {e.strerror}; make it readable or "
                         "remove it from the model directory.") from None


def _hash_tree(listing: TreeListing, memo: HashMemo, *, trust_lfs_names: bool) -> list[ModelFile]:
    files = []
    for f in listing.files:
        digest = _lfs_sha256(f, listing.root) if trust_lfs_names else None
        files.append(ModelFile(f.rel, digest or _sha256(f, memo), f.size))
    return files


def locate_model(ref: str, *, signature: bool = True) -> ModelLocation:
    """Find a model ref's directory (a Hub id: its snapshot, downloaded unless offline) and list
    its files, checked (:func:`~kiln.models._tree.scan_tree`); no hashing."""
    kind, where, revision = parse_model_ref(ref)
    assert where is not None
    if kind == "s3":  # no store given: downloaded into the default store's model cache, no record consulted
        from ..cache import Store
        from ._s3model import list_s3_model

        listing = list_s3_model(where)
        return s3_download_location(ref, listing, listing.cache_dir(Store(trust=None).s3_models_dir))
    if kind == "local":
        root = Path(where)
        if not root.is_dir():
            raise missing_directory_error(ref.strip())
        real = root.resolve()
        return ModelLocation(str(real), "local", real, listing=scan_tree(real))
    return _locate_hub(ref, where, revision, signature)


def s3_download_location(ref: str, listing: S3Listing, cache: Path) -> ModelLocation:
    """An s3:// model downloaded into ``cache`` (its directory in the model cache), listed for hashing."""
    from ._s3model import download_s3_model

    path = download_s3_model(listing, cache)
    return ModelLocation(ref.strip(), "s3", path, repo_id=listing.repo_id, listing=scan_tree(path), s3=listing,
                         s3_cache=path)


def _locate_hub(ref: str, repo_id: str, revision: str | None, signature: bool = True) -> ModelLocation:
    """A Hub id's location. Online, unless the cache holds its complete snapshot, the Hub's file
    metadata identifies it and only its small files are downloaded (:mod:`._hub_api`: same
    files, same digest as the snapshot); offline, the cached snapshot."""
    from ._hub_api import HubMetadata, hub_metadata_or_snapshot

    found = hub_snapshot(repo_id, revision) if hub_offline() else \
        hub_metadata_or_snapshot(repo_id, revision, read_config, signature)
    if isinstance(found, HubMetadata):
        return ModelLocation(ref, "hub", found.path, repo_id=repo_id, revision=revision, metadata=found)
    return ModelLocation(ref, "hub", found, repo_id=repo_id, revision=revision, listing=scan_tree(found))


def resolve_model(ref: str | ModelLocation, memo: HashMemo | None = None) -> ModelSource:
    """Locate (unless given a :class:`ModelLocation`) and hash a model: its files, tree digest and tensor signature."""
    memo = memo or HashMemo(None)
    loc = ref if isinstance(ref, ModelLocation) else locate_model(ref)
    if loc.s3 is not None:
        return _resolve_s3(loc, memo)
    if loc.record is not None:  # resolved from a model record (._recorded): nothing here to hash
        r = loc.record
        return ModelSource(loc.ref, "hub", None, tuple(ModelFile(*f) for f in r.files), r.tree_digest,
                           repo_id=r.repo_id, revision=loc.revision or "main", commit=r.commit, record=r,
                           recorded_in=loc.recorded_in, **_recorded_signature(r, loc.recorded_in))
    assert loc.path is not None  # every other location has a directory
    if loc.metadata is not None:
        meta = loc.metadata
        return ModelSource(loc.ref, "hub", loc.path, meta.files, meta.tree_digest, repo_id=loc.repo_id,
                           revision=loc.revision or "main", commit=meta.commit, files_local=False,
                           signature=meta.signature, signature_note=meta.signature_note)
    files = _hash_tree(loc.listing or scan_tree(loc.path), memo, trust_lfs_names=loc.kind == "hub")
    signature = _signature(loc.path, files)
    if loc.kind == "local":
        return ModelSource(loc.ref, "local", loc.path, tuple(files), _tree_digest(files), **signature)
    return ModelSource(
        loc.ref, "hub", loc.path, tuple(files), _tree_digest(files),
        repo_id=loc.repo_id, revision=loc.revision or "main", commit=loc.path.name, **signature,
    )


def _signature(root: Path, files: list[ModelFile]) -> dict[str, Any]:
    """ModelSource's signature fields for a model whose files are here (safetensors headers read)."""
    signature, why = local_signature(root, [f.path for f in files])
    return {"signature": signature, "signature_note": why}


def _recorded_signature(record: ModelRecord, where: str | None) -> dict[str, Any]:
    signature = TensorSignature.from_record(record.tensors)
    why = None if signature else (f"its model record in {where} lists no tensors (written by an older Kiln, or the "
                                  "model has no safetensors weights)")
    return {"signature": signature, "signature_note": why}


def _resolve_s3(loc: ModelLocation, memo: HashMemo) -> ModelSource:
    """An s3:// model: from its record (files_local False: a build downloads them), or its downloaded files
    hashed, which must be exactly the objects listed (the tree digest is of what S3 holds, nothing else)."""
    listing = loc.s3
    assert listing is not None and loc.s3_cache is not None
    r = loc.record
    if r is not None:
        return ModelSource(loc.ref, "s3", loc.s3_cache, tuple(ModelFile(*f) for f in r.files), r.tree_digest,
                           repo_id=r.repo_id, commit=r.commit, files_local=False, record=r,
                           recorded_in=loc.recorded_in, s3=listing, **_recorded_signature(r, loc.recorded_in))
    assert loc.path is not None
    files = _hash_tree(loc.listing or scan_tree(loc.path), memo, trust_lfs_names=False)
    _check_s3_files(listing, files, loc.path)
    return ModelSource(loc.ref, "s3", loc.path, tuple(files), _tree_digest(files), repo_id=listing.repo_id,
                       commit=listing.commit, s3=listing, **_signature(loc.path, files))


def _check_s3_files(listing: S3Listing, files: list[ModelFile], path: Path) -> None:
    if sorted((f.path, f.size) for f in files) != sorted((o.rel, o.size) for o in listing.objects):
        raise ModelError(f"the S3 model cache {show_path(path)} of {listing.uri} does not hold exactly the objects "
                         "listed in the bucket (a file added, removed or changed there); delete that directory and "
                         "run again.")


def fetch_model_files(model: ModelSource, memo: HashMemo | None = None) -> None:
    """Download the files a model resolved from Hub metadata left on the Hub (a build reads them).

    The snapshot of the resolved commit lands where the small files already are; it is then
    hashed as any snapshot is, and must give the digest the key was computed from.
    """
    if model.files_local:
        return
    if model.s3 is not None:  # an s3:// model identified by its record: download it now, of the recorded bytes
        from ._s3model import download_s3_model

        assert model.path is not None
        download_s3_model(model.s3, model.path, {f.path: f.sha256 for f in model.files})
        files = _hash_tree(scan_tree(model.path), memo or HashMemo(None), trust_lfs_names=False)
        _check_s3_files(model.s3, files, model.path)
        if _tree_digest(files) != model.tree_digest:
            raise ModelError(f"the files of model {model.ref} in {show_path(model.path)} are not the ones its model "
                             f"record lists (tree digest {_tree_digest(files)}, recorded {model.tree_digest}); delete "
                             "that directory and run again.")
        _check_signature(model, model.path, files)
        return
    assert model.repo_id is not None and model.commit is not None
    snapshot = hub_snapshot(model.repo_id, model.commit)
    files = _hash_tree(scan_tree(snapshot), memo or HashMemo(None), trust_lfs_names=True)
    if Path(os.path.realpath(snapshot)) != Path(os.path.realpath(model.path)) or _tree_digest(files) != model.tree_digest:
        raise ModelError(
            f"the files downloaded for model {model.repo_id}@{model.commit} ({show_path(snapshot)}) are not the ones "
            f"the Hub's metadata listed (tree digest {_tree_digest(files)}, expected {model.tree_digest}); delete that "
            "snapshot from the Hugging Face cache and run again."
        )
    _check_signature(model, snapshot, files)


def _check_signature(model: ModelSource, root: Path, files: list[ModelFile]) -> None:
    """The downloaded weights' headers must give the signature the key was computed from (it came from
    ranged header reads, or a record): the same bytes by tree digest, so only a lying source differs."""
    if model.signature is None:
        return
    found, _why = local_signature(root, [f.path for f in files])
    if found != model.signature:
        raise ModelError(f"the weights downloaded for model {model.ref} ({show_path(root)}) have tensor signature "
                         f"{found.digest[:19] if found else 'none'}…, not the {model.signature.digest[:19]}… the key was "
                         "computed from (the source's headers or its model record lie); delete the download and run "
                         "again, or check the source.")
