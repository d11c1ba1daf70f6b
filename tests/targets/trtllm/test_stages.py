"""trtllm builds through the store: stages reused across shapes, the GPU hand-off, layouts.

Calibration and conversion are real here (CPU); the engine stage needs tensorrt_llm and a
GPU, so engines in the layout tests are fixtures (a directory shaped like trtllm-build output).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from kiln import Store
from kiln.targets.trtllm.calibrate import default_calib_file

from ...conftest import run_kiln
from ...tiny_models import make_tiny_model

SQ = ["--smoothquant", "0.5", "--per-token", "--per-channel", "--option", "calib_samples=4", "--option", "calib_seq_len=32"]


def _stage_entries(store: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in Store(store).iter_entries():
        out.setdefault(e.spec.get("stage", "engine"), []).append(e.to_json())
    return out


def test_four_shapes_calibrate_once_and_convert_once_per_tp(tmp_path: Path) -> None:
    model = make_tiny_model("llama", tmp_path / "m", seed=21)
    mfile = tmp_path / "matrix.yaml"
    mfile.write_text(
        f"models: [{model}]\ntargets: [trtllm]\nn_positions: [64, 128]\nbatch_sizes: [1, 4]\ntp_degrees: [2]\n"
        "dtypes: [fp16]\nquantization:\n  - {smoothquant: 0.5, per_token: true, per_channel: true}\n"
        "options: {calib_samples: 4, calib_seq_len: 32}\n"
        # Planned on a CPU machine: the engine stage's toolchain must be pinned (a matrix row
        # whose toolchain is left open would count any stored engine as a hit).
        "toolchain: {trtllm: {tensorrt_llm: '0.12.0', tensorrt: '10.3.0', hardware: cuda-sm90}}\n"
    )
    plan = run_kiln("matrix", "plan", str(mfile), "--json")
    assert plan.returncode == 0, plan.stderr
    rows = json.loads(plan.stdout)["rows"]
    assert len(rows) == 4 and {r["status"] for r in rows} == {"build"}
    # Every row needs the same calibration and the same checkpoint: one key each.
    assert len({json.dumps(r["stages"], sort_keys=True) for r in rows}) == 1
    r = run_kiln("matrix", "build", str(mfile), "--jobs", "2", "--json", timeout=900)
    assert r.returncode == 1  # no GPU here: every row stops after the CPU stages
    report = json.loads(r.stdout)
    assert [row["status"] for row in report["rows"]] == ["incomplete"] * 4
    assert all("checkpoint" in row["error"] and "kiln --remote URL build" in row["error"] for row in report["rows"])
    store = Path(__import__("os").environ["KILN_HOME"])
    stages = _stage_entries(store)
    assert len(stages["calibration"]) == 1 and len(stages["checkpoint"]) == 1 and "engine" not in stages
    # A different tp converts again but reuses the calibration.
    r2 = run_kiln("build", str(model), "--target", "trtllm", "--n-positions", "64", "--tp-degree", "4", "--dtype", "fp16", *SQ)
    assert r2.returncode == 3 and "calibration reused, checkpoint built" in r2.stderr
    stages = _stage_entries(store)
    assert len(stages["calibration"]) == 1 and len(stages["checkpoint"]) == 2
    ckpt = next(e for e in stages["checkpoint"] if e["spec"]["tp_degree"] == 4)
    manifest = Store(store).read_manifest(ckpt["manifest"])
    assert sorted(f.path for f in manifest.files if f.path.endswith(".safetensors")) == [f"rank{i}.safetensors" for i in range(4)]


@pytest.mark.parametrize("args,message", [
    (["--smoothquant", "1.5"], "outside [0, 1]"),
    (["--per-token"], "SmoothQuant is not enabled"),
    (["--tp-degree", "3"], "tp_degree=3 does not divide"),
    (["--option", "calib_samples=10"], "only apply to calibrated builds"),
    (["--smoothquant", "0.5", "--option", "calib_samples=\u00b2"], "target option calib_samples="),
    (["--option", "max_num_tokens=lots"], "target option max_num_tokens="),
])
def test_bad_input_fails_before_any_work(tmp_path: Path, args: list[str], message: str) -> None:
    model = make_tiny_model("llama", tmp_path / "m", seed=22)
    r = run_kiln("build", str(model), "--target", "trtllm", "--n-positions", "64", *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert _stage_entries(Path(__import__("os").environ["KILN_HOME"])) == {}


def _short_corpus(tmp_path: Path) -> Path:
    calib = tmp_path / "short.txt"
    calib.write_text("The quick brown fox jumps over the lazy dog.\n\nA second paragraph to calibrate on.\n")
    return calib


@pytest.mark.parametrize("args,message", [
    # Static per-tensor activation scales from fewer samples than asked for: refused, with the fixes.
    (["--smoothquant", "0.5", "--option", "calib_samples=600"],
     "calib_samples=600 but Kiln's default corpus has only 512 texts, and SmoothQuant without --per-token"),
    (["--smoothquant", "0.5", "--per-channel", "--option", "calib_samples=4", "--calib-file", "SHORT"],
     "has only 2 texts"),
    (["--smoothquant", "0.5", "--per-token", "--int8-kv-cache", "--option", "calib_samples=4", "--calib-file", "SHORT"],
     "the INT8 KV cache (static k/v scales)"),
])
def test_static_scales_from_a_short_calibration_set_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    model = make_tiny_model("llama", tmp_path / "m", seed=22)
    args = [str(_short_corpus(tmp_path)) if a == "SHORT" else a for a in args]
    r = run_kiln("build", str(model), "--target", "trtllm", "--n-positions", "64", "--option", "calib_seq_len=16", *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and [ln for ln in r.stderr.splitlines() if "error" in ln] == \
        [next(ln for ln in r.stderr.splitlines() if ln.startswith("kiln: error: calib_samples="))]  # one line
    samples = next(a for a in args if a.startswith("calib_samples=")).split("=")[1]
    assert f"a --calib-file with at least {samples} texts" in r.stderr and "--option calib_samples=" in r.stderr
    assert ("or --per-token" in r.stderr) == ("--per-token" not in args and "--int8-kv-cache" not in args)
    assert _stage_entries(Path(__import__("os").environ["KILN_HOME"])) == {}


@pytest.mark.parametrize("keep,message", [
    ((), "has no usable tokenizer"),
    (("tokenizer.model",), "has only a sentencepiece tokenizer (tokenizer.model) and the sentencepiece package is not installed"),
])
def test_a_model_without_a_usable_tokenizer_is_refused_before_calibration(tmp_path: Path, keep: tuple[str, ...],
                                                                         message: str) -> None:
    if keep == ("tokenizer.model",) and __import__("importlib.util").util.find_spec("sentencepiece") is not None:
        pytest.skip("sentencepiece is installed here: a tokenizer.model alone is usable")
    model = make_tiny_model("llama", tmp_path / "m", seed=22)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)
    for name in keep:
        (model / name).write_bytes(b"\x00" * 64)  # only its presence is checked before the worker
    r = run_kiln("build", str(model), "--target", "trtllm", "--n-positions", "64", *SQ)
    assert r.returncode == 2 and message in r.stderr and "tokenizer.json" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "Couldn't instantiate" not in r.stderr
    assert _stage_entries(Path(__import__("os").environ["KILN_HOME"])) == {}
    # Without calibration the tokenizer is not needed to convert: the same model builds its CPU stages.
    plain = run_kiln("build", str(model), "--target", "trtllm", "--n-positions", "64", "--dtype", "fp16")
    assert plain.returncode == 3, plain.stderr
    # Pre-tokenised calibration samples need no tokenizer: the calibrated build runs too.
    ids = tmp_path / "ids.jsonl"
    ids.write_text("".join(json.dumps({"input_ids": list(range(3 + i, 40 + i))}) + "\n" for i in range(4)))
    r = run_kiln("build", str(model), "--target", "trtllm", "--n-positions", "64", "--dtype", "fp16", *SQ,
                 "--calib-file", str(ids))
    assert r.returncode == 3, r.stderr
    (calib,) = _stage_entries(Path(__import__("os").environ["KILN_HOME"]))["calibration"]
    facts = _record(Path(__import__("os").environ["KILN_HOME"]), calib)["extra"]["facts"]["calibration"]
    assert facts["samples_used"] == 4 and facts["tokens_used"] == 4 * 32  # each truncated to calib_seq_len=32


def _record(store: Path, entry: dict) -> dict:
    s = Store(store)
    return s.read_record(s.read_manifest(entry["manifest"]))


def test_the_calibration_record_says_what_was_used_and_the_key_names_the_corpus(tmp_path: Path) -> None:
    model = make_tiny_model("llama", tmp_path / "m", seed=27)
    store = Path(__import__("os").environ["KILN_HOME"])
    r = run_kiln("build", str(model), "--target", "trtllm", "--n-positions", "64", "--dtype", "fp16", *SQ)
    assert r.returncode == 3, r.stderr
    (calib,) = _stage_entries(store)["calibration"]
    record = _record(store, calib)
    # The default corpus enters the key by its digest: another corpus, another calibration.
    shipped = "sha256:" + hashlib.sha256(default_calib_file().read_bytes()).hexdigest()
    assert record["key_inputs"]["inputs"]["calib_corpus"] == shipped
    facts = record["extra"]["facts"]["calibration"]
    assert facts["samples_requested"] == 4 and facts["samples_used"] == 4 and facts["warnings"] == []
    assert 4 <= facts["tokens_used"] <= 4 * 32 and facts["tokens_at_most"] == 4 * 32
    assert facts["corpus"] == "kiln-default" and "sha256:" + facts["corpus_sha256"] == shipped
    # A short --calib-file with per-token scales is used whole, and the record says so.
    short = _short_corpus(tmp_path)
    r = run_kiln("build", str(model), "--target", "trtllm", "--n-positions", "64", "--dtype", "fp16", *SQ,
                 "--calib-file", str(short))
    assert r.returncode == 3, r.stderr
    other = next(e for e in _stage_entries(store)["calibration"] if e["key"] != calib["key"])
    record = _record(store, other)
    assert "calib_corpus" not in record["key_inputs"]["inputs"]  # the calib_set is the file's digest already
    facts = record["extra"]["facts"]["calibration"]
    assert (facts["samples_requested"], facts["samples_used"]) == (4, 2) and facts["corpus"] == "short.txt"
    assert "calibration used 2 samples, not the 4 requested" in facts["warnings"][0]


def test_unsupported_architecture_for_trtllm(tmp_path: Path) -> None:
    model = make_tiny_model("mixtral", tmp_path / "m", seed=23)
    r = run_kiln("build", str(model), "--target", "trtllm", "--n-positions", "64", *SQ)
    assert r.returncode == 2 and "MixtralForCausalLM is not supported by trtllm" in r.stderr


PINS = ["--toolchain", "tensorrt_llm=0.12.0,tensorrt=10.3.0,hardware=cuda-sm90"]


def _engine_fixture(root: Path, model: Path, tp: int) -> Path:
    """Shaped like trtllm-build output plus the tokenizer. A fixture: no TensorRT ran."""
    eng = root / "engine"
    eng.mkdir()
    (eng / "config.json").write_text(json.dumps({"version": "0.12.0", "build_config": {"max_batch_size": 4},
                                                 "pretrained_config": {"mapping": {"tp_size": tp}}}))
    for r in range(tp):
        (eng / f"rank{r}.engine").write_bytes(bytes([r]) * 4096)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(model / name, eng / name)
    (eng / "build.log").write_text("fixture\n")
    return eng


def _installed(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# The profiles whose image versions are what this machine has installed: a build for them can run here.
_BUILDABLE = [ref for ref, c in __import__("kiln.targets.trtllm.consumers", fromlist=["CONSUMERS"]).CONSUMERS.items()
              if c.version and c.tensorrt_llm == _installed("tensorrt_llm") and c.tensorrt == _installed("tensorrt")
              and not c.defect]


@pytest.mark.skipif(shutil.which("trtllm-build") is None or shutil.which("nvidia-smi") is None,
                    reason="trtllm-build and a CUDA GPU are needed; tensorrt_llm is served only from NVIDIA's index")
@pytest.mark.parametrize("consumer", _BUILDABLE or [pytest.param("none", marks=pytest.mark.skip(
    reason="no consumer profile ships the installed tensorrt_llm/tensorrt"))])
def test_real_engine_build(tmp_path: Path, consumer: str) -> None:  # pragma: no cover - needs a GPU
    """Builds with the profile's flags, lays the engine out for the profile and loads it with its runtime."""
    from kiln.targets.trtllm.consumers import CONSUMERS

    model = make_tiny_model("llama", tmp_path / "m", seed=25)
    spec = ["--target", "trtllm", "--n-positions", "64", "--dtype", "fp16", "--consumer", consumer, *SQ]
    r = run_kiln("build", str(model), *spec, "--json", timeout=3600)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["compiled"] is True
    # The artifact's record says what its calibration used (from the calibration stage's record).
    store = Path(__import__("os").environ["KILN_HOME"])
    engine = next(e for e in _stage_entries(store)["engine"] if e["spec"]["options"]["consumer"] == consumer)
    facts = _record(store, engine)["extra"]["stage_facts"]["calibration"]["calibration"]
    assert facts["samples_used"] == 4 and 0 < facts["tokens_used"] <= 4 * 32
    kind = CONSUMERS[consumer]
    layout = {"lmi-trtllm": "lmi", "triton-trtllm": "triton"}.get(kind.name, "raw")
    dest = tmp_path / "deploy"
    r = run_kiln("fetch", str(model), *spec, "--layout", layout, "--dest", str(dest), "--container-dir", str(dest))
    assert r.returncode == 0, r.stderr
    engine_dir = dest / "tensorrt_llm" / "1" if (dest / "tensorrt_llm" / "1").is_dir() else dest
    load = ("import sys; from tensorrt_llm import LLM; llm = LLM(model=sys.argv[1], tokenizer=sys.argv[2]); "
            "out = llm.generate(['Hello'], use_tqdm=False); print(len(out[0].outputs[0].token_ids))")
    tokenizer = dest / "tensorrt_llm" if (dest / "tensorrt_llm").is_dir() else dest
    ran = __import__("subprocess").run([__import__("sys").executable, "-c", load, str(engine_dir), str(tokenizer)],
                                       capture_output=True, text=True, timeout=1800)
    assert ran.returncode == 0 and int(ran.stdout.split()[-1]) > 0, ran.stderr[-2000:]


