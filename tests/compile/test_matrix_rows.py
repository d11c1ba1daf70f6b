"""Matrix row identity: no row is dropped silently, ids are unique and usable, merges are reported.

Before: a row id was the model directory's basename plus the shape (no options), and rows were
de-duplicated by id, so two models named tiny-llama in different directories, or org-a/llama and
org-b/llama, or two rows differing only in target options, became one row and the other was
never built, with nothing said.
"""

from __future__ import annotations

import json
from pathlib import Path

from kiln.compile.matrix import MAX_ID_CHARS, expand_matrix

from ._matrix_schema import check_matrix_json
from ..conftest import run_kiln, write_fake_model


def _ids(doc: dict) -> list[str]:
    return [r.id for r in expand_matrix(doc)]


def test_models_with_the_same_name_are_different_rows() -> None:
    ids = _ids({"models": ["org-a/llama", "org-b/llama"], "targets": ["torch-aoti"], "n_positions": [512]})
    assert ids == ["org-a/llama/torch-aoti/512x1/tp1/auto/none", "org-b/llama/torch-aoti/512x1/tp1/auto/none"]


def test_rows_differing_only_in_options_are_different_rows() -> None:
    rows = expand_matrix({"include": [
        {"model": "org/m", "target": "trtllm", "n_positions": 64, "options": {"calib_samples": 4}},
        {"model": "org/m", "target": "trtllm", "n_positions": 64, "options": {"calib_samples": 8}},
    ]})
    assert [r.id for r in rows] == ["org/m/trtllm/64x1/tp1/auto/none/calib_samples=4",
                                    "org/m/trtllm/64x1/tp1/auto/none/calib_samples=8"]
    assert [r.fields["option.calib_samples"].value for r in rows] == ["4", "8"]


def test_every_field_distinguishes_rows() -> None:
    base = {"model": "org/m", "target": "neuron", "n_positions": 512, "batch_size": 2, "tp_degree": 2, "dtype": "fp16",
            "instance_type": "ml.inf2.xlarge", "options": {"optlevel": 2}}
    variants = [base, {**base, "model": "org/m@v2"}, {**base, "target": "trtllm"}, {**base, "n_positions": 1024},
                {**base, "batch_size": 4}, {**base, "tp_degree": 1}, {**base, "dtype": "bf16"},
                {**base, "instance_type": "ml.inf2.8xlarge"}, {**base, "options": {"optlevel": 3}},
                {**base, "quantization": {"smoothquant": 0.5}}, {**base, "toolchain": {"hardware": "neuron-inf2"}}]
    rows = expand_matrix({"include": variants})
    assert len(rows) == len(variants) and len({r.id for r in rows}) == len(variants)
    assert not any(r.merged for r in rows)


def test_identical_rows_are_merged_and_reported() -> None:
    rows = expand_matrix({
        "models": ["org/m"], "targets": ["torch-aoti", "aoti"],  # an alias of the same target
        "n_positions": [512, 512], "dtypes": ["fp32"],
        "include": [{"model": "org/m", "target": "torch-aoti", "n_positions": 512, "dtype": "float32", "batch_size": 1}],
    }, origin="m.yaml")
    assert [r.id for r in rows] == ["org/m/torch-aoti/512x1/tp1/fp32/none"]
    assert rows[0].source == "m.yaml (combination 1)"
    assert rows[0].merged == ("m.yaml (combination 2)", "m.yaml (combination 3)", "m.yaml (combination 4)",
                              "m.yaml (include 1)")


def test_ids_that_would_read_the_same_get_a_stable_hash_suffix() -> None:
    doc = {"include": [{"model": "org/a b", "target": "torch-aoti"}, {"model": "org/a_b", "target": "torch-aoti"},
                       {"model": "org/a,b", "target": "torch-aoti"}]}
    ids = _ids(doc)
    assert len(set(ids)) == 3 and all(i.startswith("org/a_b/torch-aoti/autox1/tp1/auto/none~") for i in ids)
    assert all("," not in i and " " not in i for i in ids)  # usable in --row ID,ID
    assert _ids(doc) == ids and _ids({"include": doc["include"][::-1]}) == ids[::-1]  # stable, order-independent
    long = _ids({"include": [{"model": "org/" + "x" * 500, "target": "torch-aoti"}]})[0]
    assert len(long) <= MAX_ID_CHARS and "~" in long


