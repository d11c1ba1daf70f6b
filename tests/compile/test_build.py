"""torch-aoti builds through the store: hits, sharing, rebuilds, failures, kills, single-flight.

These compile real engines (AOTInductor, ~15-20 s each for a tiny model on 2 cores); the
expensive builds are shared through a module-scoped store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln import BuildSpec, Store, resolve
from kiln.compile import build
from kiln.errors import BuildError

from ..conftest import run_kiln
from ..tiny_models import break_weights, make_tiny_model

SPEC = ["--target", "torch-aoti", "--n-positions", "64", "--dtype", "fp32"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny Llama built at batch sizes 1 and 2 into one store (by the CLI, as a user would)."""
    root = tmp_path_factory.mktemp("built")
    model = make_tiny_model("llama", root / "model", seed=1)
    store = root / "store"
    env = {"KILN_HOME": str(store)}
    runs = {}
    for bs in ("1", "2"):
        r = run_kiln("build", str(model), *SPEC, "--batch-size", bs, "--json", env=env, timeout=600)
        assert r.returncode == 0, r.stderr
        runs[bs] = json.loads(r.stdout)
    return {"model": model, "store": store, "env": env, "runs": runs}


def _manifest_files(store: Path, key: str) -> dict[str, str]:
    s = Store(store)
    entry = next(e for e in s.iter_entries() if e.key == key)
    return {f.path: f.digest for f in s.read_manifest(entry.manifest).files}


def test_first_build_compiles_and_publishes_with_its_log(built: dict) -> None:
    run = built["runs"]["1"]
    assert run["compiled"] is True and run["hit"] is False
    assert {"export", "compile"} <= set(run["stages"])
    files = _manifest_files(built["store"], run["key"])
    assert {"engine.pt2", "weights.safetensors", "engine.json", "build.log", "config.json"} <= set(files)
    log = Store(built["store"]).blob_path(files["build.log"]).read_text()
    # The artifact's log is its weights step's; it names the engine stage, whose log has the compile.
    engine = run["engine"]["key"]
    assert f"# input engine: stored entry {engine}" in log.splitlines()[0]
    stage_files = _manifest_files(built["store"], engine)
    assert set(stage_files) == {"engine.pt2", "engine.json", "build.log"}
    assert "stage: compile" in Store(built["store"]).blob_path(stage_files["build.log"]).read_text()


def test_second_build_is_a_hit_without_compiling(built: dict) -> None:
    r = run_kiln("build", str(built["model"]), *SPEC, "--batch-size", "1", "--json", env=built["env"])
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["hit"] is True and data["compiled"] is False and data["stages"] == {}
    assert data["key"] == built["runs"]["1"]["key"]


def test_engines_for_two_batch_sizes_share_one_weights_blob(built: dict) -> None:
    one = _manifest_files(built["store"], built["runs"]["1"]["key"])
    two = _manifest_files(built["store"], built["runs"]["2"]["key"])
    assert one["weights.safetensors"] == two["weights.safetensors"]
    assert one["engine.pt2"] != two["engine.pt2"]
    s = Store(built["store"])
    weights = s.blob_path(one["weights.safetensors"])
    assert weights.stat().st_size > 10 * s.blob_path(one["engine.pt2"]).stat().st_size or weights.stat().st_size > 100_000
    shown = run_kiln("show", built["runs"]["2"]["key"][:12], env=built["env"])
    assert "shared with 1 other artifact" in shown.stdout, shown.stdout


