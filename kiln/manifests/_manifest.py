"""Manifests in the OCI image manifest shape, and the rules for trusting one.

A manifest lists an artifact's files as OCI descriptors (``mediaType``, ``digest``, ``size``,
``annotations``; the file's relative path in ``org.opencontainers.image.title``) and points
at a config blob holding the build record. That shape lets any OCI registry store and serve
Kiln artifacts later.

Manifests are data, possibly from a remote nobody here controls: :meth:`Manifest.parse`
refuses anything whose paths could escape the destination (absolute, ``..``, unnormalised,
duplicate, file-vs-directory clashes), whose digests are malformed, or whose sizes are
beyond sane bounds — before a single byte is materialised.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .._input import show
from ..errors import UnsafeManifestError
from ._json import load_json

__all__ = [
    "Descriptor",
    "FileEntry",
    "Manifest",
    "safe_relpath",
    "MANIFEST_MEDIA_TYPE",
    "ARTIFACT_TYPE",
    "CONFIG_MEDIA_TYPE",
    "FILE_MEDIA_TYPE",
    "TITLE",
    "MAX_MANIFEST_BYTES",
    "MAX_BLOB_SIZE",
    "MAX_ARTIFACT_SIZE",
    "MAX_FILES",
]

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.kiln.artifact.v1"
CONFIG_MEDIA_TYPE = "application/vnd.kiln.build-record.v1+json"
FILE_MEDIA_TYPE = "application/octet-stream"
TITLE = "org.opencontainers.image.title"

MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_BLOB_SIZE = 1 << 40  # 1 TiB: larger than any single weight shard or engine file
MAX_ARTIFACT_SIZE = 4 << 40
MAX_FILES = 100_000
MAX_PATH = 1024

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")


def check_digest(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _DIGEST.match(value):
        raise UnsafeManifestError(f"{where}: {show(value)} is not a sha256 digest (sha256:<64 hex>).")
    return value


def check_size(value: Any, where: str, limit: int = MAX_BLOB_SIZE) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > limit:
        raise UnsafeManifestError(f"{where}: size {show(value)} is not an integer in [0, {limit}].")
    return value


def safe_relpath(path: Any) -> str:
    """Return ``path`` if it is a normalised relative POSIX path inside its root, else raise."""
    if not isinstance(path, str) or not path:
        raise UnsafeManifestError(f"file path {show(path)} is empty or not a string.")
    if len(path) > MAX_PATH or "\x00" in path or "\\" in path:
        raise UnsafeManifestError(f"file path {show(path)} is too long or holds NUL/backslash characters.")
    if path.startswith("/") or re.match(r"[A-Za-z]:", path):
        raise UnsafeManifestError(f"file path {show(path)} is absolute; manifests hold relative paths only.")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or posixpath.normpath(path) != path:
        raise UnsafeManifestError(f"file path {show(path)} is not normalised or climbs out with '..'.")
    return path


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            data["annotations"] = dict(self.annotations)
        return data


@dataclass(frozen=True)
class FileEntry:
    path: str
    digest: str
    size: int


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    files: tuple[FileEntry, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "config": self.config.to_json(),
            "layers": [
                Descriptor(FILE_MEDIA_TYPE, f.digest, f.size, {TITLE: f.path}).to_json() for f in self.files
            ],
            "annotations": dict(self.annotations),
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, indent=1).encode()

    @classmethod
    def parse(cls, data: bytes) -> "Manifest":
        raw = load_json(data, "manifest", max_bytes=MAX_MANIFEST_BYTES)  # bounded size and nesting
        if not isinstance(raw, dict) or raw.get("mediaType") != MANIFEST_MEDIA_TYPE or raw.get("schemaVersion") != 2:
            raise UnsafeManifestError("not an OCI image manifest (mediaType/schemaVersion).")
        if raw.get("artifactType") != ARTIFACT_TYPE:
            raise UnsafeManifestError(f"artifactType {show(raw.get('artifactType'))} is not a Kiln artifact.")
        cfg = raw.get("config")
        if not isinstance(cfg, dict) or cfg.get("mediaType") != CONFIG_MEDIA_TYPE:
            raise UnsafeManifestError("manifest config is not a Kiln build record.")
        config = Descriptor(
            CONFIG_MEDIA_TYPE,
            check_digest(cfg.get("digest"), "config"),
            check_size(cfg.get("size"), "config", MAX_CONFIG_BYTES),
        )
        layers = raw.get("layers")
        if not isinstance(layers, list) or len(layers) > MAX_FILES:
            raise UnsafeManifestError(f"manifest layers must be a list of at most {MAX_FILES} files.")
        files: list[FileEntry] = []
        seen: set[str] = set()
        total = 0
        for i, layer in enumerate(layers):
            if not isinstance(layer, dict):
                raise UnsafeManifestError(f"layer {i} is not an object.")
            layer_annotations = layer.get("annotations") or {}
            if not isinstance(layer_annotations, dict):
                raise UnsafeManifestError(f"layer {i} annotations are not an object.")
            path = safe_relpath(layer_annotations.get(TITLE))
            if path in seen:
                raise UnsafeManifestError(f"file path {show(path)} appears twice.")
            seen.add(path)
            entry = FileEntry(
                path, check_digest(layer.get("digest"), path), check_size(layer.get("size"), path)
            )
            total += entry.size
            files.append(entry)
        if total > MAX_ARTIFACT_SIZE:
            raise UnsafeManifestError(f"artifact declares {total} bytes, above the {MAX_ARTIFACT_SIZE} bound.")
        # "a" as a file and "a/b" beside it cannot both be materialised.
        for path in seen:
            parent = posixpath.dirname(path)
            while parent:
                if parent in seen:
                    raise UnsafeManifestError(f"{show(parent)} is both a file and the directory of {show(path)}.")
                parent = posixpath.dirname(parent)
        annotations = raw.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
            raise UnsafeManifestError("manifest annotations must map strings to strings.")
        return cls(config, tuple(files), annotations)
