"""A Hub id's files and tree digest from the Hub's file metadata, without downloading its weights.

**Invariant.** :func:`resolve_hub_metadata` gives exactly the (path, sha256, size) list and tree
digest that hashing a complete snapshot of the same commit gives: the same files count
(:func:`kiln.models._tree.ignored`) and the same digest (:func:`kiln.models._tree.tree_digest`),
the one rule and the one function both paths call; and the same tensor signature (the same
weight files chosen, the same header checks, :func:`kiln.models._architecture.signature_of`).
tests/models/test_hub_metadata.py checks the two against each other on a stand-in Hub.

Where each file's sha256 comes from:

- **LFS files** (the weights): the tree listing's ``lfs.oid``, the sha256 git-lfs records for
  the file's content, and ``lfs.size``. Nothing is downloaded.
- **non-LFS files** (config.json, tokenizer files, generation_config.json, …: the Hub stores
  anything above 10 MB in LFS): downloaded with ``hf_hub_download`` into the HF cache snapshot
  (where a later build reads them, and where config.json is read), checked against the listing
  (its size and its git blob sha1, ``oid``), then hashed. At most :data:`MAX_SMALL_FILE_BYTES`.

Two cases are handled explicitly:

- an LFS file whose metadata has no sha256: **downloaded and hashed** like a small file (its
  size checked). The digest must be the snapshot's, and those bytes are what a build would
  download anyway, into the same cache; refusing would make such a repository unresolvable.
- a non-LFS file above :data:`MAX_SMALL_FILE_BYTES`: **a clear error** (the Hub refuses such
  pushes, so only an odd endpoint lists one): download the snapshot, which is then hashed.

The weights' **tensor signature** (:mod:`kiln.models._architecture`) is read from the Hub too,
without their data: for each file transformers loads (:func:`~kiln.models._architecture.weight_files`;
``model.safetensors.index.json`` is read from the downloaded small files, or downloaded when the
Hub keeps it in LFS), only its safetensors header, by ranged GETs on
``{endpoint}/{repo}/resolve/{commit}/{path}`` as huggingface_hub's ``get_safetensors_metadata``
does (hf_api.py, huggingface_hub 2.4): ``bytes=0-7`` (the header length N, checked against the
listed size and safetensors' bound before anything more is asked), then ``bytes=8-{7+N}``. Every
read is bounded: a server that ignores Range and answers 200 with the whole file is read only up
to the header (at most one network chunk past it, nothing past it kept), then the connection is
closed. The header is checked by the same rules as a local file's
(:func:`kiln.models._safetensors.parse_header`); an error or garbage answer is a clear error naming
the file. A model without safetensors weights has no signature (``signature_note`` says why).

The resolved commit is the API's ``sha`` for the revision; the listing is then read at that
commit, so a branch moving in between cannot mix two commits. Online only: the caller decides
(``HF_HUB_OFFLINE=1`` never reaches this module). HF_ENDPOINT and HF_TOKEN are honoured as
huggingface_hub honours them (read at call time here).
"""

from __future__ import annotations

import hashlib
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

from .._content_range import parse_content_range
from .._input import read_small_file, show
from ..errors import ModelError
from ._architecture import TensorSignature, signature_of, weight_files
from ._hub import hf_cache_dir, hub_endpoint, hub_error, hub_snapshot
from ._safetensors import FIX as _LOCAL_FIX
from ._safetensors import INDEX_FILE, MAX_INDEX_BYTES, TensorInfo, header_length, parse_header
from ._tree import MAX_TREE_ENTRIES, ModelFile, ignored, tree_digest

__all__ = ["HubMetadata", "HubEntry", "MAX_SMALL_FILE_BYTES", "hub_listing", "resolve_hub_metadata",
           "hub_metadata_or_snapshot", "snapshot_dir"]

# A non-LFS file Kiln downloads to hash: the Hub keeps non-LFS files under 10 MB.
MAX_SMALL_FILE_BYTES = 16 << 20
# Files whose bytes resolution reads (not only hashes): downloaded even when stored in LFS.
_READ_FILES = ("config.json",)
_TIMEOUT_S = 30.0
_CHUNK = 1 << 20
ConfigReader = Callable[[Path], dict[str, Any]]  # a model directory → its config.json (read_config)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}\Z")
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # git sha1 (sha256 repositories: 64)
_MAX_PAGES = 10_000


