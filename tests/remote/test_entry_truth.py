"""A remote index entry is a claim; its build record (covered, with the manifest, by the
entry's digest) is the truth. On a real S3-protocol server and on a filesystem remote:

* an entry that claims anything its record and manifest do not say — another shape (the
  issue's tp 24 / 4096 / bf16 entry for a tp 2 / 64 / fp16 Neuron engine, whose LMI
  ``serving.properties`` would be written from the claim), another model name or source,
  size, file count or creation time — is refused by every reader with a warning naming the
  field, and nothing is published locally;
* what a pull publishes locally is exactly the entry the record describes;
* an entry whose spec is no valid build spec (``spec: {}``, wrong types, ``per_token``
  without SmoothQuant) is refused as malformed when it is parsed: no reader crashes on it,
  neither then nor afterwards (`kiln ls`, `kiln lookup`);
* `ensure --on-miss build` treats a refused remote artifact as a loud miss and builds — also
  when the entry object cannot be read at all (a directory where the file belongs) while the
  remote itself answers; a remote that cannot be reached is an error (exit 2), not a miss.

Before: the lies about the model name, source, size, file count and creation time were
pulled and stored locally as they were; an entry with ``per_token`` but no SmoothQuant alpha
crashed `kiln ls --remote` (exit 2, "asks for SmoothQuant per-token scaling"); an entry
object that was a directory made `ensure --on-miss build` give up with exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conftest import LLAMA_CONFIG, run_kiln, write_fake_model
from tests.remote.conftest import (
    FileView,
    RemoteView,
    S3View,
    free_port,
    kiln_remote,
    spec_args,
    store_put,
    write_tree,
)

NEURON_PINS = ["--toolchain=neuronx-cc=2.0.0", "--toolchain=transformers-neuronx=0.1.0", "--toolchain=torch-neuronx=2.1.0", "--toolchain=libneuronxla=2.0.0",
          "--toolchain=hardware=inf2"]
ENGINE = ["--target", "neuron", "--tp-degree", "2", "--n-positions", "64", "--dtype", "fp16"]


def _no_traceback(r: Any) -> None:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]


def _warnings(r: Any) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.startswith("kiln: WARNING: ")]


def _published(home: Path) -> list[dict]:
    return [json.loads(p.read_bytes()) for p in sorted(home.glob("index/*/*.json"))]


def _push(remote: RemoteView, art: Path, model: Path, spec: list[str]) -> tuple[str, str, dict]:
    """Publish ``art`` locally with ``spec``, push it: (key, entry object key, entry JSON)."""
    r = run_kiln("store", "put", str(art), str(model), *spec, "--json")
    assert r.returncode == 0, r.stderr
    key = json.loads(r.stdout)["key"]
    assert kiln_remote(remote.url, "push", "--key", key).returncode == 0
    [ekey] = [k for k in remote.objects() if k.startswith("index/") and key in k]
    return key, ekey, json.loads(remote.read(ekey))


# --------------------------------------------------------------------------- the example


@pytest.fixture
def neuron_model(tmp_path: Path) -> Path:
    """A model a tp 24 engine fits (24 heads), so the lying entry's claim is a valid query."""
    config = dict(LLAMA_CONFIG, num_attention_heads=24, num_key_value_heads=24, hidden_size=96,
                  max_position_embeddings=8192)
    return write_fake_model(tmp_path / "neuron-model", config=config)


