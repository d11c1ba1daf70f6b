"""OCI registry remotes against a real registry (Debian's docker-registry, distribution 2.8, on loopback).

What Kiln writes is read back over the registry's own HTTP API with urllib and with skopeo,
not with Kiln's code: the artifact is a valid OCI image manifest tagged with its build key,
its layers name their files, and a standard tool copies it whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kiln import api
from kiln.cache.remotes import OCIRemote, open_remote
from kiln.cache.remotes._oci_repository import Repository
from kiln.errors import RemoteError
from tests.conftest import run_kiln
from tests.remote.conftest import kiln_remote, store_put, tree, write_tree
from tests.remote.oci_registry import Registry, needs_skopeo
from tests.remote.test_roundtrip import artifact_files

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def http_json(url: str, accept: str = MANIFEST) -> tuple[dict[str, Any], dict[str, str]]:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept}), timeout=30) as r:
        return json.loads(r.read()), {k.lower(): v for k, v in r.headers.items()}


def head_status(url: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def repo_of(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[1].split("?", 1)[0]


def test_round_trip_byte_for_byte_and_a_second_push_moves_nothing(oci_registry: Registry, oci_url: str, model: Path,
                                                                    tmp_path: Path) -> None:
    files = artifact_files()
    key = store_put(write_tree(tmp_path / "art", files), model)
    first = kiln_remote(oci_url, "push", "--key", key, "--json")
    assert first.returncode == 0, first.stderr
    [p] = json.loads(first.stdout)
    assert p["uploaded_blobs"] == len(set(files.values())) + 2  # each distinct file, the record, the manifest
    again = kiln_remote(oci_url, "push", "--key", key, "--json")
    assert again.returncode == 0, again.stderr
    [q] = json.loads(again.stdout)
    assert q["uploaded_bytes"] == 0 and q["skipped_blobs"] == p["uploaded_blobs"]

    fresh = {"KILN_HOME": str(tmp_path / "wiped")}
    listed = kiln_remote(oci_url, "ls", "--remote", "--json", env=fresh)
    assert listed.returncode == 0, listed.stderr
    assert [e["key"] for e in json.loads(listed.stdout)] == [key]
    dest = tmp_path / "dest"
    r = kiln_remote(oci_url, "fetch", "--key", key, "--dest", str(dest), env=fresh)
    assert r.returncode == 0, r.stderr
    assert tree(dest) == files
    # A model-id lookup finds it too (the index entry, read by its exact name).
    ens = kiln_remote(oci_url, "ensure", str(model), "--target", "torch-aoti", "--n-positions", "256",
                      "--toolchain", "torch=2.0.0", "--toolchain", "transformers=5.0.0",
                      "--toolchain", "hardware=cpu-test", "--dest", str(tmp_path / "d2"), env=fresh)
    assert ens.returncode == 0, ens.stderr
    assert tree(tmp_path / "d2") == files


def test_the_registry_api_and_skopeo_read_what_kiln_wrote(oci_registry: Registry, oci_url: str, model: Path,
                                                           tmp_path: Path) -> None:
    files = artifact_files(seed=2)
    key = store_put(write_tree(tmp_path / "art", files), model)
    assert kiln_remote(oci_url, "push", "--key", key).returncode == 0
    repo = repo_of(oci_url)
    manifest, headers = http_json(f"{oci_registry.api(repo)}/manifests/{key}")
    assert headers["content-type"] == MANIFEST
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == MANIFEST
    assert manifest["artifactType"] == "application/vnd.kiln.artifact.v1"
    assert manifest["config"]["mediaType"] == "application/vnd.kiln.build-record.v1+json"
    titles = {layer["annotations"]["org.opencontainers.image.title"]: layer for layer in manifest["layers"]}
    assert set(titles) == set(files)
    for path, layer in titles.items():  # each layer is that file's bytes, digest and size
        assert layer["digest"] == "sha256:" + hashlib.sha256(files[path]).hexdigest()
        assert layer["size"] == len(files[path])
        assert head_status(f"{oci_registry.api(repo)}/blobs/{layer['digest']}") == 200
    # The build record (the config) says what the engine is.
    with urllib.request.urlopen(f"{oci_registry.api(repo)}/blobs/{manifest['config']['digest']}") as r:
        record = json.loads(r.read())
    assert record["key"] == key
    if shutil.which("skopeo"):
        raw = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{oci_registry.host}/{repo}:{key}"],
                             capture_output=True, text=True, timeout=60)
        assert raw.returncode == 0, raw.stderr
        assert json.loads(raw.stdout) == manifest
        out = tmp_path / "skopeo-copy"
        cp = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{oci_registry.host}/{repo}:{key}",
                             f"dir:{out}"], capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0, cp.stderr
        for path, layer in titles.items():  # skopeo's copy holds every file, by digest
            assert (out / layer["digest"].split(":")[1]).read_bytes() == files[path]


@needs_skopeo
def test_skopeo_is_installed_where_ci_runs() -> None:
    """The skopeo check above is conditional; this one fails loudly where CI lost the package."""
    assert shutil.which("skopeo")


def test_large_blobs_go_up_in_chunks_and_mounts_skip_the_upload(oci_registry: Registry, oci_url: str, model: Path,
                                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"engine/big.bin": os.urandom((3 << 20) + 11), "small.txt": b"x"}
    key = store_put(write_tree(tmp_path / "art", files), model)
    monkeypatch.setattr(Repository, "CHUNK_SIZE", 1 << 20)
    store = api.Store()
    entry = next(e for e in store.iter_entries() if e.key == key)
    before = oci_registry.log_text().count('"PATCH ')
    api.push(store, open_remote(oci_url), entry)
    assert oci_registry.log_text().count('"PATCH ') - before >= 4, "a 3 MiB blob in 1 MiB chunks is 4 PATCHes"
    # Another repository of the same registry, mounting from the first: no file byte is sent again.
    other = oci_url.replace(repo_of(oci_url), repo_of(oci_url) + "-copy") + f"&mount-from={repo_of(oci_url)}"
    patches = oci_registry.log_text().count('"PATCH ')
    result = api.push(store, open_remote(other), entry)
    assert oci_registry.log_text().count('"PATCH ') == patches, "a mounted blob is not uploaded"
    assert result.uploaded == 4  # counted as sent to that repository, but by mount
    dest = tmp_path / "dest"
    fresh = {"KILN_HOME": str(tmp_path / "wiped")}
    assert kiln_remote(other, "fetch", "--key", key, "--dest", str(dest), env=fresh).returncode == 0
    assert tree(dest) == files


def test_concurrent_pushes_of_one_model_all_stay_listed(oci_registry: Registry, oci_url: str, model: Path,
                                                        tmp_path: Path) -> None:
    """Six artifacts of one model pushed at once: the directory index (read-modify-write) keeps them all."""
    keys = [store_put(write_tree(tmp_path / f"art{b}", {"e.bin": os.urandom(1000 + b)}), model, batch_size=b)
            for b in range(1, 7)]
    store = api.Store()
    entries = {e.key: e for e in store.iter_entries()}
    errors: list[BaseException] = []

    def push(key: str) -> None:
        try:
            api.push(store, open_remote(oci_url), entries[key])
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=push, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    listed = kiln_remote(oci_url, "ls", "--remote", "--json", env={"KILN_HOME": str(tmp_path / "wiped")})
    assert sorted(e["key"] for e in json.loads(listed.stdout)) == sorted(keys)


def test_gc_on_a_registry_keeps_live_artifacts_and_says_what_it_leaves(oci_url: str, model: Path, tmp_path: Path) -> None:
    key = store_put(write_tree(tmp_path / "art", {"a": b"1", "b": b"2"}), model)
    assert kiln_remote(oci_url, "push", "--key", key).returncode == 0
    r = kiln_remote(oci_url, "gc", "--remote", "--grace", "0s", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["blobs"] == [] and "garbage-collect" in plan["not_removed"]
    human = kiln_remote(oci_url, "gc", "--remote", "--grace", "0s")
    assert "cannot list its blobs" in human.stderr
    dest = tmp_path / "dest"
    assert kiln_remote(oci_url, "fetch", "--key", key, "--dest", str(dest),
                       env={"KILN_HOME": str(tmp_path / "wiped")}).returncode == 0


def test_gc_lists_again_what_a_lost_index_update_dropped(oci_url: str, model: Path, tmp_path: Path) -> None:
    """An entry whose directory listing is gone (a push killed between the entry and its listing, or
    an update lost between two writers; unlisted here through the remote's own index writer, the
    stand-in for either) is still an exact hit, and gc lists it again from the registry's tag list."""
    key = store_put(write_tree(tmp_path / "art", {"a": b"1"}), model)
    assert kiln_remote(oci_url, "push", "--key", key).returncode == 0
    remote = open_remote(oci_url)
    assert isinstance(remote, OCIRemote)
    [name] = [i.key for i in remote.list("index/")]
    remote._update_directory(name.rsplit("/", 1)[0] + "/", name.rsplit("/", 1)[1], None)
    fresh = {"KILN_HOME": str(tmp_path / "wiped")}
    assert json.loads(kiln_remote(oci_url, "ls", "--remote", "--json", env=fresh).stdout) == []
    ens = kiln_remote(oci_url, "ensure", str(model), "--target", "torch-aoti", "--n-positions", "256",
                      "--toolchain", "torch=2.0.0", "--toolchain", "transformers=5.0.0",
                      "--toolchain", "hardware=cpu-test", "--dest", str(tmp_path / "d"), env=fresh)
    assert ens.returncode == 0, ens.stderr  # the exact lookup reads the entry by its own tag
    dry = json.loads(kiln_remote(oci_url, "gc", "--remote", "--dry-run", "--json").stdout)
    assert dry["relisted"] == 0  # a dry run writes nothing
    plan = json.loads(kiln_remote(oci_url, "gc", "--remote", "--json").stdout)
    assert plan["relisted"] == 1
    assert [e["key"] for e in json.loads(kiln_remote(oci_url, "ls", "--remote", "--json", env=fresh).stdout)] == [key]


