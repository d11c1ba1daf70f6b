"""Compile once per architecture (issue 13, item 4): a fine-tune reuses its base model's engine.

A torch-aoti engine takes its weights at load, so its compiled part is keyed by the model's
architecture digest (config.json minus fields that cannot change the computation, plus every
tensor's name, dtype and shape) and stored as a build stage; each model's artifact is that
engine plus its own weights. Both directions are tested, because a wrong hit is the worst
failure Kiln can have:

* a fine-tune (same architecture, other random weights, another eos token) compiles nothing,
  says which engine it reused, and generates exactly its own eager greedy tokens (which differ
  from the base model's, so the test would see a base-weights engine);
* every compute-changing edit — rope_theta, rms_norm_eps, vocab size, number of layers,
  tie_word_embeddings, one tensor's shape or dtype — is another engine key (``kiln key
  --explain --json``, cheap), and one of them (rope_theta) really compiles anew.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conftest import run_kiln
from tests.tiny_models import make_tiny_model

SPEC = ("--target", "torch-aoti", "--n-positions", "64", "--batch-size", "1", "--dtype", "fp32")
PROMPT = "the quick brown fox"


def _build(model: Path, env: dict[str, str]) -> dict[str, Any]:
    r = run_kiln("build", str(model), *SPEC, "--json", env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _generate(model: Path, env: dict[str, str], n: int = 8) -> list[int]:
    """The new tokens of the stored engine of ``model``, fetched and loaded in a process of its own."""
    dest = Path(env["KILN_HOME"]).parent / f"dest-{model.name}"
    r = run_kiln("fetch", str(model), *SPEC, "--dest", str(dest), "--force", env=env)
    assert r.returncode == 0, r.stderr
    code = ("import sys, json\n"
            "from pathlib import Path\n"
            "from transformers import AutoTokenizer\n"
            "from kiln.targets.torch_aoti.runtime import load_engine\n"
            "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
            f"ids = tok({PROMPT!r}, return_tensors='pt')['input_ids']\n"
            f"out = load_engine(Path(sys.argv[1])).generate(ids, {n}, eos_token_id=[])[0].tolist()\n"
            "print(json.dumps(out[ids.shape[1]:]))\n")
    g = subprocess.run([sys.executable, "-c", code, str(dest)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, **env})
    assert g.returncode == 0, g.stderr
    return json.loads(g.stdout.strip().splitlines()[-1])


def _eager(model: Path, n: int = 8) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    out = lm.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)[0]
    return [int(t) for t in out[ids.shape[1]:]]


def _set_eos(model: Path, eos: int) -> None:
    """A chat fine-tune's usual edit: another stop token (config and generation config)."""
    for name in ("config.json", "generation_config.json"):
        doc = json.loads((model / name).read_text())
        doc["eos_token_id"] = eos
        (model / name).write_text(json.dumps(doc, indent=2))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("finetune")
    env = {"KILN_HOME": str(root / "kiln")}
    base = make_tiny_model("llama", root / "base", seed=11)
    tune = make_tiny_model("llama", root / "tune", seed=12)
    _set_eos(tune, 3)
    return {"root": root, "env": env, "base": base, "tune": tune,
            "base_build": _build(base, env), "tune_build": _build(tune, env)}


def test_a_finetune_compiles_nothing_and_reuses_the_base_engine(built: dict[str, Any]) -> None:
    b, t = built["base_build"], built["tune_build"]
    assert b["compiled"] is True and b["engine"]["reused"] is False
    assert t["status"] == "built" and t["compiled"] is False
    assert t["engine"] == {"key": b["engine"]["key"], "reused": True}
    assert t["key"] != b["key"]  # its own artifact: the shared engine with its own weights


def _files(env: dict[str, str], key: str) -> dict[str, str]:
    r = run_kiln("show", key, "--json", env=env)
    assert r.returncode == 0, r.stderr
    layers = json.loads(r.stdout)["manifest"]["layers"]
    return {layer["annotations"]["org.opencontainers.image.title"]: layer["digest"] for layer in layers}


def test_the_finetune_artifact_is_the_shared_engine_with_its_own_weights(built: dict[str, Any]) -> None:
    env = built["env"]
    base, tune = _files(env, built["base_build"]["key"]), _files(env, built["tune_build"]["key"])
    assert base["engine.pt2"] == tune["engine.pt2"]  # one compiled engine, stored once
    assert base["weights.safetensors"] != tune["weights.safetensors"]
    assert base["config.json"] != tune["config.json"]  # each artifact carries its own model's files


def test_the_finetune_answers_like_its_own_eager_model(built: dict[str, Any]) -> None:
    env = built["env"]
    tune_eager, base_eager = _eager(built["tune"]), _eager(built["base"])
    assert tune_eager != base_eager  # otherwise the test could not tell whose weights were served
    assert _generate(built["tune"], env) == tune_eager
    assert _generate(built["base"], env) == base_eager


