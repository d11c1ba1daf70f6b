"""Hub ids from model records: keeping them when a model resolves, using them when its files are not here.

**Keeping** (:func:`keep_model_record`): every Hub id resolved from its snapshot is recorded in
the store (:class:`~kiln.manifests._model_record.ModelRecord`: commit, files, tree digest,
config.json; and a pointer from the revision asked for to that commit), best effort — a
read-only store resolves as well, it just keeps nothing. A push publishes the record with
the artifacts that use it.

**Using** (:func:`locate_or_recall`, the one seam between a model ref and the records): a Hub
id whose snapshot is not in the local HF cache, while the Hub is offline or unreachable
(:class:`~kiln.models._hub.SnapshotUnavailable`), is resolved from records, the local store's
first, then the remote's (a record found there is kept locally, so the next resolution needs
no remote):

* ``org/name@<commit>`` (40 or 64 hex digits) is exact: the record of that commit, or nothing;
* a branch or tag (none means ``main``) is the commit of its newest pointer (local first, the
  remote only when the store has none), with a note naming the commit, when it was resolved
  and how to pin it; ``strict=True`` (``--strict-revision``, ``KILN_STRICT_REVISION=1``) refuses
  instead, because a branch may have moved since;
* nothing found: one ModelNotFoundError, the snapshot's own message (what to do about the Hub)
  followed by every place tried (the HF cache, the local records, the remote's or that none is
  configured).

An ``s3://`` model (:func:`locate_s3`) is identified by its listing (:mod:`._s3model`): the record
of (its repo id, the digest of its objects' ETags and sizes), local then remote, or, with none,
its download into the store's model cache, hashed (and recorded, with every file's ETag).

A Hub model resolved from a record has no directory here (``ModelSource.path`` is None): key,
lookup and fetch work; a build stops at :meth:`~kiln.models.ModelSource.require_local`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

from .._input import read_small_file, show_path
from ..cache import Store, remote_model_record, remote_revision_pointers
from ..errors import KilnError, ModelError, ModelNotFoundError, RemoteError
from ..manifests import utc_now
from ..manifests._model_record import MAX_RECORD_CONFIG_BYTES, ModelRecord, RevisionPointer, is_commit, is_repo_id
from ._hub import SnapshotUnavailable
from ._refs import parse_model_ref
from ._resolve import ModelLocation, ModelSource, locate_model, s3_download_location

if TYPE_CHECKING:  # annotations only: remotes and the S3 half are imported where they are used
    from ..cache import Remote
    from ._s3model import S3Listing

__all__ = ["locate_or_recall", "locate_s3", "keep_model_record", "strict_revision_from_env", "RemoteOpener"]

RemoteOpener = Callable[[], "Remote | None"]
_TRUE = {"1", "true", "yes", "on"}


def strict_revision_from_env() -> bool:
    return os.environ.get("KILN_STRICT_REVISION", "").strip().lower() in _TRUE


def keep_model_record(store: Store, model: ModelSource) -> None:
    """Record a Hub model just resolved from its snapshot (best effort; see the module docstring)."""
    if model.s3 is not None:
        _keep_s3_record(store, model)
        return
    if model.kind != "hub" or model.path is None or not is_repo_id(model.repo_id) or not is_commit(model.commit):
        return
    assert model.repo_id is not None and model.commit is not None
    config: bytes | None = None
    listed = next((f for f in model.files if f.path == "config.json"), None)
    try:
        if listed is not None and listed.size <= MAX_RECORD_CONFIG_BYTES:
            config = read_small_file(model.path / "config.json", MAX_RECORD_CONFIG_BYTES, "model config", ModelError,
                                     "re-download the model")
        now = utc_now()
        record = ModelRecord.make(ref=model.ref, repo_id=model.repo_id, revision=model.revision or "main",
                                  commit=model.commit, files=((f.path, f.sha256, f.size) for f in model.files),
                                  resolved_at=now, config=config, tensors=_tensors(model))
    except KilnError:
        return  # a config that changed since it was hashed, a name no record can hold: nothing kept
    if record.tree_digest != model.tree_digest:
        return
    if record.tensors is None:  # never replace a record that knows the tensors with one that does not
        kept = store.model_records.get(model.repo_id, model.commit, on_bad=lambda _m: None)
        if kept is not None and kept.tensors is not None and kept.tree_digest == record.tree_digest:
            record = kept
    revision = model.revision or "main"
    pointer = None if is_commit(revision) else RevisionPointer(model.repo_id, revision, model.commit, now)
    store.model_records.keep(record, pointer)


def _tensors(model: ModelSource) -> dict[str, Any] | None:
    """What a record keeps of the model's tensor signature (with config.json: its architecture digest)."""
    return model.signature.to_json() if model.signature is not None else None


