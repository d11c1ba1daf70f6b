"""LMI serving.properties / OPTION_* parsing: real formats, their quirks, one spec from each."""

from __future__ import annotations

import json

import os
from pathlib import Path

import pytest

from kiln.lmi import interpret, parse_properties_text, properties_from_env, read_serving_properties
from kiln.lmi._read import MAX_PROPERTIES_BYTES
from kiln.api import spec_from_sources
from kiln.errors import ConfigSourceError, SpecError
from kiln.spec import LIMITS, Field, Quantization

from ..conftest import run_kiln


def test_java_properties_syntax() -> None:
    text = (
        "# comment\n"
        "! also a comment\n"
        "   \n"
        "engine=Python\n"
        "option.model_id = org/model\n"
        "option.dtype:fp16\n"
        "option.tensor_parallel_degree 4\n"
        "option.n_positions=\\\n"
        "    2048\n"
        "option.max_rolling_batch_size=8   \n"
        "option.entryPoint=djl_python.transformers_neuronx\n"
        "option.weird\\=key=a\\tb\\u0041\n"
        "option.dtype=bf16\n"  # the last duplicate wins
        "key_only\n"
    )
    props = parse_properties_text(text)
    assert props["engine"].value == "Python"
    assert props["option.model_id"].value == "org/model"
    assert props["option.tensor_parallel_degree"].value == "4"
    assert props["option.n_positions"].value == "2048"
    assert props["option.max_rolling_batch_size"].value == "8"  # trailing blanks stripped
    assert props["option.weird=key"].value == "a\tbA"
    assert props["option.dtype"].value == "bf16"
    assert props["option.dtype"].source.endswith("serving.properties:13)")
    assert props["key_only"].value == ""
    assert "# comment" not in props


def test_env_mapping_follows_djl() -> None:
    env = {
        "OPTION_MODEL_ID": "org/a",
        "OPTION_TENSOR_PARALLEL_DEGREE": "8",
        "OPTION_ENTRYPOINT": "djl_python.transformers_neuronx",
        "OPTION_ENGINE": "Python",
        "OPTION_DTYPE": "",  # empty values are skipped
        "HF_MODEL_ID": "org/ignored-because-option-wins",
        "TENSOR_PARALLEL_DEGREE": "2",
        "PATH": "/usr/bin",
    }
    props = properties_from_env(env)
    assert props["option.model_id"].value == "org/a"
    assert props["option.tensor_parallel_degree"].source == "OPTION_TENSOR_PARALLEL_DEGREE"
    assert props["option.entryPoint"].value == "djl_python.transformers_neuronx"
    assert props["engine"].value == "Python"
    assert "option.dtype" not in props
    assert properties_from_env({"HF_MODEL_ID": "org/b", "SM_NUM_GPUS": "4"})["option.tensor_parallel_degree"].value == "4"


NEURON_ENV = {
    "HF_MODEL_ID": "meta-llama/Llama-2-7b-hf",
    "OPTION_ENTRYPOINT": "djl_python.transformers_neuronx",
    "OPTION_N_POSITIONS": "4096",
    "OPTION_TENSOR_PARALLEL_DEGREE": "8",
    "OPTION_MAX_ROLLING_BATCH_SIZE": "4",
    "OPTION_ROLLING_BATCH": "auto",
    "OPTION_DTYPE": "fp16",
    "OPTION_TRUST_REMOTE_CODE": "true",
    "OPTION_KILN_CONSUMER": "lmi-neuronx:0.29.0",
}
NEURON_PROPS = """\
engine=Python
option.kiln_consumer=lmi-neuronx:0.29.0
option.model_id=meta-llama/Llama-2-7b-hf
option.entryPoint=djl_python.transformers_neuronx
option.n_positions=4096
option.tensor_parallel_degree=8
option.max_rolling_batch_size=4
option.rolling_batch=auto
option.dtype=fp16
option.trust_remote_code=true
"""


