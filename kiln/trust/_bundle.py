"""Artifact signatures in the OpenSSF model-signing format, made and checked by that library.

A signature is a sigstore bundle (``application/vnd.dev.sigstore.bundle.v0.3+json``) whose DSSE
envelope carries an in-toto Statement v1 with model-signing's predicate
(``https://model_signing/signature/v1.0``): every file of the artifact with its sha256, and a
subject whose digest is the sha256 over those digests. model-signing writes and reads every
byte of it (``Payload``, the EC signer and verifier in model_signing/_signing @ v1.1.1); Kiln
only hands the library a manifest built from its own (the file digests *are* the blob
digests, so nothing is hashed again) and a key.

Binding. model-signing's subject ``name`` is informative to the library (it ignores it when it
compares manifests) but it is signed, so Kiln puts the artifact's identity there:
``kiln-artifact/<build key>/<manifest digest>``. The manifest digest covers the build record
(its config blob), the key annotation and every file, so a signature verifies for exactly one
artifact: moved to another artifact, to another key's entry, or kept beside a manifest or build
record that was changed, it fails. The files are checked as well, so the library's own
``model_signing verify key DIR`` accepts the raw layout of the artifact with ``model.sig``.

model-signing's signer and verifier classes live in private modules of the library (its public
API hashes a directory itself, which is the work Kiln must not redo), so the version is pinned
in pyproject.toml and imported lazily: a lookup without a trust policy never loads it.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import SpecError, TrustError
from ..manifests._manifest import Manifest
from ._keys import PublicKey, SigningKey

__all__ = ["SIGNATURE_FILE", "MAX_SIGNATURE_BYTES", "Verified", "subject_name", "sign_manifest", "sign_statement",
           "verify_bundle", "bundle_key_hint", "library"]

SIGNATURE_FILE = "model.sig"  # model-signing's default signature name, written beside a raw layout
MAX_SIGNATURE_BYTES = 64 * 1024 * 1024  # 100k files (the manifest bound) at ~300 bytes each, base64'd
_PREDICATE_TYPE = "https://model_signing/signature/v1.0"


def library() -> Any:
    """model-signing's modules, or a SpecError saying how to install them."""
    try:
        from model_signing import manifest as ms_manifest
        from model_signing._hashing import hashing as ms_hashing
        from model_signing._signing import sign_ec_key, sign_sigstore_pb, signing
    except ImportError as e:
        raise SpecError(f"signatures need the model-signing package ({e}): pip install 'kiln-engines[signing]'.") from None
    return ms_manifest, ms_hashing, sign_ec_key, sign_sigstore_pb, signing


def subject_name(key: str, manifest_digest: str) -> str:
    return f"kiln-artifact/{key}/{manifest_digest}"


def _ms_manifest(manifest: Manifest, name: str) -> Any:
    ms_manifest, ms_hashing, _, _, _ = library()
    serialization = ms_manifest.SerializationType.from_args(
        {"method": "files", "hash_type": "sha256", "allow_symlinks": False, "ignore_paths": [SIGNATURE_FILE]})
    items = [ms_manifest.FileManifestItem(path=PurePosixPath(f.path),
                                          digest=ms_hashing.Digest("sha256", bytes.fromhex(f.digest.split(":", 1)[1])))
             for f in manifest.files]
    return ms_manifest.Manifest(name, items, serialization)


def _signer(key: SigningKey) -> Any:
    """model-signing's EC signer around ``key`` (a PEM key or a KMS key: both quack alike)."""
    _, _, sign_ec_key, _, _ = library()
    signer = sign_ec_key.Signer.__new__(sign_ec_key.Signer)
    signer._private_key = key  # the one attribute its sign() uses: sign() and public_key()
    return signer


def sign_manifest(key: SigningKey, manifest: Manifest, build_key: str, manifest_digest: str) -> bytes:
    """The bundle signing this artifact with ``key``, checked against the key's public half
    before it is returned: a KMS that signed something else is an error, not a bad signature."""
    if any(f.path == SIGNATURE_FILE for f in manifest.files):
        raise TrustError(f"artifact {build_key[:12]} holds a file named {SIGNATURE_FILE}, which is where its "
                         "signature goes in the raw layout: rename that file in the build output.")
    _, _, _, _, signing = library()
    payload = signing.Payload(_ms_manifest(manifest, subject_name(build_key, manifest_digest)))
    data = _signer(key).sign(payload).bundle.to_json().encode()
    public = PublicKey(key.name, key.public_key(), key.fingerprint)
    try:
        verify_bundle(data, public, manifest, build_key, manifest_digest)
    except TrustError as e:
        raise TrustError(f"the signature {key.name!r} just made does not verify with its own public key, so it was "
                         f"not stored ({e}); a KMS key must sign exactly the message it is sent.") from None
    return data


