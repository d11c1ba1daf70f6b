"""Every command's --json document matches its published schema (docs/json/<command>.schema.json).

Each test runs the real CLI in subprocesses on a real store (and a filesystem or S3 remote on
loopback), then validates stdout with jsonschema. A change of shape fails here until the schema
and docs/json.md describe it.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource

from ..conftest import REPO, run_kiln
from ..remote.conftest import RemoteView, aws_env, file_view, moto_server, remote, s3_view  # noqa: F401
from ._helpers import AOTI, artifact_dir, put

SCHEMAS = REPO / "docs" / "json"
COMMANDS = ("build", "ensure", "fetch", "gc", "generate", "key", "lookup", "ls", "presets", "pull", "push", "rm",
            "show", "sign", "store-put", "verify")


@functools.lru_cache(maxsize=None)
def _registry() -> Registry:
    schemas = [json.loads(p.read_text()) for p in sorted(SCHEMAS.glob("*.schema.json"))]
    return Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas)


def validator(command: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / f"{command}.schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, registry=_registry(), format_checker=cls.FORMAT_CHECKER)


def check(command: str, r: subprocess.CompletedProcess, *, exit_code: int = 0) -> Any:
    """The document ``r`` printed, after checking its exit code and its shape."""
    assert r.returncode == exit_code, (command, r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    data = json.loads(r.stdout)
    error = jsonschema.exceptions.best_match(validator(command).iter_errors(data))
    assert error is None, (f"kiln {command} --json does not match docs/json/{command}.schema.json at "
                           f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message[:500]}")
    return data


def test_every_command_with_json_has_a_schema_and_every_schema_is_valid() -> None:
    names = {p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json")}
    assert names == {*COMMANDS, "common"}
    for name in names:
        schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
        jsonschema.validators.validator_for(schema).check_schema(schema)
        assert schema["$id"].endswith(f"/{name}.schema.json")
    doc = (REPO / "docs" / "json.md").read_text()
    assert all(f"json/{c}.schema.json" in doc for c in COMMANDS)


@pytest.mark.light
def test_lookup_fetch_ensure_key_and_store_put(tmp_path: Path, fake_model: Path) -> None:
    put_doc = check("store-put", run_kiln("store", "put", str(artifact_dir(tmp_path / "a")), str(fake_model), *AOTI, "--json"))
    key = put_doc["key"]
    hit = check("lookup", run_kiln("lookup", str(fake_model), *AOTI, "--json"))
    assert hit["status"] == "hit" and hit["key"] == key
    miss = check("lookup", run_kiln("lookup", str(fake_model), *AOTI, "--batch-size", "8", "--json"), exit_code=1)
    assert miss["status"] == "miss" and miss["explanation"]
    fetched = check("fetch", run_kiln("fetch", str(fake_model), *AOTI, "--dest", str(tmp_path / "d"), "--json"))
    assert fetched["dest"] == str(tmp_path / "d")
    check("fetch", run_kiln("fetch", str(fake_model), *AOTI, "--batch-size", "8", "--dest", str(tmp_path / "d8"), "--json"),
          exit_code=1)
    ensured = check("ensure", run_kiln("ensure", str(fake_model), *AOTI, "--dest", str(tmp_path / "e"), "--json"))
    assert ensured["status"] == "hit"
    check("ensure", run_kiln("ensure", str(fake_model), *AOTI, "--batch-size", "8", "--dest", str(tmp_path / "e8"), "--json"),
          exit_code=1)
    assert check("key", run_kiln("key", str(fake_model), *AOTI, "--json")) == {"key": key}
    explained = check("key", run_kiln("key", str(fake_model), *AOTI, "--explain", "--json"))
    assert explained["key"] == key and explained["inputs"]


@pytest.mark.light
def test_ls_show_verify_gc_rm_and_presets(tmp_path: Path, fake_model: Path) -> None:
    a = put(fake_model, artifact_dir(tmp_path / "a", b"one"))
    b = put(fake_model, artifact_dir(tmp_path / "b", b"two"), *AOTI, "--batch-size", "2")
    listed = check("ls", run_kiln("ls", "--json"))
    assert {e["key"] for e in listed} == {a, b}
    shown = check("show", run_kiln("show", a[:10], "--json"))
    assert shown["entry"]["key"] == a and shown["source"] == "local"
    assert check("verify", run_kiln("verify", "--json"))["ok"] is True
    check("gc", run_kiln("gc", "--dry-run", "--older-than", "0s", "--json"))
    check("gc", run_kiln("gc", "--json"))
    planned = check("rm", run_kiln("rm", a[:10], "--dry-run", "--json"))
    assert planned["dry_run"] and [e["key"] for e in planned["removed"]] == [a]
    done = check("rm", run_kiln("rm", a[:10], "--json"))
    # What the plan said would go is what went: the blobs the other artifact shares stayed.
    assert done["bytes_freed"] == planned["bytes_freed"] > 0 and done["bytes_shared"] == planned["bytes_shared"] > 0
    assert [e["key"] for e in check("ls", run_kiln("ls", "--json"))] == [b]
    check("presets", run_kiln("presets", "--json"))
    check("presets", run_kiln("presets", "jumpstart-llama2-neuron", "--json"))
    # A preset whose models are not here: every row fails, and says so in the documented shape.
    rows = check("build", run_kiln("build", "--preset", "jumpstart-llama2-neuron", "--json"), exit_code=2)
    assert rows and {r["status"] for r in rows} == {"failed"}


def test_sign_and_the_signature_reports(tmp_path: Path, fake_model: Path) -> None:
    pytest.importorskip("model_signing", reason="signatures need model-signing (pip install 'kiln-engines[signing]')")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    key_file, pub_file = tmp_path / "key.pem", tmp_path / "key.pub.pem"
    key_file.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    pub_file.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    key = put(fake_model, artifact_dir(tmp_path / "a"))
    signed = check("sign", run_kiln("sign", key[:12], "--sign-key", str(key_file), "--json"))
    assert [s["key"] for s in signed] == [key] and signed[0]["pushed"] is False
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"require: signed\nkeys:\n  - name: ci\n    public_key: {pub_file}\n")
    shown = check("show", run_kiln("show", key[:12], "--trust-policy", str(policy), "--json"))
    assert shown["signatures"][0]["verified"] is True and shown["signatures"][0]["key"] == "ci"
    assert check("ls", run_kiln("ls", "--json"))[0]["signatures"][0]["fingerprint"] == signed[0]["fingerprint"]
    report = check("verify", run_kiln("verify", "--signatures", "--trust-policy", str(policy), "--json"))
    assert report["signatures"]["verified"] == 1 and report["ok"] is True


@pytest.mark.light
def test_push_pull_and_the_remote_side(tmp_path: Path, fake_model: Path, remote: RemoteView) -> None:  # noqa: F811
    key = put(fake_model, artifact_dir(tmp_path / "a"))
    pushed = check("push", run_kiln("push", "--all", "--remote", remote.url, "--json"))
    assert pushed[0]["key"] == key and pushed[0]["uploaded_blobs"] > 0
    fresh = {"KILN_HOME": str(tmp_path / "fresh")}
    listed = check("ls", run_kiln("ls", "--remote", remote.url, "--json", env=fresh))
    assert [e["key"] for e in listed] == [key] and listed[0]["last_used"] is None
    shown = check("show", run_kiln("show", key[:12], "--remote", remote.url, "--json", env=fresh))
    assert shown["source"] == "remote" and shown["record"]["key"] == key
    assert not (tmp_path / "fresh").exists() or not list((tmp_path / "fresh").rglob("*.json"))  # nothing pulled
    pulled = check("pull", run_kiln("pull", "--key", key[:12], "--remote", remote.url, "--json", env=fresh))
    assert pulled[0]["downloaded_blobs"] > 0
    by_spec = check("pull", run_kiln("pull", str(fake_model), *AOTI, "--remote", remote.url, "--json",
                                     env={"KILN_HOME": str(tmp_path / "fresh2")}))
    assert by_spec["status"] == "hit" and by_spec["source"] == "remote"
    check("gc", run_kiln("gc", "--remote", remote.url, "--dry-run", "--json"))


def test_builds_ensure_on_miss_and_generate(tmp_path: Path) -> None:
    from ..tiny_models import make_tiny_model

    model = make_tiny_model("llama", tmp_path / "m", seed=9)
    remote_dir = tmp_path / "remote"
    spec = ["--target", "torch-aoti", "--n-positions", "32"]
    r = run_kiln("ensure", str(model), *spec, "--on-miss", "build", "--push", "--remote", str(remote_dir),
                 "--dest", str(tmp_path / "dest"), "--json", timeout=900)
    ensured = check("ensure", r)
    # A miss, built here and pushed: said so (before: "hit (local)" and no word of the push).
    assert (ensured["status"], ensured["hit"], ensured["source"]) == ("built", False, None)
    assert ensured["built"]["compiled"] is True and ensured["built"]["key"] == ensured["key"]
    assert ensured["pushed"]["key"] == ensured["key"] and ensured["pushed"]["uploaded_blobs"] > 0
    assert "waiting for" not in r.stderr  # nobody else held the build lock
    assert (tmp_path / "dest" / "engine.pt2").exists()
    again = check("build", run_kiln("build", str(model), *spec, "--json", timeout=300))
    assert again["status"] == "hit" and again["key"] == ensured["key"]
    incomplete = check("build", run_kiln("build", str(model), "--target", "trtllm", "--n-positions", "32", "--dtype",
                                         "fp16", "--json", timeout=600), exit_code=3)
    assert incomplete["status"] == "incomplete"
    gen = check("generate", run_kiln("generate", "--key", ensured["key"][:12], "--prompt", "hi", "--max-new-tokens", "2",
                                     "--raw", "--json", timeout=300))
    assert gen["new_tokens"] == 2


def test_ensure_on_miss_build_says_what_it_did_in_words(tmp_path: Path) -> None:
    from ..tiny_models import make_tiny_model

    model = make_tiny_model("llama", tmp_path / "m", seed=10)
    remote_dir = tmp_path / "remote"
    r = run_kiln("ensure", str(model), "--target", "torch-aoti", "--n-positions", "32", "--on-miss", "build", "--push",
                 "--remote", str(remote_dir), "--dest", str(tmp_path / "dest"), timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert not out.startswith("hit") and "hit (local)" not in out
    assert "{'" not in out and "'key':" not in out  # no raw Python dict
    assert "miss: no stored engine" in out and "building it here" in out
    assert "compiled here" in out
    assert f"to {remote_dir}" in out and "uploaded" in out  # the push it did
    assert f"materialised into {tmp_path / 'dest'}" in out