def _keep_s3_record(store: Store, model: ModelSource) -> None:
    """Record an s3:// model just downloaded and hashed: its files' sha256s, keyed by their ETags and sizes."""
    if model.record is not None or model.path is None or model.s3 is None or model.commit is None:
        return  # identified by a record already: nothing new to say
    assert model.repo_id is not None
    listed = next((f for f in model.files if f.path == "config.json"), None)
    try:
        config = None
        if listed is not None and listed.size <= MAX_RECORD_CONFIG_BYTES:
            config = read_small_file(model.path / "config.json", MAX_RECORD_CONFIG_BYTES, "model config", ModelError,
                                     "delete the S3 model cache directory and run again")
        record = ModelRecord.make(ref=model.ref, repo_id=model.repo_id, revision="s3", commit=model.commit,
                                  files=((f.path, f.sha256, f.size) for f in model.files), resolved_at=utc_now(),
                                  config=config, etags=model.s3.etags, tensors=_tensors(model))
    except KilnError:
        return
    if record.tree_digest == model.tree_digest:
        store.model_records.keep(record, None)


def _record_from_checksums(listing: S3Listing) -> ModelRecord | None:
    """A record of an S3 model from S3's full-object SHA-256 checksums (config.json read, nothing else), or None."""
    from ._s3model import read_s3_object, s3_sha256s, s3_signature

    sums = s3_sha256s(listing)
    if sums is None:
        return None
    config = next((o for o in listing.objects if o.rel == "config.json"), None)
    data = None
    if config is not None:
        if config.size > MAX_RECORD_CONFIG_BYTES:
            return None  # a lookup needs the config: download the model instead
        data = read_s3_object(listing, "config.json", sums["config.json"])
    signature, _why = s3_signature(listing, sums)  # the headers by ranged GETs: what an architecture key needs
    try:
        return ModelRecord.make(ref=listing.uri, repo_id=listing.repo_id, revision="s3", commit=listing.commit,
                                files=((o.rel, sums[o.rel], o.size) for o in listing.objects), resolved_at=utc_now(),
                                config=data, etags=listing.etags,
                                tensors=signature.to_json() if signature is not None else None)
    except KilnError:
        return None  # a key no record can hold (not a safe relative path): download and hash instead


