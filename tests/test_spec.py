from __future__ import annotations

import pytest

from kiln.errors import SpecError
from kiln.spec import (
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
    assert build_key(key_inputs(a, "sha256:" + "0" * 64, tc)) == build_key(key_inputs(b, "sha256:" + "0" * 64, tc))


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
    base = build_key(key_inputs(BASE, TREE, TOOLCHAIN))
    assert build_key(key_inputs(BASE.replace(**change), TREE, TOOLCHAIN)) != base


def test_weights_and_toolchain_change_the_key_but_model_name_does_not() -> None:
    base = build_key(key_inputs(BASE, TREE, TOOLCHAIN))
    assert build_key(key_inputs(BASE, "sha256:" + "b" * 64, TOOLCHAIN)) != base
    for comp in TOOLCHAIN:
        changed = {**TOOLCHAIN, comp: TOOLCHAIN[comp] + ".1"}
        assert build_key(key_inputs(BASE, TREE, changed)) != base
    # Same weights under another name or path: same engine, same key.
    assert build_key(key_inputs(BASE.replace(model="/elsewhere/copy"), TREE, TOOLCHAIN)) == base


def test_non_key_options_are_excluded_when_the_target_says_so() -> None:
    with_instance = BASE.replace(options=(("instance_type", "ml.g5.12xlarge"),))
    only = frozenset({"max_num_tokens"})
    assert build_key(key_inputs(with_instance, TREE, TOOLCHAIN, only)) == build_key(key_inputs(BASE, TREE, TOOLCHAIN, only))


def test_spec_json_round_trip() -> None:
    assert BuildSpec.from_json(BASE.to_json()) == BASE