def test_entry_claiming_another_shape_never_writes_a_deployment(
    remote: RemoteView, neuron_model: Path, tmp_path: Path
) -> None:
    """The entry of a tp 2 / 64 / fp16 Neuron engine rewritten to claim tp 24 / 4096 / bf16.
    A query for that shape without toolchain pins matches entries on their spec; fetching it
    in the LMI layout would write serving.properties from the claim. It is refused instead."""
    art = write_tree(tmp_path / "art", {"model/config.json": b"{}", "compiled/graph.neff": b"n" * 300})
    key, ekey, entry = _push(remote, art, neuron_model, [*ENGINE, *NEURON_PINS])
    entry["spec"].update(tp_degree=24, n_positions=4096, dtype="bf16")
    remote.write(ekey, json.dumps(entry).encode())
    claim = ["--target", "neuron", "--tp-degree", "24", "--n-positions", "4096", "--dtype", "bf16"]
    for command in ("fetch", "ensure"):
        home, dest = tmp_path / f"home-{command}", tmp_path / f"dest-{command}"
        r = kiln_remote(remote.url, command, str(neuron_model), *claim, "--layout", "lmi", "--dest", str(dest),
                        env={"KILN_HOME": str(home)})
        _no_traceback(r)
        assert r.returncode == 1, (command, r.returncode, r.stdout, r.stderr)
        assert any(key[:12] in w and "differs from its build record's key inputs in dtype" in w
                   and '"bf16", the build record "fp16"' in w for w in _warnings(r)), r.stderr  # the first difference
        assert not dest.exists() and _published(home) == [], command
    # --select ranks engines by what their entries claim; the chosen one is verified, refused, and nothing fits.
    r = kiln_remote(remote.url, "lookup", str(neuron_model), "--target", "neuron", "--select", "--instance-type",
                    "ml.inf2.48xlarge", env={"KILN_HOME": str(tmp_path / "home-select")})
    _no_traceback(r)
    assert r.returncode == 1 and key[:12] in r.stdout + r.stderr, (r.stdout, r.stderr)
    assert _published(tmp_path / "home-select") == []
    # The engine itself, asked for as what it is, is served, with the record's shape.
    dest = tmp_path / "dest-true"
    r = kiln_remote(remote.url, "fetch", str(neuron_model), *ENGINE, *NEURON_PINS, "--layout", "lmi", "--dest", str(dest),
                    env={"KILN_HOME": str(tmp_path / "home-true")})
    assert r.returncode == 1 and dest.exists() is False  # the exact key's entry is the lying one: refused too
    remote.write(ekey, json.dumps(dict(entry, spec=dict(entry["spec"], tp_degree=2, n_positions=64, dtype="fp16"))).encode())
    r = kiln_remote(remote.url, "fetch", str(neuron_model), *ENGINE, *NEURON_PINS, "--layout", "lmi", "--dest", str(dest),
                    env={"KILN_HOME": str(tmp_path / "home-true")})
    assert r.returncode == 0, r.stderr
    props = (dest / "serving.properties").read_text()
    assert "option.tensor_parallel_degree=2\n" in props and "option.n_positions=64\n" in props
    assert "option.dtype=fp16\n" in props


# --------------------------------------------------------------------------- every claimed field

LIES: dict[str, tuple[Callable[[dict], None], str]] = {
    "spec.batch_size": (lambda e: e["spec"].update(batch_size=8), "batch_size"),
    "spec.model": (lambda e: e["spec"].update(model="someone/else"), "spec differs from its build record in model"),
    "model.ref": (lambda e: e["model"].update(ref="someone/else"), "model.ref"),
    "model.repo_id": (lambda e: e["model"].update(repo_id="someone/else"), "model.repo_id"),
    "model.commit": (lambda e: e["model"].update(commit="0" * 40), "model.commit"),
    "model.extra": (lambda e: e["model"].update(revision="main"), "model.revision"),
    "size": (lambda e: e.update(size=5), "size differs from its manifest"),
    "files": (lambda e: e.update(files=9), "files differs from its manifest"),
    "created": (lambda e: e.update(created="2099-01-01T00:00:00Z"), "created differs from its manifest"),
    "toolchain": (lambda e: e["toolchain"].update(torch="9.9.9"), "toolchain.torch"),
}


@pytest.fixture
def pushed(remote: RemoteView, model: Path, tmp_path: Path) -> tuple[str, str, dict]:
    art = write_tree(tmp_path / "art", {"engine.bin": b"e" * 1000, "config.json": b"{}"})
    return _push(remote, art, model, spec_args())