def test_three_sources_one_spec(tmp_path: Path) -> None:
    props_file = tmp_path / "serving.properties"
    props_file.write_text(NEURON_PROPS)
    from_env = spec_from_sources({}, from_env=True, env=NEURON_ENV)
    from_file = spec_from_sources({}, serving_properties=props_file, env={})
    flags = {
        "model": Field("meta-llama/Llama-2-7b-hf", "MODEL"),
        "target": Field("neuron", "--target"),
        "n_positions": Field("4096", "--n-positions"),
        "tp_degree": Field("8", "--tp-degree"),
        "batch_size": Field("4", "--batch-size"),
        "dtype": Field("float16", "--dtype"),
        "option.consumer": Field("lmi-neuronx:0.29.0", "--consumer"),
        "option.rolling_batch": Field("auto", "--option rolling_batch"),
    }
    from_flags = spec_from_sources(flags)
    # LMI's option.batch_size rides along (default 1) for the consumer to choose by its rolling batch.
    assert from_env.spec.option("static_batch_size") == from_file.spec.option("static_batch_size") == "1"
    lmi = [x.spec.replace(options=tuple(o for o in x.spec.options if o[0] != "static_batch_size"))
           for x in (from_env, from_file)]
    assert lmi[0] == lmi[1] == from_flags.spec
    assert from_env.spec.target == "neuron" and from_env.spec.batch_size == 4
    assert from_env.spec.option("consumer") == "lmi-neuronx:0.29.0" and from_env.spec.option("rolling_batch") == "auto"
    ignored = {src.split(" ")[0] for src, _ in from_file.ignored}
    assert {"engine", "option.trust_remote_code", "option.entryPoint"} <= ignored
    assert "option.rolling_batch" not in ignored  # it decides how LMI NeuronX batches: keyed


def test_an_lmi_neuron_configuration_must_name_its_consumer(tmp_path: Path) -> None:
    env = {k: v for k, v in NEURON_ENV.items() if k != "OPTION_KILN_CONSUMER"}
    # The choices are the consumers that read LMI configuration (not the plain library).
    with pytest.raises(SpecError, match=r"must name its consumer.*lmi-neuronx:0\.29\.0.*lmi-neuronx:0\.34\.0\.$") as e:
        spec_from_sources({}, from_env=True, env=env)
    assert "transformers-neuronx" not in str(e.value).split("one of", 1)[1]


def test_file_beats_env_and_flags_beat_both(tmp_path: Path) -> None:
    props_file = tmp_path / "serving.properties"
    props_file.write_text(NEURON_PROPS.replace("option.n_positions=4096", "option.n_positions=2048"))
    merged = spec_from_sources({}, from_env=True, env=NEURON_ENV, serving_properties=props_file)
    assert merged.spec.n_positions == 2048
    flagged = spec_from_sources({"n_positions": Field("1024", "--n-positions")}, from_env=True, env=NEURON_ENV)
    assert flagged.spec.n_positions == 1024


def test_trtllm_smoothquant_from_properties() -> None:
    props = parse_properties_text(
        "engine=MPI\noption.model_id=/opt/ml/model\noption.rolling_batch=trtllm\n"
        "option.quantize=smoothquant\noption.smoothquant_per_token=True\noption.smoothquant_per_channel=TRUE\n"
        "option.max_input_len=1024\noption.max_output_len=1024\noption.max_rolling_batch_size=16\n"
        "option.tensor_parallel_degree=4\n"
    )
    cfg = interpret(props)
    from kiln.api import spec_from_fields

    spec = spec_from_fields(cfg.fields)
    assert spec.target == "trtllm"
    assert spec.quant == Quantization(0.8, True, True, False)  # LMI's default alpha is 0.8
    # The lengths go to the target as written: what they mean is the consumer release's (kiln.targets.trtllm.rules).
    assert json.loads(str(spec.option("lmi_lengths"))) == {"max_input_len": 1024, "max_output_len": 1024}
    assert spec.n_positions is None and spec.batch_size == 16 and spec.tp_degree == 4
    assert any("0.8" in n for n in cfg.notes)
    from kiln.targets.trtllm.consumers import get_consumer
    from kiln.targets.trtllm.rules import lmi_n_positions

    seen = {c: lmi_n_positions(spec, get_consumer(c), {})[0].n_positions for c in ("lmi-trtllm:0.29.0", "lmi-trtllm:0.30.0")}
    assert seen == {"lmi-trtllm:0.29.0": 2048, "lmi-trtllm:0.30.0": 1024}  # 0.30: max_output_len is max_seq_len


