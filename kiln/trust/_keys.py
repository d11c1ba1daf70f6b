"""Signing keys and public keys: EC keys in PEM files, and AWS KMS asymmetric keys.

A key is named by one string, the same everywhere (``--sign-key``, ``KILN_SIGN_KEY``, a trust
policy's ``public_key``):

* a path to a PEM file: a private key as OpenSSL writes it (``openssl ecparam -genkey -name
  prime256v1`` (SEC1, with or without its ``EC PARAMETERS`` block) or ``openssl genpkey
  -algorithm EC`` (PKCS#8)) for signing, a ``PUBLIC KEY`` (SubjectPublicKeyInfo) for trusting;
  an encrypted private key takes its password from ``KILN_SIGN_KEY_PASSWORD``;
* ``awskms:///alias/NAME``, ``awskms:///KEY-ID``, ``awskms:///arn:aws:kms:…`` or a bare KMS key
  ARN (the forms cosign and sigstore use; ``awskms://HOST:PORT/…`` names the endpoint, else
  boto3's own ``AWS_ENDPOINT_URL_KMS`` / ``AWS_ENDPOINT_URL`` apply): the private key never
  leaves KMS, so a CI job signs without holding it;
* in a policy only: the PEM text itself, inline.

The curves are those model-signing accepts (P-256, P-384, P-521; ``_check_supported_ec_key``
in model_signing/_signing/sign_ec_key.py @ v1.1.1). A key's fingerprint is
``sha256:<hex>`` of its public key in PEM (SubjectPublicKeyInfo): exactly the ``publicKey.hint``
model-signing writes into every bundle (``_get_verification_material``, same file), so a
signature names its key without any Kiln-specific field.

Secrets: a key's PEM text, its password and the AWS credentials never appear in a message,
a record or an object. Errors quote a key by its name (a path or a KMS URI), never by content:
a value that looks like key material is not echoed at all.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._input import read_small_file
from .._redact import redact
from ..errors import SpecError, TrustError

__all__ = ["PublicKey", "SigningKey", "load_signing_key", "load_public_key", "fingerprint_of", "is_kms_ref"]

_KMS_ARN = re.compile(r"arn:aws[a-z-]*:kms:([a-z0-9-]+):\d{12}:(key|alias)/\S+\Z")
# KMS Sign takes a RAW message of at most 4096 bytes; a longer one goes as its SHA-256 digest
# (MessageType=DIGEST). https://docs.aws.amazon.com/kms/latest/APIReference/API_Sign.html
KMS_RAW_LIMIT = 4096
_KMS_ALGORITHMS = {256: "ECDSA_SHA_256", 384: "ECDSA_SHA_384", 521: "ECDSA_SHA_512"}
MAX_KEY_FILE = 64 * 1024  # a PEM key is a few hundred bytes


# "-----BEGIN" base64-encoded at each of the three alignments: CI systems often hold a PEM key
# base64-encoded (`base64 -w0 key.pem`), and such a value must never be echoed as a "path".
_KEY_MARKERS = ("-----BEGIN", "PRIVATE KEY", "LS0tLS1CRUdJT", "0tLS0tQkVHSU", "tLS0tLUJFR0lO")
MAX_KEY_NAME = 200  # a path or KMS URI; anything longer is not shown (it may be key material)


_BASE64_RUN = re.compile(r"[A-Za-z0-9+/=]{40,}")  # 30+ bytes of base64: a PEM body line, a DER key


def may_be_key_material(value: str) -> bool:
    """True for anything that is not plainly a path or a KMS URI: armoured or base64 PEM, an
    unarmoured PEM body (a long base64 run, or several lines), or an implausibly long value."""
    return (any(m in value for m in _KEY_MARKERS) or len(value) > MAX_KEY_NAME or "\n" in value
            or bool(_BASE64_RUN.search(value)))


def _described(value: str) -> str:
    """How a key name is quoted in a message: never its content if it may hold key material."""
    if may_be_key_material(value):
        return f"(a value of {len(value)} characters, not shown: it may be key material)"
    return repr(redact(value))


def is_kms_ref(value: str) -> bool:
    return value.startswith("awskms://") or bool(_KMS_ARN.match(value))


def fingerprint_of(public_key: Any) -> str:
    """``sha256:<hex>`` of the key's PEM SubjectPublicKeyInfo (model-signing's key hint)."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(pem).hexdigest()