def test_each_artifact_stops_on_its_own_models_eos(built: dict[str, Any]) -> None:
    for model, eos in ((built["tune"], [3]), (built["base"], [2])):
        dest = built["root"] / f"eos-{model.name}"
        r = run_kiln("fetch", str(model), *SPEC, "--dest", str(dest), env=built["env"])
        assert r.returncode == 0, r.stderr
        assert json.loads((dest / "engine.json").read_text())["eos_token_id"] == eos


# --------------------------------------------------------------------------- what is another engine


def _engine(model: Path, env: dict[str, str]) -> dict[str, Any]:
    r = run_kiln("key", str(model), *SPEC, "--explain", "--json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["parts"]["engine"]


def _engine_key(model: Path, env: dict[str, str]) -> str:
    engine = _engine(model, env)
    assert engine["keyed_by"] == ["spec", "toolchain", "model.architecture_digest"]
    return engine["key"]


def _edit_config(**changes: Any) -> Callable[[Path], None]:
    def edit(model: Path) -> None:
        doc = json.loads((model / "config.json").read_text())
        doc.update(changes)
        (model / "config.json").write_text(json.dumps(doc, indent=2))
    return edit


def _edit_tensor(name: str, how: str) -> Callable[[Path], None]:
    """One tensor reshaped or re-typed, config.json untouched: the signature alone must tell."""
    def edit(model: Path) -> None:
        import torch
        from safetensors.torch import load_file, save_file

        state = load_file(model / "model.safetensors")
        t = state[name]
        state[name] = t.to(torch.float16) if how == "dtype" else torch.cat([t, t[:1]])
        save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    return edit


COMPUTE_CHANGES = {
    "rope_theta": _edit_config(rope_theta=5000.0),
    "rms_norm_eps": _edit_config(rms_norm_eps=1e-6),
    "num_hidden_layers": _edit_config(num_hidden_layers=1),
    "tie_word_embeddings": _edit_config(tie_word_embeddings=True),
    "vocab_size": _edit_config(vocab_size=321),
    "tensor shape": _edit_tensor("model.norm.weight", "shape"),
    "tensor dtype": _edit_tensor("model.norm.weight", "dtype"),
}
SAME_COMPUTE = {
    "eos_token_id": _edit_config(eos_token_id=3),
    "_name_or_path": _edit_config(_name_or_path="/somewhere/else"),
    "transformers_version": _edit_config(transformers_version="4.0.0"),
    "use_cache": _edit_config(use_cache=False),
    "other weight values": None,
}


@pytest.fixture(scope="module")
def base_engine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], str]:
    root = tmp_path_factory.mktemp("arch")
    env = {"KILN_HOME": str(root / "kiln")}
    base = make_tiny_model("llama", root / "base", seed=21)
    return base, env, _engine_key(base, env)


@pytest.mark.parametrize("edit", list(COMPUTE_CHANGES))
def test_a_compute_changing_edit_is_another_engine(base_engine: tuple[Path, dict[str, str], str], tmp_path: Path,
                                                   edit: str) -> None:
    base, env, key = base_engine
    model = shutil.copytree(base, tmp_path / "m")
    COMPUTE_CHANGES[edit](model)
    assert _engine(model, env)["key"] != key


@pytest.mark.parametrize("edit", list(SAME_COMPUTE))
def test_an_edit_that_cannot_change_the_computation_keeps_the_engine(
        base_engine: tuple[Path, dict[str, str], str], tmp_path: Path, edit: str) -> None:
    base, env, key = base_engine
    if SAME_COMPUTE[edit] is None:
        model = make_tiny_model("llama", tmp_path / "m", seed=22)
    else:
        model = shutil.copytree(base, tmp_path / "m")
        SAME_COMPUTE[edit](model)
    assert _engine_key(model, env) == key


def test_a_compute_changing_edit_really_compiles_anew(built: dict[str, Any]) -> None:
    model = shutil.copytree(built["tune"], built["root"] / "theta")
    _edit_config(rope_theta=5000.0)(model)
    b = _build(model, built["env"])
    assert b["compiled"] is True and b["engine"]["reused"] is False
    assert b["engine"]["key"] != built["base_build"]["engine"]["key"]
    assert _generate(model, built["env"]) == _eager(model)


