"""S3 model URIs: ``s3://bucket/prefix/`` listed, identified and downloaded into the store's model cache.

**Identity.** An S3 listing gives each object's key, size and ETag, not its sha256 (an ETag is
an MD5 for a plain upload, something else for multipart or KMS uploads), so the name and the
listing never key a build by themselves. The listing's digest (sha256 over the canonical list of
(path, ETag, size) of the model's files, the selection rules of :mod:`._tree` applied to the
keys below the prefix) is the S3 model's **commit**; its **repo id** is ``s3/<sha256 of
bucket/prefix>``. A model record of (repo id, commit) (:mod:`kiln.manifests._model_record`,
with every file's ETag) says which sha256s those exact objects had when Kiln downloaded them:
a lookup with that record needs no download. Any changed object has a new ETag, so a new
commit: the old record does not match, and the old engine is never used. With no record, the
model is identified by S3's own SHA-256 checksums where every object has a full-object one
(:func:`s3_sha256s`: ``ChecksumSHA256`` of a HEAD with ``ChecksumMode=ENABLED`` and ``If-Match``
on the listed ETag; a multipart upload's composite checksum, a checksum of part checksums
marked ``COMPOSITE`` or ``…-N``, is not a file digest and is not used), downloading only
config.json; otherwise it is downloaded and hashed, as a build would. Either way a record is kept.

**Downloads** go to ``KILN_HOME/s3-models/<repo>/<commit>/``: into ``<commit>.partial/``
first, each object with ``If-Match: <ETag>`` (bytes of another version are refused) into a
``.kiln-part`` file, size (and sha256 when a record gives it) checked, then renamed; the
directory is renamed into place once every file is there. An interrupted download resumes:
files already in the partial directory with the right size (and sha256) are kept.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .._input import show, show_path
from .._warn import say
from ..errors import KilnError, ModelError, SpecError
from ..manifests._model_record import s3_listing_digest
from ._architecture import TensorSignature, signature_of, weight_files
from ._safetensors import INDEX_FILE, MAX_INDEX_BYTES, header_length, parse_header
from ._tree import ignored

__all__ = ["S3Object", "S3Listing", "parse_s3_uri", "list_s3_model", "download_s3_model", "is_s3_uri", "s3_sha256s",
           "read_s3_object"]

_MAX_OBJECTS = 100_000  # the tree's own bound (MAX_TREE_ENTRIES)
_CHUNK = 1 << 20
_PART = ".kiln-part"


def is_s3_uri(text: object) -> bool:
    return isinstance(text, str) and text.strip().startswith("s3://")


def parse_s3_uri(text: str) -> tuple[str, str]:
    """(bucket, prefix ending in / or empty) of ``s3://bucket/prefix/``; SpecError when it names no bucket."""
    parsed = urlparse(text.strip())
    if not parsed.netloc or parsed.query or parsed.fragment or parsed.params:
        raise SpecError(f"model {show(text)} is not an S3 model URI; write s3://BUCKET/PREFIX/ (no query).")
    prefix = parsed.path.strip("/")
    return parsed.netloc, prefix + "/" if prefix else ""


@dataclass(frozen=True)
class S3Object:
    rel: str  # relative to the prefix: the model file's path
    key: str
    etag: str
    size: int


@dataclass(frozen=True)
class S3Listing:
    """The model files under an S3 prefix, as listed (see the module docstring)."""

    uri: str
    bucket: str
    prefix: str
    objects: tuple[S3Object, ...]  # sorted by rel

    @property
    def repo_id(self) -> str:
        return "s3/" + hashlib.sha256(f"{self.bucket}/{self.prefix}".encode()).hexdigest()

    @property
    def commit(self) -> str:
        return s3_listing_digest((o.rel, o.etag, o.size) for o in self.objects)

    @property
    def etags(self) -> tuple[tuple[str, str], ...]:
        return tuple((o.rel, o.etag) for o in self.objects)

    def cache_dir(self, models_root: Path) -> Path:
        return models_root / self.repo_id.replace("/", "-") / self.commit


def _client(uri: str) -> Any:
    """A boto3 client configured as S3 remotes are (endpoint, region, profile, timeouts from the environment)."""
    from ..cache.remotes.s3 import S3Remote

    bucket, _ = parse_s3_uri(uri)
    return S3Remote(f"s3://{bucket}")


def _failure(uri: str, action: str, e: Exception, remote: Any) -> KilnError:
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(e, NoCredentialsError) or isinstance(e.__context__, NoCredentialsError):
        return ModelError(f"no AWS credentials to {action} model {show(uri)}: set AWS_PROFILE or AWS_ACCESS_KEY_ID/"
                          "AWS_SECRET_ACCESS_KEY, or run where an instance role applies.")
    if isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
        return ModelError(f"an object of model {show(uri)} changed while Kiln downloaded it (its ETag is not the "
                          "one listed); run again once nothing is writing to the bucket.")
    if isinstance(e, KilnError):
        return e
    code = e.response.get("Error", {}).get("Code") if isinstance(e, ClientError) else None
    if code == "NoSuchBucket" or (code is None and "NoSuchBucket" in str(e)):
        return ModelError(f"model {show(uri)}: the bucket does not exist (at {remote.endpoint or 'AWS'}); check the "
                          "model URI (and AWS_ENDPOINT_URL_S3 for an S3-compatible server).")
    return remote._fail(f"{action} model", "", e)  # the remote's own messages (no bucket, access denied, …)


