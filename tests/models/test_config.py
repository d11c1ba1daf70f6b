"""config.json that is not what a Hugging Face model config is: one clear error naming the file,
the field and the fix, before any file of the model is hashed (nothing is written to the store)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import kiln
from kiln.errors import ModelError, ValidationError

from ..conftest import LLAMA_CONFIG, run_kiln, write_fake_model

FIX = "re-download the model, or fix config.json (a JSON object of the model's settings)."


def _resolve(model: Path, **kw: object) -> kiln.Resolution:
    return kiln.resolve(kiln.BuildSpec("torch-aoti", str(model), **kw), store=kiln.Store())


def _nothing_written() -> None:
    home = Path(os.environ["KILN_HOME"])
    assert not home.exists() or not any(p.is_file() for p in home.rglob("*")), sorted(home.rglob("*"))


@pytest.mark.parametrize(
    "text,holds",
    [("[1, 2]", "an array"), ('"llama"', "a string"), ("null", "null"), ("42", "a number"), ("true", "a boolean")],
)
def test_a_config_that_is_not_an_object(tmp_path: Path, text: str, holds: str) -> None:
    model = write_fake_model(tmp_path / "m")
    (model / "config.json").write_text(text)
    with pytest.raises(ModelError) as info:
        _resolve(model, n_positions=64)
    assert str(info.value) == (
        f"model config {model / 'config.json'} holds {holds}, not a JSON object; a config.json is an object such as "
        f'{{"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096, ...}}: {FIX}'
    )
    _nothing_written()


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"{not json", "Expecting property name"),
        (b"\xff\xfe garbage", "codec can't decode"),
        (b"[" * 100_000 + b"]" * 100_000, "RecursionError|recursion"),
        (b'{"max_position_embeddings": 1' + b"0" * 5000 + b"}", "Exceeds the limit"),
    ],
)
def test_a_config_that_is_not_json(tmp_path: Path, data: bytes, reason: str) -> None:
    model = write_fake_model(tmp_path / "m")
    (model / "config.json").write_bytes(data)
    with pytest.raises(ModelError, match=rf"model config {model / 'config.json'} is not valid JSON \(.*({reason})") as info:
        _resolve(model, n_positions=64)
    assert str(info.value).endswith(FIX) and len(str(info.value)) < 500


def _field_message(model: Path, what: str, example: str) -> str:
    return (f"{model / 'config.json'}: {what}; the model's config.json is damaged or not a Hugging Face model config: "
            f"fix the field (for example {example}) or re-download the model.")


@pytest.mark.parametrize(
    "change,what,example",
    [
        ({"max_position_embeddings": "abc"}, "max_position_embeddings='abc' is not a positive integer",
         '"max_position_embeddings": 4096'),
        ({"max_position_embeddings": -1}, "max_position_embeddings=-1 is not a positive integer",
         '"max_position_embeddings": 4096'),
        ({"max_position_embeddings": 10**40}, "max_position_embeddings=<an integer of about 41 digits> is larger than "
         "any model's (at most 2147483647)", '"max_position_embeddings": 4096'),
        ({"max_position_embeddings": True}, "max_position_embeddings=True is not a positive integer",
         '"max_position_embeddings": 4096'),
        ({"max_position_embeddings": 4096.5}, "max_position_embeddings=4096.5 is not a positive integer",
         '"max_position_embeddings": 4096'),
        ({"num_attention_heads": "x"}, "num_attention_heads='x' is not a positive integer", '"num_attention_heads": 32'),
        ({"num_attention_heads": 0}, "num_attention_heads=0 is not a positive integer", '"num_attention_heads": 32'),
        ({"num_attention_heads": 10**9}, "num_attention_heads=1000000000 is larger than any model's (at most 65536)",
         '"num_attention_heads": 32'),
        ({"num_key_value_heads": [4]}, "num_key_value_heads=[4] is not a positive integer", '"num_key_value_heads": 8'),
        ({"text_config": "abc"}, "text_config is a string ('abc'), not an object",
         '"text_config": {"num_attention_heads": 32, ...}'),
        ({"text_config": {"num_attention_heads": "x"}, "num_attention_heads": None},
         "num_attention_heads='x' is not a positive integer", '"num_attention_heads": 32'),
        ({"architectures": "LlamaForCausalLM"}, "architectures='LlamaForCausalLM' is not a list of class names",
         '"architectures": ["LlamaForCausalLM"]'),
        ({"architectures": [1]}, "architectures=[1] is not a list of class names", '"architectures": ["LlamaForCausalLM"]'),
        ({"rope_scaling": "linear"}, "rope_scaling is a string ('linear'), not an object",
         '"rope_scaling": {"rope_type": "linear", "factor": 2.0}'),
        ({"rope_scaling": {"rope_type": 7}}, "rope_scaling's rope_type=7 is not a name", '"rope_type": "linear"'),
    ],
)
@pytest.mark.parametrize("n_positions", [None, 64])
def test_a_bad_field_names_the_file_the_field_and_the_fix(tmp_path: Path, change: dict, what: str, example: str,
                                                          n_positions: int | None) -> None:
    config = {k: v for k, v in {**LLAMA_CONFIG, **change}.items() if v is not None}  # None: the field is absent
    model = write_fake_model(tmp_path / "m", config=config)
    with pytest.raises(ValidationError) as info:
        _resolve(model, n_positions=n_positions)
    assert str(info.value) == _field_message(model, what, example)
    _nothing_written()


def test_a_model_longer_than_kiln_builds_by_default_asks_for_n_positions(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "m", config={**LLAMA_CONFIG, "max_position_embeddings": 50_000_000})
    with pytest.raises(ValidationError, match=r"max_position_embeddings=50000000 is more than Kiln builds for by "
                                              r"default \(at most 16777216\); pass --n-positions"):
        _resolve(model)
    assert _resolve(model, n_positions=4096).spec.n_positions == 4096


def test_integral_floats_are_read_as_integers(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "m", config={**LLAMA_CONFIG, "max_position_embeddings": 2048.0})
    assert _resolve(model).spec.n_positions == 2048


def test_the_cli_prints_a_config_error_as_one_line(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "m", config={**LLAMA_CONFIG, "max_position_embeddings": "abc"})
    r = run_kiln("key", str(model), "--target", "torch-aoti")
    assert r.returncode == 2 and r.stderr == "kiln: error: " + _field_message(
        model, "max_position_embeddings='abc' is not a positive integer", '"max_position_embeddings": 4096') + "\n"


def test_a_config_or_model_file_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """Real subprocesses: a read (or a hash) of a FIFO would block forever waiting for a writer."""
    model = write_fake_model(tmp_path / "m")
    (model / "config.json").unlink()
    os.mkfifo(model / "config.json")
    r = run_kiln("key", str(model), "--target", "torch-aoti", "--n-positions", "64")
    assert r.returncode == 2 and r.stderr.startswith(  # refused by the listing, before config.json is read
        f"kiln: error: model file {model / 'config.json'} is a FIFO, not a regular file;"), r.stderr
    other = write_fake_model(tmp_path / "o")
    os.mkfifo(other / "tokenizer.model")
    r = run_kiln("key", str(other), "--target", "torch-aoti", "--n-positions", "64")
    assert r.returncode == 2 and r.stderr.startswith(
        f"kiln: error: model file {other / 'tokenizer.model'} is a FIFO, not a regular file"), r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_an_oversized_config_is_refused(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "m")
    with open(model / "config.json", "wb") as f:
        f.truncate((16 << 20) + 1)
    with pytest.raises(ModelError, match=r"is 16777217 bytes, more than the 16 MiB Kiln reads"):
        _resolve(model, n_positions=64)


def test_a_config_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "m")
    (model / "config.json").unlink()
    (model / "config.json").mkdir()
    with pytest.raises(ModelError, match="model config .*config.json is a directory, not a file"):
        _resolve(model, n_positions=64)