@pytest.mark.parametrize("lie", sorted(LIES))
def test_entry_lying_about_any_field_is_refused_and_nothing_is_stored(
    lie: str, remote: RemoteView, model: Path, tmp_path: Path, pushed: tuple[str, str, dict]
) -> None:
    key, ekey, entry = pushed
    change, named = LIES[lie]
    change(entry)
    remote.write(ekey, json.dumps(entry).encode())
    for name, args in {
        "lookup": ["lookup", str(model), *spec_args()],
        "fetch": ["fetch", str(model), *spec_args(), "--dest", str(tmp_path / "dest-fetch")],
        "ensure": ["ensure", str(model), *spec_args(), "--dest", str(tmp_path / "dest-ensure")],
        "pull": ["pull", "--all"],
        "pull-key": ["pull", "--key", key[:12]],
    }.items():
        home = tmp_path / f"home-{name}"
        r = kiln_remote(remote.url, *args, env={"KILN_HOME": str(home)})
        _no_traceback(r)
        if name.startswith("pull"):  # pull names what it refuses: an error, after the others
            assert r.returncode == 2 and named in r.stderr and key[:12] in r.stderr, (name, r.stderr)
        else:  # a loud miss
            assert r.returncode == 1 and any(named in w and key[:12] in w for w in _warnings(r)), (name, r.stderr)
        assert _published(home) == [], (name, _published(home))
        assert not (tmp_path / f"dest-{name}").exists()
    shown = kiln_remote(remote.url, "show", key[:12], "--remote", env={"KILN_HOME": str(tmp_path / "home-show")})
    _no_traceback(shown)
    assert shown.returncode == 2 and named in shown.stderr, shown.stderr


