"""Model refs → model sources: where the files are, what their bytes are, one tree digest.

A model ref is a local directory or a Hugging Face Hub id ``org/name[@revision]``. Hub ids
resolve through huggingface_hub's cache (offline with ``HF_HUB_OFFLINE=1``, the normal case
on build machines without Hub access). The tree digest is sha256 over the canonical list of
(path, sha256, size) of every file that can change a build's output; it, never the model's
name or path, is what identifies weights in a build key.

Hashing each byte once: in the HF cache, LFS files (the weights) are stored as blobs named by
their sha256, so that name is reused; every other file is hashed through the store's
:class:`~kiln.cache.HashMemo`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cache import HashMemo
from ..errors import ModelError, ModelNotFoundError, SpecError

__all__ = ["ModelFile", "ModelSource", "resolve_model", "parse_model_ref", "MODEL_FILE_IGNORES"]

# Files that never change an engine: docs, licences, git metadata, and the duplicate
# "original/" consolidated checkpoints Meta ships beside the HF weights. Everything else is
# in the digest — when in doubt, a file is included (a miss is cheap, a wrong hit is not).
MODEL_FILE_IGNORES = (
    "*.md", "LICENSE*", "USE_POLICY*", "NOTICE*", ".gitattributes", ".gitignore",
    "original/*", ".cache/*", ".git/*", ".huggingface/*",
)
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?)(@(?P<rev>[\w.\-/]+))?\Z")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class ModelFile:
    path: str  # relative, POSIX separators
    sha256: str  # hex
    size: int


@dataclass(frozen=True)
class ModelSource:
    ref: str
    kind: str  # "local" or "hub"
    path: Path
    files: tuple[ModelFile, ...]
    tree_digest: str  # "sha256:<hex>"
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None

    def config(self) -> dict[str, Any]:
        """config.json as a dict ({} when the model has none, e.g. a GGUF-only directory)."""
        cfg = self.path / "config.json"
        if not cfg.is_file():
            return {}
        try:
            return json.loads(cfg.read_text())
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot read {cfg}: {e}; the model directory looks damaged.") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "kind": self.kind,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "tree_digest": self.tree_digest,
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files],
        }


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    """Classify a ref: ("local", path, None) or ("hub", repo_id, revision)."""
    text = ref.strip()
    if not text:
        raise SpecError("the model ref is empty; pass a Hub id (org/name[@revision]) or a local directory.")
    if text.startswith(("s3://", "gs://", "http://", "https://")):
        raise SpecError(
            f"model {text!r}: Kiln resolves Hub ids and local directories; download the model "
            "to a local directory first (e.g. `aws s3 sync`) and pass that directory."
        )
    expanded = os.path.expanduser(text)
    if os.path.isdir(expanded) or text.startswith(("/", ".", "~")):
        return "local", expanded, None
    m = _HUB_ID.match(text)
    if not m:
        raise SpecError(
            f"model {text!r} is neither an existing directory nor a Hub id of the form "
            "org/name[@revision]."
        )
    return "hub", m.group("repo"), m.group("rev")


def _ignored(rel: str) -> bool:
    return any(fnmatch.fnmatch(rel, pat) for pat in MODEL_FILE_IGNORES)


def _tree_digest(files: list[ModelFile]) -> str:
    listing = [[f.path, f.sha256, f.size] for f in sorted(files, key=lambda f: f.path)]
    data = json.dumps(listing, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _walk(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            out.append(Path(dirpath) / name)
    return out


def _lfs_sha256(path: Path) -> str | None:
    """In an HF cache snapshot, LFS files link to blobs named by their sha256."""
    if not path.is_symlink():
        return None
    name = os.path.basename(os.readlink(path))
    return name if _SHA256_HEX.match(name) else None


def _hash_tree(root: Path, memo: HashMemo, *, trust_lfs_names: bool) -> list[ModelFile]:
    files = []
    for p in _walk(root):
        rel = p.relative_to(root).as_posix()
        if _ignored(rel):
            continue
        try:
            size = p.stat().st_size  # follows the snapshot's symlink to the blob
        except FileNotFoundError:
            raise ModelError(
                f"{p} is a dangling link (an interrupted download?); re-download the model."
            ) from None
        digest = _lfs_sha256(p) if trust_lfs_names else None
        files.append(ModelFile(rel, digest or memo.sha256(p), size))
    if not files:
        raise ModelError(f"model directory {root} holds no model files; is it the right directory?")
    return files


def _hf_cache_dir() -> str:
    # Read at call time: huggingface_hub reads these once at import, which would pin a
    # long-lived process (or a test session) to the first value it saw.
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


def resolve_model(ref: str, memo: HashMemo | None = None) -> ModelSource:
    memo = memo or HashMemo(None)
    kind, where, revision = parse_model_ref(ref)
    if kind == "local":
        root = Path(where)
        if not root.is_dir():
            raise ModelNotFoundError(f"model directory {root} does not exist; check the path.")
        files = _hash_tree(root, memo, trust_lfs_names=False)
        return ModelSource(str(root.resolve()), "local", root.resolve(), tuple(files), _tree_digest(files))

    from huggingface_hub import snapshot_download  # lazy: keeps `kiln --help` light
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    try:
        snapshot = Path(
            snapshot_download(where, revision=revision, local_files_only=offline, cache_dir=_hf_cache_dir())
        )
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"model {where}{'@' + revision if revision else ''} is neither a local directory nor in "
            f"the local Hugging Face cache, and HF_HUB_OFFLINE=1 forbids downloading it; run "
            f"`huggingface-cli download {where}` on a machine with Hub access (sharing HF_HOME), "
            "or pass a local directory."
        ) from None
    except Exception as e:  # huggingface_hub raises a zoo of types for network/auth failures
        raise ModelError(f"cannot resolve model {ref!r} on the Hub: {e}") from None
    files = _hash_tree(snapshot, memo, trust_lfs_names=True)
    return ModelSource(
        ref, "hub", snapshot, tuple(files), _tree_digest(files),
        repo_id=where, revision=revision or "main", commit=snapshot.name,
    )
