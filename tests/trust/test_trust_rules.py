"""The trust rules a hostile review found holes in, each made the way an attacker would.

* A key trusted only for ``acme/*`` signs an engine labelled acme/llama whose weights are
  meta/llama's: the build key is the same (it follows the weights' digest), so a deployment of
  meta/llama would find it. The model the deployment asked for must be the key's too.
* Signing vouches for what was built here: an unsigned artifact planted on the remote and found
  by a build or pulled is not signed by ``--sign-key``.
* A bundle without its key hint (model-signing then prints a warning on stdout) is refused and
  ``--json`` output stays JSON.
* A deployment's DEST survives a signature added later (``model.sig`` is kept current).
* An unsigned push does not replace a signed artifact on the remote (unless ``--force``).
* The Python API follows KILN_TRUST_POLICY as the CLI does.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from kiln import api
from tests.conftest import LLAMA_CONFIG, run_kiln, write_hf_cache_model

from tests.remote.conftest import file_view  # noqa: F401

from .conftest import SPEC, artifact, hub_model, put, sign, write_policy


def same_weights(*repo_ids: str) -> None:
    """The same files (a re-upload of public weights) under several Hub ids, in the offline HF cache."""
    files = {"config.json": json.dumps(LLAMA_CONFIG, indent=1).encode(),
             "model.safetensors": hashlib.sha256(b"public weights").digest() * 128,
             "tokenizer.json": b'{"version": "1.0"}'}
    for repo_id in repo_ids:
        write_hf_cache_model(Path(os.environ["HF_HUB_CACHE"]), repo_id, files,
                             commit=hashlib.sha1(repo_id.encode()).hexdigest())


def test_a_key_for_acme_does_not_vouch_for_the_model_a_deployment_asked_for(tmp_path: Path, keys) -> None:
    same_weights("acme/llama", "meta/llama")
    e = put(artifact(tmp_path / "art", b"EVIL ENGINE CODE"), "acme/llama")
    sign(e["key"], keys["release"].private)
    meta_key = json.loads(run_kiln("key", "meta/llama", *SPEC, "--json").stdout)["key"]
    assert meta_key == e["key"], "the premise: the build key follows the weights, not the name"
    policy = write_policy(tmp_path / "p.yaml", [
        {"name": "acme-ci", "public_key": str(keys["release"].public), "models": ["acme/*"]}])
    dest = tmp_path / "dest"
    r = run_kiln("fetch", "meta/llama", *SPEC, "--dest", str(dest), "--trust-policy", str(policy))
    assert r.returncode == 2 and not dest.exists(), r.stderr
    assert "asked for meta/llama" in r.stderr and "acme-ci" in r.stderr
    # The model it was signed for is served.
    r = run_kiln("fetch", "acme/llama", *SPEC, "--dest", str(dest), "--trust-policy", str(policy))
    assert r.returncode == 0, r.stderr


def test_signing_never_vouches_for_what_was_pulled(tmp_path: Path, keys, file_view) -> None:  # noqa: F811
    planted = put(artifact(tmp_path / "planted", b"EVIL ENGINE"), hub_model("acme/llama"))
    assert run_kiln("--remote", file_view.url, "push", "--key", planted["key"]).returncode == 0
    ci = {"KILN_HOME": str(tmp_path / "ci-store")}
    assert run_kiln("--remote", file_view.url, "pull", "--key", planted["key"], env=ci).returncode == 0
    # `kiln sign` refuses it, naming the remote; --force vouches for it on purpose.
    r = run_kiln("sign", planted["key"], "--sign-key", str(keys["release"].private), env=ci)
    assert r.returncode == 2 and "pulled from" in r.stderr and "--force" in r.stderr, r.stderr
    assert not list((tmp_path / "ci-store").glob("signatures/*/*.sig"))
    # A push with KILN_SIGN_KEY set (a CI job) pushes it with the signatures it has: none.
    r = run_kiln("--remote", file_view.url, "push", "--key", planted["key"], "--json",
                 env={**ci, "KILN_SIGN_KEY": str(keys["release"].private)})
    assert r.returncode == 0 and "was not signed" in r.stderr, r.stderr
    assert json.loads(r.stdout)[0]["signatures"] == 0
    assert not [k for k in file_view.objects() if k.startswith("signatures/")]
    r = run_kiln("sign", planted["key"], "--force", "--sign-key", str(keys["release"].private), "--json", env=ci)
    assert r.returncode == 0, r.stderr


def test_a_bundle_without_its_key_hint_is_refused_and_json_stays_json(tmp_path: Path, keys) -> None:
    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    sign(e["key"], keys["release"].private)
    path = next((Path(os.environ["KILN_HOME"]) / "signatures" / e["manifest"][7:]).glob("*.sig"))
    bundle = json.loads(path.read_bytes())
    del bundle["verificationMaterial"]["publicKey"]["hint"]
    path.chmod(0o644)
    path.write_text(json.dumps(bundle))
    policy = write_policy(tmp_path / "p.yaml", [{"name": "ci", "public_key": str(keys["release"].public)}])
    r = run_kiln("fetch", "--key", e["key"], "--dest", str(tmp_path / "d"), "--trust-policy", str(policy), "--json")
    assert r.returncode == 2 and "does not name its key" in r.stderr, r.stderr
    assert "WARNING" not in r.stdout
    shown = run_kiln("show", e["key"], "--json", "--trust-policy", str(policy))
    assert json.loads(shown.stdout)["signatures"][0]["verified"] is False


def test_a_deployment_survives_a_signature_added_later(tmp_path: Path, keys) -> None:
    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    dest = tmp_path / "dest"
    assert run_kiln("ensure", "--key", e["key"], "--dest", str(dest)).returncode == 0
    assert not (dest / "model.sig").exists()
    sign(e["key"], keys["release"].private)
    r = run_kiln("ensure", "--key", e["key"], "--dest", str(dest), "--json")
    assert r.returncode == 0, r.stderr
    assert any("already held" in n for n in json.loads(r.stdout)["notes"])
    first = (dest / "model.sig").read_bytes()
    sign(e["key"], keys["other"].private)  # a second signer: the first stays the one written
    assert run_kiln("ensure", "--key", e["key"], "--dest", str(dest)).returncode == 0
    policy = write_policy(tmp_path / "p.yaml", [{"name": "other", "public_key": str(keys["other"].public)}])
    assert run_kiln("ensure", "--key", e["key"], "--dest", str(dest), "--trust-policy", str(policy)).returncode == 0
    assert (dest / "model.sig").read_bytes() != first  # now the signature the policy accepted
    assert json.loads((dest / "model.sig").read_bytes())["verificationMaterial"]["publicKey"]["hint"] == \
        keys["other"].fingerprint.split(":")[1]


def test_an_unsigned_push_does_not_replace_a_signed_artifact(tmp_path: Path, keys, file_view) -> None:  # noqa: F811
    signed = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    sign(signed["key"], keys["release"].private)
    assert run_kiln("--remote", file_view.url, "push", "--key", signed["key"]).returncode == 0
    other = {"KILN_HOME": str(tmp_path / "other-store")}
    again = put(artifact(tmp_path / "art"), "acme/llama", env=other)  # same key, another build record
    assert again["key"] == signed["key"] and again["manifest"] != signed["manifest"]
    r = run_kiln("--remote", file_view.url, "push", "--key", again["key"], env=other)
    assert r.returncode == 2 and "replace a signed artifact with an unsigned one" in r.stderr, r.stderr
    entry = json.loads(file_view.read(next(k for k in file_view.objects() if k.startswith("index/"))))
    assert entry["manifest"] == signed["manifest"]
    assert run_kiln("--remote", file_view.url, "push", "--key", again["key"], "--force", env=other).returncode == 0
    entry = json.loads(file_view.read(next(k for k in file_view.objects() if k.startswith("index/"))))
    assert entry["manifest"] == again["manifest"]


def test_the_python_api_follows_kiln_trust_policy(tmp_path: Path, keys, monkeypatch: pytest.MonkeyPatch) -> None:
    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    policy = write_policy(tmp_path / "p.yaml", [{"name": "ci", "public_key": str(keys["release"].public)}])
    monkeypatch.setenv("KILN_TRUST_POLICY", str(policy))
    store = api.Store()
    assert store.trust is not None and store.trust.require_signed
    with pytest.raises(api.KilnError, match="unsigned"):
        api.fetch_by_key(e["key"], tmp_path / "d", store=store)
    assert not (tmp_path / "d").exists()
    assert api.Store(trust=None).trust is None  # an explicit opt-out
    sign(e["key"], keys["release"].private)
    found, path = api.fetch_by_key(e["key"], tmp_path / "d", store=api.Store())
    assert path is not None and (path / "model.sig").is_file()
