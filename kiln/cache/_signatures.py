"""Signatures beside the manifests: ``signatures/<manifest hex>/`` in the store and on every remote.

One directory per manifest (a signature is of one manifest: its files, build key and record)::

    signatures/<manifest hex>/<key fingerprint hex>.sig               model-signing bundle
    signatures/<manifest hex>/<key fingerprint hex>.provenance.json   SLSA provenance, same key
    signatures/<manifest hex>/origins.json    (local store only) remotes these were pulled from

Filed by manifest, the way an OCI registry files referrers by their subject, so that signing an
artifact already published (``kiln sign``) adds a file and never rewrites its index entry, and
several keys can sign one artifact. What is filed here is data, not trust: the trust policy
verifies a bundle against the key and the manifest every time it is used
(:mod:`kiln.trust`); the file name only says where to look first.

Writes are atomic (temp file, rename) and read-only once written; a publish writes signatures
after the manifest and before the index entry, so a reader that finds an entry finds its
signatures. gc removes the directory of a manifest that is gone.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ._fsutil import atomic_write_bytes, remove_tree

if TYPE_CHECKING:  # kiln.trust (model-signing's bundle format, keys, policies) is read only where signatures are
    from ..trust import Signature

__all__ = ["SignatureFiles", "MAX_SIGNATURES", "SIG_SUFFIX", "PROVENANCE_SUFFIX", "signature_name", "manifest_hex"]

MAX_SIGNATURES = 8  # per artifact and kind: a hostile remote cannot make a reader fetch and verify many


def signature_bound(files: int) -> int:
    """The most bytes a signature (or signed provenance) of an artifact of ``files`` files may
    have: a bundle is about 300 bytes per file (path, digest, base64) and provenance adds the
    model's files; this leaves room for long paths and large models, not for padding."""
    from ..trust import MAX_SIGNATURE_BYTES

    return min(MAX_SIGNATURE_BYTES, 1024 * 1024 + 2048 * files)
SIG_SUFFIX = ".sig"
PROVENANCE_SUFFIX = ".provenance.json"
_NAME = re.compile(r"([0-9a-f]{64})(\.sig|\.provenance\.json)\Z")


def manifest_hex(manifest_digest: str) -> str:
    return manifest_digest.split(":", 1)[1]


def signature_name(fingerprint: str, suffix: str = SIG_SUFFIX) -> str:
    return fingerprint.split(":", 1)[1] + suffix


def parse_name(name: str) -> tuple[str, str] | None:
    """(fingerprint, suffix) of a file name in a signature directory, or None for anything else."""
    m = _NAME.fullmatch(name)
    return (f"sha256:{m.group(1)}", m.group(2)) if m else None


class SignatureFiles:
    def __init__(self, root: Path) -> None:
        self.dir = root / "signatures"

    def path(self, manifest_digest: str) -> Path:
        return self.dir / manifest_hex(manifest_digest)

    def _read(self, manifest_digest: str, suffix: str) -> list[Signature]:  # local files: bounded by the 64 MiB cap
        from ..trust import MAX_SIGNATURE_BYTES, Signature

        d = self.path(manifest_digest)
        try:
            names = sorted(os.listdir(d))
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for name in names:
            parsed = parse_name(name)
            if parsed is None or parsed[1] != suffix:
                continue
            try:
                with open(d / name, "rb") as f:
                    data = f.read(MAX_SIGNATURE_BYTES + 1)
            except OSError:
                continue
            if len(data) <= MAX_SIGNATURE_BYTES:
                out.append(Signature(parsed[0], data))
            if len(out) >= MAX_SIGNATURES:
                break
        return out

    def signatures(self, manifest_digest: str) -> list[Signature]:
        return self._read(manifest_digest, SIG_SUFFIX)

    def provenance(self, manifest_digest: str) -> list[Signature]:
        return self._read(manifest_digest, PROVENANCE_SUFFIX)

    def add(self, manifest_digest: str, fingerprint: str, data: bytes, suffix: str = SIG_SUFFIX) -> Path:
        target = self.path(manifest_digest) / signature_name(fingerprint, suffix)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data, mode=0o444, durable=True)
        return target

    def origins(self, manifest_digest: str) -> list[str]:
        try:
            raw = json.loads((self.path(manifest_digest) / "origins.json").read_bytes()[:65536])
        except (OSError, ValueError):
            return []
        return [o for o in raw if isinstance(o, str)][:100] if isinstance(raw, list) else []

    def add_origin(self, manifest_digest: str, origin: str) -> None:
        known = self.origins(manifest_digest)
        if origin in known:
            return
        target = self.path(manifest_digest) / "origins.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, json.dumps(sorted([*known, origin])).encode())

    def manifests(self) -> Iterator[str]:
        """The manifest digest of every signature directory."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return
        for name in names:
            if re.fullmatch("[0-9a-f]{64}", name):
                yield f"sha256:{name}"

    def remove(self, manifest_digest: str) -> None:
        remove_tree(self.path(manifest_digest))