def sign_statement(key: SigningKey, statement: Any) -> bytes:
    """A bundle over any in-toto statement (the provenance), by model-signing's signer."""

    class _Payload:  # what the signer reads of a Payload: its statement
        def __init__(self, s: Any) -> None:
            self.statement = s

    data = bytes(_signer(key).sign(_Payload(statement)).bundle.to_json().encode())
    _check_envelope(data, key)
    return data


def _check_envelope(data: bytes, key: SigningKey) -> None:
    """The DSSE signature in ``data`` verifies with ``key``'s public half (TrustError if not), as
    model-signing's own EC verifier checks it (pae over the payload, ECDSA with the curve's hash)."""
    _, _, sign_ec_key, sign_sigstore_pb, _ = library()
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    envelope = json.loads(data)["dsseEnvelope"]
    payload = base64.b64decode(envelope["payload"])
    public = key.public_key()
    try:
        public.verify(base64.b64decode(envelope["signatures"][0]["sig"]), sign_sigstore_pb.pae(payload),
                      ec.ECDSA(sign_ec_key.get_ec_key_hash(public)))
    except InvalidSignature:
        raise TrustError(f"the provenance signature {key.name!r} just made does not verify with its own public key, "
                         "so it was not stored; a KMS key must sign exactly the message it is sent.") from None


def bundle_key_hint(data: bytes) -> str | None:
    """``sha256:<hex>`` of the key a bundle says signed it (its ``publicKey.hint``), unverified."""
    try:
        hint = json.loads(data)["verificationMaterial"]["publicKey"]["hint"]
    except (ValueError, KeyError, TypeError):
        return None
    return f"sha256:{hint}" if isinstance(hint, str) and len(hint) == 64 else None


@dataclass(frozen=True)
class Verified:
    """A signature that verified: the key's fingerprint and name, and the bundle's exact bytes."""

    fingerprint: str
    key_name: str
    data: bytes = b""


def _read(data: bytes) -> Any:
    """model-signing's own reader of a bundle file (it takes a path, so the bytes go to one)."""
    _, _, _, sign_sigstore_pb, _ = library()
    fd, tmp = tempfile.mkstemp(prefix="kiln-sig-", suffix=".json")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return sign_sigstore_pb.Signature.read(Path(tmp))
    finally:
        os.unlink(tmp)


def verify_bundle(data: bytes, key: PublicKey, manifest: Manifest, build_key: str, manifest_digest: str) -> Verified:
    """Check that ``data`` is ``key``'s signature of exactly this artifact; TrustError otherwise."""
    _, _, sign_ec_key, _, _ = library()
    what = f"signature by {key.fingerprint} on artifact {build_key[:12]}"
    if len(data) > MAX_SIGNATURE_BYTES:
        raise TrustError(f"{what} is {len(data)} bytes, above the {MAX_SIGNATURE_BYTES} bound: refused.")
    if bundle_key_hint(data) != key.fingerprint:
        # model-signing accepts a bundle without a key hint (printing a warning on stdout, which
        # would corrupt --json output); Kiln writes the hint always and requires it.
        raise TrustError(f"{what} does not name its key (no publicKey.hint of {key.fingerprint}): refused.")
    verifier = sign_ec_key.Verifier.__new__(sign_ec_key.Verifier)
    verifier._public_key = key.key  # the one attribute its checks read
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the library prints warnings; stdout is for results
            signed = verifier.verify(_read(data))
    except Exception as e:  # the library raises ValueError, KeyError, InvalidSignature, protobuf errors
        detail = f"{type(e).__name__}: {str(e)[:300]}".rstrip(": ")
        raise TrustError(f"{what} does not verify ({detail}): refused.") from None
    expected = subject_name(build_key, manifest_digest)
    if signed.model_name != expected:
        raise TrustError(f"{what} was made for another artifact ({signed.model_name[:120]!r}, not {expected!r}): "
                         "a signature moved from elsewhere is refused.")
    want = _ms_manifest(manifest, expected)
    if signed != want:
        raise TrustError(f"{what} lists other files than the artifact's manifest: refused.")
    return Verified(key.fingerprint, key.name, data)