def test_a_fresh_process_with_only_the_store_generates(built: dict, tmp_path: Path) -> None:
    """Deployment path: another process, the model directory gone, only the store left."""
    import shutil

    model_copy = tmp_path / "gone"
    shutil.copytree(built["model"], model_copy)
    key = built["runs"]["1"]["key"]
    code = (
        "import sys, torch\n"
        "from kiln import Store\n"
        "from kiln.api import load_engine_by_key\n"
        f"loaded = load_engine_by_key({key!r}, store=Store(sys.argv[1]))\n"
        "tok = loaded.tokenizer()\n"
        "ids = tok('the quick brown fox', return_tensors='pt')['input_ids']\n"
        "out = loaded.engine.generate(ids, 8, eos_token_id=[])\n"
        "print('TOKENS', out[0].tolist())\n"
    )
    env = dict(os.environ, KILN_HOME=str(built["store"]))
    r = subprocess.run([sys.executable, "-c", code, str(built["store"])], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    tokens = json.loads(r.stdout.split("TOKENS", 1)[1])
    # Same tokens as eager transformers on the original weights.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_copy)
    model = AutoModelForCausalLM.from_pretrained(model_copy, dtype=torch.float32)
    ids = tok("the quick brown fox", return_tensors="pt")["input_ids"]
    eager = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert tokens == eager[0].tolist()
    # The CLI does the same by key.
    g = run_kiln("generate", "--key", key, "--prompt", "the quick brown fox", "--raw", "--max-new-tokens", "4",
                 "--json", env=built["env"], cwd=tmp_path)
    assert g.returncode == 0, g.stderr
    assert json.loads(g.stdout)["new_tokens"] >= 1


def test_changed_weights_are_a_miss_and_rebuild(tmp_path: Path, store: Store) -> None:
    model = make_tiny_model("llama", tmp_path / "m", seed=2)
    spec = BuildSpec("torch-aoti", str(model), n_positions=32, dtype="fp32")
    first = build(resolve(spec, store=store), store=store)
    assert not first.hit
    make_tiny_model("llama", model, seed=3)  # same files, new weights
    res = resolve(spec, store=store)
    second = build(res, store=store)
    assert not second.hit and second.entry.key != first.entry.key
    assert build(res, store=store).hit


def test_a_failing_compile_publishes_nothing_and_shows_the_log(tmp_path: Path, store: Store) -> None:
    model = make_tiny_model("llama", tmp_path / "m", seed=4)
    break_weights(model)
    res = resolve(BuildSpec("torch-aoti", str(model), n_positions=32, dtype="fp32"), store=store)
    with pytest.raises(BuildError, match="nothing was published") as info:
        build(res, store=store)
    assert "Traceback" in info.value.log_tail or "error" in info.value.log_tail.lower()
    assert list(store.iter_entries()) == []
    r = run_kiln("build", str(model), "--target", "torch-aoti", "--n-positions", "32")
    assert r.returncode == 2 and "worker log (tail)" in r.stderr and "Traceback (most recent call last)" in r.stderr


def test_garbage_weights_are_refused_before_any_worker_starts(tmp_path: Path) -> None:
    model = make_tiny_model("llama", tmp_path / "m", seed=4)
    (model / "model.safetensors").write_bytes(b"not a safetensors file" * 10)
    r = run_kiln("build", str(model), "--target", "torch-aoti", "--n-positions", "32", env={"KILN_HOME": str(tmp_path / "s")})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "model.safetensors" in r.stderr and "worker log" not in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "s" / "builds").exists() or not any((tmp_path / "s" / "builds").iterdir())