def test_a_pull_stores_exactly_the_entry_the_record_describes(
    remote: RemoteView, model: Path, tmp_path: Path, pushed: tuple[str, str, dict]
) -> None:
    key, _, entry = pushed
    home = tmp_path / "home"
    r = kiln_remote(remote.url, "pull", "--key", key[:12], env={"KILN_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    assert _published(home) == [entry]
    [record] = [json.loads(p.read_bytes()) for p in home.glob("blobs/sha256/**/*") if p.is_file()
                and p.read_bytes().startswith(b"{") and b'"kiln.build-record/v1"' in p.read_bytes()]
    assert record["spec"]["model"] == entry["spec"]["model"] and record["model"]["ref"] == entry["model"]["ref"]


# --------------------------------------------------------------------------- malformed specs

SPECS: dict[str, Callable[[dict], Any]] = {
    "empty": lambda s: {},
    "wrong-types": lambda s: dict(s, n_positions="256", tp_degree=True),
    "per-token-without-smoothquant": lambda s: dict(
        s, quantization={"smoothquant_alpha": None, "per_token": True, "per_channel": False, "int8_kv_cache": False}),
    "per-channel-without-smoothquant": lambda s: dict(
        s, quantization={"smoothquant_alpha": None, "per_token": False, "per_channel": True, "int8_kv_cache": False}),
    "alpha-not-canonical": lambda s: dict(
        s, quantization={"smoothquant_alpha": "0.50", "per_token": False, "per_channel": False, "int8_kv_cache": False}),
    "quantization-all-off": lambda s: dict(
        s, quantization={"smoothquant_alpha": None, "per_token": False, "per_channel": False, "int8_kv_cache": False}),
}


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_entry_whose_spec_is_no_build_spec_is_malformed_for_every_reader(
    kind: str, remote: RemoteView, model: Path, tmp_path: Path, pushed: tuple[str, str, dict]
) -> None:
    key, ekey, entry = pushed
    remote.write(ekey, json.dumps(dict(entry, spec=SPECS[kind](entry["spec"]))).encode())
    home = tmp_path / "home"
    env = {"KILN_HOME": str(home)}
    for args in (["lookup", str(model), *spec_args()], ["fetch", str(model), *spec_args(), "--dest", str(tmp_path / "d")],
                 ["ensure", str(model), *spec_args(), "--dest", str(tmp_path / "d")], ["pull", "--all"],
                 ["ls", "--remote"], ["ls", "--remote", "--json"]):
        r = kiln_remote(remote.url, *args, env=env)
        _no_traceback(r)
        assert r.returncode in (0, 1), (args, r.returncode, r.stderr)
        assert any(ekey in w and "malformed" in w and "refusing it" in w for w in _warnings(r)), (args, r.stderr)
        assert _published(home) == [] and not (tmp_path / "d").exists(), args
    for args in (["ls"], ["ls", "--json"], ["lookup", str(model), *spec_args()]):  # and afterwards
        r = run_kiln(*args, env=env)
        _no_traceback(r)
        assert r.returncode in (0, 1), (args, r.stderr)
    before = remote.objects()
    r = kiln_remote(remote.url, "gc", "--remote", "--grace", "0s")
    assert r.returncode == 2 and "remote gc deleted nothing" in r.stderr and ekey in r.stderr, r.stderr
    assert remote.objects() == before


# --------------------------------------------------------------------------- ensure --on-miss build


def _tiny(tmp_path: Path, seed: int) -> Path:
    from tests.tiny_models import make_tiny_model

    return make_tiny_model("llama", tmp_path / "tiny", seed=seed)


TINY = ["--target", "torch-aoti", "--n-positions", "32"]


def _key_and_model_hex(model: Path, env: dict) -> tuple[str, str]:
    r = run_kiln("lookup", str(model), *TINY, "--json", env=env)
    assert r.returncode == 1, r.stderr
    data = json.loads(r.stdout)
    return data["query"]["key"], data["query"]["model"]["tree_digest"].split(":", 1)[1]


def _ensure_builds(remote: RemoteView, model: Path, tmp_path: Path, bad_object: str) -> None:
    home, dest = tmp_path / "home", tmp_path / "dest"
    r = kiln_remote(remote.url, "ensure", str(model), *TINY, "--on-miss", "build", "--dest", str(dest),
                    env={"KILN_HOME": str(home)}, timeout=900)
    _no_traceback(r)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert any(bad_object in w and "refusing it" in w for w in _warnings(r)), r.stderr
    assert "building it here" in r.stdout and (dest / "engine.pt2").exists()


def test_ensure_on_miss_build_builds_past_an_entry_that_cannot_be_read(file_view: FileView, tmp_path: Path) -> None:
    """The entry object is a directory: the remote answers, only that object is bad."""
    model = _tiny(tmp_path, seed=31)
    key, model_hex = _key_and_model_hex(model, {"KILN_HOME": str(tmp_path / "probe")})
    ekey = f"index/{model_hex}/{key}.json"
    (file_view.root / ekey).mkdir(parents=True)
    _ensure_builds(file_view, model, tmp_path, ekey)


def test_ensure_on_miss_build_builds_past_a_malformed_entry(s3_view: S3View, tmp_path: Path) -> None:
    model = _tiny(tmp_path, seed=32)
    key, model_hex = _key_and_model_hex(model, {"KILN_HOME": str(tmp_path / "probe")})
    ekey = f"index/{model_hex}/{key}.json"
    entry = {"schema": 1, "key": key, "manifest": "sha256:" + "a" * 64, "model": {"tree_digest": "sha256:" + model_hex},
             "spec": {"target": "torch-aoti", "n_positions": 32, "batch_size": 1, "tp_degree": 1, "dtype": "fp32",
                      "quantization": {"smoothquant_alpha": None, "per_token": True, "per_channel": False,
                                       "int8_kv_cache": False}, "options": {}},
             "toolchain": {}, "size": 1, "created": "2026-01-01T00:00:00Z", "files": 1}
    s3_view.write(ekey, json.dumps(entry).encode())
    _ensure_builds(s3_view, model, tmp_path, ekey)


def test_ensure_against_an_unreachable_remote_is_an_error_even_with_on_miss_build(
    model: Path, tmp_path: Path, s3_view: S3View
) -> None:
    """An outage is not a miss: building because the remote is down would hide it (and spend
    a build that the remote may hold). One error line, exit 2, nothing built or written."""
    url = f"s3://{s3_view.bucket}/p?endpoint=http://127.0.0.1:{free_port()}"
    dest = tmp_path / "dest"
    r = kiln_remote(url, "ensure", str(model), *spec_args(), "--on-miss", "build", "--dest", str(dest),
                    env={"KILN_HOME": str(tmp_path / "home")})
    _no_traceback(r)
    assert r.returncode == 2 and r.stderr.startswith("kiln: error: cannot reach"), r.stderr
    assert "building it here" not in r.stdout and not dest.exists()


# --------------------------------------------------------------------------- the local side


def test_local_entry_disagreeing_with_its_record_is_detected(model: Path, tmp_path: Path) -> None:
    """The check a store runs on a local artifact (the manifest it reads anyway, and its
    record): a local entry edited to claim another size or model name is named, field by field."""
    import kiln
    from kiln.errors import UnsafeManifestError
    from kiln.manifests import IndexEntry, check_record_describes, entry_from_record, parse_record

    key = store_put(write_tree(tmp_path / "art", {"engine.bin": b"e" * 100}), model)
    store = kiln.Store()
    [entry] = [e for e in store.iter_entries() if e.key == key]
    manifest = store.read_manifest(entry.manifest)
    record = parse_record(store.read_blob(manifest.config.digest, 1 << 24))
    check_record_describes(record, entry, manifest)
    assert entry_from_record(record, entry.manifest, manifest) == entry
    for change, named in ((dict(size=1), "size"), (dict(spec=dict(entry.spec, model="x")), "model")):
        lying = IndexEntry.from_json(dict(entry.to_json(), **change))
        with pytest.raises(UnsafeManifestError, match=named):
            check_record_describes(record, lying, manifest)


def test_local_entry_lying_about_its_artifact_is_not_served(model: Path, tmp_path: Path) -> None:
    """Through the CLI: an index entry in the local store edited to claim another size is a loud
    miss for lookup and fetch (before: served as it claimed)."""
    import os

    key = store_put(write_tree(tmp_path / "art", {"engine.bin": b"e" * 100}), model)
    home = Path(os.environ["KILN_HOME"])
    [path] = [p for p in home.glob("index/*/*.json") if p.stem == key]
    doc = json.loads(path.read_bytes())
    os.chmod(path, 0o644)
    path.write_text(json.dumps(dict(doc, size=doc["size"] + 1)))
    for args in (["lookup", str(model), *spec_args()], ["fetch", str(model), *spec_args(), "--dest", str(tmp_path / "d")]):
        r = run_kiln(*args)
        _no_traceback(r)
        assert r.returncode == 1 and any("size differs from its manifest" in w for w in _warnings(r)), r.stderr
    assert not (tmp_path / "d").exists()


# --------------------------------------------------------------------------- manifests that lie about sizes


def test_manifest_lying_about_its_build_record_size_is_refused(
    remote: RemoteView, model: Path, tmp_path: Path, pushed: tuple[str, str, dict]
) -> None:
    """The record's bytes match their digest, but the manifest declares another size for them:
    the manifest is not believed (before: lookup, fetch and ensure served it, pull published it).
    Found by the randomised hostile-remote test (seed 15, file cases 5 and 17)."""
    import hashlib

    key, ekey, entry = pushed
    mkey = "blobs/sha256/" + entry["manifest"].split(":", 1)[1]
    manifest = json.loads(remote.read(mkey))
    manifest["config"]["size"] += 7
    data = json.dumps(manifest).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    remote.write("blobs/sha256/" + digest.split(":", 1)[1], data)
    remote.write(ekey, json.dumps(dict(entry, manifest=digest)).encode())
    for name, args in {
        "lookup": ["lookup", str(model), *spec_args()],
        "ensure": ["ensure", str(model), *spec_args(), "--dest", str(tmp_path / "dest-ensure")],
        "pull": ["pull", "--key", key[:12]],
    }.items():
        home = tmp_path / f"home-{name}"
        r = kiln_remote(remote.url, *args, env={"KILN_HOME": str(home)})
        _no_traceback(r)
        assert r.returncode == (2 if name == "pull" else 1), (name, r.stderr)
        assert "its manifest says" in r.stderr, (name, r.stderr)
        assert _published(home) == [], name
        if name == "lookup":  # advice that works: pulling it again would be refused again
            assert "the remote holds it but it was refused" in r.stdout + r.stderr, r.stdout + r.stderr
            assert "pull it again" not in r.stdout + r.stderr
    assert not (tmp_path / "dest-ensure").exists()