def test_a_model_without_safetensors_is_keyed_by_its_weights_and_says_why(tmp_path: Path) -> None:
    model = make_tiny_model("llama", tmp_path / "m", seed=23)
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    r = run_kiln("key", str(model), *SPEC, "--explain", "--json", env={"KILN_HOME": str(tmp_path / "k")})
    assert r.returncode == 0, r.stderr
    engine = json.loads(r.stdout)["parts"]["engine"]
    assert engine["keyed_by"] == ["spec", "toolchain", "model.tree_digest"]
    assert "model.safetensors" in engine["why"]
    text = run_kiln("key", str(model), *SPEC, "--explain", env={"KILN_HOME": str(tmp_path / "k")})
    assert "keyed by spec, toolchain and the tree digest" in text.stdout
    # Its engine stage, filed under the tree digest, is a stage like any other: built, listed, verified.
    env = {"KILN_HOME": str(tmp_path / "k")}
    b = _build(model, env)
    assert b["compiled"] is True and b["engine"]["key"] == engine["key"]
    ls = run_kiln("ls", env=env)
    assert ls.returncode == 0 and "WARNING" not in ls.stderr and "(engine)" in ls.stdout, ls.stderr
    v = run_kiln("verify", env=env)
    assert v.returncode == 0, v.stdout + v.stderr


def test_another_machine_builds_a_finetune_from_the_engine_on_the_remote(built: dict[str, Any], tmp_path: Path) -> None:
    """CI pushes the base model's build; a second builder (empty store) builds a fine-tune: nothing compiled."""
    remote = tmp_path / "remote"
    first = {"KILN_HOME": str(tmp_path / "ci-a")}
    p = run_kiln("--remote", str(remote), "build", str(built["base"]), *SPEC, "--push", "--json", env=first, timeout=900)
    assert p.returncode == 0, p.stderr
    engine_key = json.loads(p.stdout)["engine"]["key"]
    second = {"KILN_HOME": str(tmp_path / "ci-b")}
    r = run_kiln("--remote", str(remote), "build", str(built["tune"]), *SPEC, "--push", "--json", env=second, timeout=900)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["compiled"] is False and out["engine"] == {"key": engine_key, "reused": True}
    assert _generate(built["tune"], second) == _eager(built["tune"])


def test_a_miss_says_the_architectures_engine_is_stored(built: dict[str, Any]) -> None:
    model = make_tiny_model("llama", built["root"] / "unbuilt", seed=13)
    r = run_kiln("lookup", str(model), *SPEC, env=built["env"])
    assert r.returncode == 1
    engine = built["base_build"]["engine"]["key"]
    assert f"The compiled engine for this architecture is stored ({engine[:12]}" in r.stdout + r.stderr
    other = shutil.copytree(model, built["root"] / "unbuilt-eps")
    _edit_config(rms_norm_eps=1e-6)(other)  # an architecture no test here builds
    r = run_kiln("lookup", str(other), *SPEC, env=built["env"])
    assert r.returncode == 1 and "compiled engine for this architecture" not in r.stdout + r.stderr


def _with_output_head(model: Path, head: str) -> None:
    """Add lm_head.weight to a tied model's file: a copy of the input embeddings, or other values."""
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(model / "model.safetensors")
    embed = state["model.embed_tokens.weight"]
    state["lm_head.weight"] = embed.clone() if head == "equal" else torch.randn(embed.shape, dtype=embed.dtype)
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})


def test_tying_that_depends_on_values_is_keyed_by_the_weights(tmp_path: Path) -> None:
    """transformers ties lm_head to the embeddings only where their values are equal: two such
    models with one signature may compile different graphs, so neither gets an architecture digest."""
    env = {"KILN_HOME": str(tmp_path / "kiln")}
    engines = []
    for head in ("equal", "different"):
        model = make_tiny_model("llama", tmp_path / head, seed=31, tie_word_embeddings=True)
        _with_output_head(model, head)
        engine = _engine(model, env)
        assert engine["keyed_by"] == ["spec", "toolchain", "model.tree_digest"]
        assert "lm_head.weight" in engine["why"]
        engines.append(engine["key"])
    assert engines[0] != engines[1]


def test_tied_models_share_an_engine_and_answer_like_their_own_eager_models(tmp_path: Path) -> None:
    env = {"KILN_HOME": str(tmp_path / "kiln")}
    a = make_tiny_model("llama", tmp_path / "a", seed=32, tie_word_embeddings=True)  # saved without lm_head
    b = make_tiny_model("llama", tmp_path / "b", seed=33, tie_word_embeddings=True)
    built_a, built_b = _build(a, env), _build(b, env)
    assert built_a["compiled"] is True
    assert built_b["compiled"] is False and built_b["engine"]["key"] == built_a["engine"]["key"]
    assert _eager(a) != _eager(b)
    assert _generate(b, env) == _eager(b)


def test_force_compiles_the_engine_again(built: dict[str, Any]) -> None:
    r = run_kiln("build", str(built["tune"]), *SPEC, "--force", "--json", env=built["env"], timeout=900)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["compiled"] is True and out["engine"] == {"key": built["base_build"]["engine"]["key"], "reused": False}
    assert _generate(built["tune"], built["env"]) == _eager(built["tune"])
