"""The consumer's environment: NEURON_* variables, the LMI NeuronX image Kiln runs in, the SDK it ships.

An LMI NeuronX container compiles under its own environment: the compiler reads NEURON_CC_FLAGS (the flags
name the cached modules), and from 0.31 the handler takes property defaults from NEURON_* variables
(tnx_properties.py@0.31.0-dlc get_env_or_default). Read with --from-env, each variable is keyed (it changes
the key and the planned call), refused (exit 2, naming it) or ignored because it provably does not change
the graphs — never the same key as without it while changing them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ...conftest import run_kiln

IMAGE_FLAGS = "--logfile /tmp/compile.log --temp-dir=/tmp"  # pytorch-inf2.Dockerfile ENV, 0.26.0 → 0.34.0
ROW_ENV = {  # a JumpStart Llama-2-7B row on ml.inf2.24xlarge, as the container sees it
    "HF_MODEL_ID": "meta-llama/Llama-2-7b-hf", "OPTION_ENTRYPOINT": "djl_python.transformers_neuronx",
    "OPTION_ROLLING_BATCH": "auto", "OPTION_N_POSITIONS": "4096", "OPTION_MAX_ROLLING_BATCH_SIZE": "4",
    "OPTION_TENSOR_PARALLEL_DEGREE": "8", "OPTION_DTYPE": "fp16",
}
INSTANCE = ["--instance-type", "ml.inf2.24xlarge"]


def _plan(release: str | None, extra: dict[str, str], *args: str) -> tuple[int, str, dict | None]:
    env = dict(ROW_ENV, **extra)
    if release:
        env["OPTION_KILN_CONSUMER"] = f"lmi-neuronx:{release}"
    r = run_kiln("build", "--from-env", *INSTANCE, *args, "--dry-run", "--json", env=env)
    return r.returncode, r.stderr, json.loads(r.stdout) if r.returncode == 0 else None


def _call(doc: dict) -> dict:
    return doc["steps"][0]["invocation"]


def _explain(release: str, extra: dict[str, str]) -> str:
    r = run_kiln("key", "--from-env", *INSTANCE, "--explain",
                 env=dict(ROW_ENV, OPTION_KILN_CONSUMER=f"lmi-neuronx:{release}", **extra))
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_context_length_estimate_from_the_environment_where_the_release_reads_it(llama2_cache: None) -> None:
    variable = {"NEURON_CONTEXT_LENGTH_ESTIMATE": "[1024, 4096]"}
    for release in ("0.31.0", "0.34.0"):
        rc, err, base = _plan(release, {})
        rc2, err2, with_env = _plan(release, variable)
        assert rc == 0 and rc2 == 0, err + err2
        assert _call(with_env)["kwargs"]["context_length_estimate"] == [1024, 4096]
        assert with_env["key"] != base["key"]
        # option.context_length_estimate is the property; the variable is only its default.
        rc3, err3, both = _plan(release, {**variable, "OPTION_CONTEXT_LENGTH_ESTIMATE": "2048,4096"})
        assert rc3 == 0, err3
        assert _call(both)["kwargs"]["context_length_estimate"] == [2048, 4096]
    # 0.30 reads no NEURON_* defaults: the same graphs, the same key, and --explain says why.
    rc, err, base = _plan("0.30.0", {})
    rc2, err2, with_env = _plan("0.30.0", variable)
    assert rc == 0 and rc2 == 0, err + err2
    assert with_env["key"] == base["key"] and _call(with_env) == _call(base)
    assert "NEURON_CONTEXT_LENGTH_ESTIMATE ignored: lmi-neuronx:0.30.0 does not read it" in _explain("0.30.0", variable)


def test_a_context_length_estimate_lmi_cannot_read_is_an_error(llama2_cache: None) -> None:
    # eval("1024") is an int, which pydantic's List[int] refuses at LMI start-up.
    rc, err, _ = _plan("0.31.0", {"NEURON_CONTEXT_LENGTH_ESTIMATE": "1024"})
    assert rc == 2 and "NEURON_CONTEXT_LENGTH_ESTIMATE='1024'" in err and "[1024, 2048]" in err
    assert "Traceback" not in err
    # eval("1024,4096") is a tuple, which List[int] takes (pydantic's lax mode): the same as the list.
    rc, err, doc = _plan("0.31.0", {"NEURON_CONTEXT_LENGTH_ESTIMATE": "1024,4096"})
    assert rc == 0, err
    assert _call(doc)["kwargs"]["context_length_estimate"] == [1024, 4096]


@pytest.mark.parametrize(("variable", "value"), [
    ("NEURON_ON_DEVICE_EMBEDDING", "true"), ("NEURON_SHARD_OVER_SEQUENCE", "True"), ("NEURON_ON_DEV_GENERATION", "true")])
def test_graph_shaping_variables_kiln_does_not_build_are_refused(llama2_cache: None, variable: str,
                                                                  value: str) -> None:
    rc, err, _ = _plan("0.31.0", {variable: value})
    assert rc == 2 and variable in err and "lmi-neuronx:0.31.0" in err and "Traceback" not in err
    # get_env_or_default reads anything but "true" as False or None, and the loader adds the field only when
    # truthy (model_loader.py@0.31.0-dlc set_neuron_config): the same graphs as without it.
    for falsy in ("false", "1", ""):
        rc, err, doc = _plan("0.31.0", {variable: falsy})
        assert rc == 0, (falsy, err)
        assert doc["key"] == _plan("0.31.0", {})[2]["key"]  # type: ignore[index]
    # 0.30's handler does not read them (nor does transformers-neuronx): provably the same graphs.
    rc, err, doc = _plan("0.30.0", {variable: value})
    assert rc == 0, err
    assert doc["key"] == _plan("0.30.0", {})[2]["key"]  # type: ignore[index]


def test_variables_transformers_neuronx_reads_or_kiln_does_not_know_are_refused(llama2_cache: None) -> None:
    for variable in ("NEURON_INTERNAL_TRANSFORM_WEIGHT_LAYOUT", "NEURON_VOCAB_PAD_DIVISOR", "NEURONX_DUMP_TO",
                     "NEURON_SOMETHING_NEW"):
        rc, err, _ = _plan("0.29.0", {variable: "1"})
        assert rc == 2 and variable in err and "Traceback" not in err, (variable, err)


def test_runtime_variables_and_the_speculative_loaders_leave_the_key_alone(llama2_cache: None) -> None:
    base = _plan("0.31.0", {})[2]
    # NEURON_QUANT, NEURON_SEQUENCE_PARALLEL, …: read only by TNXVllmModelLoader (model_loader.py@0.31.0-dlc),
    # which serves speculative decoding under vLLM only; option.speculative_draft_model is refused.
    rc, err, doc = _plan("0.31.0", {"NEURON_RT_VISIBLE_CORES": "0-7", "NEURON_RT_LOG_LEVEL": "INFO",
                                    "NEURON_COMPILATION_WORKER_COUNT": "4", "NEURON_QUANT": "true",
                                    "NEURON_SEQUENCE_PARALLEL": "true", "NEURON_MULTI_NODE": "true"})
    assert rc == 0, err
    assert doc["key"] == base["key"]  # type: ignore[index]


def test_neuron_cc_flags_from_the_environment(llama2_cache: None) -> None:
    base = _plan("0.30.0", {})[2]
    assert _call(base)["env"] == {"NEURON_CC_FLAGS": IMAGE_FLAGS}  # type: ignore[index]
    # The image's own value: the same graphs.
    assert _plan("0.30.0", {"NEURON_CC_FLAGS": IMAGE_FLAGS})[2]["key"] == base["key"]  # type: ignore[index]
    # Another value (a user's -e NEURON_CC_FLAGS=…) names other modules: keyed, and the worker compiles with it.
    rc, err, other = _plan("0.30.0", {"NEURON_CC_FLAGS": "--logfile /tmp/compile.log --enable-fast-loading"})
    assert rc == 0, err
    assert _call(other)["env"] == {"NEURON_CC_FLAGS": "--logfile /tmp/compile.log --enable-fast-loading"}
    assert other["key"] != base["key"]
    # The same through the option, for a spec written with flags.
    r = run_kiln("build", "meta-llama/Llama-2-7b-hf", "--target", "neuron", "--n-positions", "4096", "--batch-size",
                 "4", "--tp-degree", "8", *INSTANCE, "--consumer", "lmi-neuronx:0.30.0", "--option",
                 "rolling_batch=auto", "--option", "neuron_cc_flags=--logfile /tmp/compile.log --enable-fast-loading",
                 "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["key"] == other["key"]


def test_other_targets_report_neuron_variables_as_ignored(tmp_path: Path) -> None:
    from ...conftest import write_fake_model

    model = write_fake_model(tmp_path / "m")
    env = {"OPTION_MODEL_ID": str(model), "OPTION_N_POSITIONS": "64", "OPTION_KILN_TARGET": "torch-aoti"}
    base = run_kiln("key", "--from-env", env=env)
    other = run_kiln("key", "--from-env", "--explain", env=dict(env, NEURON_CC_FLAGS="-O3"))
    assert base.returncode == 0 and other.returncode == 0, base.stderr + other.stderr
    assert other.stdout.split()[0] == base.stdout.split()[0]
    assert "NEURON_CC_FLAGS=-O3" in other.stdout and "ignored" in other.stdout


# ---------------------------------------------------------------------------------------------------------------
# Inside an LMI NeuronX image: the consumer is the container (pytorch-inf2.Dockerfile writes
# "<release> inf2" to /opt/djl/bin/telemetry at every release 0.26.0 → 0.34.0). The file here is a stand-in.
# ---------------------------------------------------------------------------------------------------------------

def _in_image(tmp_path: Path, text: str) -> dict[str, str]:
    marker = tmp_path / "telemetry"
    marker.write_text(text)
    return {"KILN_LMI_TELEMETRY_FILE": str(marker)}


def test_inside_an_lmi_neuronx_image_the_consumer_is_detected(llama2_cache: None, tmp_path: Path) -> None:
    image = _in_image(tmp_path, "0.30.0 inf2\n")
    r = run_kiln("key", "--from-env", *INSTANCE, "--explain", "--json", env=dict(ROW_ENV, **image))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["inputs"]["spec"]["options"]["consumer"] == "lmi-neuronx:0.30.0"
    assert any("detected from" in n for n in doc["notes"]), doc["notes"]
    named = run_kiln("key", "--from-env", *INSTANCE, env=dict(ROW_ENV, OPTION_KILN_CONSUMER="lmi-neuronx:0.30.0"))
    assert named.returncode == 0 and named.stdout.split()[0] == doc["key"]
    # A spec written with flags in the container is for the container too; an explicit consumer wins.
    flags = ["meta-llama/Llama-2-7b-hf", "--target", "neuron", "--n-positions", "4096", "--batch-size", "4",
             "--tp-degree", "8", *INSTANCE]
    r = run_kiln("key", *flags, "--explain", "--json", env=image)
    assert r.returncode == 0 and json.loads(r.stdout)["inputs"]["spec"]["options"]["consumer"] == "lmi-neuronx:0.30.0"
    r = run_kiln("key", *flags, "--consumer", "lmi-neuronx:0.29.0", "--explain", "--json", env=image)
    assert r.returncode == 0 and json.loads(r.stdout)["inputs"]["spec"]["options"]["consumer"] == "lmi-neuronx:0.29.0"


def test_an_image_of_a_release_without_a_profile_is_named(llama2_cache: None, tmp_path: Path) -> None:
    r = run_kiln("key", "--from-env", *INSTANCE, env=dict(ROW_ENV, **_in_image(tmp_path, "0.25.0 inf2\n")))
    assert r.returncode == 2 and "0.25.0" in r.stderr and "lmi-neuronx:0.34.0" in r.stderr
    assert "Traceback" not in r.stderr
    # LMI's GPU image is no NeuronX consumer: the configuration must still name one.
    r = run_kiln("key", "--from-env", *INSTANCE, env=dict(ROW_ENV, **_in_image(tmp_path, "0.30.0 gpu\n")))
    assert r.returncode == 2 and "must name its consumer" in r.stderr


# ---------------------------------------------------------------------------------------------------------------
# The SDK in the key: what the image pins, and libneuronxla, which it pins only from 0.32.
# ---------------------------------------------------------------------------------------------------------------

def _toolchain(release: str, *args: str) -> tuple[dict, dict, str]:
    r = run_kiln("key", "--from-env", *INSTANCE, *args, "--explain", "--json",
                 env=dict(ROW_ENV, OPTION_KILN_CONSUMER=f"lmi-neuronx:{release}"))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    return doc["inputs"]["toolchain"], doc["toolchain_origin"], doc["key"]


def test_the_images_sdk_is_the_toolchain_libneuronxla_included(llama2_cache: None) -> None:
    chain, origin, _ = _toolchain("0.32.0")
    # pytorch-inf2.Dockerfile@0.32.0-dlc ARGs (SDK 2.21.1)
    assert chain["neuronx-cc"] == "2.16.372.0" and chain["transformers-neuronx"] == "0.13.380"
    assert chain["torch-neuronx"] == "2.1.2.2.4.0" and chain["libneuronxla"] == "2.1.714.0"
    assert origin["libneuronxla"] == "lmi-neuronx:0.32.0 image"
    chain, origin, key = _toolchain("0.30.0")
    # Unpinned by the 0.30 image: SDK 2.20.1's (aws-neuron-sdk n2-manifest.json), said as such.
    assert chain["libneuronxla"] == "2.0.4986.0" and "does not pin it" in origin["libneuronxla"]
    pinned_chain, pinned_origin, pinned_key = _toolchain("0.30.0", "--toolchain", "libneuronxla=2.0.5000.0")
    assert pinned_chain["libneuronxla"] == "2.0.5000.0" and pinned_origin["libneuronxla"] == "pinned"
    assert pinned_key != key


def test_compiler_flag_properties_are_appended_as_the_handler_appends_them(llama2_cache: None) -> None:
    """tnx_properties.py's field validators append to NEURON_CC_FLAGS in field order, with a leading space,
    whatever the value (v0.26.0 → 0.34.0-dlc); 0.26 has no enable_saturate_infinity."""
    base = _plan("0.29.0", {})[2]
    rc, err, doc = _plan("0.29.0", {"OPTION_NEURON_OPTIMIZE_LEVEL": "2", "OPTION_ENABLE_SATURATE_INFINITY": "false",
                                    "OPTION_ENABLE_MIXED_PRECISION_ACCUMULATION": "true"})
    assert rc == 0, err
    assert _call(doc)["env"]["NEURON_CC_FLAGS"] == \
        IMAGE_FLAGS + " -O2 --enable-mixed-precision-accumulation --enable-saturate-infinity"
    assert doc["key"] != base["key"]  # type: ignore[index]
    rc, err, doc = _plan("0.26.0", {"OPTION_ENABLE_SATURATE_INFINITY": "true", "OPTION_ROLLING_BATCH": "auto"})
    assert rc == 0, err
    assert _call(doc)["env"]["NEURON_CC_FLAGS"] == IMAGE_FLAGS
    rc, err, _ = _plan("0.29.0", {"OPTION_ENABLE_SATURATE_INFINITY": "maybe"})
    assert rc == 2 and "not a boolean" in err


def test_model_loader_tnx_is_the_loader_kiln_builds_for(llama2_cache: None) -> None:
    base = _plan("0.29.0", {})[2]
    rc, err, doc = _plan("0.29.0", {"OPTION_MODEL_LOADER": "tnx"})
    assert rc == 0, err
    assert doc["key"] == base["key"]  # type: ignore[index]  # TNXModelLoader is the default one there
    for other in ("optimum", "vllm", "nxdi"):
        rc, err, _ = _plan("0.29.0", {"OPTION_MODEL_LOADER": other})
        assert rc == 2 and "other graphs" in err, other
    # 0.31+ refuse a preloaded tnx model for vLLM outside speculative decoding (transformers_neuronx.py load_model).
    rc, err, _ = _plan("0.31.0", {"OPTION_MODEL_LOADER": "tnx", "OPTION_ROLLING_BATCH": "vllm"})
    assert rc == 2 and "speculative decoding" in err


def test_an_explicit_strategy_as_each_release_reads_it(llama2_cache: None) -> None:
    """ContinuousBatchingConfig: 0.26 for every rolling batch (no strategy property, ML@v0.26.0
    set_neuron_config); 0.28/0.29 for strategy CB above batch 1 (ML@v0.28.0 can_use_continuous_batching);
    0.27 and 0.30+ for strategy CB at any batch (ML@0.27.0-dlc set_neuron_config, ML@0.30.0-dlc)."""
    one = {"OPTION_MAX_ROLLING_BATCH_SIZE": "1", "OPTION_ROLLING_BATCH": "tnx",
           "OPTION_ROLLING_BATCH_STRATEGY": "continuous_batching"}
    for release, continuous in (("0.27.0", True), ("0.28.0", False), ("0.29.0", False), ("0.30.0", True),
                                ("0.34.0", True)):
        # 0.27 sends llama with rolling batch to optimum-neuron unless model_loader=tnx (H@0.27.0-dlc).
        rc, err, doc = _plan(release, dict(one, **({"OPTION_MODEL_LOADER": "tnx"} if release == "0.27.0" else {})))
        assert rc == 0, (release, err)
        config = _call(doc)["kwargs"]["neuron_config"]
        assert ("continuous_batching" in config) is continuous, (release, config)
    rc, err, _ = _plan("0.27.0", one)
    assert rc == 2 and "option.model_loader=tnx" in err
    rc, err, naive = _plan("0.26.0", {"OPTION_ROLLING_BATCH_STRATEGY": "naive_rolling_batch"})
    assert rc == 0, err
    assert "continuous_batching" in _call(naive)["kwargs"]["neuron_config"]
    assert naive["key"] == _plan("0.26.0", {})[2]["key"]  # type: ignore[index]


# ---------------------------------------------------------------------------------------------------------------
# What an LMI configuration leaves out, in the corners (a review of the first version found each).
# ---------------------------------------------------------------------------------------------------------------

def _kwargs(doc: dict) -> tuple[int, int]:
    kwargs = _call(doc)["kwargs"]
    return kwargs["tp_degree"], kwargs["batch_size"]


def test_vllm_without_a_batch_gets_the_recommenders_256(llama2_cache: None) -> None:
    """LmiConfigRecommender.setRollingBatchSize (v0.28.0 on): 256 for vllm, else 32; 0.30+ only where the
    heuristic leaves it unset (NeuronSmartDefaultUtils sets nothing when its estimate is 0)."""
    no_batch = {"OPTION_MAX_ROLLING_BATCH_SIZE": "", "OPTION_ROLLING_BATCH": "vllm", "OPTION_TENSOR_PARALLEL_DEGREE": "2"}
    rc, err, doc = _plan("0.29.0", no_batch)
    assert rc == 0, err
    assert _kwargs(doc) == (2, 256)  # type: ignore[arg-type]
    rc, err, doc = _plan("0.29.0", dict(no_batch, OPTION_ROLLING_BATCH="tnx"))
    assert rc == 0, err
    assert _kwargs(doc) == (2, 32)  # type: ignore[arg-type]
    # 0.32 at tp 2: (32 GB − 36.03 GB·1.02) < 0, concurrency 0, nothing set → 256 for vllm.
    rc, err, doc = _plan("0.32.0", no_batch)
    assert rc == 0, err
    assert _kwargs(doc) == (2, 256)  # type: ignore[arg-type]


def test_tensor_parallel_degree_variable_where_the_release_reads_it(llama2_cache: None) -> None:
    left_out = {"OPTION_TENSOR_PARALLEL_DEGREE": "", "OPTION_MAX_ROLLING_BATCH_SIZE": ""}
    # 0.29: setTensorParallelDegree reads TENSOR_PARALLEL_DEGREE for an absent property.
    rc, err, doc = _plan("0.29.0", dict(left_out, TENSOR_PARALLEL_DEGREE="2"))
    assert rc == 0, err
    assert _kwargs(doc)[0] == 2  # type: ignore[arg-type]
    # 0.32: the heuristic fills the property first, so the variable is never read (tp 4, batch 16 on 12 cores:
    # worked in test_smart_defaults.py).
    rc, err, plain = _plan("0.32.0", left_out)
    rc2, err2, with_var = _plan("0.32.0", dict(left_out, TENSOR_PARALLEL_DEGREE="2"))
    assert rc == 0 and rc2 == 0, err + err2
    assert _kwargs(plain) == _kwargs(with_var) == (4, 16)  # type: ignore[arg-type]
    assert plain["key"] == with_var["key"]  # type: ignore[index]


def test_internal_options_and_odd_values_are_errors_not_tracebacks(llama2_cache: None, tmp_path: Path) -> None:
    flags = ["meta-llama/Llama-2-7b-hf", "--target", "neuron", "--n-positions", "4096", "--tp-degree", "8",
             *INSTANCE, "--consumer", "lmi-neuronx:0.30.0", "--dry-run"]
    for option in ("neuron_env={bad", "neuron_env=[1]", 'neuron_env={"NEURON_CC_FLAGS": 3}', "lmi_unset=everything"):
        r = run_kiln("build", *flags, "--option", option)
        assert r.returncode == 2 and "Traceback" not in r.stderr and "do not pass it" in r.stderr, (option, r.stderr)
    rc, err, _ = _plan("0.31.0", {"NEURON_CONTEXT_LENGTH_ESTIMATE": "[0]"})
    assert rc == 2 and "NEURON_CONTEXT_LENGTH_ESTIMATE" in err
    rc, err, _ = _plan("0.30.0", {"NEURON_CC_FLAGS": "-O1"}, "--option", "neuron_cc_flags=-O3")
    assert rc == 2 and "disagree" in err


def test_a_model_without_max_position_embeddings_must_name_n_positions(tmp_path: Path) -> None:
    from ...conftest import write_fake_model

    gpt2 = write_fake_model(tmp_path / "gpt2", config={"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                                                      "n_positions": 1024, "n_embd": 64, "n_head": 4, "n_layer": 2})
    env = {"OPTION_MODEL_ID": str(gpt2), "OPTION_ENTRYPOINT": "djl_python.transformers_neuronx",
           "OPTION_TENSOR_PARALLEL_DEGREE": "2", "OPTION_MAX_ROLLING_BATCH_SIZE": "4",
           "OPTION_KILN_CONSUMER": "lmi-neuronx:0.32.0"}
    r = run_kiln("build", "--from-env", *INSTANCE, "--dry-run", env=env)
    assert r.returncode == 2 and "max_position_embeddings" in r.stderr and "Traceback" not in r.stderr
    r = run_kiln("build", "--from-env", *INSTANCE, "--dry-run", env=dict(env, OPTION_N_POSITIONS="512"))
    assert r.returncode == 0, r.stderr


def test_an_absurd_config_value_is_an_error(tmp_path: Path) -> None:
    from ...conftest import write_fake_model

    model = write_fake_model(tmp_path / "m", config={"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                     "hidden_size": 10**20, "num_attention_heads": 32,
                                                     "num_hidden_layers": 2, "max_position_embeddings": 4096})
    env = {"OPTION_MODEL_ID": str(model), "OPTION_ENTRYPOINT": "djl_python.transformers_neuronx",
           "OPTION_KILN_CONSUMER": "lmi-neuronx:0.32.0"}
    r = run_kiln("build", "--from-env", *INSTANCE, "--dry-run", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr


def test_flags_inside_the_image_say_their_defaults_are_kilns(llama2_cache: None, tmp_path: Path) -> None:
    image = _in_image(tmp_path, "0.32.0 inf2\n")
    r = run_kiln("key", "meta-llama/Llama-2-7b-hf", "--target", "neuron", *INSTANCE, "--explain", env=image)
    assert r.returncode == 0, r.stderr
    assert "not given: Kiln's defaults, not lmi-neuronx:0.32.0's" in r.stdout
    # A telemetry path that is no regular file (a FIFO, a device, a directory) is no image, and never blocks.
    r = run_kiln("key", "--from-env", *INSTANCE, env=dict(ROW_ENV, KILN_LMI_TELEMETRY_FILE=str(tmp_path)))
    assert r.returncode == 2 and "must name its consumer" in r.stderr