def list_s3_model(uri: str) -> S3Listing:
    """List the model files below the URI's prefix (ModelError: none, no credentials, unreachable)."""
    bucket, prefix = parse_s3_uri(uri)
    remote = _client(uri)
    objects: list[S3Object] = []
    try:
        def listing() -> list[dict[str, Any]]:
            pages = remote.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            out: list[dict[str, Any]] = []
            for page in pages:
                out.extend(page.get("Contents", []))
                if len(out) > _MAX_OBJECTS:
                    break
            return out

        contents = remote._call("list", prefix, listing)
    except Exception as e:  # botocore's errors, mapped to one line each
        raise _failure(uri, "list", e, remote) from None
    for c in contents:
        rel = c["Key"][len(prefix):]
        if not rel or rel.endswith("/") or ignored(rel):
            continue  # a "directory" marker, or a file that never changes an engine
        objects.append(S3Object(rel, c["Key"], str(c.get("ETag", "")).strip('"'), int(c.get("Size", 0))))
    if len(contents) > _MAX_OBJECTS:
        raise ModelError(f"model {show(uri)} lists more than {_MAX_OBJECTS} objects; point at the model's own prefix.")
    if not objects:
        raise ModelError(f"model {show(uri)} holds no model files (nothing under s3://{bucket}/{prefix}); check the "
                         "bucket and prefix (a model prefix holds config.json and the weights).")
    objects.sort(key=lambda o: o.rel)
    return S3Listing(uri.strip(), bucket, prefix, tuple(objects))


def _head(remote: Any, listing: S3Listing, o: S3Object) -> dict[str, Any]:
    def head() -> dict[str, Any]:
        return dict(remote.client.head_object(Bucket=listing.bucket, Key=o.key, IfMatch='"' + o.etag + '"',
                                              ChecksumMode="ENABLED"))

    try:
        return dict(remote._call("read", o.key, head))
    except Exception as e:
        raise _failure(listing.uri, "read", e, remote) from None


def s3_sha256s(listing: S3Listing) -> dict[str, str] | None:
    """Every listed object's sha256 (hex) from S3's full-object SHA-256 checksum, or None where any has none."""
    remote = _client(listing.uri)
    out: dict[str, str] = {}
    for o in listing.objects:
        h = _head(remote, listing, o)
        value, kind = h.get("ChecksumSHA256"), h.get("ChecksumType")
        if not isinstance(value, str) or kind not in (None, "FULL_OBJECT") or "-" in value:
            return None  # none, or a multipart upload's checksum of checksums
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:
            return None
        if len(raw) != 32 or int(h.get("ContentLength", -1)) != o.size:
            return None
        out[o.rel] = raw.hex()
    return out


def read_s3_object(listing: S3Listing, rel: str, sha256: str) -> bytes:
    """A small listed object's bytes (of its listed ETag), which must have ``sha256``."""
    o = next(x for x in listing.objects if x.rel == rel)
    remote = _client(listing.uri)

    def get() -> bytes:
        body = remote.client.get_object(Bucket=listing.bucket, Key=o.key, IfMatch='"' + o.etag + '"')["Body"]
        return bytes(body.read(o.size + 1))

    try:
        data = remote._call("download", o.key, get)
    except Exception as e:
        raise _failure(listing.uri, "download", e, remote) from None
    if len(data) != o.size or hashlib.sha256(data).hexdigest() != sha256:
        raise ModelError(f"object s3://{listing.bucket}/{o.key} does not have the size and SHA-256 checksum S3 lists "
                         "for it; run again once nothing is writing to the bucket.")
    return data


def _read_range(listing: S3Listing, o: S3Object, start: int, length: int) -> bytes:
    """``length`` bytes of a listed object from ``start`` (of its listed ETag): a ranged GET, read bounded."""
    remote = _client(listing.uri)

    def get() -> bytes:
        body = remote.client.get_object(Bucket=listing.bucket, Key=o.key, IfMatch='"' + o.etag + '"',
                                        Range=f"bytes={start}-{start + length - 1}")["Body"]
        return bytes(body.read(length + 1))  # one byte more: a server that ignored the Range is caught

    try:
        data = remote._call("download", o.key, get) if length > 0 else b""
    except Exception as e:
        raise _failure(listing.uri, "download", e, remote) from None
    if len(data) != length:
        raise ModelError(f"a ranged read of s3://{listing.bucket}/{o.key} returned {len(data)} bytes, not {length}; "
                         "check the S3 endpoint (it must honour Range).")
    return data