def locate_s3(ref: str, *, store: Store, remote: RemoteOpener | None) -> ModelLocation:
    """An s3:// model's location: its record (local, then the remote's), else its download, hashed later."""
    from ._s3model import list_s3_model

    listing = list_s3_model(ref)
    cache = listing.cache_dir(store.s3_models_dir)
    repo_id, commit = listing.repo_id, listing.commit
    where = f"the local store ({show_path(store.root)})"
    record = store.model_records.get(repo_id, commit)
    if (record is None or record.tensors is None) and remote is not None:  # none here, or an older Kiln's
        try:
            rem = remote()
            theirs = remote_model_record(rem, repo_id, commit) if rem is not None else None
        except KilnError:
            theirs = None  # an unreachable remote: the model is downloaded and hashed instead
        if theirs is not None and (record is None or theirs.tensors is not None):
            assert rem is not None
            record, where = theirs, rem.describe()
            store.model_records.keep(record, None)
    if record is not None and record.tensors is None:  # an older Kiln's: S3's checksums may give the signature
        fuller = _record_from_checksums(listing)
        if fuller is not None and fuller.tensors is not None and fuller.tree_digest == record.tree_digest:
            record, where = fuller, "S3's SHA-256 checksums of its objects"
            store.model_records.keep(record, None)
    if record is None:
        record = _record_from_checksums(listing)
        if record is not None:
            where = "S3's SHA-256 checksums of its objects"
            store.model_records.keep(record, None)  # the next lookup needs no HEAD per object
    if record is not None:
        note = (f"model {listing.uri} identified by its model record in {where} (every object's ETag and size "
                "match what Kiln downloaded)")
        return ModelLocation(ref.strip(), "s3", None, repo_id=repo_id, record=record, recorded_in=where, note=note,
                             s3=listing, s3_cache=cache)
    return s3_download_location(ref, listing, cache)


def locate_or_recall(ref: str, *, store: Store, remote: RemoteOpener | None = None,
                     strict: bool | None = None, signature: bool = True) -> ModelLocation:
    """:func:`~kiln.models.locate_model`, or for a Hub id not here, the location its model record gives;
    an s3:// model: :func:`locate_s3`. ``signature`` False: a Hub id resolved online from metadata
    skips reading its weights' headers (the target's engines hold their weights)."""
    if isinstance(ref, str) and ref.strip().startswith("s3://"):
        parse_model_ref(ref)  # a malformed URI is a SpecError before any S3 call
        return locate_s3(ref, store=store, remote=remote)
    try:
        return locate_model(ref, signature=signature)
    except SnapshotUnavailable as e:
        kind, repo_id, revision = parse_model_ref(ref)
        if kind != "hub" or repo_id is None:
            raise
        return _recall(ref.strip(), repo_id, revision, store=store, remote=remote,
                       strict=strict_revision_from_env() if strict is None else strict, tried=e.tried, cause=str(e))


def _location(ref: str, record: ModelRecord, revision: str | None, where: str, note: str) -> ModelLocation:
    return ModelLocation(ref, "hub", None, repo_id=record.repo_id, revision=revision, record=record,
                         recorded_in=where, note=note)


def _recall(ref: str, repo_id: str, revision: str | None, *, store: Store, remote: RemoteOpener | None,
            strict: bool, tried: str, cause: str) -> ModelLocation:
    rev = revision or "main"
    local_where = f"the local store ({show_path(store.root)})"
    attempts = [tried]
    rem: Remote | None = None
    remote_failed: str | None = None
    if remote is not None:
        try:
            rem = remote()
        except KilnError as e:
            remote_failed = str(e)
    if not is_repo_id(repo_id):
        attempts.append("model records (none can exist: the repo id is not one a record holds)")
        raise _nothing(ref, repo_id, rev, attempts, cause)
    if is_commit(rev):  # exact: that commit's record or nothing
        record = store.model_records.get(repo_id, rev)
        if record is not None:
            record, where = _with_tensors(record, local_where, rem, store)
            return _location(ref, record, rev, where, _exact_note(record, where))
        attempts.append(f"model records in {local_where} (no record of commit {rev[:12]})")
        if rem is not None:
            try:
                record = remote_model_record(rem, repo_id, rev)
            except RemoteError as e:
                attempts.append(f"model records on {rem.describe()} (unreadable: {e})")
            else:
                if record is not None:
                    store.model_records.keep(record, None)
                    return _location(ref, record, rev, rem.describe(), _exact_note(record, rem.describe()))
                attempts.append(f"model records on {rem.describe()} (no record of commit {rev[:12]})")
        else:
            attempts.append(_no_remote(remote_failed))
        raise _nothing(ref, repo_id, rev, attempts, cause)
    # A branch or tag: the newest pointer, local first.
    for p in store.model_records.pointers(repo_id, rev):
        record = store.model_records.get(repo_id, p.commit)
        if record is not None:
            record, where = _with_tensors(record, local_where, rem, store)
            return _moved(ref, record, p, where, strict)
    attempts.append(f"model records in {local_where} (none for {repo_id}@{rev})")
    if rem is None:
        attempts.append(_no_remote(remote_failed))
        raise _nothing(ref, repo_id, rev, attempts, cause)
    try:
        for p in remote_revision_pointers(rem, repo_id, rev):
            local = store.model_records.get(repo_id, p.commit)
            record = local if local is not None and local.tensors is not None else \
                remote_model_record(rem, repo_id, p.commit) or local
            if record is not None:
                location = _moved(ref, record, p, rem.describe(), strict)
                store.model_records.keep(record, p)
                return location
    except RemoteError as e:
        attempts.append(f"model records on {rem.describe()} (unreadable: {e})")
        raise _nothing(ref, repo_id, rev, attempts, cause) from None
    attempts.append(f"model records on {rem.describe()} (none for {repo_id}@{rev})")
    raise _nothing(ref, repo_id, rev, attempts, cause)


