"""Signing with an AWS KMS key, against a real KMS-protocol server (moto on loopback).

The private key never leaves the server: Kiln asks KMS for the public key (GetPublicKey) and for
each signature (Sign). The endpoint is boto3's own ``AWS_ENDPOINT_URL_KMS`` (Kiln passes no
endpoint for ``awskms:///…``). Every check reads back what Kiln wrote without Kiln: the
fingerprint is recomputed from the public key KMS hands out, and the materialised artifact is
verified by model-signing's own CLI with that public key in PEM.

moto signs only RAW messages (it ignores ``MessageType=DIGEST``; see ``verify`` in
moto/kms/models.py), and Kiln sends RAW up to 4096 bytes (``KMS_RAW_LIMIT``), so the artifacts
here are small; one test checks that a large one, whose DIGEST signature moto gets wrong, is
refused loudly instead of being stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_kiln
from tests.remote.conftest import FileView, MotoServer, aws_env, file_view, moto_server  # noqa: F401

from .conftest import artifact, hub_model, model_signing_cli, put, write_policy

ALIAS = "alias/kiln-ci"


@dataclass(frozen=True)
class KmsKey:
    key_id: str
    arn: str
    public: Path  # the KMS public key, exported to PEM (SubjectPublicKeyInfo)
    fingerprint: str
    client: Any

    @property
    def names(self) -> dict[str, str]:
        """Every way to name this key to Kiln."""
        return {"alias": f"awskms:///{ALIAS}", "arn": self.arn, "awskms-arn": f"awskms:///{self.arn}",
                "key-id": f"awskms:///{self.key_id}"}


def kms_client(endpoint: str) -> Any:
    import boto3

    return boto3.session.Session().client("kms", endpoint_url=endpoint, region_name="us-east-1",
                                          aws_access_key_id="kiln-test-key", aws_secret_access_key="kiln-test-secret")


def export_public(client: Any, key_id: str, path: Path) -> tuple[Path, str]:
    """The key's public half as KMS hands it out (DER), written as PEM; and sha256 of that PEM."""
    from cryptography.hazmat.primitives import serialization

    der = client.get_public_key(KeyId=key_id)["PublicKey"]
    pem = serialization.load_der_public_key(der).public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    path.write_bytes(pem)
    return path, "sha256:" + hashlib.sha256(pem).hexdigest()


def point_alias(client: Any, alias: str, key_id: str) -> None:
    """``alias`` names ``key_id`` (the moto server lives for the session: the alias may exist)."""
    try:
        client.create_alias(AliasName=alias, TargetKeyId=key_id)
    except client.exceptions.AlreadyExistsException:
        client.update_alias(AliasName=alias, TargetKeyId=key_id)