def test_rolling_batch_disabled_uses_batch_size() -> None:
    props = parse_properties_text(
        "option.model_id=m\noption.rolling_batch=disable\noption.batch_size=2\n"
        "option.max_rolling_batch_size=64\noption.entryPoint=djl_python.transformers_neuronx\n"
    )
    from kiln.api import spec_from_fields

    assert spec_from_fields(interpret(props).fields).batch_size == 2


@pytest.mark.parametrize(
    "text,message",
    [
        ("option.model_id=m\noption.rolling_batch=tnx\noption.tensor_parallel_degree=max\n",
         r"option.tensor_parallel_degree \(serving.properties:3\)=max .* write the number"),
        ("option.model_id=m\noption.rolling_batch=vllm\n", r"option.rolling_batch .*='vllm' selects a JIT backend"),
        ("option.model_id=m\noption.rolling_batch=trtllm\noption.quantize=awq\n", r"option.quantize .*='awq'"),
        ("option.model_id=m\noption.rolling_batch=trtllm\noption.smoothquant_alpha=0.5\n", r"option.quantize is not smoothquant"),
        ("option.model_id=m\noption.rolling_batch=trtllm\noption.dtype=int8\n", r"option.dtype .*=int8"),
    ],
)
def test_values_kiln_cannot_honour(text: str, message: str) -> None:
    with pytest.raises(ConfigSourceError, match=message):
        interpret(parse_properties_text(text))


def test_tp_max_resolves_with_instance_type(tmp_path: Path) -> None:
    p = tmp_path / "serving.properties"
    p.write_text("option.model_id=m\noption.rolling_batch=tnx\noption.tensor_parallel_degree=max\n"
                 "option.kiln_consumer=lmi-neuronx:0.29.0\n")
    src = spec_from_sources({"option.instance_type": Field("ml.inf2.24xlarge", "--instance-type")}, serving_properties=p, env={})
    assert src.spec.tp_degree == 12
    assert any("max resolved to 12" in n for n in src.notes)


def test_bad_number_in_env_names_the_variable() -> None:
    env = dict(NEURON_ENV, OPTION_N_POSITIONS="4k")
    with pytest.raises(SpecError, match=r"OPTION_N_POSITIONS='4k' must be a positive integer"):
        spec_from_sources({}, from_env=True, env=env)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigSourceError, match="does not exist"):
        read_serving_properties(tmp_path / "nope.properties")


def test_latin1_file_is_read(tmp_path: Path) -> None:
    p = tmp_path / "serving.properties"
    p.write_bytes("# caf\xe9\noption.model_id=m\n".encode("latin-1"))
    assert read_serving_properties(p)["option.model_id"].value == "m"


def test_target_aliases_select_the_same_lmi_rules() -> None:
    env = {"OPTION_MODEL_ID": "m", "OPTION_MAX_INPUT_LEN": "2048", "OPTION_MAX_OUTPUT_LEN": "2048", "OPTION_MAX_NUM_TOKENS": "8192",
           "OPTION_KILN_CONSUMER": "lmi-trtllm:0.29.0"}
    specs = {alias: spec_from_sources({"target": Field(alias, "--target")}, from_env=True, env=env).spec
             for alias in ("trtllm", "tensorrt-llm", "TRTLLM")}
    assert len(set(specs.values())) == 1
    assert ("max_num_tokens", "8192") in specs["trtllm"].options and specs["trtllm"].option("lmi_lengths")


# --------------------------------------------------------------------------- hostile input (issue 11)

HUGE = "1" + "0" * 5000  # past Python's 4300-digit int-conversion limit
TRT_ENV = {"OPTION_MODEL_ID": "m", "OPTION_ROLLING_BATCH": "trtllm"}


