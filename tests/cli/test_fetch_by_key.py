"""`kiln ensure --key KEY` and `kiln fetch --key KEY`: a deployment pinned to an exact build
needs no model at all (issue 13, item 5).

Through the real CLI, on real files, a filesystem remote and a real S3-protocol server
(moto, on loopback): the artifact is found by its full key or a prefix of at least 12 hex
digits — in the local store, else on the remote, into an empty KILN_HOME with the model's
directory deleted — and materialised whole; ``--layout lmi`` writes serving.properties from
the artifact's verified spec (an entry that lies about its shape is refused, not written);
an ambiguous prefix is an error listing the candidates; an unknown key is a miss (exit 1)
that says where it looked; mixing --key with a model or spec flags, or with --on-miss build,
is a usage error (exit 2) naming both, never a traceback.

Before: neither command had --key (click: "No such option: --key", exit 2), and ensure
without a model on disk failed resolving it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import LLAMA_CONFIG, run_kiln, write_fake_model
from tests.remote.conftest import (  # noqa: F401  (fixtures)
    RemoteView,
    file_view,
    kiln_remote,
    moto_server,
    remote,
    s3_view,
    store_put,
    tree,
    write_tree,
)

from .test_json_schemas import check

ENGINE_FILES = {"engine.pt2": b"compiled graph " * 100, "weights.safetensors": b"w" * 5000,
                "tokenizer.json": b'{"version": "1.0"}', "config.json": json.dumps(LLAMA_CONFIG).encode()}
NEURON = ["--target", "neuron", "--tp-degree", "2", "--n-positions", "64", "--dtype", "fp16",
          "--toolchain=neuronx-cc=2.0.0", "--toolchain=transformers-neuronx=0.1.0", "--toolchain=torch-neuronx=2.1.0", "--toolchain=libneuronxla=2.0.0",
          "--toolchain=hardware=inf2"]


def _no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]


def _built(tmp_path: Path, home: Path) -> tuple[str, Path]:
    """An artifact published in ``home`` from a model whose directory is then deleted: (key, its files)."""
    model = write_fake_model(tmp_path / "model")
    art = write_tree(tmp_path / "art", ENGINE_FILES)
    key = store_put(art, model, env={"KILN_HOME": str(home)})
    shutil.rmtree(model)  # nothing of the model is left on this machine
    return key, art


def _pushed(tmp_path: Path, view: RemoteView) -> tuple[str, Path]:
    """An artifact on the remote only: built in a CI store, pushed, the model and the CI store deleted."""
    ci_home = tmp_path / "ci-home"
    key, art = _built(tmp_path, ci_home)
    r = kiln_remote(view.url, "push", "--key", key, env={"KILN_HOME": str(ci_home)})
    assert r.returncode == 0, r.stderr
    shutil.rmtree(ci_home)
    return key, art


def test_by_full_key_and_prefix_from_the_local_store(tmp_path: Path) -> None:
    home = tmp_path / "home"
    key, art = _built(tmp_path, home)
    env = {"KILN_HOME": str(home)}
    dest = tmp_path / "dest-full"
    r = run_kiln("ensure", "--key", key, "--dest", str(dest), env=env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert f"hit (local) {key}" in r.stdout and tree(dest) == tree(art)
    # A prefix (upper case too) and JSON, for fetch and ensure; the note gives the full key to pin.
    for command in ("fetch", "ensure"):
        dest = tmp_path / f"dest-{command}"
        data = check(command, run_kiln(command, "--key", key[:12].upper(), "--dest", str(dest), "--json", env=env))
        assert data["status"] == "hit" and data["source"] == "local" and data["key"] == key
        assert data["query"] == {"key_prefix": key[:12]} and data["dest"] == str(dest)
        assert data["spec"]["target"] == "torch-aoti" and data["entry"]["key"] == key
        assert any(key in n and "pin the full key" in n for n in data["notes"]), data["notes"]
        assert tree(dest) == tree(art)
    # Again into the same DEST: left untouched, still a hit (a container runs this at every start).
    r = run_kiln("ensure", "--key", key, "--dest", str(tmp_path / "dest-full"), env=env)
    assert r.returncode == 0 and "left untouched" in r.stdout, r.stdout


def test_by_key_from_the_remote_into_an_empty_home(remote: RemoteView, tmp_path: Path) -> None:
    """The serving container: empty KILN_HOME, no model anywhere, the remote holds the build."""
    key, art = _pushed(tmp_path, remote)
    home, dest = tmp_path / "serving-home", tmp_path / "opt-ml-model"
    data = check("ensure", kiln_remote(remote.url, "ensure", "--key", key[:16], "--dest", str(dest), "--json",
                                       env={"KILN_HOME": str(home)}))
    assert data["status"] == "hit" and data["source"] == "remote" and data["key"] == key
    assert tree(dest) == tree(art)  # engine, weights, tokenizer, config
    assert any("pulled from" in n for n in data["notes"]), data["notes"]
    # Pulled, verified and published locally: the next start needs no remote at all.
    assert [p.stem for p in home.glob("index/*/*.json")] == [key]
    r = run_kiln("fetch", "--key", key, "--dest", str(tmp_path / "again"), env={"KILN_HOME": str(home)})
    assert r.returncode == 0 and f"hit (local) {key}" in r.stdout, (r.stdout, r.stderr)


def test_lmi_layout_comes_from_the_verified_record(remote: RemoteView, tmp_path: Path) -> None:
    """--layout lmi writes serving.properties from the artifact's spec; an entry that claims another
    shape than its build record is refused (a loud miss), never written into the deployment."""
    config = dict(LLAMA_CONFIG, num_attention_heads=24, num_key_value_heads=24, hidden_size=96)
    model = write_fake_model(tmp_path / "neuron-model", config=config)
    art = write_tree(tmp_path / "art", {"model/config.json": b"{}", "model/tokenizer.json": b"{}",
                                        "compiled/graph.neff": b"n" * 300})
    ci = {"KILN_HOME": str(tmp_path / "ci")}
    r = run_kiln("store", "put", str(art), str(model), *NEURON, "--json", env=ci)
    assert r.returncode == 0, r.stderr
    key = json.loads(r.stdout)["key"]
    assert kiln_remote(remote.url, "push", "--key", key, env=ci).returncode == 0
    shutil.rmtree(model)
    dest = tmp_path / "dest"
    r = kiln_remote(remote.url, "ensure", "--key", key[:12], "--layout", "lmi", "--container-dir", "/opt/ml/model",
                    "--dest", str(dest), "--print-env", env={"KILN_HOME": str(tmp_path / "serving")})
    assert r.returncode == 0, r.stderr
    props = (dest / "serving.properties").read_text()
    for line in ("option.tensor_parallel_degree=2", "option.n_positions=64", "option.dtype=fp16",
                 "option.max_rolling_batch_size=1", "option.compiled_graph_path=/opt/ml/model/compiled"):
        assert line + "\n" in props, props
    assert (dest / "config.json").exists() and (dest / "compiled" / "graph.neff").exists()
    assert "export OPTION_MODEL_ID=/opt/ml/model\n" in r.stdout, r.stdout
    # The same build whose remote entry now claims tp 24 / 4096 / bf16: refused, nothing written.
    [ekey] = [k for k in remote.objects() if k.startswith("index/") and key in k]
    entry = json.loads(remote.read(ekey))
    entry["spec"].update(tp_degree=24, n_positions=4096, dtype="bf16")
    remote.write(ekey, json.dumps(entry).encode())
    dest = tmp_path / "dest-lie"
    r = kiln_remote(remote.url, "ensure", "--key", key, "--layout", "lmi", "--dest", str(dest),
                    env={"KILN_HOME": str(tmp_path / "serving-2")})
    _no_traceback(r)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "kiln: WARNING:" in r.stderr and key[:12] in r.stderr and "dtype" in r.stderr, r.stderr
    assert "refused" in r.stdout and not dest.exists()


def test_a_refused_remote_artifact_is_a_loud_miss(remote: RemoteView, tmp_path: Path) -> None:
    key, _ = _pushed(tmp_path, remote)
    manifest = json.loads(remote.read(next(k for k in remote.objects() if k.startswith("index/"))))["manifest"]
    layers = json.loads(remote.read(f"blobs/sha256/{manifest.split(':')[1]}"))["layers"]
    weights = next(f for f in layers if f["annotations"]["org.opencontainers.image.title"] == "weights.safetensors")
    remote.write(f"blobs/sha256/{weights['digest'].split(':')[1]}", b"x" * weights["size"])  # same size, other bytes
    dest, home = tmp_path / "dest", tmp_path / "serving"
    data = check("ensure", kiln_remote(remote.url, "ensure", "--key", key, "--dest", str(dest), "--json",
                                       env={"KILN_HOME": str(home)}), exit_code=1)
    assert data["status"] == "miss" and data["key"] == key and data["spec"] is None
    assert any(key[:12] in d for d in data["damaged"]), data["damaged"]
    assert "refused" in data["explanation"][0] and not dest.exists()
    assert list(home.glob("index/*/*.json")) == []


def test_an_ambiguous_prefix_lists_the_candidates(file_view: RemoteView, tmp_path: Path) -> None:
    key, _ = _pushed(tmp_path, file_view)
    [ekey] = [k for k in file_view.objects() if k.startswith("index/")]
    other = key[:12] + ("0" if key[12] != "0" else "1") + key[13:]
    file_view.write(f"index/{ekey.split('/')[1]}/{other}.json", b"{}")  # the name is enough to be a candidate
    for command in ("ensure", "fetch"):
        dest = tmp_path / f"dest-{command}"
        r = kiln_remote(file_view.url, command, "--key", key[:12], "--dest", str(dest),
                        env={"KILN_HOME": str(tmp_path / command)})
        _no_traceback(r)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert "matches 2 artifacts" in r.stderr and key in r.stderr and other in r.stderr, r.stderr
        assert not dest.exists()
    # One more digit, or the full key, names one build.
    r = kiln_remote(file_view.url, "ensure", "--key", key[:13], "--dest", str(tmp_path / "d"),
                    env={"KILN_HOME": str(tmp_path / "h")})
    assert r.returncode == 0, (r.stdout, r.stderr)


def test_an_unknown_key_is_a_miss_that_says_where_it_looked(remote: RemoteView, tmp_path: Path) -> None:
    _pushed(tmp_path, remote)
    home = tmp_path / "serving"
    unknown = "0123456789ab" * 5 + "cdef"
    for command in ("ensure", "fetch"):
        r = kiln_remote(remote.url, command, "--key", unknown, "--dest", str(tmp_path / "d"),
                        env={"KILN_HOME": str(home)})
        _no_traceback(r)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert f"miss: no artifact with key {unknown}" in r.stdout and str(home) in r.stdout, r.stdout
        assert "s3://" in r.stdout if remote.kind == "s3" else remote.url in r.stdout, r.stdout
    data = check("fetch", run_kiln("fetch", "--key", unknown[:12], "--dest", str(tmp_path / "d"), "--json",
                                   env={"KILN_HOME": str(home)}), exit_code=1)
    assert data["key"] is None and data["query"] == {"key_prefix": unknown[:12]}
    assert "no remote" in data["explanation"][0]
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("args, named", [
    (["some/model"], "MODEL 'some/model'"),
    (["--target", "torch-aoti", "--n-positions", "64"], "--target, --n-positions"),
    (["--from-env"], "--from-env"),
    (["--toolchain", "torch=2.0.0"], "--toolchain"),
])
def test_key_with_a_model_or_spec_flags_is_a_usage_error(tmp_path: Path, args: list[str], named: str) -> None:
    key = "ab" * 32
    for command in ("ensure", "fetch"):
        r = run_kiln(command, *args, "--key", key, "--dest", str(tmp_path / "d"))
        _no_traceback(r)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert f"--key '{key}' and {named} cannot be combined" in r.stderr, r.stderr


def test_on_miss_build_and_malformed_keys_are_refused(tmp_path: Path) -> None:
    r = run_kiln("ensure", "--key", "ab" * 32, "--on-miss", "build", "--dest", str(tmp_path / "d"))
    _no_traceback(r)
    assert r.returncode == 2 and "--on-miss build cannot be used with --key" in r.stderr, r.stderr
    r = run_kiln("ensure", "--key", "ab" * 32, "--push", "--dest", str(tmp_path / "d"))
    assert r.returncode == 2 and "drop --push" in r.stderr, r.stderr
    for bad in ("abcdef", "xyz" * 20, "ab" * 33):
        r = run_kiln("fetch", "--key", bad, "--dest", str(tmp_path / "d"))
        _no_traceback(r)
        assert r.returncode == 2 and "is not a build key" in r.stderr and "at least 12" in r.stderr, r.stderr
    assert not (tmp_path / "d").exists()


def test_a_damaged_local_copy_is_repaired_from_the_remote(file_view: RemoteView, tmp_path: Path) -> None:
    """A local match that fails verification is a loud warning, and the remote's copy of the same
    key is pulled (verified) in its place: the same loop as a model lookup."""
    home = tmp_path / "home"
    key, art = _built(tmp_path, home)
    assert kiln_remote(file_view.url, "push", "--key", key, env={"KILN_HOME": str(home)}).returncode == 0
    digest = "sha256:" + hashlib.sha256(ENGINE_FILES["weights.safetensors"]).hexdigest()
    blob = home / "blobs" / "sha256" / digest[7:9] / digest[7:]
    blob.chmod(0o644)
    blob.write_bytes(b"x" * blob.stat().st_size)  # same size, other bytes
    dest = tmp_path / "dest"
    data = check("ensure", kiln_remote(file_view.url, "ensure", "--key", key[:12], "--dest", str(dest), "--json",
                                       env={"KILN_HOME": str(home)}))
    assert data["source"] == "remote" and data["key"] == key, data
    assert any(key[:12] in d and "failed verification" in d for d in data["damaged"]), data["damaged"]
    assert tree(dest) == tree(art)