def s3_signature(listing: S3Listing, sha256s: dict[str, str]) -> tuple[TensorSignature | None, str | None]:
    """The tensor signature of an S3 model from its weights' safetensors headers (ranged GETs: the
    8-byte length, then the header), without downloading it; (None, why) where there is none."""
    by_rel = {o.rel: o for o in listing.objects}

    def read_index() -> bytes:
        index = by_rel[INDEX_FILE]
        if index.size > MAX_INDEX_BYTES:
            raise ModelError(f"{INDEX_FILE} of {listing.uri} is {index.size} bytes: not a shard index")
        return read_s3_object(listing, INDEX_FILE, sha256s[INDEX_FILE])

    try:
        files, why = weight_files(by_rel, read_index)
        if files is None:
            return None, why
        tables = []
        for rel in files:
            o = by_rel[rel]
            where = f"s3://{listing.bucket}/{o.key}"
            n = header_length(_read_range(listing, o, 0, 8), o.size, where)
            tables.append(parse_header(_read_range(listing, o, 8, n), o.size, where))
        return signature_of(tables), None
    except ModelError as e:  # as for the same files on disk: no signature, and the why
        return None, str(e)


def _good(path: Path, size: int, sha256: str | None) -> bool:
    """A file kept from an earlier, interrupted download: right size, and right sha256 when known."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size != size:
            return False
        if sha256 is None:
            return True
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        return h.hexdigest() == sha256
    except OSError:
        return False


def _fetch(remote: Any, listing: S3Listing, o: S3Object, dest: Path, sha256: str | None) -> None:
    """One object, of the listed ETag only, into ``dest`` (through a .kiln-part file), size and sha256 checked."""
    part = dest.with_name(dest.name + _PART)
    part.parent.mkdir(parents=True, exist_ok=True)

    def get() -> str:
        body = remote.client.get_object(Bucket=listing.bucket, Key=o.key, IfMatch='"' + o.etag + '"')["Body"]
        h, n = hashlib.sha256(), 0
        with open(part, "wb") as f:
            for chunk in iter(lambda: body.read(_CHUNK), b""):
                n += len(chunk)
                if n > o.size:
                    break
                h.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if n != o.size:
            raise ModelError(f"object s3://{listing.bucket}/{o.key} is not the {o.size} bytes listed; run again.")
        return h.hexdigest()

    try:
        got = remote._call("download", o.key, get, remote._transfer_budget(o.size))
    except Exception as e:
        part.unlink(missing_ok=True)
        raise _failure(listing.uri, "download", e, remote) from None
    if sha256 is not None and got != sha256:
        part.unlink(missing_ok=True)
        raise ModelError(f"object s3://{listing.bucket}/{o.key} does not have the sha256 its model record says "
                         f"({got[:12]}…, recorded {sha256[:12]}…); the record or the bucket is wrong: run again "
                         "after fixing the bucket, or remove the record.")
    os.replace(part, dest)


def download_s3_model(listing: S3Listing, final: Path, sha256s: dict[str, str] | None = None) -> Path:
    """The model's files in ``final``, its directory in the local model cache (downloaded now where missing,
    each object of its listed ETag, and of its sha256 where ``sha256s`` gives one); see the module docstring."""
    if final.is_dir():
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        lock = open(final.with_name(final.name + ".lock"), "a+b")
    except OSError as e:
        raise ModelError(f"cannot create the S3 model cache {show_path(final.parent)}: {e.strerror}; set KILN_HOME "
                         "to a writable directory.") from None
    with lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # one downloader per model: the others wait, then use its files
        if final.is_dir():
            return final
        return _download(listing, final, sha256s)


def _download(listing: S3Listing, final: Path, sha256s: dict[str, str] | None) -> Path:
    partial = final.with_name(final.name + ".partial")
    try:
        partial.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"cannot create the S3 model cache {show_path(partial)}: {e.strerror}; set KILN_HOME to a "
                         "writable directory.") from None
    remote = _client(listing.uri)
    total = len(listing.objects)
    for i, o in enumerate(listing.objects, 1):
        dest = partial / o.rel
        if not os.path.realpath(dest).startswith(os.path.realpath(partial) + os.sep):
            raise ModelError(f"model {show(listing.uri)}: object key {show(o.key)} climbs out of the model prefix.")
        expected = (sha256s or {}).get(o.rel)
        if _good(dest, o.size, expected):
            continue  # kept from an interrupted download
        say(f"downloading s3://{listing.bucket}/{o.key} ({i}/{total}, {o.size} bytes)")
        _fetch(remote, listing, o, dest, expected)
    for leftover in partial.rglob("*" + _PART):  # a crashed download's (none is being written: we hold the lock)
        leftover.unlink(missing_ok=True)
    try:
        os.replace(partial, final)
    except OSError as e:
        raise ModelError(f"cannot move the downloaded model into {show_path(final)}: {e.strerror}; remove it and "
                         "run again.") from None
    return final

