"""Model records (issue 13): the format, its checks as untrusted data, and the round trip store → remote → store.

A Hub model is laid out as huggingface_hub's cache lays it out (tests.conftest.write_hf_cache_model);
resolving it keeps a record in the store; a push publishes the record before the index entry; a
fresh machine with no HF cache resolves the Hub id from the remote's record, to the same key.
Remotes are a shared directory and a real S3-protocol server (moto on 127.0.0.1).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from kiln import BuildSpec, api, resolve
from kiln.cache import Store, open_remote, push, remote_model_record
from kiln.cache._model_records import pointer_prefix, record_key
from kiln.errors import ModelError, ModelNotFoundError, UnsafeManifestError
from kiln.manifests._model_record import MAX_RECORD_CONFIG_BYTES, ModelRecord, RevisionPointer, model_tree_digest
from kiln.models._tree import ModelFile, tree_digest
from tests.conftest import LLAMA_CONFIG, run_kiln, write_hf_cache_model
from tests.models.test_hub_metadata import TENSORS, expected_signature, safetensors_file
from tests.remote.conftest import moto_server, s3_view, S3View  # noqa: F401  (fixtures)

REPO = "acme/tiny"
COMMIT_A = "a" * 40
COMMIT_B = "b" * 40
TOOLCHAIN = {"torch": "2.0.0", "transformers": "5.0.0", "hardware": "cpu-test"}
SPEC = ["--target", "torch-aoti", "--n-positions", "64", "--dtype", "fp32", *[f"--toolchain={k}={v}" for k, v in TOOLCHAIN.items()]]


def model_files(seed: int = 0) -> dict[str, bytes]:
    return {
        "config.json": json.dumps(LLAMA_CONFIG, indent=1).encode(),
        "model.safetensors": hashlib.sha256(str(seed).encode()).digest() * 128,
        "tokenizer.json": b'{"version": "1.0"}',
    }


def hub_cache() -> Path:
    return Path(os.environ["HF_HUB_CACHE"])


def spec(ref: str = REPO) -> BuildSpec:
    return BuildSpec("torch-aoti", ref, n_positions=64, dtype="fp32")


def a_record(**over: object) -> ModelRecord:
    files = [(p, hashlib.sha256(d).hexdigest(), len(d)) for p, d in model_files().items()]
    kw: dict = dict(ref=REPO, repo_id=REPO, revision="main", commit=COMMIT_A, files=files,
                    resolved_at="2025-01-02T03:04:05.000006Z", config=model_files()["config.json"])
    kw.update(over)
    return ModelRecord.make(**kw)


# --------------------------------------------------------------------------- format


def test_a_record_keeps_the_tensor_signature_and_a_v1_record_is_read_without_one() -> None:
    sig = {"scheme": "kiln.tensors/v1", "digest": "sha256:" + "e" * 64, "count": 21, "output_head": True}
    r = a_record(tensors=sig)
    assert ModelRecord.parse(r.to_bytes()).tensors == sig
    doc = json.loads(r.to_bytes())
    doc["schema"] = "kiln.model-record/v1"  # what the previous Kiln wrote: no tensors field
    del doc["tensors"]
    assert ModelRecord.parse(json.dumps(doc).encode()).tensors is None
    doc["tensors"] = {"scheme": "kiln.tensors/v1", "digest": "md5:abc", "count": 1}
    with pytest.raises(UnsafeManifestError, match="tensors"):
        ModelRecord.parse(json.dumps(doc).encode())


def test_a_record_round_trips_and_its_digest_is_the_models_tree_digest() -> None:
    r = a_record()
    again = ModelRecord.parse(r.to_bytes())
    assert again == r
    doc = json.loads(r.to_bytes())
    assert doc["schema"] == "kiln.model-record/v2" and doc["commit"] == COMMIT_A and doc["revision"] == "main"
    assert doc["tensors"] is None  # none given: not known
    assert {f["path"] for f in doc["files"]} == set(model_files())
    assert doc["config"] == model_files()["config.json"].decode()
    # One definition of the tree digest: the record's equals the model tree's.
    assert r.tree_digest == tree_digest([ModelFile(*f) for f in r.files]) == model_tree_digest(r.files)


def test_the_schema_agrees_with_jsonschema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from importlib import resources

    schema = json.loads(resources.files("kiln.manifests").joinpath("model_record.schema.json").read_text())
    jsonschema.validate(json.loads(a_record().to_bytes()), schema)
    pointer = json.loads(RevisionPointer(REPO, "main", COMMIT_A, "2025-01-02T03:04:05Z").to_bytes())
    schema = json.loads(resources.files("kiln.manifests").joinpath("model_revision.schema.json").read_text())
    jsonschema.validate(pointer, schema)


def _tampered(change) -> bytes:  # type: ignore[no-untyped-def]
    doc = json.loads(a_record().to_bytes())
    change(doc)
    return json.dumps(doc).encode()


def test_a_record_that_does_not_match_its_files_is_refused() -> None:
    def lie(doc: dict) -> None:
        doc["files"][1]["sha256"] = "0" * 64  # another weights file, same claimed tree digest

    with pytest.raises(UnsafeManifestError, match=r"does not match its own files: its tree digest is sha256:"):
        ModelRecord.parse(_tampered(lie))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(config='{"vocab_size": 1}'), "not the config.json its file list names"),
    (lambda d: d.update(config=None), "does not keep it"),
    (lambda d: d["files"].append(dict(d["files"][0])), "twice"),
    (lambda d: d["files"][0].update(path="../etc/passwd"), "climbs out"),
    (lambda d: d.update(commit=COMMIT_A + "\n"), "commit"),
    (lambda d: d.update(repo_id="acme/../x"), "repo_id"),
    (lambda d: d.update(extra=1), "schema"),
    (lambda d: d["files"][0].update(size=-1), "schema"),
    (lambda d: d.update(files=[]), "schema"),
])
def test_malformed_records_are_refused(change, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnsafeManifestError, match=message):
        ModelRecord.parse(_tampered(change))


def test_records_are_bounded_in_depth_and_size() -> None:
    with pytest.raises(UnsafeManifestError, match="nested too deeply"):
        ModelRecord.parse(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(UnsafeManifestError, match="exceeds"):
        ModelRecord.parse(b" " * (17 << 20))


def test_a_config_larger_than_a_record_keeps_is_left_out_and_says_so_when_needed() -> None:
    big = b'{"pad": "' + b"x" * MAX_RECORD_CONFIG_BYTES + b'"}'
    files = [("config.json", hashlib.sha256(big).hexdigest(), len(big)), ("model.safetensors", "1" * 64, 10)]
    r = ModelRecord.make(ref=REPO, repo_id=REPO, revision="main", commit=COMMIT_A, files=files,
                         resolved_at="2025-01-02T03:04:05Z", config=big)
    assert r.config is None and ModelRecord.parse(r.to_bytes()) == r


# --------------------------------------------------------------------------- store and remote


def test_resolving_a_hub_id_keeps_its_record_in_the_store(store: Store) -> None:
    write_hf_cache_model(hub_cache(), REPO, model_files(), commit=COMMIT_A)
    res = resolve(spec(), store=store)
    record = store.model_records.get(REPO, COMMIT_A)
    assert record is not None and record.tree_digest == res.model.tree_digest
    assert record.files == tuple((f.path, f.sha256, f.size) for f in sorted(res.model.files, key=lambda f: f.path))
    assert record.config == model_files()["config.json"] and record.ref == REPO and record.revision == "main"
    [pointer] = store.model_records.pointers(REPO, "main")
    assert pointer.commit == COMMIT_A
    assert (store.root / record_key(REPO, COMMIT_A)).is_file()
    # A local directory keeps no record: it has no repo id or commit.
    assert not (store.root / pointer_prefix("x", "main")).exists()


def test_a_damaged_local_record_is_ignored_with_a_warning(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    write_hf_cache_model(hub_cache(), REPO, model_files(), commit=COMMIT_A)
    resolve(spec(), store=store)
    path = store.root / record_key(REPO, COMMIT_A)
    path.write_bytes(_tampered(lambda d: d["files"][1].update(sha256="0" * 64)))
    assert store.model_records.get(REPO, COMMIT_A) is None
    assert "does not match its own files" in caplog.text
    resolve(spec(), store=store)  # resolving from the cache again replaces it
    assert store.model_records.get(REPO, COMMIT_A) is not None


def _publish_and_push(tmp_path: Path, url: str, files: dict[str, bytes] | None = None) -> str:
    """The CI side: a Hub model in the HF cache, an artifact of it in the store, pushed; returns its key."""
    write_hf_cache_model(hub_cache(), REPO, files or model_files(), commit=COMMIT_A)
    src = tmp_path / "artifact"
    src.mkdir()
    (src / "engine.bin").write_bytes(b"engine")
    r = run_kiln("store", "put", str(src), REPO, *SPEC, "--json")
    assert r.returncode == 0, r.stderr
    key = json.loads(r.stdout)["key"]
    p = run_kiln("--remote", url, "push", "--key", key)
    assert p.returncode == 0, p.stderr
    return str(key)


def _fresh_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "fresh-kiln"))
    return Store(tmp_path / "fresh-kiln")


def _round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    key = _publish_and_push(tmp_path, url)
    rem = open_remote(url)
    assert rem is not None
    record = remote_model_record(rem, REPO, COMMIT_A)
    assert record is not None and record.commit == COMMIT_A
    fresh = _fresh_machine(tmp_path, monkeypatch)
    with pytest.raises(ModelNotFoundError, match="No model record resolves it either"):
        resolve(spec(), store=fresh)  # without the remote: nothing to go by
    res = resolve(spec(), store=fresh, remote=rem, toolchain=TOOLCHAIN)
    assert res.key == key and res.model.path is None and res.model.commit == COMMIT_A
    assert res.model_note is not None and COMMIT_A in res.model_note
    # The record is kept locally: the next resolution needs no remote.
    assert resolve(spec(), store=fresh, toolchain=TOOLCHAIN).key == key
    result = api.lookup(res, store=fresh, remote=rem)
    assert result.hit and result.entry is not None and result.entry.key == key
    # Anything that needs the weights says they are not here.
    with pytest.raises(ModelError, match="are not on this machine"):
        res.model.require_local()


def test_record_round_trip_through_a_file_remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _round_trip(tmp_path, monkeypatch, str(tmp_path / "remote"))


def test_record_round_trip_through_s3(s3_view: S3View, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    _round_trip(tmp_path, monkeypatch, s3_view.url)
    objects = s3_view.objects()
    assert record_key(REPO, COMMIT_A) in objects and pointer_prefix(REPO, "main") + f"{COMMIT_A}.json" in objects


def test_push_uploads_the_record_before_the_index_entry(tmp_path: Path, store: Store) -> None:
    """The order a reader relies on: the remote's record exists by the time its entry does."""
    write_hf_cache_model(hub_cache(), REPO, model_files(), commit=COMMIT_A)
    src = tmp_path / "artifact"
    src.mkdir()
    (src / "engine.bin").write_bytes(b"engine")
    res = resolve(spec(), store=store, toolchain=TOOLCHAIN)
    entry = api.put(res, src, store=store)
    rem = open_remote(str(tmp_path / "remote"))
    assert rem is not None
    order: list[str] = []
    real_put = rem.put

    def put(k: str, data: bytes) -> None:
        order.append(k.split("/", 1)[0])
        real_put(k, data)

    rem.put = put  # type: ignore[method-assign]
    push(store, rem, entry)
    assert order.index("models") < order.index("index") and order[-1] == "index"