@pytest.mark.parametrize(
    "variable,shown",
    [
        ("OPTION_N_POSITIONS", "OPTION_N_POSITIONS"),
        ("OPTION_TENSOR_PARALLEL_DEGREE", "OPTION_TENSOR_PARALLEL_DEGREE"),
        ("OPTION_MAX_ROLLING_BATCH_SIZE", "OPTION_MAX_ROLLING_BATCH_SIZE"),
        ("OPTION_MAX_INPUT_LEN", "OPTION_MAX_INPUT_LEN"),
        ("OPTION_MAX_SEQ_LEN", "OPTION_MAX_SEQ_LEN"),
        ("SM_NUM_GPUS", "SM_NUM_GPUS"),
    ],
)
@pytest.mark.parametrize("value", [HUGE, str(10**30)])
def test_huge_integers_in_env_are_refused_naming_the_variable(variable: str, shown: str, value: str) -> None:
    with pytest.raises(SpecError, match=rf"{shown}=.* is too large: at most \d+; write a smaller value") as info:
        spec_from_sources({}, from_env=True, env={**TRT_ENV, variable: value})
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_input_plus_output_len_beyond_the_limit_names_both() -> None:
    from kiln.errors import ValidationError
    from kiln.targets.trtllm.consumers import get_consumer
    from kiln.targets.trtllm.rules import lmi_n_positions

    env = {**TRT_ENV, "OPTION_MAX_INPUT_LEN": str(LIMITS["n_positions"]), "OPTION_MAX_OUTPUT_LEN": "1",
           "OPTION_KILN_CONSUMER": "lmi-trtllm:0.29.0"}
    spec = spec_from_sources({}, from_env=True, env=env).spec
    with pytest.raises(ValidationError, match=r"option.max_input_len \d+ \+ option.max_output_len 1=16777217 is too large"):
        lmi_n_positions(spec, get_consumer("lmi-trtllm:0.29.0"), {})


def test_huge_integer_in_a_properties_file_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "serving.properties"
    p.write_text(f"option.model_id=m\noption.rolling_batch=trtllm\noption.max_rolling_batch_size={HUGE}\n")
    with pytest.raises(SpecError, match=r"option.max_rolling_batch_size \(serving.properties:3\)=.* is too large: at most 65536"):
        spec_from_sources({}, serving_properties=p, env={})


@pytest.mark.parametrize("path,kind", [("/dev/zero", "a device"), ("/dev/null", "a device")])
def test_a_device_is_refused_not_read(path: str, kind: str) -> None:
    with pytest.raises(ConfigSourceError, match=f"serving.properties file {path} is {kind}, not a regular file; pass the path"):
        read_serving_properties(path)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigSourceError, match="is a directory, not a file"):
        read_serving_properties(tmp_path)


def test_a_file_over_one_mib_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "serving.properties"
    p.write_bytes(b"option.model_id=" + b"m" * MAX_PROPERTIES_BYTES + b"\n")
    with pytest.raises(ConfigSourceError, match=r"is 1048593 bytes, more than the 1 MiB Kiln reads"):
        read_serving_properties(p)
    p.write_bytes(b"option.model_id=m\n" + b"#" * (MAX_PROPERTIES_BYTES - 18))  # exactly 1 MiB: read
    assert read_serving_properties(p)["option.model_id"].value == "m"


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    """A real subprocess: if opening the FIFO blocked, the run would hang (run_kiln's timeout
    is only a guard against a hung suite, never an assertion)."""
    fifo = tmp_path / "serving.properties"
    os.mkfifo(fifo)
    r = run_kiln("key", "--serving-properties", str(fifo))
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"kiln: error: serving.properties file {fifo} is a FIFO, not a regular file; pass the path of an " \
                       "LMI serving.properties file (a few lines of option.NAME=VALUE).\n"


def test_escapes_that_make_control_characters_stay_escaped_in_messages() -> None:
    props = parse_properties_text("option.n_positions\\u000a=abc\noption.n_positions=4k\n")
    assert props["option.n_positions\n"].source == "'option.n_positions\\n' (serving.properties:1)"
    env = properties_from_env({"OPTION_A\tB": "1"})
    assert env["option.A\tB"].source == "'OPTION_A\\tB'"


