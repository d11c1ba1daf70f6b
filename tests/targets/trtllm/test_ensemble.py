"""The Triton ensemble (issue 15): its configs wire together, and its Python models turn text into ids and back.

The Python models run against ``_pb_utils``, a stand-in for ``triton_python_backend_utils``: Triton's real module
exists only inside a Triton server (its C++ stub provides it), so these tests supply the few names the models use
(Tensor, get_input_tensor_by_name, InferenceResponse, TritonError) with the same call shapes. The tokenizer is real
(tests/tiny_models.py), and the ``tensorrt_llm`` model config is the one Kiln's layout renders.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.errors import SpecError
from kiln.targets.trtllm.ensemble import ensemble_files
from kiln.targets.trtllm.layouts import tensorrt_llm_pbtxt
from tests.targets.trtllm.consumer_contract import TRITON_TRTLLM, ensemble_steps, parse_pbtxt, parse_pbtxt_header
from tests.tiny_models import make_tiny_model

BATCH = 4
TOKENIZER_DIR = "/opt/ml/model/tensorrt_llm"


# ----------------------------------------------------------------------------------------------- configs


def _io(config: dict[str, list[Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {t["name"][0]: t for t in config.get(kind, [])}


def _configs(decoupled: bool) -> dict[str, dict[str, list[Any]]]:
    files = ensemble_files(batch_size=BATCH, tokenizer_dir=TOKENIZER_DIR, decoupled=decoupled)
    out = {path.split("/")[0]: parse_pbtxt(data.decode()) for path, data in files.items() if path.endswith(".pbtxt")}
    out["tensorrt_llm"] = parse_pbtxt(tensorrt_llm_pbtxt("v0.19.0", batch_size=BATCH, engine_dir="/e",
                                                         tokenizer_dir=TOKENIZER_DIR, decoupled=decoupled).decode())
    return out


def _steps(ensemble: dict[str, list[Any]]) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    steps = ensemble["ensemble_scheduling"][0]["step"]
    return [(s["model_name"][0], {m["key"][0]: m["value"][0] for m in s.get("input_map", [])},
             {m["key"][0]: m["value"][0] for m in s.get("output_map", [])}) for s in steps]


def test_the_repository_holds_the_three_models_and_the_ensemble_version_directory() -> None:
    files = ensemble_files(batch_size=BATCH, tokenizer_dir=TOKENIZER_DIR, decoupled=True)
    assert set(files) == {"preprocessing/config.pbtxt", "preprocessing/1/model.py", "postprocessing/config.pbtxt",
                          "postprocessing/1/model.py", "ensemble/config.pbtxt", "ensemble/1/README.md"}
    assert b"version directory" in files["ensemble/1/README.md"]
    for model in ("preprocessing", "postprocessing"):
        source = files[f"{model}/1/model.py"].decode()
        compile(source, f"{model}/1/model.py", "exec")
        assert "class TritonPythonModel" in source


@pytest.mark.parametrize("decoupled", [False, True])
def test_headers_name_each_model_its_backend_and_the_batch(decoupled: bool) -> None:
    files = ensemble_files(batch_size=BATCH, tokenizer_dir=TOKENIZER_DIR, decoupled=decoupled)
    for model in ("preprocessing", "postprocessing"):
        text = files[f"{model}/config.pbtxt"].decode()
        assert parse_pbtxt_header(text) == {"name": model, "backend": "python", "platform": None,
                                            "max_batch_size": str(BATCH), "decoupled": None}
        params = parse_pbtxt(text)["parameters"]
        assert [(p["key"][0], p["value"][0]["string_value"][0]) for p in params] == [("tokenizer_dir", TOKENIZER_DIR)]
    ens = files["ensemble/config.pbtxt"].decode()
    assert parse_pbtxt_header(ens)["platform"] == "ensemble"
    assert parse_pbtxt_header(ens)["max_batch_size"] == str(BATCH)


@pytest.mark.parametrize("decoupled", [False, True])
def test_every_step_maps_declared_tensors_and_every_tensor_has_a_producer(decoupled: bool) -> None:
    configs = _configs(decoupled)
    ens = configs["ensemble"]
    assert ensemble_steps(_text(decoupled)) == list(TRITON_TRTLLM["v0.19.0"].ensemble_steps.value)
    ens_in, ens_out = _io(ens, "input"), _io(ens, "output")
    for name in TRITON_TRTLLM["v0.19.0"].ensemble_required_inputs.value:  # what a backend client sends
        assert name in ens_in and "optional" not in ens_in[name], name
    stream_in, streaming = TRITON_TRTLLM["v0.19.0"].ensemble_stream_input.value
    assert ens_in[stream_in]["optional"] == ["true"]
    assert ens_in["text_input"]["data_type"] == ["TYPE_STRING"] and ens_in["max_tokens"]["data_type"] == ["TYPE_INT32"]
    assert set(ens_out) == {"text_output"} and ens_out["text_output"]["data_type"] == ["TYPE_STRING"]

    # Where each ensemble tensor comes from: (data type, dims), as Triton's ensemble check compares them.
    available = {n: (t["data_type"][0], t["dims"]) for n, t in ens_in.items()}
    for model, inputs, outputs in _steps(ens):
        model_in, model_out = _io(configs[model], "input"), _io(configs[model], "output")
        required = {n for n, t in model_in.items() if t.get("optional") != ["true"]}
        assert required <= set(inputs), f"{model}: unmapped required inputs {required - set(inputs)}"
        for key, tensor in inputs.items():
            assert key in model_in, f"{model} declares no input {key}"
            assert tensor in available, f"{model}.{key} reads {tensor}, which nothing produced before it"
            assert available[tensor] == (model_in[key]["data_type"][0], model_in[key]["dims"]), (model, key)
        for key, tensor in outputs.items():
            assert key in model_out, f"{model} declares no output {key}"
            available[tensor] = (model_out[key]["data_type"][0], model_out[key]["dims"])
    assert _steps(ens)[1][1][streaming] == stream_in
    for name, t in ens_out.items():
        assert available[name][0] == t["data_type"][0]


def _text(decoupled: bool) -> str:
    return ensemble_files(batch_size=BATCH, tokenizer_dir=TOKENIZER_DIR, decoupled=decoupled)[
        "ensemble/config.pbtxt"].decode()


def test_decoupled_postprocessing_reads_only_what_each_streamed_response_carries() -> None:
    # Triton's ensemble runs a step only when all its inputs exist for the same response iteration; preprocessing's
    # outputs exist once, tensorrt_llm's once per streamed response.
    steps = {m: (i, o) for m, i, o in _steps(_configs(True)["ensemble"])}
    trtllm_outputs = set(steps["tensorrt_llm"][1].values())
    assert set(steps["postprocessing"][0].values()) <= trtllm_outputs
    # Not decoupled there is one response, holding the prompt: postprocessing is told how long it is.
    assert _steps(_configs(False)["ensemble"])[2][1]["REQUEST_INPUT_LEN"] == "_REQUEST_INPUT_LEN"


def test_a_tokenizer_dir_that_would_break_the_config_is_refused() -> None:
    with pytest.raises(SpecError, match="config.pbtxt"):
        ensemble_files(batch_size=BATCH, tokenizer_dir='/a"b', decoupled=True)
    with pytest.raises(SpecError, match="batch_size"):
        ensemble_files(batch_size=0, tokenizer_dir=TOKENIZER_DIR, decoupled=True)


# ----------------------------------------------------------------------------------------------- python models


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Response:
    def __init__(self, output_tensors: list[_Tensor] | None = None, error: Any = None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors or []}
        self.error = error


class _Error:
    def __init__(self, message: str) -> None:
        self.msg = message

    def message(self) -> str:
        return self.msg


def _stand_in_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor  # type: ignore[attr-defined]
    module.InferenceResponse = _Response  # type: ignore[attr-defined]
    module.TritonError = _Error  # type: ignore[attr-defined]
    module.get_input_tensor_by_name = lambda request, name: request.get(name)  # type: ignore[attr-defined]
    return module


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny"))


def _load(model: str, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The model.py Kiln writes for ``model``, imported as Triton would, and initialised from its config.pbtxt."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _stand_in_pb_utils())
    files = ensemble_files(batch_size=BATCH, tokenizer_dir=str(tokenizer_dir), decoupled=True)
    path = tokenizer_dir.parent / f"{model}_model.py"
    path.write_bytes(files[f"{model}/1/model.py"])
    spec = importlib.util.spec_from_file_location(f"kiln_test_{model}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    instance = module.TritonPythonModel()
    # Triton passes the model config as JSON with parameters as {key: {string_value: ...}}.
    params = {p["key"][0]: {"string_value": p["value"][0]["string_value"][0]}
              for p in parse_pbtxt(files[f"{model}/config.pbtxt"].decode())["parameters"]}
    instance.initialize({"model_config": json.dumps({"name": model, "parameters": params})})
    return instance


def _request(**arrays: np.ndarray) -> dict[str, _Tensor]:
    return {name: _Tensor(name, array) for name, array in arrays.items()}


def _one(model: Any, request: dict[str, _Tensor]) -> _Response:
    (response,) = model.execute([request])
    return response


@pytest.fixture()
def models(tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, Any]:
    from transformers import AutoTokenizer

    return (_load("preprocessing", tokenizer_dir, monkeypatch), _load("postprocessing", tokenizer_dir, monkeypatch),
            AutoTokenizer.from_pretrained(tokenizer_dir))


def test_preprocessing_tokenises_a_batch_and_gives_the_tokenizers_end_and_pad(models: tuple[Any, Any, Any]) -> None:
    pre, _, tok = models
    prompts = ["the cat sat", "a much longer prompt about the cat and the dog"]
    resp = _one(pre, _request(QUERY=np.array([[p.encode()] for p in prompts], dtype=np.object_),
                              REQUEST_OUTPUT_LEN=np.array([[5], [7]], dtype=np.int32)))
    assert resp.error is None
    want = [tok.encode(p) for p in prompts]
    lengths = resp.outputs["REQUEST_INPUT_LEN"]
    assert lengths.dtype == np.int32 and lengths.tolist() == [[len(w)] for w in want]
    ids = resp.outputs["INPUT_ID"]
    assert ids.dtype == np.int32 and ids.shape == (2, max(len(w) for w in want))
    assert [ids[i, : len(w)].tolist() for i, w in enumerate(want)] == want
    assert resp.outputs["REQUEST_OUTPUT_LEN"].tolist() == [[5], [7]]
    assert resp.outputs["OUT_END_ID"].tolist() == [[tok.eos_token_id]] * 2
    # The tiny tokenizer has no pad token: the end id stands in.
    assert tok.pad_token_id is None and resp.outputs["OUT_PAD_ID"].tolist() == [[tok.eos_token_id]] * 2


def test_preprocessing_refuses_a_bad_request_without_failing_the_others(models: tuple[Any, Any, Any]) -> None:
    pre, _, _ = models
    good = _request(QUERY=np.array([[b"the cat"]], dtype=np.object_), REQUEST_OUTPUT_LEN=np.array([[3]], np.int32))
    bad = _request(QUERY=np.array([[b"the cat"]], dtype=np.object_), REQUEST_OUTPUT_LEN=np.array([[0]], np.int32))
    first, second = pre.execute([good, bad])
    assert first.error is None and "max_tokens" in second.error.message()


def _trtllm(prompt_ids: list[int], generated: list[int], *, with_prompt: bool) -> dict[str, _Tensor]:
    """One tensorrt_llm response for one request, one beam: output_ids [1, 1, n] and sequence_length [1, 1]."""
    ids = (prompt_ids if with_prompt else []) + generated
    return _request(TOKENS_BATCH=np.array([[ids + [0, 0]]], dtype=np.int32),  # padded past sequence_length
                    SEQUENCE_LENGTH=np.array([[len(ids)]], dtype=np.int32))


def test_text_round_trips_through_both_models_with_the_prompt_echoed(models: tuple[Any, Any, Any]) -> None:
    pre, post, tok = models
    out = _one(pre, _request(QUERY=np.array([[b"the cat"]], dtype=np.object_),
                             REQUEST_OUTPUT_LEN=np.array([[8]], np.int32))).outputs
    prompt_ids = out["INPUT_ID"][0, : out["REQUEST_INPUT_LEN"][0, 0]].tolist()
    generated = tok.encode(" sat on the dog", add_special_tokens=False)
    # Not decoupled: the prompt comes back first and the ensemble passes its length on.
    request = _trtllm(prompt_ids, generated, with_prompt=True)
    request.update(_request(REQUEST_INPUT_LEN=out["REQUEST_INPUT_LEN"]))
    resp = _one(post, request)
    assert resp.error is None and resp.outputs["OUTPUT"].shape == (1, 1)
    assert resp.outputs["OUTPUT"][0, 0].decode() == " sat on the dog"
    # Without the length (decoupled: tensorrt_llm excludes the prompt or streams) everything returned is text.
    resp = _one(post, _trtllm(prompt_ids, generated, with_prompt=False))
    assert resp.outputs["OUTPUT"][0, 0].decode() == " sat on the dog"


def test_streamed_pieces_decoded_one_response_at_a_time_join_to_the_text(models: tuple[Any, Any, Any]) -> None:
    _, post, tok = models
    text = " the dog sat on the cat and the cat sat"
    generated = tok.encode(text, add_special_tokens=False)
    assert len(generated) > 3  # several responses, each holding only the tokens new since the last one
    pieces = [_one(post, _trtllm([], [t], with_prompt=False)).outputs["OUTPUT"][0, 0].decode() for t in generated]
    # A final streamed response may carry no new token.
    pieces.append(_one(post, _trtllm([], [], with_prompt=False)).outputs["OUTPUT"][0, 0].decode())
    assert pieces[-1] == "" and "".join(pieces) == text


def test_a_sentencepiece_style_tokenizer_keeps_the_space_each_piece_starts_with(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Llama/Mistral tokenizers mark a word's space with "▁" and drop it at the start of a decoded sequence:
    # decoding each streamed token alone would glue the words together.
    from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(tok_models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(["the cat sat on the dog", "a dog and a cat"] * 5,
                            trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "</s>"], show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(tmp_path / "sp" / "tok")
    post = _load("postprocessing", tmp_path / "sp" / "tok", monkeypatch)
    generated = fast.encode("the dog sat", add_special_tokens=False)
    whole = fast.decode(generated, skip_special_tokens=True)
    assert whole == "the dog sat" and len(generated) == 3
    assert "".join(fast.decode([t]) for t in generated) == "thedogsat"  # the loss this model must avoid
    pieces = [_one(post, _trtllm([], [t], with_prompt=False)).outputs["OUTPUT"][0, 0].decode() for t in generated]
    # Each piece keeps its own leading space (a continuation of the prompt starts with one too).
    assert pieces == [" the", " dog", " sat"]
