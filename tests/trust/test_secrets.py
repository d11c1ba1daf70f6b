"""Signing secrets are never printed nor written: a PEM private key (its PEM body, its private
scalar in hex and decimal), the password of an encrypted key, and the AWS credentials a KMS key
is used with. Not on stdout/stderr (human or --json output, successes and failures), not in any
file of the local stores or the materialised artifacts, not in any object of the bucket.

Everything runs against real servers: an S3 remote and KMS, both moto on loopback.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Iterable

import pytest

from tests.conftest import run_kiln
from tests.remote.conftest import MotoServer, S3View, aws_env, moto_server, s3_view  # noqa: F401

from .conftest import SPEC, KeyPair, artifact, hub_model, make_key, put, write_policy

ALIAS = "alias/kiln-ci"
_BLOCK = re.compile(r"-----BEGIN ([A-Z ]+)-----\n(.*?)\n-----END \1-----", re.S)


def private_blocks(pem: str) -> list[tuple[str, list[str]]]:
    """(label, base64 lines) of each PRIVATE KEY block of a PEM text (not its EC PARAMETERS)."""
    return [(label, body.split("\n")) for label, body in _BLOCK.findall(pem) if "PRIVATE KEY" in label]


def key_sentinels(private: Path, public: Path | None, password: bytes | None = None) -> list[str]:
    """What of this private key must never leak: its PEM body lines (those not also in the public
    key's PEM: the last line of a SEC1 body is the public point), 12-character runs of the base64
    that encodes the private scalar, and the scalar itself in hex, decimal and base64."""
    from cryptography.hazmat.primitives import serialization

    text = private.read_text()
    pub_text = public.read_text() if public is not None else ""
    key = serialization.load_pem_private_key(text.encode(), password)
    v = key.private_numbers().private_value  # type: ignore[attr-defined]
    raw = v.to_bytes(32, "big")
    out = [format(v, "x"), format(v, "064x"), format(v, "064X"), str(v), base64.b64encode(raw).decode(),
           raw.hex(":")]
    blocks = private_blocks(text)
    assert blocks, text[:40]
    for label, lines in blocks:
        out += [line for line in lines if len(line) >= 16 and ":" not in line and line not in pub_text]
        if label == "EC PRIVATE KEY" and password is None:
            der = base64.b64decode("".join(lines))
            assert der[:7] == bytes.fromhex("30770201010420") and der[7:39] == raw  # SEC1, P-256
            first = lines[0]  # chars 10..50 encode scalar bytes only
            out += [first[i:i + 12] for i in range(10, 40)]
    return out


def encrypted_key(directory: Path, password: bytes) -> KeyPair:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / "enc.pem", directory / "enc.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(password)))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(private, public)


def kms_key(endpoint: str) -> str:
    """A fresh ECC_NIST_P256 signing key in moto's KMS, aliased alias/kiln-ci; its key id."""
    import boto3

    client = boto3.session.Session().client("kms", endpoint_url=endpoint, region_name="us-east-1",
                                            aws_access_key_id="kiln-test-key", aws_secret_access_key="other")
    key_id = str(client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"])
    try:
        client.create_alias(AliasName=ALIAS, TargetKeyId=key_id)
    except client.exceptions.AlreadyExistsException:
        client.update_alias(AliasName=ALIAS, TargetKeyId=key_id)
    return key_id


def leaks(data: str | bytes, sentinels: Iterable[str]) -> list[str]:
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    return [s for s in sentinels if s in text]


def files_under(roots: Iterable[Path]) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def test_signing_secrets_never_appear_in_output_files_or_bucket(
        s3_view: S3View, moto_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"kilnSecretSentinel{uuid.uuid4().hex}"
    token = f"kilnTokenSentinel{uuid.uuid4().hex}"
    password, wrong = f"kilnPassword{uuid.uuid4().hex}", f"kilnWrongPassword{uuid.uuid4().hex}"
    aws_env(monkeypatch, secret=secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", moto_server.endpoint)
    kms_id = kms_key(moto_server.endpoint)
    kms = f"awskms:///{ALIAS}"

    keydir = tmp_path / "keys"
    pem = make_key(keydir, "release")
    enc = encrypted_key(keydir, password.encode())
    pem_text = pem.private.read_text()
    sentinels = [secret, token, password, wrong, *key_sentinels(pem.private, pem.public),
                 *key_sentinels(enc.private, None, password.encode())]
    # The sentinels are in the key files: a leak of them would be seen.
    assert leaks(pem.private.read_bytes(), sentinels) and leaks(enc.private.read_bytes(), sentinels)
    pem_lines = [line for _, lines in private_blocks(pem_text) for line in lines]

    url = s3_view.url
    homes = [Path(os.environ["KILN_HOME"])] + [tmp_path / f"home{i}" for i in range(1, 4)]
    env = [{"KILN_HOME": str(h)} for h in homes]
    dests = [tmp_path / f"dest{i}" for i in range(4)]
    policy = write_policy(tmp_path / "policy.yaml", [
        {"name": "pem", "public_key": str(pem.public)},
        {"name": "encrypted", "public_key": str(enc.public)},
        {"name": "kms", "public_key": kms, "models": ["acme/*"]},
    ])
    with_password = {"KILN_SIGN_KEY_PASSWORD": password}

    def kiln(*args: str, e: dict | None = None) -> subprocess.CompletedProcess:
        return run_kiln(*args, env=e)

    puts = [kiln("store", "put", str(artifact(tmp_path / f"art{i}", b"engine %d" % i)), hub_model(f"acme/m{i}"),
                 *SPEC, "--json") for i in range(3)]
    assert [r.returncode for r in puts] == [0, 0, 0], [r.stderr for r in puts]
    a, b, c = (json.loads(r.stdout)["key"] for r in puts)

    runs = [
        *puts,
        kiln("sign", a, "--sign-key", str(pem.private)),
        kiln("sign", a, "--sign-key", str(pem.private), "--json"),
        kiln("sign", b, "--sign-key", kms, "--json"),
        kiln("sign", b, "--sign-key", f"awskms:///{kms_id}"),
        kiln("sign", c, "--sign-key", str(enc.private), "--json", e=with_password),
        kiln("push", "--key", a, "--sign-key", str(pem.private), "--remote", url, "--json"),
        kiln("push", "--key", b, "--sign-key", kms, "--remote", url),
        kiln("sign", c, "--push", "--remote", url, e={**with_password, "KILN_SIGN_KEY": str(enc.private)}),
        kiln("--remote", url, "fetch", "--key", a, "--dest", str(dests[1]), "--trust-policy", str(policy), "--json",
             e=env[1]),
        kiln("--remote", url, "fetch", "--key", b, "--dest", str(dests[2]), "--trust-policy", str(policy), e=env[2]),
        kiln("--remote", url, "fetch", "--key", c, "--dest", str(dests[3]), "--trust-policy", str(policy), "--json",
             e=env[3]),
        kiln("fetch", "--key", a, "--dest", str(dests[0]), "--trust-policy", str(policy)),
        kiln("show", a, "--json", "--trust-policy", str(policy)),
        kiln("show", b, "--trust-policy", str(policy)),
        kiln("show", c[:12], "--remote", url, "--json", "--trust-policy", str(policy), e=env[3]),
        kiln("ls", "--json"),
        kiln("verify", "--signatures", "--public-key", str(pem.public), "--public-key", kms, "--json"),
        kiln("verify", "--signatures", "--trust-policy", str(policy)),
    ]
    assert [r.returncode for r in runs] == [0] * len(runs), [(r.args[3:6], r.stderr) for r in runs if r.returncode]
    shown = json.loads(next(r for r in runs if r.args[3:5] == ["show", a]).stdout)
    assert shown["signatures"] == [{"fingerprint": pem.fingerprint, "key": "pem", "verified": True}], shown["signatures"]

    inline = [
        kiln("sign", a, "--sign-key", pem_text),
        kiln("sign", a, e={"KILN_SIGN_KEY": pem_text}),
        kiln("push", "--key", a, "--sign-key", pem_text, "--remote", url),
        kiln("push", "--key", a, "--remote", url, e={"KILN_SIGN_KEY": pem_text}),
        kiln("fetch", "--key", a, "--dest", str(tmp_path / "x1"), "--trust-policy",
             str(write_policy(tmp_path / "inline.yaml", [{"name": "oops", "public_key": pem_text}]))),
    ]
    failing = [
        *inline,
        kiln("sign", a, "--sign-key", str(enc.private), e={"KILN_SIGN_KEY_PASSWORD": wrong}),
        kiln("push", "--key", a, "--sign-key", str(enc.private), "--remote", url, e={"KILN_SIGN_KEY_PASSWORD": wrong}),
        kiln("sign", a, "--sign-key", str(enc.private)),  # encrypted, no password
        kiln("sign", a, "--sign-key", str(pem.private), e=with_password),  # not encrypted, a password given
        kiln("sign", a, "--sign-key", str(tmp_path / "no-such" / "key.pem")),
        kiln("sign", a, "--sign-key", str(pem.public)),  # a public key cannot sign
        kiln("sign", a, "--sign-key", "awskms:///alias/no-such-kiln-key"),
        kiln("fetch", "--key", a, "--dest", str(tmp_path / "x2"), "--trust-policy",
             str(write_policy(tmp_path / "private.yaml", [{"name": "oops", "public_key": str(pem.private)}]))),
        kiln("verify", "--signatures", "--public-key", str(pem.private)),
        kiln("verify", "--signatures", "--public-key", str(enc.private)),
    ]
    assert [r.returncode for r in failing] == [2] * len(failing), [(r.args[3:7], r.stderr) for r in failing]
    assert all(r.stderr.startswith("kiln: error: ") and "Traceback" not in r.stderr for r in failing), \
        [r.stderr for r in failing]
    for r in inline:  # the inline PEM is refused without being echoed, not even in part
        assert "BEGIN" not in r.stderr and not any(line in r.stderr for line in pem_lines if len(line) >= 8), r.stderr
        assert not (tmp_path / "x1").exists()
    assert "password is wrong" in failing[len(inline)].stderr, failing[len(inline)].stderr

    for r in runs + failing:
        for text in (r.stdout, r.stderr):
            assert not leaks(text, sentinels), f"{r.args[3:7]}: secret printed ({leaks(text, sentinels)}): {text[-2000:]}"
    files = files_under([*homes, *dests])
    assert sum(1 for p in files if p.suffix == ".sig") >= 6 and len(files) > 40
    assert all((d / "model.sig").is_file() for d in dests)
    for p in files:
        assert not leaks(p.read_bytes(), sentinels), f"secret written to {p}: {leaks(p.read_bytes(), sentinels)}"
    objects = s3_view.all_bucket_objects()
    assert sum(1 for k in objects if "/signatures/" in k) == 6  # three keys, a signature and a provenance each
    for k, data in objects.items():
        assert not leaks(data, sentinels), f"secret in bucket object {k}: {leaks(data, sentinels)}"
    # The secrets really were in the environment Kiln ran with, so the checks above mean something.
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == secret and os.environ["AWS_SESSION_TOKEN"] == token


def _noout_key(directory: Path) -> KeyPair:
    """A P-256 key in SEC1 without the EC PARAMETERS block (`openssl ecparam -genkey -noout`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / "noout.pem", directory / "noout.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(private, public)


def _value_echoed(stderr: str, value: str, run: int = 16) -> bool:
    """Whether ``stderr`` holds any ``run`` characters of ``value`` in a row."""
    flat = value.replace("\n", "")
    return any(flat[i:i + run] in stderr.replace("\\n", "") for i in range(len(flat) - run + 1))


def test_key_material_without_armour_given_as_sign_key_is_not_echoed(tmp_path: Path) -> None:
    key = _noout_key(tmp_path / "keys")
    text = key.private.read_text()
    sentinels = key_sentinels(key.private, key.public)
    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    body = "\n".join(line for _, lines in private_blocks(text) for line in lines)
    echoed = []
    values = {"body": body, "body on one line": body.replace("\n", ""), "base64 of the PEM": base64.b64encode(
        text.encode()).decode(), "base64 of the body": base64.b64encode(body.encode()).decode()}
    for what, value in values.items():
        for r in (run_kiln("sign", e["key"], "--sign-key", value), run_kiln("sign", e["key"], env={"KILN_SIGN_KEY": value})):
            assert r.returncode == 2 and r.stderr.startswith("kiln: error:"), r.stderr
            if leaks(r.stderr, sentinels) or _value_echoed(r.stderr, value):
                echoed.append((what, r.stderr))
    assert not echoed, echoed


def test_a_private_key_pasted_into_a_policy_is_not_echoed(tmp_path: Path) -> None:
    import yaml

    key = _noout_key(tmp_path / "keys")
    text = key.private.read_text()
    sentinels = key_sentinels(key.private, key.public)
    lines = private_blocks(text)[0][1]
    scalar_chars = lines[0][10:50]  # base64 that encodes the private scalar only
    body = "\n".join(lines)
    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    shapes = {
        "item": {"require": "signed", "keys": [text]},
        "keys": {"require": "signed", "keys": text},
        "require": {"require": text, "keys": [{"public_key": str(key.public)}]},
        "public_key": {"require": "signed", "keys": [{"name": "k", "public_key": text}]},
        "name": {"require": "signed", "keys": [{"name": [text], "public_key": str(key.public)}]},
        "models": {"require": "signed", "keys": [{"models": {"m": text}, "public_key": str(key.public)}]},
        "top": [text],
        # The body without its armour lines, where a path goes: quoted as a path that does not exist.
        "public_key-body": {"require": "signed", "keys": [{"public_key": body}]},
    }
    echoed = {}
    for shape, doc in shapes.items():
        p = tmp_path / f"{shape}.yaml"
        p.write_text(yaml.safe_dump(doc))
        r = run_kiln("fetch", "--key", e["key"], "--dest", str(tmp_path / "d"), "--trust-policy", str(p))
        assert r.returncode == 2 and r.stderr.startswith("kiln: error:"), (shape, r.stderr)
        assert not (tmp_path / "d").exists()
        if leaks(r.stderr, sentinels) or _value_echoed(r.stderr, scalar_chars, 8):
            echoed[shape] = r.stderr
    assert not echoed, echoed
