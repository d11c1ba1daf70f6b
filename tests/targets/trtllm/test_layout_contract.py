"""Kiln's TensorRT-LLM layouts against what each consumer release reads (tests/targets/trtllm/consumer_contract.py:
fixtures written from djl-serving's and tensorrtllm_backend's own source at the release tags, independently of
Kiln's code), through the real CLI in-process (click's CliRunner) over a real store.

No TensorRT ran: the engines are fixtures shaped like trtllm-build output (config.json with build_config,
rank{N}.engine, tokenizer files) — what the layouts rearrange. Every consumer Kiln has a profile for is either
laid out and checked here, or refused before any work with its reason.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner

from kiln.cli import cli
from kiln.targets.trtllm.consumers import CONSUMERS, TrtllmConsumer, version_tuple

from ...tiny_models import make_tiny_model
from .consumer_contract import LMI_TRTLLM, TRITON_TRTLLM, parse_pbtxt_header, parse_pbtxt_parameters, \
    lmi_problems, triton_problems

TP, BATCH, N = 2, 4, 64
HARDWARE = "hardware=cuda-sm90-nvidia-h100-80gb-hbm3"


def _usable(c: TrtllmConsumer) -> bool:
    return c.version != "" and not c.defect and c.tensorrt_llm is not None and version_tuple(c.tensorrt_llm) >= (0, 11)


LMI = [ref for ref, c in CONSUMERS.items() if c.is_lmi and _usable(c)]
TRITON = [ref for ref, c in CONSUMERS.items() if c.name == "triton-trtllm" and _usable(c)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("contract")
    model = make_tiny_model("mistral", root / "m", seed=41)  # sliding_window 16 < N: the layouts carry it
    engine = root / "engine"
    engine.mkdir()
    (engine / "config.json").write_text(json.dumps({"version": "x", "build_config": {"max_batch_size": BATCH},
                                                    "pretrained_config": {"mapping": {"tp_size": TP}}}))
    for r in range(TP):
        (engine / f"rank{r}.engine").write_bytes(bytes([r]) * 1024)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(model / name, engine / name)
    env = {"KILN_HOME": str(root / "home"), "SERVING_FEATURES": ""}
    yield {"root": root, "model": model, "engine": engine, "env": env, "runner": CliRunner()}


def _kiln(world: dict, *args: str) -> tuple[int, str]:
    r = world["runner"].invoke(cli, list(args), env=world["env"])
    return r.exit_code, r.output


def _spec(consumer: str) -> list[str]:
    c = CONSUMERS[consumer]
    pins = [HARDWARE] + ([] if c.tensorrt else ["tensorrt=10.11.0.33"])
    return ["--target", "trtllm", "--n-positions", str(N), "--batch-size", str(BATCH), "--tp-degree", str(TP),
            "--dtype", "fp16", "--consumer", consumer, "--toolchain", ",".join(pins)]


def _put_and_fetch(world: dict, consumer: str, layout: str, container: str) -> tuple[str, Path]:
    code, out = _kiln(world, "store", "put", str(world["engine"]), str(world["model"]), *_spec(consumer), "--json")
    assert code == 0, out
    key = json.loads(out)["key"]
    dest = world["root"] / f"{layout}-{consumer.replace(':', '-')}"
    code, out = _kiln(world, "fetch", str(world["model"]), *_spec(consumer), "--layout", layout, "--dest", str(dest),
                      "--container-dir", container)
    assert code == 0, out
    return key, dest


def _props(path: Path) -> dict[str, str]:
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    return dict(ln.split("=", 1) for ln in lines)


def _files(dest: Path) -> list[str]:
    return sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())


def test_every_profile_is_checked_or_refused() -> None:
    """The fixtures cover every LMI release Kiln lays out, and every Triton tag whose source the fixtures read."""
    assert {CONSUMERS[r].version for r in LMI} <= set(LMI_TRTLLM)
    assert LMI and TRITON
    for ref, c in CONSUMERS.items():
        if c.name == "triton-trtllm" and f"v{c.version}" in TRITON_TRTLLM:
            fixture = TRITON_TRTLLM[f"v{c.version}"]
            assert c.tensorrt_llm == fixture.tensorrt_llm.value, ref
            if fixture.tensorrt.value is not None and c.tensorrt is not None:
                # pip numbers TensorRT with three parts up to 10.7 (the image recipe writes the build too)
                assert fixture.tensorrt.value.startswith(c.tensorrt), ref
        if c.is_lmi:
            # 0.35.1-dlc: the files read are those of 0.35.0 (consumer_contract.py: v0.35.0 = 0.35.0-dlc = 0.35.1-dlc)
            fixture = LMI_TRTLLM["0.35.0" if c.version == "0.35.1" else c.version]
            assert c.tensorrt_llm == fixture.tensorrt_llm.value, ref
            if fixture.tensorrt.value is not None:
                assert c.tensorrt == fixture.tensorrt.value, ref
            assert (c.layout == "lmi-async") == (fixture.layout.value == "engine-dir"), ref
            assert bool(c.defect) == (fixture.handler_broken.value is not None), ref
            assert c.max_output_len_is_seq_len == (fixture.max_output_len_means.value == "max_seq_len"), ref


@pytest.mark.parametrize("consumer", LMI)
def test_lmi_layout_is_what_the_release_reads(world: dict, consumer: str) -> None:
    c = CONSUMERS[consumer]
    release = LMI_TRTLLM[c.version]
    key, dest = _put_and_fetch(world, consumer, "lmi", "/opt/ml/model")
    props = _props(dest / "serving.properties")
    assert lmi_problems(c.version, props, TP) == []
    files = _files(dest)
    if release.layout.value == "engine-dir":
        assert {"config.json", "rank0.engine", "rank1.engine", "tokenizer_config.json"} <= set(files)
        assert json.loads((dest / "config.json").read_text())["build_config"]
        assert json.loads(props["option.max_attention_window"]) == [16]  # TP: json.loads → KvCacheConfig
    else:
        assert {"tensorrt_llm/config.pbtxt", "tensorrt_llm/tokenizer_config.json", "tensorrt_llm/1/config.json",
                "tensorrt_llm/1/rank0.engine", "tensorrt_llm/1/rank1.engine"} <= set(files)
        params = parse_pbtxt_parameters((dest / "tensorrt_llm" / "config.pbtxt").read_text())
        assert triton_problems(release.triton_backend.value, params) == []
        assert params["gpt_model_path"] == "/opt/ml/model/tensorrt_llm/1"
        assert params["max_attention_window_size"] == "16"
    # The written properties read back (Kiln's own parser) to the same key.
    code, out = _kiln(world, "key", str(world["model"]), "--serving-properties", str(dest / "serving.properties"),
                      "--toolchain", _spec(consumer)[-1], "--json")
    assert code == 0, out
    assert json.loads(out)["key"] == key


@pytest.mark.parametrize("consumer", TRITON)
def test_triton_layout_is_what_the_backend_reads(world: dict, consumer: str) -> None:
    c = CONSUMERS[consumer]
    _, dest = _put_and_fetch(world, consumer, "triton", "/models")
    assert _files(dest) == ["tensorrt_llm/1/config.json", "tensorrt_llm/1/rank0.engine", "tensorrt_llm/1/rank1.engine",
                            "tensorrt_llm/config.pbtxt", "tensorrt_llm/tokenizer.json",
                            "tensorrt_llm/tokenizer_config.json"]
    text = (dest / "tensorrt_llm" / "config.pbtxt").read_text()
    params = parse_pbtxt_parameters(text)
    header = parse_pbtxt_header(text)
    assert params["gpt_model_path"] == "/models/tensorrt_llm/1"
    assert params["max_attention_window_size"] == "16"
    assert header["max_batch_size"] == str(BATCH) and header["decoupled"] == "true"  # streaming needs decoupled
    tag = f"v{c.version}"
    if tag in TRITON_TRTLLM:
        assert triton_problems(tag, params) == []
    else:  # v0.20+: the backend lives in TensorRT-LLM's triton_backend/, which reads what v0.19.0 reads
        assert triton_problems("v0.19.0", params) == []


def test_lmi_properties_with_max_output_len_give_the_release_s_sequence(world: dict, tmp_path: Path) -> None:
    props = tmp_path / "serving.properties"
    props.write_text("option.tensor_parallel_degree=2\noption.max_input_len=1024\noption.max_output_len=2048\n"
                     "option.rolling_batch=trtllm\n")
    model = make_tiny_model("llama", tmp_path / "m", seed=42, max_position_embeddings=4096)
    seen = {}
    for consumer in ("lmi-trtllm:0.29.0", "lmi-trtllm:0.30.0", "lmi-trtllm:0.32.0", "lmi-trtllm:0.33.0"):
        code, out = _kiln(world, "key", str(model), "--serving-properties", str(props), "--consumer", consumer,
                          "--toolchain", HARDWARE, "--explain", "--json")
        assert code == 0, out
        seen[consumer] = json.loads(out)["inputs"]["spec"]["n_positions"]
    # 0.29: input + output; 0.30-0.32: max_output_len is max_seq_len; 0.33: TensorRT-LLM's deduction
    # (max_position_embeddings), max_output_len being no build setting there.
    assert seen == {"lmi-trtllm:0.29.0": 3072, "lmi-trtllm:0.30.0": 2048, "lmi-trtllm:0.32.0": 2048,
                    "lmi-trtllm:0.33.0": 4096}


@pytest.mark.parametrize("consumer, says", [
    ("lmi-trtllm:0.35.0", "got multiple values for keyword argument"),
    ("lmi-trtllm:0.36.0", "got multiple values for keyword argument"),
    ("lmi-trtllm:0.28.0", "0.11 and later"),
    ("triton-trtllm:0.10.0", "0.11 and later"),
])
def test_consumers_kiln_cannot_serve_are_refused_before_any_work(world: dict, consumer: str, says: str) -> None:
    code, out = _kiln(world, "build", str(world["model"]), *_spec(consumer))
    assert code == 2 and says in out and "Traceback" not in out
    assert not (Path(world["env"]["KILN_HOME"]) / "tmp").exists() or not os.listdir(Path(world["env"]["KILN_HOME"]) / "tmp")


def test_a_layout_for_a_consumer_whose_versions_differ_is_refused(world: dict) -> None:
    spec = [*_spec("lmi-trtllm:0.33.0")[:-1], f"{HARDWARE},tensorrt_llm=0.21.0"]  # not the image's 0.21.0rc1
    code, out = _kiln(world, "store", "put", str(world["engine"]), str(world["model"]), *spec, "--json")
    assert code == 0, out
    code, out = _kiln(world, "fetch", str(world["model"]), *spec, "--layout", "lmi", "--dest",
                      str(world["root"] / "mismatch"))
    assert code == 2
    assert "tensorrt_llm 0.21.0 (the consumer ships 0.21.0rc1)" in out and "lmi-trtllm:0.33.0" in out
    assert not (world["root"] / "mismatch").exists()


def test_a_layout_for_another_kind_of_consumer_is_refused(world: dict) -> None:
    _put_and_fetch(world, "triton-trtllm:0.12.0", "triton", "/models")
    code, out = _kiln(world, "fetch", str(world["model"]), *_spec("triton-trtllm:0.12.0"), "--layout", "lmi",
                      "--dest", str(world["root"] / "wrong-kind"))
    assert code == 2 and "layout lmi is for lmi-trtllm consumers" in out


def test_smoothquant_lmi_properties_read_back_to_the_same_key(world: dict) -> None:
    spec = [*_spec("lmi-trtllm:0.33.0"), "--smoothquant", "0.6", "--per-token", "--int8-kv-cache", "--option",
            "calib_samples=4", "--option", "calib_seq_len=32"]
    code, out = _kiln(world, "store", "put", str(world["engine"]), str(world["model"]), *spec, "--json")
    assert code == 0, out
    key = json.loads(out)["key"]
    dest = world["root"] / "sq"
    code, out = _kiln(world, "fetch", str(world["model"]), *spec, "--layout", "lmi", "--dest", str(dest))
    assert code == 0, out
    props = _props(dest / "serving.properties")
    assert props["option.quantize"] == "smoothquant" and props["option.int8_kv_cache"] == "true"
    assert lmi_problems("0.33.0", props, TP) == []
    code, out = _kiln(world, "key", str(world["model"]), "--serving-properties", str(dest / "serving.properties"),
                      "--option", "calib_samples=4", "--option", "calib_seq_len=32", "--toolchain", _spec("lmi-trtllm:0.33.0")[-1], "--json")
    assert code == 0, out
    assert json.loads(out)["key"] == key


def test_inside_an_lmi_trtllm_image_the_consumer_is_that_image(world: dict, tmp_path: Path) -> None:
    """SERVING_FEATURES=trtllm (every LMI TensorRT-LLM image sets it) and DJL's telemetry file name the release."""
    telemetry = tmp_path / "telemetry"
    telemetry.write_text("0.33.0 gpu\n")
    env = {**world["env"], "SERVING_FEATURES": "trtllm", "KILN_LMI_TELEMETRY_FILE": str(telemetry)}
    r = world["runner"].invoke(cli, ["key", str(world["model"]), "--target", "trtllm", "--n-positions", "64",
                                     "--toolchain", HARDWARE, "--explain", "--json"], env=env)
    assert r.exit_code == 0, r.output
    explained = json.loads(r.output)
    assert explained["inputs"]["spec"]["options"]["consumer"] == "lmi-trtllm:0.33.0"
    assert explained["inputs"]["toolchain"]["tensorrt_llm"] == "0.21.0rc1"
    telemetry.write_text("0.31.5 gpu\n")  # a release Kiln has no profile for: refused, not guessed
    r = world["runner"].invoke(cli, ["key", str(world["model"]), "--target", "trtllm", "--n-positions", "64",
                                     "--toolchain", HARDWARE], env=env)
    assert r.exit_code == 2 and "0.31.5" in r.output and "no profile" in r.output


