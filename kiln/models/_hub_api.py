"""A Hub id's files and tree digest from the Hub's file metadata, without downloading its weights.

**Invariant.** :func:`resolve_hub_metadata` gives exactly the (path, sha256, size) list and tree
digest that hashing a complete snapshot of the same commit gives: the same files count
(:func:`kiln.models._tree.ignored`) and the same digest (:func:`kiln.models._tree.tree_digest`),
the one rule and the one function both paths call. tests/models/test_hub_metadata.py checks the
two against each other on a stand-in Hub.

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

The resolved commit is the API's ``sha`` for the revision; the listing is then read at that
commit, so a branch moving in between cannot mix two commits. Online only: the caller decides
(``HF_HUB_OFFLINE=1`` never reaches this module). HF_ENDPOINT and HF_TOKEN are honoured as
huggingface_hub honours them (read at call time here).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

from .._input import show
from ..errors import ModelError
from ._hub import hf_cache_dir, hub_endpoint, hub_error, hub_snapshot
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


def _from_listing(repo_id: str, commit: str, entries: list[HubEntry], read_config: ConfigReader) -> HubMetadata:
    files = tuple(_model_file(repo_id, commit, e) for e in entries if not ignored(e.path))
    if not files:
        raise ModelError(f"model {repo_id}@{commit} holds no model files on the Hub; is it the right repository?")
    path = snapshot_dir(repo_id, commit)
    return HubMetadata(commit, files, tree_digest(files), read_config(path), path)


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


def hub_metadata_or_snapshot(repo_id: str, revision: str | None, read_config: ConfigReader) -> HubMetadata | Path:
    """Online resolution of a Hub id: from metadata, or the cached snapshot where it is complete.

    Where the Hub cannot be reached (or answers 5xx), the snapshot download's own fallback
    runs instead (a complete cached snapshot of the revision, else its one-line error).
    """
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        commit, entries = hub_listing(repo_id, revision)
        cached = _complete_in_cache(repo_id, commit, entries)
        return cached if cached is not None else _from_listing(repo_id, commit, entries, read_config)
    except ModelError:
        raise
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:  # GatedRepoError too: the Hub's answer stands
        raise hub_error(e, repo_id, revision) from None
    except (*_transport_errors(), HfHubHTTPError):
        return hub_snapshot(repo_id, revision)  # unreachable, 401/5xx: the cache may still hold it
    except Exception as e:  # huggingface_hub raises a zoo of types for network/filesystem failures
        raise hub_error(e, repo_id, revision) from None