@dataclass(frozen=True)
class HubEntry:
    """One file of the Hub's tree listing (``/api/models/{repo}/tree/{commit}?recursive=true``)."""

    path: str
    size: int
    blob_id: str  # git blob sha1 (for an LFS file: the pointer's)
    lfs_sha256: str | None  # None: not an LFS file, or its metadata has no sha256
    lfs: bool


@dataclass(frozen=True)
class HubMetadata:
    """A Hub id resolved from metadata: the commit, its files and tree digest, its config.json."""

    commit: str
    files: tuple[ModelFile, ...]
    tree_digest: str
    config: dict[str, Any]
    path: Path  # the HF cache snapshot of ``commit``: holds the downloaded (small) files only
    # The weights' tensor signature (kiln.models._architecture), from their headers; None: the model has
    # no safetensors weights, and signature_note says so.
    signature: TensorSignature | None = None
    signature_note: str | None = None


def snapshot_dir(repo_id: str, commit: str) -> Path:
    """Where huggingface_hub's cache keeps ``repo_id@commit`` (files land there as they are downloaded)."""
    return Path(hf_cache_dir()) / ("models--" + repo_id.replace("/", "--")) / "snapshots" / commit


def _get_json(url: str, params: dict[str, str] | None = None) -> tuple[Any, str | None]:
    """GET a Hub API URL: its JSON and the next page's URL (the Link header), errors as huggingface_hub's."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    r = get_session().get(url, params=params, headers=build_hf_headers(), timeout=_TIMEOUT_S)
    hf_raise_for_status(r)
    try:
        data = r.json()
    except ValueError:
        raise ModelError(f"the Hub at {hub_endpoint()} answered {show(url)} with something that is not JSON; "
                         "check HF_ENDPOINT.") from None
    return data, r.links.get("next", {}).get("url")


def _bad_listing(repo_id: str, what: str) -> ModelError:
    return ModelError(f"the Hub's file listing of model {repo_id} is malformed ({what}); check HF_ENDPOINT, or run "
                      f"`hf download {repo_id}` and pass the snapshot directory.")


def _entries(repo_id: str, commit: str) -> Iterator[HubEntry]:
    url: str | None = f"{hub_endpoint()}/api/models/{repo_id}/tree/{quote(commit, safe='')}"
    params: dict[str, str] | None = {"recursive": "true"}
    seen_urls: set[str] = set()
    count = 0
    while url is not None:
        # Bounded: a Link header that points back (or on and on) must not page forever.
        if url in seen_urls or len(seen_urls) >= _MAX_PAGES:
            raise _bad_listing(repo_id, f"its pages do not end (more than {len(seen_urls)} pages, or a page repeats)")
        seen_urls.add(url)
        page, url = _get_json(url, params)
        params = None  # the next page's URL carries its own query
        if not isinstance(page, list):
            raise _bad_listing(repo_id, "not a list")
        count += len(page)
        if count > MAX_TREE_ENTRIES:
            raise _bad_listing(repo_id, f"more than {MAX_TREE_ENTRIES} entries")
        for item in page:
            if not isinstance(item, dict) or item.get("type") != "file":
                continue  # folders: their files are listed too (recursive)
            path, size, oid, lfs = item.get("path"), item.get("size"), item.get("oid"), item.get("lfs")
            if not isinstance(path, str) or not isinstance(size, int) or not isinstance(oid, str):
                raise _bad_listing(repo_id, f"entry {show(item)}")
            if path.startswith("/") or ".." in path.split("/") or "\\" in path:
                raise _bad_listing(repo_id, f"path {show(path)} is not inside the repository")
            sha = (lfs.get("oid") or lfs.get("sha256")) if isinstance(lfs, dict) else None
            if isinstance(lfs, dict) and isinstance(lfs.get("size"), int):
                size = lfs["size"]
            sha = sha if isinstance(sha, str) and _SHA256_HEX.match(sha) else None  # absent or not a sha256: download
            yield HubEntry(path, size, oid, sha, isinstance(lfs, dict))


def hub_listing(repo_id: str, revision: str | None) -> tuple[str, list[HubEntry]]:
    """The commit ``revision`` names (the API's ``sha``) and every file of the repository at it."""
    rev = quote(revision or "main", safe="")
    info, _ = _get_json(f"{hub_endpoint()}/api/models/{repo_id}/revision/{rev}")
    commit = info.get("sha") if isinstance(info, dict) else None
    # The commit becomes a path in the HF cache (snapshots/<commit>): only a commit hash is one.
    if not isinstance(commit, str) or not _COMMIT.fullmatch(commit):
        raise ModelError(f"the Hub at {hub_endpoint()} gave no commit hash for model {repo_id}@{revision or 'main'} "
                         f"(it said {show(commit)}); check HF_ENDPOINT.")
    return commit, list(_entries(repo_id, commit))


def _hash_file(path: Path) -> tuple[str, str, int]:
    """sha256, git blob sha1 and size of ``path``, in one read."""
    size = os.stat(path).st_size
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest(), size


def _download(repo_id: str, commit: str, entry: HubEntry) -> ModelFile:
    """Download one file into the HF cache and hash it, checked against its listing entry."""
    from huggingface_hub import hf_hub_download

    got = Path(hf_hub_download(repo_id, entry.path, revision=commit, cache_dir=hf_cache_dir(),
                               endpoint=hub_endpoint()))
    sha256, sha1, size = _hash_file(got)
    wrong = (size != entry.size or (not entry.lfs and sha1 != entry.blob_id)
             or (entry.lfs_sha256 is not None and sha256 != entry.lfs_sha256))
    if wrong:
        raise ModelError(
            f"{entry.path} of model {repo_id}@{commit} as downloaded ({size} bytes, git sha1 {sha1}) is not what the "
            f"Hub's listing says ({entry.size} bytes, git sha1 {entry.blob_id}); delete {got} and run again, or check "
            "HF_ENDPOINT."
        )
    return ModelFile(entry.path, sha256, size)


def _model_file(repo_id: str, commit: str, entry: HubEntry) -> ModelFile:
    if entry.lfs_sha256 is not None and entry.path not in _READ_FILES:
        return ModelFile(entry.path, entry.lfs_sha256, entry.size)
    if not entry.lfs and entry.size > MAX_SMALL_FILE_BYTES:
        # Explicit: a clear error, never an unbounded download to hash a "small" file.
        raise ModelError(
            f"the Hub lists {entry.path} of model {repo_id}@{commit} as a non-LFS file of {entry.size} bytes (more than "
            f"{MAX_SMALL_FILE_BYTES >> 20} MiB, which the Hub does not store outside LFS), so Kiln does not fetch it "
            f"to hash it: run `hf download {repo_id} --revision {commit}` and run again (the downloaded snapshot is "
            "hashed instead)."
        )
    # A small non-LFS file, config.json, or (explicit) an LFS file with no sha256: download and hash.
    return _download(repo_id, commit, entry)


def resolve_hub_metadata(repo_id: str, revision: str | None, read_config: ConfigReader) -> HubMetadata:
    """``repo_id@revision`` resolved from the Hub's metadata (see the module docstring).

    ``read_config`` is :func:`kiln.models.read_config` (passed in: that module imports this one).
    """
    commit, entries = hub_listing(repo_id, revision)
    return _from_listing(repo_id, commit, entries, read_config)


def _from_listing(repo_id: str, commit: str, entries: list[HubEntry], read_config: ConfigReader,
                  signature: bool = True) -> HubMetadata:
    counted = [e for e in entries if not ignored(e.path)]
    files = tuple(_model_file(repo_id, commit, e) for e in counted)
    if not files:
        raise ModelError(f"model {repo_id}@{commit} holds no model files on the Hub; is it the right repository?")
    path = snapshot_dir(repo_id, commit)
    config = read_config(path)
    if not signature:  # the target's engines hold their weights: no key needs the tensors
        return HubMetadata(commit, files, tree_digest(files), config, path, None, "not read (not needed for this target)")
    found, note = _hub_signature(repo_id, commit, {e.path: e for e in counted}, path)
    return HubMetadata(commit, files, tree_digest(files), config, path, found, note)


# --- The tensor signature from the weights' headers (ranged GETs; see the module docstring) ---

_LENGTH_BYTES = 8  # a safetensors file starts with its header's length, 8 bytes little-endian


def _hub_fix(repo_id: str, commit: str) -> str:
    return (f"check HF_ENDPOINT, or run `hf download {repo_id} --revision {commit}` and pass the snapshot "
            "directory")


def _hub_signature(repo_id: str, commit: str, counted: dict[str, HubEntry],
                   path: Path) -> tuple[TensorSignature | None, str | None]:
    """The signature of the weights transformers loads, from headers read off the Hub, or (None, why)."""

    def read_index() -> bytes:
        entry = counted[INDEX_FILE]
        if not (path / INDEX_FILE).is_file():  # kept in LFS, so not among the small files downloaded
            if entry.size > MAX_INDEX_BYTES:
                raise ModelError(f"the Hub lists {INDEX_FILE} of model {repo_id}@{commit} as {entry.size} bytes "
                                 f"(more than {MAX_INDEX_BYTES >> 20} MiB): not a shard index; "
                                 f"{_hub_fix(repo_id, commit)}.")
            _download(repo_id, commit, entry)
        return read_small_file(path / INDEX_FILE, MAX_INDEX_BYTES, "shard index", ModelError,
                               _hub_fix(repo_id, commit))

    try:
        names, why = weight_files(counted, read_index)
    except ModelError as e:  # a damaged shard index: no signature, as for the same snapshot on disk (local_signature)
        return None, str(e)
    if names is None:
        return None, why
    return signature_of(_hub_tensors(repo_id, commit, counted[n]) for n in names), None


def _resolve_url(repo_id: str, commit: str, path: str) -> str:
    """A file's download URL, as huggingface_hub 2.4's hf_hub_url builds it (file_download.py)."""
    return f"{hub_endpoint()}/{repo_id}/resolve/{quote(commit, safe='')}/{quote(path)}"


def _show_url(url: str) -> str:
    """A URL for a message: quoted (control characters escaped), and whole: its end is the file's name."""
    return show(url, limit=min(max(len(url), 60), 2000))


def _hub_tensors(repo_id: str, commit: str, entry: HubEntry) -> dict[str, TensorInfo]:
    """One weight file's tensors, from its header alone, checked against its listed size."""
    url = _resolve_url(repo_id, commit, entry.path)
    where = _show_url(url)
    try:
        with _ranged_get(url, 0, _LENGTH_BYTES, entry, repo_id, commit) as (body, whole):
            n = header_length(body.read(_LENGTH_BYTES), entry.size, where)  # refuses N past the bounds: never asked
            raw = body.read(n) if whole else None  # Range ignored: the header follows in this same answer
        if raw is None and n == 0:
            raw = b""  # nothing to ask for (parse_header refuses an empty header)
        if raw is None:
            with _ranged_get(url, _LENGTH_BYTES, n, entry, repo_id, commit) as (body, _):
                raw = body.read(n)
        if len(raw) != n:
            raise ModelError(f"the Hub at {hub_endpoint()} answered the read of the {n}-byte safetensors header of "
                             f"weight file {where} with {len(raw)} bytes; {_hub_fix(repo_id, commit)}.")
        return parse_header(raw, entry.size, where)
    except ModelError as e:
        raise _on_the_hub(e, repo_id, commit) from None
    except _transport_errors() as e:
        # Not the unreachable-Hub fallback (hub_metadata_or_snapshot): that downloads the whole snapshot.
        raise ModelError(f"reading the safetensors header of weight file {where} failed ({type(e).__name__}: {e}); "
                         f"{_hub_fix(repo_id, commit)}.") from None


def _on_the_hub(e: ModelError, repo_id: str, commit: str) -> ModelError:
    """A header check's error with the fix for a file on the Hub (the local one says to replace the file)."""
    text = str(e)
    local = f"; {_LOCAL_FIX}."
    return ModelError(text[: -len(local)] + f"; {_hub_fix(repo_id, commit)}.") if text.endswith(local) else e


class _Body:
    """A response body read in bounded pieces: what one read pulled past its end is kept for the next."""

    def __init__(self, chunks: Iterator[bytes], skip: int) -> None:
        self._chunks = chunks
        self._left = b""
        self._skip = skip  # bytes before the range asked, dropped (a 200 answer starts at byte 0)

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only where the body ends), pulling no more chunks than that needs."""
        out = bytearray()
        while len(out) < n:
            if not self._left:
                self._left = next(self._chunks, b"")
                if not self._left:
                    break  # the body ended
            if self._skip:
                dropped = min(self._skip, len(self._left))
                self._left, self._skip = self._left[dropped:], self._skip - dropped
                continue
            take = n - len(out)
            out += self._left[:take]
            self._left = self._left[take:]
        return bytes(out)


@contextmanager
def _ranged_get(url: str, start: int, length: int, entry: HubEntry, repo_id: str,
                commit: str) -> Iterator[tuple[_Body, bool]]:
    """GET bytes ``start .. start+length-1`` of ``url``, streamed: (the body from ``start``, whether the
    server sent the whole file instead). Closing (leaving the block) drops the rest unread."""
    from huggingface_hub.utils import build_hf_headers, get_session

    where = _show_url(url)
    # identity: a range of an encoded body is a range of other bytes, and a decoder could inflate it unbounded.
    headers = {**build_hf_headers(), "Range": f"bytes={start}-{start + length - 1}", "Accept-Encoding": "identity"}
    with _stream(get_session(), url, headers) as (status, answer, chunks):
        if status not in (200, 206):
            raise ModelError(f"the Hub at {hub_endpoint()} answered the ranged read of the safetensors header of "
                             f"weight file {where} with HTTP {status}; {_hub_fix(repo_id, commit)}.")
        if answer.get("content-encoding", "identity").lower() != "identity":
            raise ModelError(f"the Hub at {hub_endpoint()} sent weight file {where} encoded as "
                             f"{show(answer.get('content-encoding'))} although asked for its bytes as they are; "
                             f"{_hub_fix(repo_id, commit)}.")
        if status == 206:
            _check_content_range(answer.get("content-range"), start, entry, where, repo_id, commit)
        yield _Body(chunks, 0 if status == 206 else start), status == 200


def _check_content_range(value: str | None, start: int, entry: HubEntry, where: str, repo_id: str,
                         commit: str) -> None:
    """A 206 answer is of the range asked, of a file of the listed size (the header is checked against it)."""
    stated = parse_content_range(value)
    if stated is None or stated[0] != start or (stated[2] is not None and stated[2] != entry.size):
        raise ModelError(f"the Hub at {hub_endpoint()} answered the ranged read of weight file {where} (from byte "
                         f"{start} of the {entry.size} bytes its listing gives) with Content-Range {show(value)}; "
                         f"{_hub_fix(repo_id, commit)}.")


@contextmanager
def _stream(session: Any, url: str, headers: dict[str, str]) -> Iterator[tuple[int, Any, Iterator[bytes]]]:
    """(status, headers, raw body chunks) of a streamed GET, redirects followed (the Hub's LFS files redirect
    to a CDN), for huggingface_hub's session of any release: httpx or httpx2 (``stream``), or requests."""
    if callable(getattr(session, "stream", None)):  # httpx / httpx2 (requests.Session.stream is a bool)
        with session.stream("GET", url, headers=headers, timeout=_TIMEOUT_S, follow_redirects=True) as r:
            # iter_raw() without a chunk size: each network read as it comes (a chunk size would buffer up to it).
            yield r.status_code, r.headers, r.iter_raw()
        return
    r = session.get(url, headers=headers, timeout=_TIMEOUT_S, stream=True, allow_redirects=True)
    try:
        yield r.status_code, r.headers, iter(lambda: r.raw.read(_NETWORK_READ, decode_content=False), b"")
    finally:
        r.close()