@pytest.fixture
def kms(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> KmsKey:
    """A fresh ECC_NIST_P256 SIGN_VERIFY key, aliased alias/kiln-ci; Kiln reaches KMS through boto3's env."""
    aws_env(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", moto_server.endpoint)
    client = kms_client(moto_server.endpoint)
    meta = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY", Description="kiln test")["KeyMetadata"]
    point_alias(client, ALIAS, meta["KeyId"])
    public, fp = export_public(client, meta["KeyId"], tmp_path / "kms.pub.pem")
    assert meta["Arn"].startswith("arn:aws:kms:us-east-1:") and meta["Arn"].endswith(f":key/{meta['KeyId']}")
    return KmsKey(meta["KeyId"], meta["Arn"], public, fp, client)


def home() -> Path:
    return Path(os.environ["KILN_HOME"])


def signature_files(root: Path | None = None) -> list[Path]:
    d = (root or home()) / "signatures"
    return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []


def kms_policy(path: Path, name: str) -> Path:
    return write_policy(path, [{"name": "ci-kms", "public_key": name, "models": ["acme/*"]}])


def fetch(key: str, dest: Path, policy: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_kiln("fetch", "--key", key, "--dest", str(dest), "--trust-policy", str(policy), *extra, env=env)


def model_signing_verifies(directory: Path, public: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(model_signing_cli()), "verify", "key", str(directory), "--signature",
                           str(directory / "model.sig"), "--public_key", str(public)], capture_output=True, text=True)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiln: error:"), r.stderr
    return lines[0]


@pytest.mark.parametrize("form", ["alias", "arn", "awskms-arn", "key-id"])
def test_a_kms_signed_artifact_is_served_and_model_signing_verifies_it(tmp_path: Path, kms: KmsKey, form: str) -> None:
    name = kms.names[form]
    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    r = run_kiln("sign", e["key"], "--sign-key", name, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    [signed] = json.loads(r.stdout)
    assert signed["key"] == e["key"] and signed["manifest"] == e["manifest"]
    assert signed["fingerprint"] == kms.fingerprint  # sha256 of the PEM SPKI KMS hands out
    sigs = signature_files()
    assert [p.name for p in sigs] == sorted([kms.fingerprint[7:] + ".provenance.json", kms.fingerprint[7:] + ".sig"])
    bundle = json.loads(sigs[1].read_bytes())
    assert bundle["verificationMaterial"]["publicKey"]["hint"] == kms.fingerprint[7:]

    dest = tmp_path / "dest"
    r = fetch(e["key"], dest, kms_policy(tmp_path / "policy.yaml", name), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert any("accepted by the trust policy" in n and kms.fingerprint in n for n in json.loads(r.stdout)["notes"])
    assert (dest / "model.sig").is_file() and (dest / "engine.pt2").read_bytes() == b"engine bytes"
    ok = model_signing_verifies(dest, kms.public)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The library refuses it once a file changed: the check above means something.
    (dest / "sub" / "tokenizer.json").write_bytes(b"{}")
    assert model_signing_verifies(dest, kms.public).returncode != 0


def test_the_kms_provenance_signature_verifies_with_the_kms_public_key(tmp_path: Path, kms: KmsKey) -> None:
    """Kiln checks the artifact signature it gets from KMS before filing it; the provenance is
    signed by KMS too, and must verify with the same public key."""
    import base64

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    r = run_kiln("sign", e["key"], "--sign-key", kms.names["alias"])
    assert r.returncode == 0, r.stderr
    [prov_path] = [p for p in signature_files() if p.name.endswith(".provenance.json")]
    env = json.loads(prov_path.read_bytes())["dsseEnvelope"]
    payload = base64.b64decode(env["payload"])
    pae = b"DSSEv1 %d %s %d %s" % (len(env["payloadType"]), env["payloadType"].encode(), len(payload), payload)
    pub = serialization.load_pem_public_key(kms.public.read_bytes())
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(base64.b64decode(env["signatures"][0]["sig"]), pae, ec.ECDSA(hashes.SHA256()))  # raises if bad
    assert json.loads(payload)["predicate"]["runDetails"]["metadata"]["invocationId"] == e["key"]


def test_a_kms_key_that_does_not_exist_is_a_clear_error(tmp_path: Path, kms: KmsKey) -> None:
    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    for name in ("awskms:///alias/no-such-kiln-key", "awskms:///0b7c7a9e-0000-4000-8000-000000000000",
                 kms.arn.rsplit("/", 1)[0] + "/0b7c7a9e-0000-4000-8000-000000000000"):
        r = run_kiln("sign", e["key"], "--sign-key", name)
        line = one_error_line(r)
        assert name in line, line
        assert "KMS" in line
        assert r.stdout == ""
    assert signature_files() == [], "nothing is signed with a key that does not exist"
    # A policy naming it is refused before any work as well.
    r = fetch(e["key"], tmp_path / "dest", kms_policy(tmp_path / "p.yaml", "awskms:///alias/no-such-kiln-key"))
    assert "alias/no-such-kiln-key" in one_error_line(r) and not (tmp_path / "dest").exists()


def test_a_kms_key_that_cannot_sign_is_refused(tmp_path: Path, kms: KmsKey) -> None:
    meta = kms.client.create_key(KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]
    point_alias(kms.client, "alias/kiln-encrypt", meta["KeyId"])
    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    for name in ("awskms:///alias/kiln-encrypt", f"awskms:///{meta['KeyId']}", meta["Arn"]):
        r = run_kiln("sign", e["key"], "--sign-key", name)
        line = one_error_line(r)
        assert name in line and ("SIGN_VERIFY" in line or "ENCRYPT_DECRYPT" in line), line
    assert signature_files() == []


def test_a_kms_key_of_another_kind_of_signing_is_refused(tmp_path: Path, kms: KmsKey) -> None:
    """An RSA signing key: KMS signs with it, but model-signing takes EC keys only."""
    meta = kms.client.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    line = one_error_line(run_kiln("sign", e["key"], "--sign-key", f"awskms:///{meta['KeyId']}"))
    assert "EC" in line and "P-256" in line, line
    assert signature_files() == []


def test_push_with_a_kms_key_then_a_fresh_store_fetches_under_the_kms_policy(
        tmp_path: Path, kms: KmsKey, file_view: FileView) -> None:
    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    assert signature_files() == []
    r = run_kiln("push", "--key", e["key"], "--sign-key", kms.names["alias"], "--remote", file_view.url, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)[0]["signatures"] == 2  # the signature and the signed provenance
    objs = file_view.objects()
    sig_objs = sorted(k for k in objs if k.startswith("signatures/"))
    mhex = e["manifest"][7:]
    assert sig_objs == [f"signatures/{mhex}/{kms.fingerprint[7:]}.provenance.json",
                        f"signatures/{mhex}/{kms.fingerprint[7:]}.sig"]
    assert any(k.startswith("index/") for k in objs)

    policy = kms_policy(tmp_path / "policy.yaml", kms.names["arn"])  # the same key, named another way
    fresh = {"KILN_HOME": str(tmp_path / "deploy-store")}
    dest = tmp_path / "dest"
    r = run_kiln("--remote", file_view.url, "fetch", "--key", e["key"], "--dest", str(dest), "--trust-policy",
                 str(policy), env=fresh)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (dest / "model.sig").is_file()
    ok = model_signing_verifies(dest, kms.public)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert signature_files(tmp_path / "deploy-store"), "the pulled signature is kept in the fresh store"

    # Another KMS key is not this one: a policy trusting only it refuses the artifact.
    other = kms.client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    stranger = kms_policy(tmp_path / "other.yaml", f"awskms:///{other['KeyId']}")
    dest2 = tmp_path / "dest2"
    r = run_kiln("--remote", file_view.url, "fetch", "--key", e["key"], "--dest", str(dest2), "--trust-policy",
                 str(stranger), env={"KILN_HOME": str(tmp_path / "deploy-2")})
    assert r.returncode == 2 and kms.fingerprint in r.stderr and not dest2.exists(), r.stderr


def test_a_large_artifact_whose_kms_signature_does_not_verify_is_refused_loudly(tmp_path: Path, kms: KmsKey) -> None:
    """Over 4096 bytes of DSSE PAE, Kiln asks KMS to sign the digest (MessageType=DIGEST); moto
    ignores MessageType and signs the digest as a message, so the signature it returns is not
    of this artifact. Kiln checks every artifact signature before filing it: exit 2, nothing stored.
    (Against AWS KMS the same call signs correctly.)"""
    art = artifact(tmp_path / "art")
    for i in range(80):  # ~80 bytes of payload per file: the PAE is well over 4096 bytes
        (art / "shards" / f"shard-{i:03d}.bin").parent.mkdir(exist_ok=True)
        (art / "shards" / f"shard-{i:03d}.bin").write_bytes(b"%d" % i)
    e = put(art, hub_model("acme/llama"))
    assert e["files"] > 80
    r = run_kiln("sign", e["key"], "--sign-key", kms.names["alias"])
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.startswith("kiln: error:"), r.stderr
    assert "does not verify" in r.stderr or "KMS" in r.stderr, r.stderr
    assert signature_files() == [], "a signature that does not verify is never stored"
    # Nor does push publish the artifact after a failed signature.
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir()
    r = run_kiln("push", "--key", e["key"], "--sign-key", kms.names["alias"], "--remote", str(remote_dir))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert not [p for p in remote_dir.rglob("*") if p.is_file() and "index" in p.parts]
    assert signature_files() == []


def _pae_size(bundle_path: Path) -> int:
    import base64

    env = json.loads(bundle_path.read_bytes())["dsseEnvelope"]
    payload = base64.b64decode(env["payload"])
    return len(b"DSSEv1 %d %s %d %s" % (len(env["payloadType"]), env["payloadType"].encode(), len(payload), payload))


def test_a_kms_provenance_signature_that_does_not_verify_is_never_stored(tmp_path: Path, kms: KmsKey) -> None:
    """An artifact between the two limits: its model-signing payload fits a RAW KMS message, its
    (larger) provenance statement does not, so only the provenance is signed as a DIGEST, which
    moto gets wrong. Kiln must either refuse loudly or file only signatures that verify."""
    import base64

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from .conftest import make_key

    art = artifact(tmp_path / "art")
    for i in range(15):
        (art / f"s{i:02d}").write_bytes(b"%d" % i)
    e = put(art, hub_model("acme/llama"))
    # Measure both payloads on a PEM signature of the same artifact (same statements, same sizes).
    pem = make_key(tmp_path / "keys", "sizer")
    assert run_kiln("sign", e["key"], "--sign-key", str(pem.private)).returncode == 0
    d = home() / "signatures" / e["manifest"][7:]
    sig_pae = _pae_size(d / (pem.fingerprint[7:] + ".sig"))
    prov_pae = _pae_size(d / (pem.fingerprint[7:] + ".provenance.json"))
    assert sig_pae <= 4096 < prov_pae, (sig_pae, prov_pae)  # the window this test is about

    r = run_kiln("sign", e["key"], "--sign-key", kms.names["alias"])
    prov = d / (kms.fingerprint[7:] + ".provenance.json")
    if r.returncode != 0:  # refused loudly: fine, if nothing of this key was filed
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert not list(d.glob(kms.fingerprint[7:] + "*"))
        return
    env = json.loads(prov.read_bytes())["dsseEnvelope"]
    payload = base64.b64decode(env["payload"])
    pae = b"DSSEv1 %d %s %d %s" % (len(env["payloadType"]), env["payloadType"].encode(), len(payload), payload)
    pub = serialization.load_pem_public_key(kms.public.read_bytes())
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(base64.b64decode(env["signatures"][0]["sig"]), pae, ec.ECDSA(hashes.SHA256()))
