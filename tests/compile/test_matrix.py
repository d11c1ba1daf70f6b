"""Build matrices: expansion, planning (all errors at once, hits), local execution, Ray, CI output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kiln.compile.matrix import expand_matrix
from kiln.errors import SpecError

from ._matrix_schema import check_matrix_json
from ..conftest import run_kiln, write_fake_model
from ..tiny_models import make_tiny_model


def test_expansion_with_ranges_include_exclude_and_presets() -> None:
    rows = expand_matrix({
        "models": ["org/a", {"id": "org/b", "revision": "v1"}],
        "targets": ["torch-aoti"],
        "n_positions": {"start": 256, "stop": 1024, "factor": 2},
        "batch_sizes": {"start": 1, "stop": 3, "step": 2},
        "dtypes": ["fp32"],
        "exclude": [{"model": "org/a", "batch_size": 3}],
        "include": [{"model": "org/c", "target": "trtllm", "n_positions": 2048, "quantization": {"smoothquant": 0.5, "per_token": True}}],
        "presets": [{"name": "jumpstart-llama2-neuron", "model": "org/llama"}],
    })
    ids = [r.id for r in rows]
    assert "org/a/torch-aoti/256x1/tp1/fp32/none" in ids and "org/a/torch-aoti/1024x1/tp1/fp32/none" in ids
    assert not any(i.startswith("org/a/") and "x3/" in i for i in ids)  # excluded
    assert "org/b@v1/torch-aoti/512x3/tp1/fp32/none" in ids
    assert "org/c/trtllm/2048x1/tp1/auto/sq0.5+per-token" in ids
    preset_rows = [r for r in rows if r.values.get("instance_type")]
    assert len(preset_rows) == 12  # 34 rows: 7B and 13B configurations that coincide collapse with one model
    assert len(ids) == len(set(ids)) == 3 * 2 + 3 * 2 - 3 + 1 + 12


@pytest.mark.parametrize("doc,message", [
    ({"modles": ["x"]}, "unknown key 'modles'"),
    ({"models": []}, "models is an empty list"),
    ({"models": ["x"], "targets": ["torch-aoti"], "n_positions": {"start": "a", "stop": 3}},
     "n_positions.start='a' must be a positive integer"),
    ({"models": ["x"], "targets": ["torch-aoti"], "quantization": ["int4"]}, "quantization[0]='int4' must be 'none'"),
    ({"models": ["x"], "targets": ["torch-aoti"], "exclude": [{"colour": "red"}]}, "exclude[0]: unknown field 'colour'"),
])
def test_bad_matrix_files(doc: dict, message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        expand_matrix(doc)


def test_plan_reports_every_invalid_row_and_existing_hits(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "m")
    art = tmp_path / "art"
    art.mkdir()
    (art / "engine.pt2").write_bytes(b"x")
    assert run_kiln("store", "put", str(art), str(model), "--target", "torch-aoti", "--n-positions", "256",
                    "--batch-size", "2", "--dtype", "fp32").returncode == 0
    mfile = tmp_path / "matrix.yaml"
    mfile.write_text(f"models: [{model}]\ntargets: [torch-aoti]\nn_positions: [256, 9999]\nbatch_sizes: [1, 2]\n"
                     "dtypes: [fp32]\ntp_degrees: [1, 2]\n")
    r = run_kiln("matrix", "plan", str(mfile), "--json")
    assert r.returncode == 2
    data = check_matrix_json("plan", json.loads(r.stdout))
    by_id = {row["row"]: row for row in data["rows"]}
    assert by_id[f"{model}/torch-aoti/256x2/tp1/fp32/none"]["status"] == "hit"
    assert by_id[f"{model}/torch-aoti/256x1/tp1/fp32/none"]["status"] == "build"
    invalid = [row for row in data["rows"] if row["status"] == "invalid"]
    assert len(invalid) == 6 and data["invalid"] == 6  # every tp2 row and every 9999 row, all reported
    assert all(row["error"] for row in invalid)
    assert any("max_position_embeddings" in row["error"] for row in invalid)
    assert any("at most 1 device" in row["error"] for row in invalid)
    ci = run_kiln("matrix", "ci", str(mfile))
    # Each distinct error once, with the rows it affects (not once per row).
    assert sorted(len(g["rows"]) for g in data["errors"]) == [2, 4]
    assert r.stderr.strip().startswith("kiln: error: 6 of 8 rows") and len(r.stderr.strip().splitlines()) == 1
    assert ci.returncode == 2 and ci.stderr.count("invalid ") == 3  # two error lines + the summary line
    assert ci.stderr.splitlines()[-1].startswith("kiln: error: 6 of 8 rows")
    assert [e["rows"] for e in json.loads(ci.stdout)["include"]] == [f"{model}/torch-aoti/256x1/tp1/fp32/none"]


@pytest.fixture(scope="module")
def tiny_matrix(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("matrix")
    good = make_tiny_model("llama", root / "good", seed=11)
    bad = make_tiny_model("llama", root / "bad", seed=12)
    # Passes every check before the worker (config shape, safetensors header); the compile fails.
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "hidden_act": "no-such-activation"}))
    mfile = root / "matrix.yaml"
    mfile.write_text(f"models: [{good}, {bad}]\ntargets: [torch-aoti]\nn_positions: [32]\nbatch_sizes: [1, 2]\ndtypes: [fp32]\n"
                     f"exclude:\n  - {{model: {bad}, batch_size: 2}}\n")
    return {"root": root, "file": mfile, "env": {"KILN_HOME": str(root / "store")}, "good": good, "bad": bad}


def test_local_matrix_build_survives_a_failing_row_and_reruns_as_hits(tiny_matrix: dict) -> None:
    report = tiny_matrix["root"] / "report.json"
    r = run_kiln("matrix", "build", str(tiny_matrix["file"]), "--jobs", "2", "--report", str(report), "--json",
                 env=tiny_matrix["env"], timeout=900)
    assert r.returncode == 1, r.stderr  # one row failed
    data = check_matrix_json("build", json.loads(report.read_text()))
    assert check_matrix_json("build", json.loads(r.stdout))["rows"] == data["rows"]
    status = {row["row"]: row for row in data["rows"]}
    good, bad = tiny_matrix["good"], tiny_matrix["bad"]
    assert status[f"{good}/torch-aoti/32x1/tp1/fp32/none"]["status"] == "built"
    assert status[f"{good}/torch-aoti/32x2/tp1/fp32/none"]["status"] == "built"
    failed = status[f"{bad}/torch-aoti/32x1/tp1/fp32/none"]
    assert failed["status"] == "failed" and failed["log"] and Path(failed["log"]).exists()
    built = [row for row in data["rows"] if row["status"] == "built"]
    assert all(row["log"] and Path(row["log"]).exists() for row in built)
    # At most 2 at once, and the two good rows did overlap.
    spans = [(row["started"], row["finished"]) for row in data["rows"]]
    for t in [s for s, _ in spans]:
        assert sum(s <= t < f for s, f in spans) <= 2
    (a0, a1), (b0, b1) = [(row["started"], row["finished"]) for row in built]
    assert a0 < b1 and b0 < a1
    again = run_kiln("matrix", "build", str(tiny_matrix["file"]), "--row", f"{good}/torch-aoti/32x1/tp1/fp32/none,"
                     f"{good}/torch-aoti/32x2/tp1/fp32/none", "--json", env=tiny_matrix["env"])
    assert again.returncode == 0, again.stderr
    assert [row["status"] for row in json.loads(again.stdout)["rows"]] == ["hit", "hit"]
    tiny_matrix["keys"] = {row["row"]: row["key"] for row in built}


def test_ray_executor_builds_the_same_keys_into_a_remote(tiny_matrix: dict, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'kiln-engines[ray]')")
    if "keys" not in tiny_matrix:
        pytest.skip("needs the local matrix build above")
    remote = tmp_path / "remote"
    env = {"KILN_HOME": str(tmp_path / "ray-store"), "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    good = tiny_matrix["good"]
    rows = f"{good}/torch-aoti/32x1/tp1/fp32/none,{good}/torch-aoti/32x2/tp1/fp32/none"
    r = run_kiln("--remote", str(remote), "matrix", "build", str(tiny_matrix["file"]), "--row", rows, "--executor", "ray",
                 "--push", "--json", env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    data = json.loads(r.stdout)
    assert {row["row"]: row["key"] for row in data["rows"]} == tiny_matrix["keys"]
    assert all(row["status"] == "built" and row["pushed"] for row in data["rows"])
    listed = json.loads(run_kiln("--remote", str(remote), "ls", "--remote", "--json", env=env).stdout)
    assert sorted(e["key"] for e in listed if "stage" not in e["spec"]) == sorted(tiny_matrix["keys"].values())
    # Each row's compiled engine stage is pushed with it (another machine's fine-tune reuses it).
    stages = [e for e in listed if "stage" in e["spec"]]
    assert len(stages) == len(tiny_matrix["keys"]) and all(e["spec"]["stage"] == "engine" for e in stages)
