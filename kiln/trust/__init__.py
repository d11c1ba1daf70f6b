"""Signed artifacts and a deployment's trust policy (DESIGN invariant 5: an engine is code).

Signatures are OpenSSF model-signing bundles, made and read by that library
(:mod:`._bundle`); keys are EC keys in PEM files or AWS KMS keys (:mod:`._keys`); the policy a
deployment reads says which keys it trusts for which models and remotes (:mod:`._policy`); the
build record's provenance is also emitted as a signed SLSA statement (:mod:`._provenance`).

Below the store in the layering: the store keeps signatures as opaque files and asks its
policy (``Store.trust``) whether an artifact may be served; nothing here touches the store.
"""

from ._bundle import MAX_SIGNATURE_BYTES, SIGNATURE_FILE, Verified, bundle_key_hint, sign_manifest, sign_statement, verify_bundle
from ._keys import PublicKey, SigningKey, fingerprint_of, load_public_key, load_signing_key
from ._policy import Signature, TrustPolicy, TrustedKey, describe_signers, keys_policy, load_policy, parse_policy
from ._provenance import provenance_statement

__all__ = [
    "MAX_SIGNATURE_BYTES",
    "SIGNATURE_FILE",
    "PublicKey",
    "Signature",
    "SigningKey",
    "TrustPolicy",
    "TrustedKey",
    "Verified",
    "bundle_key_hint",
    "describe_signers",
    "fingerprint_of",
    "keys_policy",
    "load_policy",
    "load_public_key",
    "load_signing_key",
    "parse_policy",
    "provenance_statement",
    "sign_manifest",
    "sign_statement",
    "verify_bundle",
]
