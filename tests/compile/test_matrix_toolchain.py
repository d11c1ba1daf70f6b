"""A matrix row must pin what its key needs (toolchain), or the file must say it accepts the risk.

Before: a CI plan job without the target's toolchain (no tensorrt_llm, no GPU) counted any
stored engine of the right shape as a hit, whatever compiler built it, so a compiler upgrade
scheduled no rebuilds; and ``--toolchain`` pins in a matrix of several targets made every row
of the other targets invalid.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.compile.matrix import expand_matrix
from kiln.errors import SpecError

from ._matrix_schema import check_matrix_json
from ..conftest import run_kiln, write_fake_model

SPEC = ["--target", "trtllm", "--n-positions", "64", "--batch-size", "4", "--dtype", "fp16"]
BUILT_WITH = ["--toolchain", "tensorrt_llm=0.12.0,tensorrt=10.3.0,hardware=cuda-sm90"]
ROW = "targets: [trtllm]\nn_positions: [64]\nbatch_sizes: [4]\ndtypes: [fp16]\n"


@pytest.fixture
def stored_engine(tmp_path: Path) -> Path:
    """A model with one trtllm engine in the store, built (here: put) with tensorrt_llm 0.12.0."""
    model = write_fake_model(tmp_path / "m")
    eng = tmp_path / "engine"
    eng.mkdir()
    (eng / "rank0.engine").write_bytes(b"e" * 64)
    put = run_kiln("store", "put", str(eng), str(model), *SPEC, *BUILT_WITH)
    assert put.returncode == 0, put.stderr
    return model


def _plan(tmp_path: Path, text: str, *args: str) -> tuple[int, dict, str]:
    mfile = tmp_path / "m.yaml"
    mfile.write_text(text)
    r = run_kiln("matrix", "plan", str(mfile), "--json", *args)
    return r.returncode, check_matrix_json("plan", json.loads(r.stdout)) if r.stdout.strip() else {}, r.stderr


def test_an_open_toolchain_is_an_error_unless_allowed(tmp_path: Path, stored_engine: Path) -> None:
    rc, data, err = _plan(tmp_path, f"models: [{stored_engine}]\n{ROW}")
    assert rc == 2, err
    [row] = data["rows"]
    assert row["status"] == "invalid" and "trtllm toolchain is left open" in row["error"]
    assert "hardware, tensorrt, tensorrt_llm neither installed here nor pinned" in row["error"]
    assert "allow_unpinned_toolchain: true" in row["error"] and len(err.strip().splitlines()) == 1
    ci = run_kiln("matrix", "ci", str(tmp_path / "m.yaml"))
    assert ci.returncode == 2 and "toolchain is left open" in ci.stderr
    # Explicitly allowed (documented as dangerous): any stored engine of the shape is a hit.
    rc, data, err = _plan(tmp_path, f"models: [{stored_engine}]\n{ROW}allow_unpinned_toolchain: true\n")
    assert rc == 0 and data["rows"][0]["status"] == "hit", err


def test_pins_in_the_file_decide_hits_and_a_compiler_upgrade_schedules_rebuilds(tmp_path: Path, stored_engine: Path) -> None:
    pinned = "toolchain:\n  trtllm: {tensorrt_llm: '0.12.0', tensorrt: '10.3.0', hardware: cuda-sm90}\n"
    rc, data, err = _plan(tmp_path, f"models: [{stored_engine}]\n{ROW}{pinned}")
    assert rc == 0, err
    assert data["rows"][0]["status"] == "hit" and data["rows"][0]["toolchain"]["tensorrt_llm"] == "0.12.0"
    upgraded = pinned.replace("'0.12.0'", "'0.13.0'")
    rc, data, err = _plan(tmp_path, f"models: [{stored_engine}]\n{ROW}{upgraded}")
    assert rc == 0 and data["rows"][0]["status"] == "build", err
    # --toolchain wins over the file (flags win over files everywhere).
    rc, data, err = _plan(tmp_path, f"models: [{stored_engine}]\n{ROW}{pinned}", "--toolchain", "tensorrt_llm=0.13.0")
    assert rc == 0 and data["rows"][0]["status"] == "build", err
    # Flat pins apply to the rows whose target has the component; an include row can pin its own.
    flat = "toolchain: {tensorrt_llm: '0.12.0', tensorrt: '10.3.0', hardware: cuda-sm90}\n"
    include = (f"include:\n  - {{model: {stored_engine}, target: trtllm, n_positions: 64, batch_size: 4, dtype: fp16,"
               " toolchain: {tensorrt_llm: '0.13.0'}}\n")
    rc, data, err = _plan(tmp_path, f"models: [{stored_engine}]\n{ROW}{flat}{include}")
    assert rc == 0, err
    assert [r["status"] for r in data["rows"]] == ["hit", "build"]
    assert data["rows"][1]["row"].startswith(f"{stored_engine}/trtllm/64x4/tp1/fp16/none~")  # differs only in pins


def test_pins_reach_only_the_targets_that_have_the_component(tmp_path: Path, stored_engine: Path) -> None:
    both = f"models: [{stored_engine}]\ntargets: [torch-aoti, trtllm]\nn_positions: [64]\nbatch_sizes: [4]\ndtypes: [fp16]\n"
    rc, data, err = _plan(tmp_path, both, *BUILT_WITH)
    assert rc == 0, err  # the trtllm pins did not make the torch-aoti row invalid
    status = {r["row"].split("/")[-5]: r for r in data["rows"]}
    assert status["torch-aoti"]["status"] == "build" and status["trtllm"]["status"] == "hit"
    assert "tensorrt_llm" not in status["torch-aoti"]["toolchain"]
    r = run_kiln("matrix", "plan", str(tmp_path / "m.yaml"), "--toolchain", "neuronx-cc=2.15.128")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("kiln: error: --toolchain neuronx-cc: not a toolchain component of any target in this matrix")


@pytest.mark.parametrize("toolchain,message", [
    ("{torch: 2.10}", "is a number in YAML (2.10 would read as 2.1); quote the version"),
    ("{neuronx-cc: '2.15'}", "toolchain 'neuronx-cc' is not a component of any target in this matrix"),
    ("{trtllm: {torch: '2.5'}}", "toolchain.trtllm: 'torch' is not a component of the trtllm toolchain"),
    ("{tpu: {x: '1'}}", "'tpu' is not a Kiln target"),
    ("[torch]", "must be a mapping"),
    ("{torch: [1]}", "must be a version"),
])
def test_bad_toolchain_entries_are_one_clear_error(toolchain: str, message: str) -> None:
    import yaml

    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        expand_matrix({"models": ["org/m"], "targets": ["torch-aoti"], "toolchain": yaml.safe_load(toolchain)})


def test_include_row_pins_must_belong_to_its_target() -> None:
    with pytest.raises(SpecError, match=r"include 1\): toolchain 'neuronx-cc' is not a component of the torch-aoti"):
        expand_matrix({"include": [{"model": "org/m", "target": "torch-aoti", "toolchain": {"neuronx-cc": "2.15"}}]})