def test_cli_plans_and_builds_rows_of_same_named_models_separately(tmp_path: Path) -> None:
    a = write_fake_model(tmp_path / "a" / "tiny-llama", seed=1)
    b = write_fake_model(tmp_path / "b" / "tiny-llama", seed=2)
    mfile = tmp_path / "m.yaml"
    mfile.write_text(f"models: [{a}, {b}, {a}]\ntargets: [torch-aoti]\nn_positions: [256]\ndtypes: [fp32]\n"
                     "include:\n  - {model: " + str(a) + ", target: torch-aoti, n_positions: 256, dtype: fp32,"
                     " options: {device: cpu}}\n")
    r = run_kiln("matrix", "plan", str(mfile), "--json")
    assert r.returncode == 0, r.stderr
    data = check_matrix_json("plan", json.loads(r.stdout))
    ids = [row["row"] for row in data["rows"]]
    assert ids == [f"{a}/torch-aoti/256x1/tp1/fp32/none", f"{b}/torch-aoti/256x1/tp1/fp32/none",
                   f"{a}/torch-aoti/256x1/tp1/fp32/none/device=cpu"]
    assert data["rows"][0]["key"] != data["rows"][1]["key"]  # different weights: different builds
    assert data["merged"] == [{"row": ids[0], "sources": [f"{mfile} (combination 1)", f"{mfile} (combination 3)"]}]
    assert data["rows"][0]["merged_from"] == [f"{mfile} (combination 3)"]
    text = run_kiln("matrix", "plan", str(mfile))
    assert "merged: also given by" in text.stdout and "1 identical row(s) merged" in text.stdout
    # Every id is accepted by --row, and the CI matrix names all three rows.
    ci = run_kiln("matrix", "ci", str(mfile), "--shard-size", "3")
    assert ci.returncode == 0 and json.loads(ci.stdout)["include"][0]["rows"] == ",".join(ids)
    bad = run_kiln("matrix", "build", str(mfile), "--row", "tiny-llama/torch-aoti/256x1/tp1/fp32/none")
    assert bad.returncode == 2 and bad.stderr.startswith("kiln: error: --row 'tiny-llama/") and "Traceback" not in bad.stderr


def test_a_shared_error_is_reported_once_with_its_rows(tmp_path: Path) -> None:
    mfile = tmp_path / "m.yaml"
    mfile.write_text("models: [org/not-cached]\ntargets: [torch-aoti]\nn_positions: [128, 256, 512, 1024]\n"
                     "batch_sizes: {start: 1, stop: 8, factor: 2}\ndtypes: [fp32]\n")  # 16 rows, one missing model
    data = check_matrix_json("plan", json.loads(run_kiln("matrix", "plan", str(mfile), "--json").stdout))
    assert len(data["errors"]) == 1 and len(data["errors"][0]["rows"]) == 16
    message = data["errors"][0]["error"]
    assert "org/not-cached" in message
    r = run_kiln("matrix", "plan", str(mfile))
    assert r.returncode == 2
    assert r.stdout.count(message) == 1 and r.stdout.count("INVALID ") == 16  # the error once, each row listed
    assert "invalid 16 rows (" in r.stdout and "and 8 more (--json lists all)" in r.stdout
    assert r.stderr.strip() == f"kiln: error: 16 of 16 rows of {mfile} are invalid (1 distinct error, listed above); " \
                               "fix them in the file and plan again."


def test_matrix_ci_json_has_the_job_matrix_rows_and_statuses(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "m")
    art = tmp_path / "art"
    art.mkdir()
    (art / "engine.pt2").write_bytes(b"x")
    assert run_kiln("store", "put", str(art), str(model), "--target", "torch-aoti", "--n-positions", "256",
                    "--dtype", "fp32").returncode == 0
    mfile = tmp_path / "m.yaml"
    mfile.write_text(f"models: [{model}]\ntargets: [torch-aoti]\nn_positions: [256, 512, 1024]\ndtypes: [fp32]\n")
    r = run_kiln("matrix", "ci", str(mfile), "--shard-size", "2", "--json")
    assert r.returncode == 0, r.stderr
    data = check_matrix_json("ci", json.loads(r.stdout))
    assert data["matrix"] == json.loads(run_kiln("matrix", "ci", str(mfile), "--shard-size", "2").stdout)
    assert data["matrix"]["include"] == [{"name": f"{model}/torch-aoti/512x1/tp1/fp32/none (+1)",
                                          "rows": f"{model}/torch-aoti/512x1/tp1/fp32/none,"
                                                  f"{model}/torch-aoti/1024x1/tp1/fp32/none"}]
    assert [(row["row"].split("/")[-4], row["status"]) for row in data["rows"]] == [
        ("256x1", "hit"), ("512x1", "build"), ("1024x1", "build")]
    assert (data["hits"], data["builds"], data["invalid"], data["errors"]) == (1, 2, 0, [])
    assert data["format"] == "github" and data["shard_size"] == 2