_NETWORK_READ = 1 << 16  # what one read of a requests body asks for (httpcore reads 64 KiB too)


def _complete_in_cache(repo_id: str, commit: str, entries: list[HubEntry]) -> Path | None:
    """The cached snapshot of ``commit`` when it holds every file that counts (hash it, it is what a build reads)."""
    snap = snapshot_dir(repo_id, commit)
    counted = [e.path for e in entries if not ignored(e.path)]
    return snap if counted and all(os.path.isfile(snap / p) for p in counted) else None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What "the Hub cannot be reached" raises, for every huggingface_hub release allowed: its
    HTTP client is requests (whose errors are OSErrors), httpx or httpx2, by release."""
    import importlib

    found: list[type[BaseException]] = [OSError]
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def hub_metadata_or_snapshot(repo_id: str, revision: str | None, read_config: ConfigReader,
                             signature: bool = True) -> HubMetadata | Path:
    """Online resolution of a Hub id: from metadata, or the cached snapshot where it is complete.

    Where the Hub cannot be reached (or answers 5xx), the snapshot download's own fallback
    runs instead (a complete cached snapshot of the revision, else its one-line error).
    """
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        commit, entries = hub_listing(repo_id, revision)
        cached = _complete_in_cache(repo_id, commit, entries)
        return cached if cached is not None else _from_listing(repo_id, commit, entries, read_config, signature)
    except ModelError:
        raise
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:  # GatedRepoError too: the Hub's answer stands
        raise hub_error(e, repo_id, revision) from None
    except (*_transport_errors(), HfHubHTTPError):
        return hub_snapshot(repo_id, revision)  # unreachable, 401/5xx: the cache may still hold it
    except Exception as e:  # huggingface_hub raises a zoo of types for network/filesystem failures
        raise hub_error(e, repo_id, revision) from None