def test_a_remote_record_that_does_not_match_its_files_is_refused_clearly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "remote")
    _publish_and_push(tmp_path, url)
    path = Path(url) / record_key(REPO, COMMIT_A)
    path.write_bytes(_tampered(lambda d: d["files"][1].update(sha256="0" * 64)))
    _fresh_machine(tmp_path, monkeypatch)
    r = run_kiln("--remote", url, "key", REPO, *SPEC)
    assert r.returncode == 2, r.stderr
    assert "does not match its own files" in r.stderr and "refusing it" in r.stderr
    assert "No model record resolves it either" in r.stderr and "Traceback" not in r.stderr


def signed_model_files() -> dict[str, bytes]:
    """A model with an architecture digest: real safetensors weights (their header gives the tensor
    signature) and a config that does not tie lm_head to the embeddings (a tie would leave it none)."""
    return {
        "config.json": json.dumps({**LLAMA_CONFIG, "tie_word_embeddings": False}, indent=1).encode(),
        "model.safetensors": safetensors_file(TENSORS),
        "tokenizer.json": b'{"version": "1.0"}',
    }


@pytest.mark.parametrize("ref", [f"{REPO}@{COMMIT_A}", REPO], ids=["pinned-commit", "branch-pointer"])
def test_a_local_record_without_the_signature_yields_to_the_remotes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ref: str) -> None:
    """A record an older Kiln kept (no tensors): offline, the torch-aoti key would be keyed by the tree
    digest, not the architecture digest the build machine used, and every lookup would miss."""
    url = str(tmp_path / "remote")
    key = _publish_and_push(tmp_path, url, signed_model_files())  # the build machine, which had the files
    rem = open_remote(url)
    assert rem is not None
    pushed = remote_model_record(rem, REPO, COMMIT_A)
    assert pushed is not None and pushed.tensors == expected_signature(TENSORS)
    fresh = _fresh_machine(tmp_path, monkeypatch)  # no HF cache; HF_HUB_OFFLINE=1 (tests.conftest)
    old = ModelRecord.make(ref=REPO, repo_id=REPO, revision="main", commit=COMMIT_A, files=pushed.files,
                           resolved_at=pushed.resolved_at, config=pushed.config, tensors=None)
    fresh.model_records.put(old)
    fresh.model_records.put_pointer(RevisionPointer(REPO, "main", COMMIT_A, pushed.resolved_at))
    assert fresh.model_records.get(REPO, COMMIT_A) == old
    r = run_kiln("--remote", url, "key", ref, *SPEC, "--explain", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["key"] == key
    assert "model.architecture_digest" in out["parts"]["engine"]["keyed_by"], out["parts"]
    assert [n for n in out["notes"] if rem.describe() in n and COMMIT_A[:12] in n], out["notes"]  # the remote's record
    hit = run_kiln("--remote", url, "lookup", ref, *SPEC, "--json")
    assert hit.returncode == 0 and json.loads(hit.stdout)["entry"]["key"] == key, hit.stdout + hit.stderr


def test_the_local_record_without_the_signature_is_upgraded_from_the_remotes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept locally, the remote's record lets the next resolution need no remote (the module's promise)."""
    url = str(tmp_path / "remote")
    key = _publish_and_push(tmp_path, url, signed_model_files())
    rem = open_remote(url)
    assert rem is not None
    pushed = remote_model_record(rem, REPO, COMMIT_A)
    assert pushed is not None
    fresh = _fresh_machine(tmp_path, monkeypatch)
    fresh.model_records.put(ModelRecord.make(ref=REPO, repo_id=REPO, revision="main", commit=COMMIT_A,
                                             files=pushed.files, resolved_at=pushed.resolved_at, config=pushed.config))
    r = run_kiln("--remote", url, "key", f"{REPO}@{COMMIT_A}", *SPEC)
    assert r.returncode == 0 and r.stdout.strip() == key, r.stdout + r.stderr
    kept = fresh.model_records.get(REPO, COMMIT_A)
    assert kept is not None and kept.tensors == expected_signature(TENSORS)
    # Without the remote now: the kept record gives the same key.
    again = run_kiln("key", f"{REPO}@{COMMIT_A}", *SPEC)
    assert again.returncode == 0 and again.stdout.strip() == key, again.stdout + again.stderr