def test_a_path_with_a_nul_byte_is_refused() -> None:
    with pytest.raises(ConfigSourceError, match="holds a NUL byte"):
        read_serving_properties("serving\x00.properties")


def test_properties_lines_end_only_where_java_ends_them() -> None:
    """java.util.Properties ends lines at \\n, \\r and \\r\\n only: a form feed or U+2028 inside a
    line does not start a new property (str.splitlines() would read `max_rolling_batch_size=4`)."""
    props = parse_properties_text("option.n_positions=64\fmax_rolling_batch_size=4\nb=2\r\nc=3\rd=4\u2028e=5\n")
    assert "max_rolling_batch_size" not in props and "e" not in props
    assert props["option.n_positions"].value == "64\fmax_rolling_batch_size=4"
    assert {k: p.value for k, p in props.items() if k in "bcd"} == {"b": "2", "c": "3", "d": "4\u2028e=5"}


@pytest.mark.parametrize("line", ["option.n_positions=", "option.dtype = ", "option.smoothquant_alpha:"])
def test_an_empty_property_is_an_error_not_the_default(line: str) -> None:
    props = parse_properties_text(f"option.rolling_batch=trtllm\n{line}\n")
    with pytest.raises(ConfigSourceError, match="is empty"):
        interpret(props)


@pytest.mark.parametrize("prop", ["OPTION_FUSE_QKV", "OPTION_ON_DEVICE_EMBEDDING", "OPTION_SPECULATIVE_DRAFT_MODEL"])
def test_a_graph_shaping_neuron_property_is_refused_never_ignored(prop: str) -> None:
    with pytest.raises(ConfigSourceError, match=f"{prop}=.*changes the graphs neuron compiles"):
        spec_from_sources({}, from_env=True, env=dict(NEURON_ENV, **{prop: "true"}))


@pytest.mark.parametrize("prop", ["OPTION_MODEL_LOADER", "OPTION_ENABLE_SATURATE_INFINITY",
                                  "OPTION_ENABLE_MIXED_PRECISION_ACCUMULATION"])
def test_graph_shaping_neuron_properties_kiln_builds_reach_the_target(prop: str) -> None:
    """Read into the target's options (keyed or refused there, per release), never reported as ignored."""
    src = spec_from_sources({}, from_env=True, env=dict(NEURON_ENV, **{prop: "tnx" if "LOADER" in prop else "true"}))
    assert prop not in {s for s, _ in src.ignored}
    name = {"OPTION_MODEL_LOADER": "model_loader", "OPTION_ENABLE_SATURATE_INFINITY": "saturate_infinity",
            "OPTION_ENABLE_MIXED_PRECISION_ACCUMULATION": "mixed_precision_accumulation"}[prop]
    assert src.spec.option(name) is not None


def test_gpu_image_fallback_variables_do_not_shape_a_neuron_spec() -> None:
    env = {k: v for k, v in NEURON_ENV.items() if k not in ("OPTION_TENSOR_PARALLEL_DEGREE", "OPTION_MAX_ROLLING_BATCH_SIZE")}
    src = spec_from_sources({}, from_env=True, env=dict(env, SM_NUM_GPUS="4", MAX_BATCH_SIZE="16"))
    assert src.spec.tp_degree == 1 and src.spec.batch_size != 16
    assert {"SM_NUM_GPUS", "MAX_BATCH_SIZE"} <= {s for s, _ in src.ignored}


@pytest.mark.parametrize("var, value, message", [("OPTION_DTYPE", "float16", "not a dtype neuron's LMI handler accepts"),
                                                 ("OPTION_DTYPE", "half", "write one of fp32, fp16, bf16"),
                                                 ("OPTION_TENSOR_PARALLEL_DEGREE", "0", "at least 1"),
                                                 ("OPTION_TENSOR_PARALLEL_DEGREE", "-1", "at least 1")])
def test_lmi_neuronx_value_rules(var: str, value: str, message: str) -> None:
    with pytest.raises(ConfigSourceError, match=message):
        spec_from_sources({}, from_env=True, env=dict(NEURON_ENV, **{var: value}))