def _check_curve(public_key: Any, what: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name not in (
            "secp256r1", "secp384r1", "secp521r1"):
        raise SpecError(f"{what} is not an EC P-256, P-384 or P-521 key: model-signing signs with those only "
                        "(make one with `openssl ecparam -genkey -name prime256v1 -noout -out key.pem`).")


@dataclass(frozen=True)
class PublicKey:
    """A key a trust policy trusts: its name (as written), the key object and its fingerprint."""

    name: str
    key: Any  # cryptography EllipticCurvePublicKey
    fingerprint: str

    def pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return bytes(self.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


class SigningKey:
    """A private key that signs: it quacks like cryptography's EC private key (``sign``,
    ``public_key``), which is all model-signing's EC signer asks of one, so the library writes
    the bundle whether the key is in a file or in KMS."""

    name: str

    def public_key(self) -> Any:
        raise NotImplementedError

    def sign(self, data: bytes, algorithm: Any) -> bytes:
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.public_key())


class _PemKey(SigningKey):
    def __init__(self, name: str, key: Any) -> None:
        self.name, self._key = name, key

    def public_key(self) -> Any:
        return self._key.public_key()

    def sign(self, data: bytes, algorithm: Any) -> bytes:
        return bytes(self._key.sign(data, algorithm))


class _KmsKey(SigningKey):
    """An AWS KMS asymmetric key (KeySpec ECC_NIST_P256/384/521, KeyUsage SIGN_VERIFY)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._client, self._key_id = _kms_client(name)
        self._public: Any = None

    def public_key(self) -> Any:
        if self._public is None:
            self._public = _kms_public_key(self._client, self._key_id, self.name)
        return self._public

    def sign(self, data: bytes, algorithm: Any) -> bytes:
        size = self.public_key().curve.key_size
        digest_name = {256: "sha256", 384: "sha384", 521: "sha512"}[size]
        if len(data) <= KMS_RAW_LIMIT:
            request = {"Message": data, "MessageType": "RAW"}
        else:
            request = {"Message": hashlib.new(digest_name, data).digest(), "MessageType": "DIGEST"}
        try:
            out = self._client.sign(KeyId=self._key_id, SigningAlgorithm=_KMS_ALGORITHMS[size], **request)
        except Exception as e:  # botocore's errors: no credentials in them, redacted anyway
            raise TrustError(f"AWS KMS could not sign with {_described(self.name)}: {redact(str(e))}") from None
        return bytes(out["Signature"])


def _kms_client(name: str) -> tuple[Any, str]:
    """A boto3 KMS client for the key ``name`` and the KeyId to pass it."""
    endpoint = None
    if name.startswith("awskms://"):
        rest = name[len("awskms://"):]
        host, _, key_id = rest.partition("/")
        if host:
            endpoint = host if host.startswith(("http://", "https://")) else f"https://{host}"
    else:
        key_id = name
    if not key_id:
        raise SpecError(f"KMS key {_described(name)} names no key: write awskms:///alias/NAME, awskms:///KEY-ID "
                        "or a key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID).")
    arn = _KMS_ARN.match(key_id)
    region = arn.group(1) if arn else (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))
    try:
        import boto3
    except ImportError:
        raise SpecError(f"KMS key {_described(name)} needs boto3: pip install 'kiln-engines[s3]'.") from None
    if not region:
        raise SpecError(f"KMS key {_described(name)}: no AWS region; set AWS_REGION or name the key by its ARN.")
    client = boto3.session.Session().client("kms", region_name=region, endpoint_url=endpoint)
    return client, key_id


def _kms_public_key(client: Any, key_id: str, name: str) -> Any:
    from cryptography.hazmat.primitives import serialization

    try:
        out = client.get_public_key(KeyId=key_id)
    except Exception as e:
        raise TrustError(f"AWS KMS key {_described(name)} could not be read: {redact(str(e))}. Check the alias or "
                         "ARN, the region and that these credentials may call kms:GetPublicKey.") from None
    if out.get("KeyUsage") not in (None, "SIGN_VERIFY"):
        raise SpecError(f"KMS key {_described(name)} is a {out.get('KeyUsage')} key; signing needs KeyUsage "
                        "SIGN_VERIFY and KeySpec ECC_NIST_P256.")
    key = serialization.load_der_public_key(bytes(out["PublicKey"]))
    _check_curve(key, f"KMS key {_described(name)}")
    return key


def load_signing_key(value: str) -> SigningKey:
    """The signing key ``value`` names (a PEM file or a KMS key); SpecError before any work if it
    cannot be used. KMS keys are checked by fetching their public key (one call)."""
    value = value.strip()
    if not value:
        raise SpecError("--sign-key / KILN_SIGN_KEY is empty: give a PEM private key file or awskms:///alias/NAME.")
    if is_kms_ref(value):
        key = _KmsKey(value)
        key.public_key()
        return key
    if may_be_key_material(value):
        raise SpecError(f"--sign-key / KILN_SIGN_KEY holds {_described(value)}: give the path of the PEM file "
                        "instead, so the key never sits in the environment or a command line.")
    fix = ("give a PEM private key file (openssl ecparam -genkey -name prime256v1 -noout -out key.pem) or "
           "awskms:///alias/NAME")
    path = Path(value).expanduser()
    if not path.exists():
        raise SpecError(f"signing key file {_described(value)} does not exist: {fix}.")
    data = read_small_file(path, MAX_KEY_FILE, "signing key file", SpecError, fix)
    from cryptography.hazmat.primitives import serialization

    password = os.environ.get("KILN_SIGN_KEY_PASSWORD")
    try:
        private = serialization.load_pem_private_key(data, password.encode() if password is not None else None)
    except TypeError:
        raise SpecError(f"signing key {_described(value)} is encrypted: set KILN_SIGN_KEY_PASSWORD, or pass an "
                        "unencrypted key." if password is None else
                        f"signing key {_described(value)} is not encrypted, but KILN_SIGN_KEY_PASSWORD is set: "
                        "unset it.") from None
    except ValueError:
        raise SpecError(f"signing key {_described(value)} is not a PEM private key (or its password is wrong): "
                        "write one with `openssl ecparam -genkey -name prime256v1 -noout -out key.pem`.") from None
    _check_curve(private.public_key(), f"signing key {_described(value)}")
    return _PemKey(value, private)


def load_public_key(value: str, base: Path | None = None, *, where: str = "") -> PublicKey:
    """A trusted key: a PEM public key file (relative to ``base``), inline PEM, or a KMS key."""
    from cryptography.hazmat.primitives import serialization

    text = value.strip()
    at = f"{where}: " if where else ""
    if is_kms_ref(text):
        client, key_id = _kms_client(text)
        key = _kms_public_key(client, key_id, text)
        return PublicKey(text, key, fingerprint_of(key))
    if text.startswith("-----BEGIN"):
        data, name = text.encode(), "(inline PEM)"
    elif may_be_key_material(text):
        raise SpecError(f"{at}public_key holds {_described(text)}: give a PEM public key file, inline PEM "
                        "(-----BEGIN PUBLIC KEY-----) or awskms:///alias/NAME.")
    else:
        path = Path(text).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        if not path.exists():
            raise SpecError(f"{at}public key file {path} does not exist (relative paths are relative to the policy "
                            "file).")
        data = read_small_file(path, MAX_KEY_FILE, f"{at}public key file", SpecError,
                               "paths are relative to the policy file")
        name = text
    if b"PRIVATE KEY" in data:  # anywhere: `openssl ecparam -genkey` puts EC PARAMETERS first
        raise SpecError(f"{at}{_described(name) if name != '(inline PEM)' else 'the inline PEM'} holds a private key: "
                        "a trust policy names public keys only (`openssl ec -in key.pem -pubout -out key.pub.pem`).")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise SpecError(f"{at}{_described(name)} is not a PEM public key (-----BEGIN PUBLIC KEY-----).") from None
    _check_curve(key, f"{at}{_described(name)}")
    return PublicKey(name, key, fingerprint_of(key))
