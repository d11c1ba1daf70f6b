"""Signing keys and public keys as users have them: PEM files written by the real `openssl`.

Every private-key format OpenSSL writes for an EC key (SEC1 with and without its ``EC
PARAMETERS`` block, PKCS#8, encrypted PKCS#8) must load and sign; keys model-signing cannot use
(RSA, Ed25519, a non-NIST curve) are refused naming the curve requirement; a key's fingerprint
is model-signing's ``publicKey.hint`` and the sha256 of the PEM ``openssl ec -pubout`` writes;
no message ever holds key material or a password.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner

from kiln.cli import cli
from kiln.errors import SpecError
from kiln.manifests import Descriptor, FileEntry, Manifest
from kiln.manifests._manifest import CONFIG_MEDIA_TYPE
from kiln.trust import bundle_key_hint, fingerprint_of, load_public_key, load_signing_key, sign_manifest, verify_bundle
from tests.conftest import run_kiln

pytest.importorskip("model_signing", reason="signatures need model-signing (pip install 'kiln-engines[signing]')")

Openssl = Callable[..., bytes]


@pytest.fixture
def openssl(tmp_path: Path) -> Openssl:
    """Run the real `openssl` in tmp_path; its stdout."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl binary is not installed: these tests check the files it writes")

    def run(*args: str) -> bytes:
        r = subprocess.run(["openssl", *args], cwd=tmp_path, capture_output=True, check=False)
        assert r.returncode == 0, (args, r.stderr.decode())
        return r.stdout

    return run


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _artifact() -> tuple[Manifest, str, str]:
    files = (FileEntry("engine.pt2", _sha(b"engine"), 6), FileEntry("weights.safetensors", _sha(b"w" * 50), 50))
    manifest = Manifest(Descriptor(CONFIG_MEDIA_TYPE, _sha(b"record"), 6), files, {})
    return manifest, "b" * 64, _sha(manifest.to_bytes())


def _secret_lines(pem: Path) -> list[str]:
    """The base64 body lines of a PEM file: what must never appear in a message."""
    return [line for line in pem.read_text().splitlines() if line and not line.startswith("-----")]


def _no_secret(message: str, *pems: Path) -> None:
    for pem in pems:
        for line in _secret_lines(pem):
            assert line[:24] not in message, message
    assert "PRIVATE KEY-----" not in message and "EC PARAMETERS" not in message


# --- private key formats, as OpenSSL writes them ------------------------------------------------

def _sec1_with_params(openssl: Openssl, name: str = "k.pem") -> str:
    openssl("ecparam", "-genkey", "-name", "prime256v1", "-out", name)
    return name