@pytest.mark.parametrize("url, words", [
    ("oci://127.0.0.1:5000/Upper/Case", "not a valid OCI repository name"),
    ("oci://127.0.0.1:5000", "names no registry and repository"),
    ("oci://user:hunter2@127.0.0.1:5000/r", "carries credentials"),
    ("oci://127.0.0.1:5000/r?plain_http=1", "unknown option"),
    ("oci://127.0.0.1:5000/r?timeout=soon", "not a positive number"),
])
def test_bad_oci_urls_are_refused_before_any_request(url: str, words: str) -> None:
    with pytest.raises(RemoteError, match=words) as e:
        open_remote(url)
    assert "hunter2" not in str(e.value)
    r = run_kiln("--remote", url, "ls", "--remote")
    assert r.returncode == 2 and words in r.stderr and "hunter2" not in r.stderr + r.stdout
    assert "Traceback" not in r.stderr


def test_origin_names_host_and_repository() -> None:
    assert open_remote("oci://Registry.Example.com:5000/team/engines?plain-http=true&timeout=3").origin() == \
        "oci://registry.example.com:5000/team/engines"


# --------------------------------------------------------------------------- signatures as referrers


def test_signed_artifacts_travel_as_referrers_and_the_policy_holds(oci_registry: Registry, oci_url: str,
                                                                   tmp_path: Path) -> None:
    pytest.importorskip("model_signing")
    from tests.trust.conftest import artifact, hub_model, make_key, put, sign, write_policy

    release, attacker = make_key(tmp_path / "k", "release"), make_key(tmp_path / "k", "attacker")
    signed = put(artifact(tmp_path / "a", b"engine A" * 1000), hub_model("acme/llama"))
    unsigned = put(artifact(tmp_path / "b", b"engine B" * 1000), hub_model("acme/other"))
    sign(signed["key"], release.private)
    r = run_kiln("--remote", oci_url, "push", "--key", signed["key"], "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["signatures"] == 2
    assert run_kiln("--remote", oci_url, "push", "--key", unsigned["key"]).returncode == 0

    # distribution 2.8 has no referrers API: the referrers tag schema lists the signature manifests.
    repo = repo_of(oci_url)
    index, _ = http_json(f"{oci_registry.api(repo)}/manifests/sha256-{signed['manifest'][7:]}",
                         accept="application/vnd.oci.image.index.v1+json")
    kinds = sorted(d["artifactType"] for d in index["manifests"])
    assert "application/vnd.dev.sigstore.bundle.v0.3+json" in kinds
    sig_manifest, _ = http_json(f"{oci_registry.api(repo)}/manifests/{index['manifests'][0]['digest']}")
    assert sig_manifest["subject"]["digest"] == signed["manifest"]

    origin = open_remote(oci_url).origin()
    policy = write_policy(tmp_path / "p.yaml", [{"name": "ci-release", "public_key": str(release.public),
                                                 "remotes": [origin]}])
    fresh = {"KILN_HOME": str(tmp_path / "deploy")}
    dest = tmp_path / "dest"
    ok = run_kiln("--remote", oci_url, "fetch", "--key", signed["key"], "--dest", str(dest), "--trust-policy",
                  str(policy), env=fresh)
    assert ok.returncode == 0, ok.stderr
    assert (dest / "model.sig").is_file()
    no = run_kiln("--remote", oci_url, "fetch", "--key", unsigned["key"], "--dest", str(tmp_path / "d2"),
                  "--trust-policy", str(policy), env=fresh)
    assert no.returncode == 2 and "unsigned" in no.stderr and not (tmp_path / "d2").exists()
    # Another repository of the same registry is another remote to the policy.
    elsewhere = write_policy(tmp_path / "e.yaml", [{"name": "ci-release", "public_key": str(release.public),
                                                    "remotes": [origin + "-evil"]}])
    no = run_kiln("--remote", oci_url, "fetch", "--key", signed["key"], "--dest", str(tmp_path / "d3"),
                  "--trust-policy", str(elsewhere), env={"KILN_HOME": str(tmp_path / "deploy2")})
    assert no.returncode == 2 and "only for remotes" in no.stderr
    # An attacker's signature pushed beside the unsigned artifact is refused by fingerprint.
    r = run_kiln("--remote", oci_url, "sign", unsigned["key"], "--sign-key", str(attacker.private), "--push", "--force")
    assert r.returncode == 0, r.stderr
    no = run_kiln("--remote", oci_url, "fetch", "--key", unsigned["key"], "--dest", str(tmp_path / "d4"),
                  "--trust-policy", str(policy), env={"KILN_HOME": str(tmp_path / "deploy3")})
    assert no.returncode == 2 and attacker.fingerprint in no.stderr, no.stderr
    assert re.search(r"not (listed|trusted)|untrusted|does not list", no.stderr), no.stderr