def test_select_and_miss_explanations_ignore_build_stages(tmp_path: Path) -> None:
    model = make_tiny_model("llama", tmp_path / "m", seed=26)
    assert run_kiln("build", str(model), "--target", "trtllm", "--n-positions", "64", "--dtype", "fp16", *SQ).returncode == 3
    sel = run_kiln("lookup", str(model), "--target", "trtllm", "--instance-type", "ml.g5.12xlarge", "--select")
    assert sel.returncode == 1 and "Traceback" not in sel.stderr
    miss = run_kiln("lookup", str(model), "--target", "trtllm", "--n-positions", "64", "--dtype", "fp16", *SQ, *PINS)
    assert miss.returncode == 1 and "(checkpoint)" not in miss.stdout and "no trtllm artifact" in miss.stdout


def test_the_dry_run_shows_the_trtllm_build_command(tmp_path: Path) -> None:
    """What the engine step runs, for a user to check against their consumer's TensorRT-LLM; nothing is built."""
    model = make_tiny_model("llama", tmp_path / "m", seed=25)
    spec = ["--target", "trtllm", "--n-positions", "64", "--batch-size", "4", "--dtype", "fp16", "--option",
            "max_num_tokens=256", *PINS]
    r = run_kiln("build", str(model), *spec, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    steps = {s["name"]: s for s in json.loads(r.stdout)["steps"]}
    argv = steps["engine"]["invocation"]["argv"]
    assert argv[0] == "trtllm-build" and argv[argv.index("--checkpoint_dir") + 1] == "CHECKPOINT"
    assert argv[argv.index("--max_batch_size") + 1] == "4" and argv[argv.index("--max_seq_len") + 1] == "64"
    assert argv[argv.index("--max_num_tokens") + 1] == "256"
    assert steps["engine"]["invocation"]["env"] == {}
    assert "invocation" not in steps["checkpoint"]  # Kiln's own conversion: its argv says it all