FORMATS = {
    "sec1-with-ec-parameters": (lambda o: _sec1_with_params(o), "-----BEGIN EC PARAMETERS-----"),
    "sec1-noout": (lambda o: (o("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", "k.pem"), "k.pem")[1],
                   "-----BEGIN EC PRIVATE KEY-----"),
    "pkcs8-genpkey": (lambda o: (o("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                                   "-out", "k.pem"), "k.pem")[1], "-----BEGIN PRIVATE KEY-----"),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_openssl_private_key_formats_load_and_sign(tmp_path: Path, openssl: Openssl, fmt: str) -> None:
    make, first_line = FORMATS[fmt]
    name = make(openssl)
    path = tmp_path / name
    assert path.read_text().startswith(first_line)  # the format under test, as openssl wrote it
    key = load_signing_key(str(path))
    assert key.name == str(path)
    # Its fingerprint is that of the public key openssl derives from the same file.
    spki = openssl("pkey", "-in", name, "-pubout")
    assert key.fingerprint == _sha(spki)
    manifest, build_key, digest = _artifact()
    bundle = sign_manifest(key, manifest, build_key, digest)
    (tmp_path / "k.pub.pem").write_bytes(spki)
    trusted = load_public_key(str(tmp_path / "k.pub.pem"))
    assert verify_bundle(bundle, trusted, manifest, build_key, digest).fingerprint == key.fingerprint


def test_a_path_with_surrounding_space_or_tilde_loads(tmp_path: Path, openssl: Openssl,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _sec1_with_params(openssl)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_signing_key(" ~/k.pem\n").fingerprint == load_signing_key(str(tmp_path / "k.pem")).fingerprint


@pytest.fixture
def encrypted(tmp_path: Path, openssl: Openssl) -> Path:
    openssl("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", "plain.pem")
    openssl("pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", "plain.pem", "-out", "enc.pem", "-passout", "pass:secret")
    path = tmp_path / "enc.pem"
    assert path.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    return path


def test_an_encrypted_pkcs8_key_loads_with_its_password(tmp_path: Path, encrypted: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_SIGN_KEY_PASSWORD", "secret")
    key = load_signing_key(str(encrypted))
    monkeypatch.delenv("KILN_SIGN_KEY_PASSWORD")
    assert key.fingerprint == load_signing_key(str(tmp_path / "plain.pem")).fingerprint
    manifest, build_key, digest = _artifact()
    assert bundle_key_hint(sign_manifest(key, manifest, build_key, digest)) == key.fingerprint


def test_a_wrong_password_is_a_clear_error_without_the_password(encrypted: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_SIGN_KEY_PASSWORD", "hunter2-not-it")
    with pytest.raises(SpecError) as e:
        load_signing_key(str(encrypted))
    msg = str(e.value)
    assert repr(str(encrypted)) in msg and "password is wrong" in msg
    assert "hunter2" not in msg and "secret" not in msg
    _no_secret(msg, encrypted)


def test_a_missing_password_is_a_clear_error(encrypted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_SIGN_KEY_PASSWORD", raising=False)
    with pytest.raises(SpecError) as e:
        load_signing_key(str(encrypted))
    msg = str(e.value)
    assert repr(str(encrypted)) in msg and "is encrypted: set KILN_SIGN_KEY_PASSWORD" in msg
    _no_secret(msg, encrypted)


def test_a_password_for_an_unencrypted_key_is_an_error(tmp_path: Path, encrypted: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_SIGN_KEY_PASSWORD", "hunter2-not-it")
    with pytest.raises(SpecError) as e:
        load_signing_key(str(tmp_path / "plain.pem"))
    assert "is not encrypted, but KILN_SIGN_KEY_PASSWORD is set" in str(e.value)
    assert "hunter2" not in str(e.value)


def test_a_wrong_password_through_the_real_cli(tmp_path: Path, encrypted: Path) -> None:
    """As a user sees it: one line, exit 2, no traceback, no password; KILN_SIGN_KEY works like --sign-key."""
    r = run_kiln("sign", "c" * 64, "--sign-key", str(encrypted), env={"KILN_SIGN_KEY_PASSWORD": "hunter2-not-it"})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "hunter2" not in r.stderr + r.stdout
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("kiln: error: signing key ") and "password is wrong" in line
    r = CliRunner().invoke(cli, ["sign", "c" * 64], env={"KILN_SIGN_KEY": str(encrypted),
                                                          "KILN_SIGN_KEY_PASSWORD": None})
    assert r.exit_code == 2, r.output
    assert "is encrypted: set KILN_SIGN_KEY_PASSWORD" in r.stderr


@pytest.mark.parametrize("curve", ["secp384r1", "secp521r1"])
def test_p384_and_p521_keys_sign(tmp_path: Path, openssl: Openssl, curve: str) -> None:
    openssl("ecparam", "-genkey", "-name", curve, "-noout", "-out", "k.pem")
    key = load_signing_key(str(tmp_path / "k.pem"))
    assert key.public_key().curve.name == curve
    spki = openssl("ec", "-in", "k.pem", "-pubout")
    assert key.fingerprint == _sha(spki)
    manifest, build_key, digest = _artifact()
    bundle = sign_manifest(key, manifest, build_key, digest)
    (tmp_path / "k.pub.pem").write_bytes(spki)
    assert verify_bundle(bundle, load_public_key("k.pub.pem", tmp_path), manifest, build_key, digest)


NOT_USABLE = {
    "rsa": ("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "k.pem"),
    "ed25519": ("genpkey", "-algorithm", "ed25519", "-out", "k.pem"),
    "secp256k1": ("ecparam", "-genkey", "-name", "secp256k1", "-noout", "-out", "k.pem"),
}


@pytest.mark.parametrize("kind", list(NOT_USABLE))
def test_keys_model_signing_cannot_use_are_refused_naming_the_curves(tmp_path: Path, openssl: Openssl,
                                                                      kind: str) -> None:
    openssl(*NOT_USABLE[kind])
    with pytest.raises(SpecError) as e:
        load_signing_key(str(tmp_path / "k.pem"))
    msg = str(e.value)
    assert repr(str(tmp_path / "k.pem")) in msg
    assert "is not an EC P-256, P-384 or P-521 key" in msg and "openssl ecparam -genkey -name prime256v1" in msg
    _no_secret(msg, tmp_path / "k.pem")
    # Nor may a policy trust its public half.
    (tmp_path / "k.pub.pem").write_bytes(openssl("pkey", "-in", "k.pem", "-pubout"))
    with pytest.raises(SpecError, match="is not an EC P-256, P-384 or P-521 key"):
        load_public_key("k.pub.pem", tmp_path)


# --- what load_signing_key refuses ---------------------------------------------------------------

def test_inline_pem_is_refused_without_echoing_it(tmp_path: Path, openssl: Openssl) -> None:
    _sec1_with_params(openssl)
    pem = (tmp_path / "k.pem").read_text()
    for value in (pem, "  " + pem, pem.replace("\n", "\\n")):
        with pytest.raises(SpecError) as e:
            load_signing_key(value)
        assert "not shown: it may be key material" in str(e.value) and "path of the PEM file" in str(e.value)
        _no_secret(str(e.value), tmp_path / "k.pem")
    # Through the CLI (a key pasted into --sign-key / KILN_SIGN_KEY): the same, and nowhere in the output.
    for args, env in ((["--sign-key", pem], {}), ([], {"KILN_SIGN_KEY": pem})):
        r = CliRunner().invoke(cli, ["sign", "c" * 64, *args], env=env)
        assert r.exit_code == 2, r.output
        assert "not shown" in r.stderr
        _no_secret(r.output, tmp_path / "k.pem")


def test_base64_encoded_key_material_is_not_echoed(tmp_path: Path, openssl: Openssl) -> None:
    _sec1_with_params(openssl)
    encoded = base64.b64encode((tmp_path / "k.pem").read_bytes()).decode()
    with pytest.raises(SpecError) as e:
        load_signing_key(encoded)
    assert encoded[40:80] not in str(e.value), str(e.value)


def test_a_missing_key_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "absent.pem"
    with pytest.raises(SpecError) as e:
        load_signing_key(str(path))
    msg = str(e.value)
    assert repr(str(path)) in msg and "does not exist" in msg
    assert "openssl ecparam -genkey" in msg and "awskms:///alias/NAME" in msg
    with pytest.raises(SpecError, match="is a directory"):
        load_signing_key(str(tmp_path))
    with pytest.raises(SpecError, match="is empty"):
        load_signing_key("  ")


def test_a_public_key_or_junk_is_not_a_signing_key(tmp_path: Path, openssl: Openssl) -> None:
    _sec1_with_params(openssl)
    openssl("ec", "-in", "k.pem", "-pubout", "-out", "k.pub.pem")
    (tmp_path / "junk.pem").write_text("not a key at all\n")
    for name in ("k.pub.pem", "junk.pem"):
        with pytest.raises(SpecError) as e:
            load_signing_key(str(tmp_path / name))
        assert repr(str(tmp_path / name)) in str(e.value) and "is not a PEM private key" in str(e.value)


# --- fingerprints ------------------------------------------------------------------------------

def test_fingerprint_is_model_signings_key_hint(tmp_path: Path, openssl: Openssl) -> None:
    for curve in ("prime256v1", "secp384r1"):
        openssl("ecparam", "-genkey", "-name", curve, "-out", f"{curve}.pem")
        key = load_signing_key(str(tmp_path / f"{curve}.pem"))
        manifest, build_key, digest = _artifact()
        bundle = json.loads(sign_manifest(key, manifest, build_key, digest))
        hint = bundle["verificationMaterial"]["publicKey"]["hint"]
        assert fingerprint_of(key.public_key()) == f"sha256:{hint}" == key.fingerprint
        # ...and the sha256 of the SPKI PEM openssl writes, byte for byte.
        spki = openssl("ec", "-in", f"{curve}.pem", "-pubout")
        assert spki.startswith(b"-----BEGIN PUBLIC KEY-----\n") and spki.endswith(b"-----END PUBLIC KEY-----\n")
        assert key.fingerprint == "sha256:" + hashlib.sha256(spki).hexdigest()
        (tmp_path / "pub.pem").write_bytes(spki)
        public = load_public_key(str(tmp_path / "pub.pem"))
        assert public.fingerprint == key.fingerprint and public.pem() == spki


def test_keys_differ_in_fingerprint(tmp_path: Path, openssl: Openssl) -> None:
    openssl("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", "a.pem")
    openssl("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", "b.pem")
    a, b = (load_signing_key(str(tmp_path / n)) for n in ("a.pem", "b.pem"))
    assert a.fingerprint != b.fingerprint and a.fingerprint.startswith("sha256:") and len(a.fingerprint) == 71


# --- load_public_key -----------------------------------------------------------------------------

@pytest.fixture
def pub(tmp_path: Path, openssl: Openssl) -> Path:
    _sec1_with_params(openssl)
    openssl("ec", "-in", "k.pem", "-pubout", "-out", "k.pub.pem")
    return tmp_path / "k.pub.pem"


def test_load_public_key_from_a_pem_file(tmp_path: Path, pub: Path) -> None:
    want = _sha(pub.read_bytes())
    absolute = load_public_key(str(pub))
    assert (absolute.name, absolute.fingerprint) == (str(pub), want)
    relative = load_public_key("k.pub.pem", tmp_path)
    assert (relative.name, relative.fingerprint) == ("k.pub.pem", want)
    # An absolute path ignores the base.
    assert load_public_key(str(pub), tmp_path / "elsewhere").fingerprint == want
    with pytest.raises(SpecError) as e:
        load_public_key("k.pub.pem", tmp_path / "elsewhere", where="trust policy p.yaml, keys[0]")
    assert str(e.value).startswith("trust policy p.yaml, keys[0]: public key file ")
    assert str(tmp_path / "elsewhere" / "k.pub.pem") in str(e.value)


def test_load_public_key_inline_pem(pub: Path) -> None:
    text = pub.read_text()
    for value in (text, "\n  " + text + "\n\n", text.rstrip("\n")):
        key = load_public_key(value)
        assert (key.name, key.fingerprint) == ("(inline PEM)", _sha(pub.read_bytes()))
    with pytest.raises(SpecError) as e:
        load_public_key(text.replace("A", "!", 3))
    assert "'(inline PEM)' is not a PEM public key" in str(e.value)


PRIVATE_FILES = {
    "sec1-with-ec-parameters": ("ecparam", "-genkey", "-name", "prime256v1", "-out", "priv.pem"),
    "sec1-noout": ("ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", "priv.pem"),
    "pkcs8": ("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "priv.pem"),
    "encrypted-pkcs8": ("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-aes-256-cbc",
                        "-pass", "pass:secret", "-out", "priv.pem"),
}


@pytest.mark.parametrize("fmt", list(PRIVATE_FILES))
def test_a_private_key_file_is_refused_as_a_public_key_without_echoing_it(tmp_path: Path, openssl: Openssl,
                                                                           fmt: str) -> None:
    openssl(*PRIVATE_FILES[fmt])
    for value in ("priv.pem", (tmp_path / "priv.pem").read_text()):  # a file, and the same pasted inline
        with pytest.raises(SpecError) as e:
            load_public_key(value, tmp_path, where="trust policy p.yaml, keys[0]")
        assert str(e.value).startswith("trust policy p.yaml, keys[0]: ")
        _no_secret(str(e.value), tmp_path / "priv.pem")


@pytest.mark.parametrize("fmt", [
    "sec1-with-ec-parameters",
    "sec1-noout", "pkcs8", "encrypted-pkcs8"])
def test_a_private_key_file_is_named_as_one(tmp_path: Path, openssl: Openssl, fmt: str) -> None:
    openssl(*PRIVATE_FILES[fmt])
    for value in ("priv.pem", (tmp_path / "priv.pem").read_text()):
        with pytest.raises(SpecError) as e:
            load_public_key(value, tmp_path)
        assert "holds a private key" in str(e.value) and "openssl ec -in key.pem -pubout" in str(e.value)
