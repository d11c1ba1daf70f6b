"""What TensorRT-LLM's builder or the consumer would refuse, refused by Kiln before any stage runs (real CLI,
in-process, over a real store): SM 100-119 INT8/SmoothQuant, rope types the reference executor cannot check;
and what the engine needs set: INT8 KV cache's max_num_tokens, Mistral's attention window."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kiln.cli import cli

from ...tiny_models import make_tiny_model

PINS = ["--toolchain", "hardware=cuda-sm90-nvidia-h100-80gb-hbm3"]
SQ = ["--smoothquant", "0.5", "--option", "calib_samples=4", "--option", "calib_seq_len=32"]


def _kiln(home: Path, *args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(args), env={"KILN_HOME": str(home), "SERVING_FEATURES": ""})
    return r.exit_code, r.output


def _nothing_stored(home: Path) -> bool:
    index = home / "index"
    return not index.exists() or not any(p.is_file() for p in index.rglob("*"))


@pytest.mark.parametrize("instance, quant", [
    ("ml.p6-b200.48xlarge", SQ),
    ("ml.p6e-gb200.36xlarge", ["--int8-kv-cache", "--option", "calib_samples=4", "--option", "calib_seq_len=32"]),
])
def test_int8_on_sm_100_to_119_is_refused_before_any_stage(tmp_path: Path, instance: str, quant: list[str]) -> None:
    model = make_tiny_model("llama", tmp_path / "m", seed=51)
    code, out = _kiln(tmp_path / "home", "build", str(model), "--target", "trtllm", "--n-positions", "64",
                      "--instance-type", instance, *quant, *PINS)
    assert code == 2 and "SM 100" in out and instance in out and "--instance-type" in out and "Traceback" not in out
    assert _nothing_stored(tmp_path / "home")


def test_the_same_build_for_an_sm_90_instance_is_planned(tmp_path: Path) -> None:
    model = make_tiny_model("llama", tmp_path / "m", seed=51)
    code, out = _kiln(tmp_path / "home", "build", str(model), "--target", "trtllm", "--n-positions", "64",
                      "--instance-type", "ml.p5.48xlarge", *SQ, *PINS, "--dry-run", "--json")
    assert code == 0, out


@pytest.mark.parametrize("rope", [{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256},
                                  {"rope_type": "dynamic", "factor": 2.0}])
def test_rope_types_the_reference_cannot_check_are_refused(tmp_path: Path, rope: dict) -> None:
    model = make_tiny_model("llama", tmp_path / "m", seed=52)
    cfg = json.loads((model / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    cfg["rope_scaling"] = rope
    (model / "config.json").write_text(json.dumps(cfg))
    code, out = _kiln(tmp_path / "home", "build", str(model), "--target", "trtllm", "--n-positions", "64", *PINS)
    assert code == 2 and repr(rope["rope_type"]) in out and "reference executor" in out
    assert _nothing_stored(tmp_path / "home")


def _dry_run(home: Path, model: Path, *args: str) -> dict:
    code, out = _kiln(home, "build", str(model), "--target", "trtllm", *args, *PINS, "--dry-run", "--json")
    assert code == 0, out
    return json.loads(out)


def test_int8_kv_cache_raises_max_num_tokens_to_the_whole_sequence(tmp_path: Path) -> None:
    model = make_tiny_model("llama", tmp_path / "m", seed=53, max_position_embeddings=16384)
    plan = _dry_run(tmp_path / "home", model, "--n-positions", "12288", "--int8-kv-cache", "--option",
                    "calib_samples=4", "--option", "calib_seq_len=32")
    argv = {s["name"]: s for s in plan["steps"]}["engine"]["invocation"]["argv"]
    assert argv[argv.index("--max_num_tokens") + 1] == "12288"  # not the builder's 8192: paged context FMHA is off
    plain = _dry_run(tmp_path / "home", model, "--n-positions", "12288")
    assert "--max_num_tokens" not in {s["name"]: s for s in plain["steps"]}["engine"]["invocation"]["argv"]


def test_mistral_past_its_window_keys_the_window_the_layouts_write(tmp_path: Path) -> None:
    model = make_tiny_model("mistral", tmp_path / "m", seed=54)  # sliding_window 16
    home = tmp_path / "home"
    spec = ["--target", "trtllm", "--consumer", "tensorrt-llm:0.12.0", *PINS]
    past = _kiln(home, "key", str(model), "--n-positions", "64", *spec, "--explain", "--json")
    within = _kiln(home, "key", str(model), "--n-positions", "16", *spec, "--explain", "--json")
    assert past[0] == 0 and within[0] == 0, past[1] + within[1]
    assert json.loads(past[1])["inputs"]["spec"]["options"]["attention_window"] == "16"
    assert "attention_window" not in json.loads(within[1])["inputs"]["spec"]["options"]
    code, out = _kiln(home, "key", str(model), "--n-positions", "64", "--option", "attention_window=8", *spec)
    assert code == 2 and "attention_window='8'" in out


def test_a_consumer_build_host_with_another_tensorrt_llm_is_refused(tmp_path: Path) -> None:
    """The image's versions are the engine's toolchain: a build host without them cannot build it (here: none)."""
    model = make_tiny_model("llama", tmp_path / "m", seed=55)
    plan = _dry_run(tmp_path / "home", model, "--n-positions", "64", "--consumer", "triton-trtllm:0.12.0")
    assert plan["toolchain"]["tensorrt_llm"] == "0.12.0" and plan["toolchain"]["tensorrt"] == "10.3.0"


def test_the_dry_run_takes_the_calibration_file_the_build_takes(tmp_path: Path) -> None:
    model = make_tiny_model("llama", tmp_path / "m", seed=56)
    calib = tmp_path / "calib.txt"
    calib.write_text("One calibration text about rivers.\n\nAnother one about mountains.\n")
    plan = _dry_run(tmp_path / "home", model, "--n-positions", "64", "--smoothquant", "0.5", "--per-token",
                    "--calib-file", str(calib), "--option", "calib_samples=2", "--option", "calib_seq_len=16")
    argv = {s["name"]: s for s in plan["steps"]}["calibration"]["argv"]
    assert argv[argv.index("--calib-file") + 1] == str(calib)