def test_a_worker_that_writes_nothing_publishes_nothing(tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection (named as such): a worker that exits 0 with no output cannot be caused
    with the real compiler, so the target's worker command is replaced by `python -c pass`."""
    from kiln.targets.torch_aoti import TorchAotiTarget

    model = make_tiny_model("llama", tmp_path / "m", seed=5)
    monkeypatch.setattr(TorchAotiTarget, "worker_argv", lambda self, res, out, **_kw: ["-c", "pass"])
    res = resolve(BuildSpec("torch-aoti", str(model), n_positions=32, dtype="fp32"), store=store)
    with pytest.raises(BuildError, match="wrote no files"):
        build(res, store=store)
    assert list(store.iter_entries()) == []


def test_a_worker_that_crashes_is_named_with_its_signal_stage_and_python_stack(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection (named as such): a real SIGSEGV (a NULL read through ctypes) in a worker
    that has announced its compile stage, standing in for a compiler or torch's package loader
    crashing (seen on an H200 image, docs/benchmarks.md "GPU check"). The error names the signal
    and the stage instead of "exit -11", and the worker's log holds its Python stack."""
    from kiln.targets.torch_aoti import TorchAotiTarget

    crash = "import ctypes\nprint('stage: compile', flush=True)\nctypes.string_at(0)"
    model = make_tiny_model("llama", tmp_path / "m", seed=5)
    monkeypatch.setattr(TorchAotiTarget, "worker_argv", lambda self, res, out, **_kw: ["-c", crash])
    monkeypatch.delenv("PYTHONFAULTHANDLER", raising=False)
    res = resolve(BuildSpec("torch-aoti", str(model), n_positions=32, dtype="fp32"), store=store)
    with pytest.raises(BuildError) as info:
        build(res, store=store)
    message = str(info.value)
    assert "was killed by SIGSEGV (a crash in native code" in message and "after its 'compile' stage began" in message, message
    assert "Its Python stack is at the end of the log." in message
    assert info.value.log_tail.startswith("Fatal Python error: Segmentation fault")  # faulthandler's whole report
    assert info.value.crashed is True
    assert 'File "<string>", line 3' in info.value.log_tail  # the crashing line, from faulthandler
    assert list(store.iter_entries()) == []


def test_a_crash_report_from_a_child_does_not_hide_the_workers_own_failure(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compiler's child process may crash and print faulthandler's report into the worker's
    output while the worker goes on; when the worker then fails by itself (exit 1), the error
    shows the end of the log, not that earlier report. Fault injection (named as such)."""
    from kiln.targets.torch_aoti import TorchAotiTarget

    body = ("import sys\nprint('Fatal Python error: Segmentation fault', flush=True)\n"
            "print('stage: compile', flush=True)\nprint('error: the real cause', flush=True)\nsys.exit(1)")
    model = make_tiny_model("llama", tmp_path / "m", seed=5)
    monkeypatch.setattr(TorchAotiTarget, "worker_argv", lambda self, res, out, **_kw: ["-c", body])
    res = resolve(BuildSpec("torch-aoti", str(model), n_positions=32, dtype="fp32"), store=store)
    with pytest.raises(BuildError) as info:
        build(res, store=store)
    assert "failed (exit 1: the step failed) after its 'compile' stage began" in str(info.value), str(info.value)
    assert "Python stack" not in str(info.value)
    assert info.value.crashed is False  # a child's report in the log is not the worker's crash
    assert info.value.log_tail.rstrip().endswith("error: the real cause")


def test_sigkill_during_a_build_leaves_the_store_consistent(tmp_path: Path, store: Store) -> None:
    model = make_tiny_model("llama", tmp_path / "m", seed=6)
    proc = subprocess.Popen([sys.executable, "-m", "kiln", "build", str(model), "--target", "torch-aoti", "--n-positions", "32"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # Kill the whole process group (CLI and worker) once the compile is under way.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((store.root / "builds").glob("*/build.log")):
        time.sleep(0.2)
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(store.iter_entries()) == []
    assert run_kiln("verify").returncode == 0
    gc = run_kiln("gc", "--json")
    assert gc.returncode == 0
    assert json.loads(gc.stdout)["temp_paths"], "the killed build's directory should be collected"
    assert not [p for p in (store.root / "builds").iterdir()]


def test_two_concurrent_builds_of_one_key_compile_once(tmp_path: Path) -> None:
    model = make_tiny_model("llama", tmp_path / "m", seed=7)
    cmd = [sys.executable, "-m", "kiln", "build", str(model), "--target", "torch-aoti", "--n-positions", "32", "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sorted(r["compiled"] for r in results) == [False, True]
    assert len({r["key"] for r in results}) == 1
    assert any(r["waited_for_peer"] for r in results)


def test_ensure_on_miss_builds_and_pushes(tmp_path: Path) -> None:
    """A serving container with `--on-miss build --push`: the first start builds and publishes,
    a second container with an empty store gets the engine from the remote without compiling."""
    model = make_tiny_model("llama", tmp_path / "m", seed=8)
    remote = tmp_path / "remote"
    spec = ["--target", "torch-aoti", "--n-positions", "32"]
    miss = run_kiln("--remote", str(remote), "ensure", str(model), *spec, "--dest", str(tmp_path / "d0"))
    assert miss.returncode == 1 and "build one with `kiln build`" in miss.stdout
    first = run_kiln("--remote", str(remote), "ensure", str(model), *spec, "--dest", str(tmp_path / "d1"),
                     "--on-miss", "build", "--push", "--json", timeout=600)
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["built"]["compiled"] is True and (tmp_path / "d1" / "engine.pt2").exists()
    second = run_kiln("--remote", str(remote), "ensure", str(model), *spec, "--dest", str(tmp_path / "d2"), "--json",
                      env={"KILN_HOME": str(tmp_path / "other-store")})
    assert second.returncode == 0, second.stderr
    data2 = json.loads(second.stdout)
    assert data2["source"] == "remote" and data2["key"] == data["key"] and "built" not in data2
    assert (tmp_path / "d2" / "weights.safetensors").read_bytes() == (tmp_path / "d1" / "weights.safetensors").read_bytes()


def test_model_without_tokenizer_warns_at_build_and_generate_says_what_is_missing(tmp_path: Path) -> None:
    model = make_tiny_model("llama", tmp_path / "model", seed=3)
    for name in os.listdir(model):
        if name.startswith(("tokenizer", "special_tokens")) or name in ("vocab.json", "merges.txt", "chat_template.jinja"):
            os.unlink(model / name)
    env = {"KILN_HOME": str(tmp_path / "store")}
    built = run_kiln("build", str(model), *SPEC, "--json", env=env, timeout=600)
    assert built.returncode == 0, built.stderr
    assert "kiln: WARNING: model" in built.stderr and "has no tokenizer files" in built.stderr
    key = json.loads(built.stdout)["key"]
    gen = run_kiln("generate", "--key", key, "--prompt", "hi", env=env, timeout=300)
    assert gen.returncode == 2, gen.stdout + gen.stderr
    assert "holds no tokenizer files" in gen.stderr and "Traceback" not in gen.stderr
