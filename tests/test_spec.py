from __future__ import annotations

from pathlib import Path

import pytest

from kiln._input import show
from kiln.errors import SpecError
from kiln.spec import (
    LIMITS,
    BuildSpec,
    Field,
    Quantization,
    build_key,
    canonical_json,
    key_inputs,
    normalize_dtype,
)
from kiln.core.specs import spec_from_fields


def fields(**kw: object) -> dict[str, Field]:
    out = {"target": Field("torch-aoti", "--target"), "model": Field("org/m", "MODEL")}
    out.update({k: Field(v, f"--{k}") for k, v in kw.items()})
    return out


def test_dtype_aliases_normalise() -> None:
    assert {normalize_dtype(x) for x in ("fp16", "float16", "FP16", "half")} == {"fp16"}
    assert {normalize_dtype(x) for x in ("bf16", "bfloat16")} == {"bf16"}
    assert {normalize_dtype(x) for x in ("fp32", "float32")} == {"fp32"}
    with pytest.raises(SpecError, match=r"dtype='int4'.*fp32, fp16, bf16"):
        normalize_dtype("int4", "dtype")


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("n_positions", "abc", r"--n_positions='abc' must be a positive integer"),
        ("n_positions", "0", r"at least 1"),
        ("batch_size", "-4", r"--batch_size='-4' must be a positive integer"),
        ("tp_degree", "2.5", r"--tp_degree='2.5'"),
        ("smoothquant_alpha", "1.5", r"outside \[0, 1\]"),
        ("smoothquant_alpha", "nan", r"outside \[0, 1\]"),
        ("smoothquant_alpha", "x", r"must be a number between 0 and 1"),
    ],
)
def test_bad_values_name_the_source_and_fix(name: str, value: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec_from_fields(fields(**{name: value}))


def test_per_token_without_smoothquant_is_an_error() -> None:
    with pytest.raises(SpecError, match="SmoothQuant is not enabled"):
        spec_from_fields(fields(per_token=True))


def test_missing_target_and_model() -> None:
    with pytest.raises(SpecError, match="no target given"):
        spec_from_fields({"model": Field("m", "MODEL")})
    with pytest.raises(SpecError, match="no model given"):
        spec_from_fields({"target": Field("trtllm", "--target")})


def test_alpha_written_two_ways_gives_one_key() -> None:
    a = spec_from_fields(fields(smoothquant_alpha="0.50", n_positions="128", dtype="fp16"))
    b = spec_from_fields(fields(smoothquant_alpha=".5", n_positions="128.0", dtype="float16"))
    assert a == b
    tc = {"torch": "2.13.0", "hardware": "cpu"}
    assert build_key(key_inputs(a, {"tree_digest": "sha256:" + "0" * 64}, tc)) == build_key(key_inputs(b, {"tree_digest": "sha256:" + "0" * 64}, tc))


def test_canonical_json_refuses_floats_and_sorts() -> None:
    assert canonical_json({"b": 1, "a": [True, None, "x"]}) == b'{"a":[true,null,"x"],"b":1}'
    with pytest.raises(TypeError, match="floats"):
        canonical_json({"alpha": 0.5})


BASE = BuildSpec("trtllm", "org/m", n_positions=2048, batch_size=4, tp_degree=2, dtype="fp16",
                 quant=Quantization(0.5, True, True, False))
TREE = "sha256:" + "a" * 64
TOOLCHAIN = {"tensorrt_llm": "0.12.0", "tensorrt": "10.3", "hardware": "cuda-sm90"}


@pytest.mark.parametrize(
    "change",
    [
        {"n_positions": 4096},
        {"batch_size": 8},
        {"tp_degree": 4},
        {"dtype": "bf16"},
        {"quant": Quantization(0.8, True, True, False)},
        {"quant": Quantization(0.5, False, True, False)},
        {"quant": Quantization(0.5, True, False, False)},
        {"quant": Quantization(0.5, True, True, True)},
        {"quant": Quantization()},
        {"target": "neuron"},
        {"options": (("max_num_tokens", "8192"),)},
    ],
)
def test_every_spec_field_changes_the_key(change: dict) -> None:
    base = build_key(key_inputs(BASE, {"tree_digest": TREE}, TOOLCHAIN))
    assert build_key(key_inputs(BASE.replace(**change), {"tree_digest": TREE}, TOOLCHAIN)) != base


def test_weights_and_toolchain_change_the_key_but_model_name_does_not() -> None:
    base = build_key(key_inputs(BASE, {"tree_digest": TREE}, TOOLCHAIN))
    assert build_key(key_inputs(BASE, {"tree_digest": "sha256:" + "b" * 64}, TOOLCHAIN)) != base
    for comp in TOOLCHAIN:
        changed = {**TOOLCHAIN, comp: TOOLCHAIN[comp] + ".1"}
        assert build_key(key_inputs(BASE, {"tree_digest": TREE}, changed)) != base
    # Same weights under another name or path: same engine, same key.
    assert build_key(key_inputs(BASE.replace(model="/elsewhere/copy"), {"tree_digest": TREE}, TOOLCHAIN)) == base


def test_non_key_options_are_excluded_when_the_target_says_so() -> None:
    with_instance = BASE.replace(options=(("instance_type", "ml.g5.12xlarge"),))
    only = frozenset({"max_num_tokens"})
    assert build_key(key_inputs(with_instance, {"tree_digest": TREE}, TOOLCHAIN, only)) == build_key(key_inputs(BASE, {"tree_digest": TREE}, TOOLCHAIN, only))


def test_spec_json_round_trip() -> None:
    assert BuildSpec.from_json(BASE.to_json()) == BASE


# --------------------------------------------------------------------------- bounds (issue 11)

HUGE = "1" + "0" * 5000  # past Python's 4300-digit int-conversion limit


@pytest.mark.parametrize("name", ["n_positions", "batch_size", "tp_degree"])
@pytest.mark.parametrize("value", [HUGE, "0" * 3 + HUGE, str(10**30), "1" * 4400 + ".0"])
def test_huge_integers_are_refused_naming_the_maximum(name: str, value: str) -> None:
    with pytest.raises(SpecError, match=rf"--{name}=.* is too large: at most {LIMITS[name]}; ") as info:
        spec_from_fields(fields(**{name: value}))
    assert len(str(info.value)) < 300 and "\n" not in str(info.value)  # the value is shown cut, not in full


@pytest.mark.parametrize("name", ["n_positions", "batch_size", "tp_degree"])
def test_each_limit_is_inclusive(name: str) -> None:
    assert getattr(spec_from_fields(fields(**{name: str(LIMITS[name])})), name) == LIMITS[name]
    with pytest.raises(SpecError, match=f"at most {LIMITS[name]}"):
        spec_from_fields(fields(**{name: str(LIMITS[name] + 1)}))


@pytest.mark.parametrize("value", ["٤٠٩٦", "４０９６", "0x100", "1e3", "4096.5", "-0", " ", "\x00", "4\n096"])
def test_only_ascii_digits_make_an_integer(value: str) -> None:
    with pytest.raises(SpecError, match="--n_positions=.* must be a positive integer"):
        spec_from_fields(fields(n_positions=value + "x" if not value.strip() else value))


def test_a_huge_alpha_string_is_out_of_range_not_a_crash() -> None:
    with pytest.raises(SpecError, match=r"outside \[0, 1\]"):
        spec_from_fields(fields(smoothquant_alpha=HUGE))


def test_show_never_prints_a_huge_value_in_full() -> None:
    assert show(10**5000) == "<an integer of about 5001 digits>"
    assert show("x" * 10_000).endswith("(10000 characters)") and len(show("x" * 10_000)) < 100
    assert show("a\nb") == "'a\\nb'"


# --------------------------------------------------------------------------- the Python API checks like the CLI

@pytest.mark.parametrize(
    "kw,message",
    [
        ({"batch_size": 0}, "batch_size=0 must be a positive integer (at least 1)."),
        ({"tp_degree": -2}, "tp_degree=-2 must be a positive integer (at least 1)."),
        ({"n_positions": "abc"}, "n_positions='abc' must be a positive integer, for example 4096."),
        ({"n_positions": 10**30}, "n_positions=1000000000000000000000000000000 is too large: at most 16777216; write a smaller value."),
        ({"n_positions": 10**5000}, "n_positions=<an integer of about 5001 digits> is too large: at most 16777216; write a smaller value."),
        ({"batch_size": True}, "batch_size=True must be a positive integer, for example 4096."),
        ({"dtype": "int4"}, "dtype='int4' is not a dtype Kiln builds for; write one of fp32, fp16, bf16 (aliases: float32, float16, bfloat16)."),
        ({"options": {"Bad-Name": "1"}}, "options: 'Bad-Name' is not a valid target option name (lowercase letters, digits, _)."),
        ({"options": [("a", "1"), ("a", "2")]}, "options: 'a' is given twice; give each target option once."),
        ({"quant": 0.5}, "quant=0.5 must be a kiln.Quantization, e.g. Quantization(smoothquant_alpha=0.5)."),
        ({"options": {"calib_samples": 10**5000}},
         "options: calib_samples=<an integer of about 5001 digits> is too large for a target option value."),
    ],
)
def test_build_spec_refuses_what_the_cli_refuses(kw: dict, message: str) -> None:
    with pytest.raises(SpecError) as info:
        BuildSpec("torch-aoti", "org/m", **kw)
    assert str(info.value) == message
    # The CLI's parser says the same, naming its flag instead of the field.
    name = next(iter(kw))
    if name in ("batch_size", "tp_degree", "n_positions", "dtype") and not isinstance(kw[name], bool):
        with pytest.raises(SpecError) as cli:
            spec_from_fields(fields(**{name: str(kw[name]) if isinstance(kw[name], int) and kw[name] < 10**100 else kw[name]}))
        assert str(cli.value).replace(f"--{name}=", f"{name}=").replace("'", "") == message.replace("'", "")


def test_build_spec_reads_values_as_the_cli_does() -> None:
    api = BuildSpec("torch-aoti", "org/m", n_positions="128", batch_size="2", dtype="float16", options={"b": 1, "a": "x"})
    cli = spec_from_fields(fields(n_positions="128", batch_size="2", dtype="float16", **{"option.b": "1", "option.a": "x"}))
    assert api == cli == BuildSpec("torch-aoti", "org/m", n_positions=128, batch_size=2, dtype="fp16",
                                   options=(("a", "x"), ("b", "1")))
    assert BuildSpec("torch-aoti", Path("/m"), n_positions=4096.0).model == "/m"


def test_quantization_checks_its_fields() -> None:
    with pytest.raises(SpecError, match=r"smoothquant_alpha=1.5 is outside \[0, 1\]"):
        Quantization(1.5)
    with pytest.raises(SpecError, match="per_token=True asks for SmoothQuant per-token scaling, but SmoothQuant is not enabled"):
        Quantization(per_token=True)
    assert Quantization("0.50", per_token="yes") == Quantization(0.5, per_token=True)


def test_spec_from_fields_takes_plain_values_and_refuses_unknown_names() -> None:
    spec = spec_from_fields({"target": "tensorrt-llm", "model": "org/m", "batch_size": 4})
    assert (spec.target, spec.batch_size) == ("trtllm", 4)
    with pytest.raises(SpecError, match="'n_position' is not a spec field; the fields are target, model, n_positions"):
        spec_from_fields({"target": "trtllm", "model": "org/m", "n_position": 4})
    with pytest.raises(SpecError, match="must be a Hub id"):
        spec_from_fields({"target": "trtllm", "model": 7})
    with pytest.raises(SpecError, match="target=.* is not a Kiln target"):
        spec_from_fields({"target": 10**5000, "model": "org/m"})


def test_a_source_with_control_characters_is_shown_on_one_line() -> None:
    with pytest.raises(SpecError) as info:
        spec_from_fields({**fields(), "option.a\nb": Field("1", "--option a\nb")})
    assert "\n" not in str(info.value) and "'--option a\\nb'" in str(info.value)


def test_minus_zero_alpha_is_the_same_engine_as_zero() -> None:
    a = spec_from_fields(fields(target="trtllm", smoothquant_alpha="-0"))
    b = spec_from_fields(fields(target="trtllm", smoothquant_alpha="0"))
    assert a == b and a.quant.to_json() == b.quant.to_json()


@pytest.mark.parametrize("name", ["smoothquant_alpha", "n_positions", "dtype", "option.device"])
def test_an_explicit_empty_value_is_an_error_naming_it(name: str) -> None:
    with pytest.raises(SpecError, match=f"--{name} is empty"):
        spec_from_fields(fields(**{name: " "}))