@pytest.mark.parametrize("consumer", ["triton-trtllm:0.12.0", "triton-trtllm:0.19.0"])
def test_triton_ensemble_layout_takes_text(world: dict, consumer: str) -> None:
    """preprocessing → tensorrt_llm → postprocessing, as the backend's own ensemble names them; the engine leaves the
    prompt out of its output (a decoupled ensemble cannot give postprocessing the prompt length per response)."""
    from .consumer_contract import ENSEMBLE_STEPS, ensemble_steps

    _, dest = _put_and_fetch(world, consumer, "triton-ensemble", "/models")
    files = set(_files(dest))
    assert {"preprocessing/config.pbtxt", "preprocessing/1/model.py", "postprocessing/config.pbtxt",
            "postprocessing/1/model.py", "ensemble/config.pbtxt", "tensorrt_llm/config.pbtxt",
            "tensorrt_llm/1/rank0.engine"} <= files
    assert any(f.startswith("ensemble/1/") for f in files)  # Triton needs the version directory
    assert ensemble_steps((dest / "ensemble" / "config.pbtxt").read_text()) == list(ENSEMBLE_STEPS)
    params = parse_pbtxt_parameters((dest / "tensorrt_llm" / "config.pbtxt").read_text())
    assert params["exclude_input_in_output"] == "true"
    assert triton_problems(f"v{CONSUMERS[consumer].version}", params) == []
    assert parse_pbtxt_parameters((dest / "preprocessing" / "config.pbtxt").read_text())["tokenizer_dir"] == \
        "/models/tensorrt_llm"
