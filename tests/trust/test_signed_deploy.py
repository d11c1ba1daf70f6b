"""Signed artifacts under a deployment's trust policy, through the real CLI.

Each refusal the issue lists is made the way an attacker (or an accident) would make it — by
writing files into the store or objects into the shared remote, not through Kiln — and each must
exit 2, name the artifact, the key fingerprint and the rule, and leave DEST absent. The accepted
case is checked by model-signing's own CLI on the materialised directory, independently of Kiln.
The same checks run against a filesystem remote and a real S3-protocol server (moto on loopback).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kiln import api
from tests.conftest import run_kiln
from tests.remote.conftest import RemoteView, aws_env, file_view, moto_server, remote, s3_view  # noqa: F401

from .conftest import KeyPair, artifact, hub_model, model_signing_cli, put, sign, write_policy


def store_root() -> Path:
    return Path(os.environ["KILN_HOME"])


def sig_dir(manifest: str) -> Path:
    return store_root() / "signatures" / manifest.split(":", 1)[1]


def fetch(key: str, dest: Path, policy: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_kiln("fetch", "--key", key, "--dest", str(dest), "--trust-policy", str(policy), *extra)


def refused(r: subprocess.CompletedProcess, dest: Path, *words: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert not dest.exists(), "a refused artifact must not be materialised"
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)
    return r.stderr


@pytest.fixture
def policy(tmp_path: Path, keys: dict[str, KeyPair]) -> Path:
    return write_policy(tmp_path / "policy.yaml", [
        {"name": "ci-release", "public_key": os.path.relpath(keys["release"].public, tmp_path), "models": ["acme/*"]},
    ])


def test_a_signed_artifact_is_served_and_model_signing_verifies_it(tmp_path: Path, keys, policy: Path) -> None:
    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    signed = sign(e["key"], keys["release"].private)
    assert signed["fingerprint"] == keys["release"].fingerprint
    dest = tmp_path / "dest"
    r = fetch(e["key"], dest, policy, "--json")
    assert r.returncode == 0, r.stderr
    assert any("accepted by the trust policy" in n and keys["release"].fingerprint in n for n in json.loads(r.stdout)["notes"])
    assert (dest / "model.sig").is_file() and (dest / "engine.pt2").read_bytes() == b"engine bytes"
    # model-signing's own verifier, knowing nothing of Kiln, accepts the directory...
    cli = model_signing_cli()
    ok = subprocess.run([str(cli), "verify", "key", str(dest), "--signature", str(dest / "model.sig"),
                         "--public_key", str(keys["release"].public)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # ...and refuses it once a file changed, or with another key.
    (dest / "sub" / "tokenizer.json").write_bytes(b"{}")
    bad = subprocess.run([str(cli), "verify", "key", str(dest), "--signature", str(dest / "model.sig"),
                          "--public_key", str(keys["release"].public)], capture_output=True, text=True)
    assert bad.returncode != 0
    other = subprocess.run([str(cli), "verify", "key", str(tmp_path / "art"), "--signature", str(dest / "model.sig"),
                            "--public_key", str(keys["other"].public)], capture_output=True, text=True)
    assert other.returncode != 0


def test_an_unsigned_artifact_is_refused(tmp_path: Path, policy: Path) -> None:
    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    dest = tmp_path / "dest"
    err = refused(fetch(e["key"], dest, policy), dest, e["key"][:12], "unsigned", "require: signed")
    assert "policy.yaml" in err
    # lookup and ensure refuse it the same way (exit 2, not a miss: a miss would be rebuilt over).
    r = run_kiln("lookup", "acme/llama", *put_spec(), "--trust-policy", str(policy))
    assert r.returncode == 2 and "unsigned" in r.stderr, r.stderr
    r = run_kiln("ensure", "--key", e["key"], "--dest", str(dest), "--trust-policy", str(policy))
    refused(r, dest, "unsigned")
    # The same store without the policy serves it: the policy is the deployment's, not the store's.
    assert run_kiln("fetch", "--key", e["key"], "--dest", str(dest)).returncode == 0


def put_spec() -> list[str]:
    from .conftest import SPEC

    return list(SPEC)


def test_an_untrusted_key_is_refused_by_fingerprint(tmp_path: Path, keys, policy: Path) -> None:
    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    sign(e["key"], keys["attacker"].private)
    dest = tmp_path / "dest"
    refused(fetch(e["key"], dest, policy), dest, e["key"][:12], keys["attacker"].fingerprint, "does not list")


def test_a_key_trusted_only_for_other_models_is_refused(tmp_path: Path, keys, policy: Path) -> None:
    e = put(artifact(tmp_path / "art"), hub_model("evil/llama"))
    sign(e["key"], keys["release"].private)
    dest = tmp_path / "dest"
    refused(fetch(e["key"], dest, policy), dest, "ci-release", "only for models ['acme/*']", "evil/llama")


def test_a_signature_moved_from_another_artifact_is_refused(tmp_path: Path, keys, policy: Path) -> None:
    a = put(artifact(tmp_path / "a", b"engine A"), hub_model("acme/llama"))
    b = put(artifact(tmp_path / "b", b"engine B"), hub_model("acme/other"))
    sign(a["key"], keys["release"].private)
    # Copy A's signature beside B's manifest, under the same key's name.
    name = keys["release"].fingerprint.split(":")[1] + ".sig"
    sig_dir(b["manifest"]).mkdir(parents=True)
    shutil.copy(sig_dir(a["manifest"]) / name, sig_dir(b["manifest"]) / name)
    dest = tmp_path / "dest"
    refused(fetch(b["key"], dest, policy), dest, b["key"][:12], "made for another artifact")


def test_a_signature_replayed_under_another_key_is_refused(tmp_path: Path, keys) -> None:
    """The attacker's signature, relabelled with the trusted key's fingerprint (filed and hinted as it)."""
    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    sign(e["key"], keys["attacker"].private)
    d = sig_dir(e["manifest"])
    bundle = json.loads((d / (keys["attacker"].fingerprint.split(":")[1] + ".sig")).read_bytes())
    bundle["verificationMaterial"]["publicKey"]["hint"] = keys["release"].fingerprint.split(":")[1]
    (d / (keys["release"].fingerprint.split(":")[1] + ".sig")).write_text(json.dumps(bundle))
    policy = write_policy(tmp_path / "p.yaml", [{"name": "ci-release", "public_key": str(keys["release"].public)}])
    dest = tmp_path / "dest"
    refused(fetch(e["key"], dest, policy), dest, "does not verify")


def test_a_changed_build_record_keeps_no_signature(tmp_path: Path, keys, policy: Path) -> None:
    """The same files under the same key with another build record (another manifest): the trusted
    signature of the first manifest, moved beside the second, is refused; signed again by an
    untrusted key, it is refused too."""
    e1 = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    sign(e1["key"], keys["release"].private)
    name = keys["release"].fingerprint.split(":")[1] + ".sig"
    good = (sig_dir(e1["manifest"]) / name).read_bytes()
    r = run_kiln("rm", e1["key"], "--json")
    assert r.returncode == 0, r.stderr
    e2 = put(artifact(tmp_path / "art"), hub_model("acme/llama"))  # a new record: another start time
    assert e2["key"] == e1["key"] and e2["manifest"] != e1["manifest"]
    sig_dir(e2["manifest"]).mkdir(parents=True, exist_ok=True)
    (sig_dir(e2["manifest"]) / name).write_bytes(good)
    dest = tmp_path / "dest"
    refused(fetch(e2["key"], dest, policy), dest, "made for another artifact")
    (sig_dir(e2["manifest"]) / name).unlink()
    sign(e2["key"], keys["attacker"].private)
    refused(fetch(e2["key"], dest, policy), dest, keys["attacker"].fingerprint)


def test_a_changed_file_in_the_store_is_caught_before_the_signature(tmp_path: Path, keys, policy: Path) -> None:
    """A signed artifact whose blob was overwritten: the digest check (invariant 3) refuses it first."""
    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    sign(e["key"], keys["release"].private)
    manifest = json.loads(next((store_root() / "blobs").rglob(e["manifest"][7:])).read_bytes())
    layer = next(x for x in manifest["layers"] if x["annotations"]["org.opencontainers.image.title"] == "engine.pt2")
    hexd = layer["digest"][7:]
    blob = next(p for p in (store_root() / "blobs").rglob(hexd))
    blob.chmod(0o644)
    blob.write_bytes(b"evil bytes!!")
    dest = tmp_path / "dest"
    r = fetch(e["key"], dest, policy)
    assert r.returncode != 0 and not dest.exists()


def test_policy_rules_on_remotes(tmp_path: Path, keys, remote: RemoteView) -> None:
    """Signatures travel with the artifact (push before the entry, pull before the entry), and a
    key trusted only for another remote does not vouch for this one."""
    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    sign(e["key"], keys["release"].private)
    r = run_kiln("--remote", remote.url, "push", "--key", e["key"], "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["signatures"] == 2  # the signature and the signed provenance
    objs = remote.objects()
    sig_objs = [k for k in objs if k.startswith("signatures/")]
    assert len(sig_objs) == 2 and all(k.startswith(f"signatures/{e['manifest'][7:]}/") for k in sig_objs)

    # What a policy names is the remote's origin (no credentials; the endpoint kept when it is
    # not AWS's own): here exactly this remote, and the same bucket and prefix on AWS.
    origin = api.open_remote(remote.url).origin()
    here = write_policy(tmp_path / "here.yaml", [
        {"name": "ci-release", "public_key": str(keys["release"].public), "remotes": [origin]}])
    elsewhere = write_policy(tmp_path / "elsewhere.yaml", [
        {"name": "ci-release", "public_key": str(keys["release"].public),
         "remotes": ["s3://ml-engines/*", origin.split("?endpoint=")[0] + "-evil"]}])
    fresh = {"KILN_HOME": str(tmp_path / "deploy-store")}
    dest = tmp_path / "dest"
    r = run_kiln("--remote", remote.url, "fetch", "--key", e["key"], "--dest", str(dest), "--trust-policy",
                 str(elsewhere), env=fresh)
    refused(r, dest, "only for remotes ['s3://ml-engines/*'")
    assert not list((tmp_path / "deploy-store").rglob("index/*/*.json")), "a refused pull publishes nothing"
    r = run_kiln("--remote", remote.url, "fetch", "--key", e["key"], "--dest", str(dest), "--trust-policy",
                 str(here), env=fresh)
    assert r.returncode == 0, r.stderr
    assert (dest / "model.sig").is_file()
    # Now local: the remote it was verified from is remembered, so the rule still holds offline.
    dest2 = tmp_path / "dest2"
    assert run_kiln("fetch", "--key", e["key"], "--dest", str(dest2), "--trust-policy", str(here),
                    env=fresh).returncode == 0
    refused(run_kiln("fetch", "--key", e["key"], "--dest", str(tmp_path / "d3"), "--trust-policy", str(elsewhere),
                     env=fresh), tmp_path / "d3", "only for remotes")


def test_unsigned_and_replayed_artifacts_on_a_remote_are_refused_before_any_blob_moves(
        tmp_path: Path, keys, remote: RemoteView) -> None:
    a = put(artifact(tmp_path / "a", b"engine A" * 1000), hub_model("acme/llama"))
    b = put(artifact(tmp_path / "b", b"engine B" * 1000), hub_model("acme/other"))
    sign(a["key"], keys["release"].private)
    for key in (a["key"], b["key"]):
        assert run_kiln("--remote", remote.url, "push", "--key", key).returncode == 0
    policy = write_policy(tmp_path / "p.yaml", [{"name": "ci-release", "public_key": str(keys["release"].public)}])
    fresh = {"KILN_HOME": str(tmp_path / "deploy-store")}
    dest = tmp_path / "dest"
    refused(run_kiln("--remote", remote.url, "fetch", "--key", b["key"], "--dest", str(dest), "--trust-policy",
                     str(policy), env=fresh), dest, "unsigned")
    # A's signature copied beside B's manifest on the remote: refused as well.
    name = keys["release"].fingerprint.split(":")[1] + ".sig"
    remote.write(f"signatures/{b['manifest'][7:]}/{name}", remote.read(f"signatures/{a['manifest'][7:]}/{name}"))
    refused(run_kiln("--remote", remote.url, "pull", "--key", b["key"], "--trust-policy", str(policy), env=fresh),
            dest, "made for another artifact")
    blobs = list((tmp_path / "deploy-store" / "blobs").rglob("*")) if (tmp_path / "deploy-store" / "blobs").exists() else []
    assert not any(p.is_file() and p.stat().st_size >= 8000 for p in blobs), "no file blob of B was downloaded"


def test_show_ls_and_verify_say_who_signed(tmp_path: Path, keys, policy: Path) -> None:
    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    u = put(artifact(tmp_path / "u", b"unsigned"), hub_model("acme/unsigned"))
    sign(e["key"], keys["release"].private)
    show = json.loads(run_kiln("show", e["key"], "--json", "--trust-policy", str(policy)).stdout)
    assert show["signatures"] == [{"fingerprint": keys["release"].fingerprint, "key": "ci-release", "verified": True}]
    human = run_kiln("show", e["key"], "--trust-policy", str(policy)).stdout
    assert f"by ci-release {keys['release'].fingerprint}: verified" in human
    listed = {x["key"]: x["signatures"] for x in json.loads(run_kiln("ls", "--json").stdout)}
    assert listed[e["key"]] == [{"fingerprint": keys["release"].fingerprint, "key": None, "verified": None}]
    assert listed[u["key"]] == []

    r = run_kiln("verify", "--signatures", "--public-key", str(keys["release"].public), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)["signatures"]
    assert report["verified"] == 1 and report["unsigned"] == [u["key"]] and report["ok"]
    # A damaged signature file: verify says so and exits 1.
    path = next(sig_dir(e["manifest"]).glob("*.sig"))
    bundle = json.loads(path.read_bytes())
    raw = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[-1] ^= 1
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    path.chmod(0o644)
    path.write_text(json.dumps(bundle))
    r = run_kiln("verify", "--signatures", "--public-key", str(keys["release"].public))
    assert r.returncode == 1 and "BAD SIGNATURE" in r.stderr and e["key"][:12] in r.stderr, r.stderr
    # Under `require: signed` the unsigned artifact is a failure of verify too.
    r = run_kiln("verify", "--signatures", "--trust-policy", str(policy), "--json")
    assert r.returncode == 1
    assert any(u["key"][:12] in line for line in json.loads(r.stdout)["signatures"]["refused"])


def test_signed_provenance_is_slsa_and_verifies(tmp_path: Path, keys) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    sign(e["key"], keys["release"].private)
    prov = json.loads(next(sig_dir(e["manifest"]).glob("*.provenance.json")).read_bytes())
    env = prov["dsseEnvelope"]
    payload = base64.b64decode(env["payload"])
    pae = b"DSSEv1 %d %s %d %s" % (len(env["payloadType"]), env["payloadType"].encode(), len(payload), payload)
    pub = serialization.load_pem_public_key(keys["release"].public.read_bytes())
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(base64.b64decode(env["signatures"][0]["sig"]), pae, ec.ECDSA(hashes.SHA256()))  # raises if bad
    statement = json.loads(payload)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    files = {p.relative_to(tmp_path / "art").as_posix() for p in (tmp_path / "art").rglob("*") if p.is_file()}
    assert {s["name"] for s in statement["subject"]} == files
    assert statement["predicate"]["runDetails"]["metadata"]["invocationId"] == e["key"]
    assert statement["predicate"]["buildDefinition"]["externalParameters"]["model"] == "acme/llama"


def test_gc_removes_the_signatures_of_a_removed_artifact(tmp_path: Path, keys) -> None:
    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    sign(e["key"], keys["release"].private)
    assert sig_dir(e["manifest"]).is_dir()
    assert run_kiln("rm", e["key"]).returncode == 0
    r = run_kiln("gc")
    assert r.returncode == 0, r.stderr
    assert not sig_dir(e["manifest"]).exists()
