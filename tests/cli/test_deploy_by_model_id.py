"""A deployment needs only a model id (issue 13): a serving container with no HF cache and no network.

CI builds ``acme/tiny-llama`` from its Hugging Face cache (laid out on disk as huggingface_hub
does) as a torch-aoti engine and pushes it to a shared remote (a directory). A fresh container —
empty HF cache, empty KILN_HOME, HF_HUB_OFFLINE=1, only the LMI ``OPTION_*`` variables — runs
``kiln ensure --from-env`` and gets the engine with its weights; ``kiln generate`` there answers
with eager transformers' greedy tokens. The model record pushed with the artifact is what lets
the container key a model whose files it does not have.

Also: a branch resolved offline after it moved on (the note names the newer commit), ``@commit``
exact, ``--strict-revision`` / ``KILN_STRICT_REVISION=1`` refusing, a build without the weights
refused clearly, and no record anywhere an error listing every place tried. Those use cheap
artifacts (``kiln key``, ``kiln store put``): only the end-to-end scenario compiles.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LLAMA_CONFIG, run_kiln, write_hf_cache_model
from tests.tiny_models import make_tiny_model

REPO = "acme/tiny-llama"
COMMIT = "c" * 40
LMI_ENV = {"OPTION_MODEL_ID": REPO, "OPTION_N_POSITIONS": "64", "OPTION_MAX_ROLLING_BATCH_SIZE": "1",
           "OPTION_TENSOR_PARALLEL_DEGREE": "1", "OPTION_DTYPE": "fp32"}
PROMPT = "the quick brown fox"


def _container_env(root: Path) -> dict[str, str]:
    """A fresh serving container: nothing cached, offline, only the LMI settings."""
    return {"KILN_HOME": str(root / "container-kiln"), "HF_HOME": str(root / "container-hf"),
            "HF_HUB_CACHE": str(root / "container-hf" / "hub"), "HF_HUB_OFFLINE": "1", **LMI_ENV}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """CI builds and pushes; a fresh container ensures from the remote with --from-env."""
    root = tmp_path_factory.mktemp("deploy")
    model = make_tiny_model("llama", root / "model", seed=7)
    files = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    write_hf_cache_model(root / "ci-hf" / "hub", REPO, files, commit=COMMIT)
    remote = root / "remote"
    ci = {"KILN_HOME": str(root / "ci-kiln"), "HF_HOME": str(root / "ci-hf"), "HF_HUB_CACHE": str(root / "ci-hf" / "hub"),
          "HF_HUB_OFFLINE": "1"}
    b = run_kiln("--remote", str(remote), "build", REPO, "--target", "torch-aoti", "--n-positions", "64",
                 "--batch-size", "1", "--dtype", "fp32", "--push", "--json", env=ci, timeout=900)
    assert b.returncode == 0, b.stderr
    env = _container_env(root)
    dest = root / "D"
    e = run_kiln("--remote", str(remote), "ensure", "--from-env", "--target", "torch-aoti", "--dest", str(dest),
                 env=env, timeout=600)
    return {"root": root, "model": model, "remote": remote, "env": env, "dest": dest, "ensure": e,
            "key": json.loads(b.stdout)["key"]}


def _eager_tokens(model: Path, n: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    return [int(t) for t in lm.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)[0]]


def test_the_container_ensures_the_engine_and_its_weights_from_the_model_id_alone(deployed: dict) -> None:
    e = deployed["ensure"]
    assert e.returncode == 0, e.stderr
    assert "Traceback" not in e.stderr and f"hit (remote) {deployed['key']}" in e.stdout
    dest = deployed["dest"]
    assert {"engine.pt2", "weights.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in dest.iterdir()}
    assert not any(Path(deployed["env"]["HF_HUB_CACHE"]).glob("models--*"))  # nothing came from the Hub


def test_generate_in_the_container_answers_like_eager_transformers(deployed: dict) -> None:
    assert deployed["ensure"].returncode == 0, deployed["ensure"].stderr
    eager = _eager_tokens(deployed["model"], 6)
    # The engine in DEST, loaded in another process of the container.
    code = ("import sys, json\n"
            "from transformers import AutoTokenizer\n"
            "from kiln.targets.torch_aoti.runtime import load_engine\n"
            "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
            f"ids = tok({PROMPT!r}, return_tensors='pt')['input_ids']\n"
            "print(json.dumps(load_engine(__import__('pathlib').Path(sys.argv[1])).generate(ids, 6, eos_token_id=[])[0].tolist()))\n")
    r = subprocess.run([sys.executable, "-c", code, str(deployed["dest"])], capture_output=True, text=True,
                       env={**os.environ, **deployed["env"]}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == eager
    # `kiln generate` by the same model id: resolved from the record the ensure kept, no remote needed.
    g = run_kiln("generate", "--from-env", "--target", "torch-aoti", "--prompt", PROMPT, "--raw", "--max-new-tokens",
                 "6", "--json", env=deployed["env"], timeout=300)
    assert g.returncode == 0, g.stderr
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(deployed["model"])
    n_prompt = len(tok(PROMPT)["input_ids"])
    out = json.loads(g.stdout)
    assert out["key"] == deployed["key"]
    assert out["text"] == tok.decode(eager[n_prompt:], skip_special_tokens=True)


def test_a_build_in_the_container_says_the_weights_are_not_here(deployed: dict) -> None:
    r = run_kiln("--remote", str(deployed["remote"]), "ensure", "--from-env", "--target", "torch-aoti",
                 "--n-positions", "32", "--dest", str(deployed["root"] / "D32"), "--on-miss", "build",
                 env=deployed["env"], timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "are not on this machine" in r.stderr and f"hf download {REPO} --revision {COMMIT}" in r.stderr
    assert "Traceback" not in r.stderr


# --------------------------------------------------------------------------- branches offline (cheap: no compile)

SPEC = ["--target", "torch-aoti", "--n-positions", "64", "--dtype", "fp32",
        "--toolchain=torch=2.0.0", "--toolchain=transformers=5.0.0", "--toolchain=hardware=cpu-test"]
OLD, NEW = "1" * 40, "2" * 40


def _files(seed: int) -> dict[str, bytes]:
    return {"config.json": json.dumps(LLAMA_CONFIG).encode(), "tokenizer.json": b'{"version": "1.0"}',
            "model.safetensors": hashlib.sha256(str(seed).encode()).digest() * 64}


def _key(*args: str, env: dict) -> subprocess.CompletedProcess:
    return run_kiln("key", *args, *SPEC, "--json", env=env)


@pytest.fixture
def moved(tmp_path: Path) -> dict:
    """main resolved to OLD, then (main moved on) to NEW, on a machine with the HF cache; then the cache is gone."""
    hub = tmp_path / "hf" / "hub"
    env = {"KILN_HOME": str(tmp_path / "kiln"), "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    keys = {}
    for commit, seed in ((OLD, 1), (NEW, 2)):
        write_hf_cache_model(hub, REPO, _files(seed), commit=commit)  # refs/main -> commit
        r = _key(REPO, env=env)
        assert r.returncode == 0, r.stderr
        keys[commit] = json.loads(r.stdout)["key"]
    assert keys[OLD] != keys[NEW]
    shutil.rmtree(hub)
    return {"env": env, "keys": keys, "tmp": tmp_path}


def test_a_branch_offline_is_its_newest_recorded_commit_with_a_note(moved: dict) -> None:
    r = _key(REPO, env=moved["env"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["key"] == moved["keys"][NEW]
    assert f"resolved main to commit {NEW}" in r.stderr and f"pin it with {REPO}@{NEW}" in r.stderr
    assert OLD not in r.stderr
    explained = _key(REPO, "--explain", env=moved["env"])
    assert any(NEW in n for n in json.loads(explained.stdout)["notes"])  # in --json too


def test_a_commit_offline_is_exact(moved: dict) -> None:
    r = _key(f"{REPO}@{OLD}", env=moved["env"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["key"] == moved["keys"][OLD]
    s = _key(f"{REPO}@{OLD}", "--strict-revision", env=moved["env"])  # strict allows exact commits
    assert s.returncode == 0 and json.loads(s.stdout)["key"] == moved["keys"][OLD]
    missing = _key(f"{REPO}@{'3' * 40}", env=moved["env"])
    assert missing.returncode == 2 and f"no record of commit {'3' * 12}" in missing.stderr


def test_strict_revision_refuses_a_branch_and_names_the_pin(moved: dict) -> None:
    for args, env in ((["--strict-revision"], moved["env"]), ([], {**moved["env"], "KILN_STRICT_REVISION": "1"})):
        r = _key(REPO, *args, env=env)
        assert r.returncode == 2, r.stdout
        assert "--strict-revision" in r.stderr and f"pin it as {REPO}@{NEW}" in r.stderr
        assert "Traceback" not in r.stderr


def test_a_branch_moved_on_the_remote_resolves_to_the_newer_commit(moved: dict, tmp_path: Path) -> None:
    """The same from a remote's records (the layout is the store's), for a machine whose store has none."""
    remote = tmp_path / "remote"
    shutil.copytree(Path(moved["env"]["KILN_HOME"]) / "models", remote / "models")
    env = {**moved["env"], "KILN_HOME": str(tmp_path / "fresh")}
    r = run_kiln("--remote", str(remote), "key", REPO, *SPEC, "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["key"] == moved["keys"][NEW] and f"commit {NEW}" in r.stderr
    assert str(remote) in r.stderr


def test_no_record_anywhere_lists_what_was_tried(tmp_path: Path) -> None:
    env = {"KILN_HOME": str(tmp_path / "kiln"), "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    (tmp_path / "remote").mkdir()
    r = run_kiln("--remote", str(tmp_path / "remote"), "ensure", REPO, *SPEC, "--dest", str(tmp_path / "D"), env=env)
    assert r.returncode == 2, r.stdout
    err = r.stderr
    assert "No model record resolves it either" in err and "Traceback" not in err
    assert f"the Hugging Face cache at {tmp_path / 'hf'}" in err
    assert f"model records in the local store ({tmp_path / 'kiln'}) (none for {REPO}@main)" in err
    assert f"model records on {tmp_path / 'remote'} (none for {REPO}@main)" in err
    n = run_kiln("key", REPO, *SPEC, env=env)  # no remote configured: said so
    assert n.returncode == 2 and "none configured: --remote URL or KILN_REMOTE" in n.stderr