def _with_tensors(record: ModelRecord, where: str, rem: Remote | None, store: Store) -> tuple[ModelRecord, str]:
    """A local record without the tensor signature (an older Kiln's, or kept by a target that needs
    none) is replaced by the remote's record of the same files where that one has it: without it an
    architecture-keyed engine's key cannot be computed, and the lookup would miss."""
    if record.tensors is not None or rem is None:
        return record, where
    try:
        better = remote_model_record(rem, record.repo_id, record.commit, on_bad=lambda _m: None)
    except RemoteError:
        return record, where
    if better is None or better.tensors is None or better.tree_digest != record.tree_digest:
        return record, where
    store.model_records.keep(better, None)
    return better, rem.describe()


def _exact_note(record: ModelRecord, where: str) -> str:
    return (f"model {record.repo_id}@{record.commit[:12]} resolved from its model record in {where} (its files are "
            "not on this machine)")


def _moved(ref: str, record: ModelRecord, p: RevisionPointer, where: str, strict: bool) -> ModelLocation:
    """The location of a branch or tag's recorded commit, with the note; or, strict, the refusal."""
    pin = f"{record.repo_id}@{record.commit}"
    if strict:
        raise ModelNotFoundError(
            f"model {ref}: revision {p.revision} is a branch or tag, and --strict-revision (KILN_STRICT_REVISION=1) "
            f"does not resolve those from model records (it may have moved since); the newest record, in {where}, "
            f"says {p.revision} was commit {record.commit} (resolved {p.resolved_at}): pin it as {pin}, or "
            "drop --strict-revision."
        )
    note = (f"model {record.repo_id}@{p.revision} is not on this machine: resolved {p.revision} to commit "
            f"{record.commit}, as recorded {p.resolved_at} in {where} (the branch may have moved since); pin it "
            f"with {pin}, or pass --strict-revision to refuse this")
    return _location(ref, record, p.revision, where, note)


def _no_remote(failed: str | None) -> str:
    if failed:
        return f"the remote's model records (it could not be opened: {failed})"
    return "no remote's model records (none configured: --remote URL or KILN_REMOTE)"


def _nothing(ref: str, repo_id: str, rev: str, attempts: list[str], cause: str) -> ModelNotFoundError:
    """The snapshot's own error (what to do about the Hub), then every place tried for a record."""
    return ModelNotFoundError(
        f"{cause.rstrip('.')}. No model record resolves it either; tried: {'; '.join(attempts)}. A build pushed to "
        "a remote carries its model record: pass that remote (--remote URL or KILN_REMOTE) to deploy from it."
    )
