"""The text-in, text-out Triton ensemble around the ``tensorrt_llm`` model (issue 15: clients send text, not ids).

``ensemble_files`` renders the rest of a Triton model repository beside the ``tensorrt_llm`` model that
:func:`.layouts.tensorrt_llm_pbtxt` renders: ``preprocessing`` (text -> ids), ``postprocessing`` (ids -> text), both
Kiln's own Python-backend models (``triton_models/``), and ``ensemble``, which chains the three. The model, tensor
and ensemble-tensor names are those of tensorrtllm_backend's ensemble
(``triton-inference-server/tensorrtllm_backend all_models/inflight_batcher_llm/ensemble/config.pbtxt@v0.19.0``, "ENS"
below), so a client written for that ensemble (text_input, max_tokens, stream -> text_output) works unchanged; only
what Kiln's models need is declared (no sampling, stop-word or multimodal inputs).

Decoupled (streaming), ``tensorrt_llm`` sends several responses per request and the ensemble scheduler runs
``postprocessing`` once per response, but only with inputs of the same iteration: a step's inputs must all have a
tensor with the iteration count of the one just produced (triton-inference-server/core
src/ensemble_scheduler/ensemble_scheduler.cc@0153fd6c ``EnsembleContext::GetNextSteps``), and preprocessing's
outputs exist for iteration 0 only. So, decoupled, postprocessing reads ``tensorrt_llm``'s outputs and nothing
else; each streamed response holds only new tokens (MIS@v0.19.0 L1390-1393; MIS is tensorrtllm_backend
inflight_batcher_llm/src/model_instance_state.cc). Not decoupled, one response holds
the prompt and then the generated tokens (exclude_input_in_output defaults to false: MIS@v0.19.0 L797-807), and
postprocessing is given the prompt length to skip it. A non-streaming request to the decoupled ensemble gets the
prompt back too unless the ``tensorrt_llm`` model sets exclude_input_in_output (MIS above): that is its config's
business, not this module's.
"""

from __future__ import annotations

from ...errors import SpecError

__all__ = ["ensemble_files"]

# (name, data type, dims, optional)
_Tensor = tuple[str, str, str, bool]

_PRE_INPUTS: list[_Tensor] = [("QUERY", "TYPE_STRING", "1", False), ("REQUEST_OUTPUT_LEN", "TYPE_INT32", "1", False)]
_PRE_OUTPUTS: list[_Tensor] = [
    ("INPUT_ID", "TYPE_INT32", "-1", False),
    ("REQUEST_INPUT_LEN", "TYPE_INT32", "1", False),
    ("REQUEST_OUTPUT_LEN", "TYPE_INT32", "1", False),  # [1]: what tensorrt_llm's request_output_len declares
    ("OUT_END_ID", "TYPE_INT32", "1", False),
    ("OUT_PAD_ID", "TYPE_INT32", "1", False),
]
_POST_INPUTS: list[_Tensor] = [
    ("TOKENS_BATCH", "TYPE_INT32", "-1, -1", False),  # [beams, tokens], as tensorrt_llm's output_ids
    ("SEQUENCE_LENGTH", "TYPE_INT32", "-1", False),  # [beams]
    ("REQUEST_INPUT_LEN", "TYPE_INT32", "1", True),  # Kiln's: prompt tokens to skip (given only when not decoupled)
]
_POST_OUTPUTS: list[_Tensor] = [("OUTPUT", "TYPE_STRING", "-1", False)]
_ENS_INPUTS: list[_Tensor] = [
    ("text_input", "TYPE_STRING", "1", False),  # ENS L32
    ("max_tokens", "TYPE_INT32", "1", False),  # ENS L43
    ("stream", "TYPE_BOOL", "1", True),  # ENS L168; tensorrt_llm refuses it true unless decoupled
]
_ENS_OUTPUTS: list[_Tensor] = [("text_output", "TYPE_STRING", "-1", False)]  # ENS L261

# Each step: (model, {model input: ensemble tensor}, {model output: ensemble tensor}); names as ENS L354-670.
_Step = tuple[str, dict[str, str], dict[str, str]]
_PRE_STEP: _Step = (
    "preprocessing",
    {"QUERY": "text_input", "REQUEST_OUTPUT_LEN": "max_tokens"},
    {"INPUT_ID": "_INPUT_ID", "REQUEST_INPUT_LEN": "_REQUEST_INPUT_LEN", "REQUEST_OUTPUT_LEN": "_REQUEST_OUTPUT_LEN",
     "OUT_END_ID": "_PREPROCESSOR_END_ID", "OUT_PAD_ID": "_PREPROCESSOR_PAD_ID"},
)
_TRTLLM_STEP: _Step = (
    "tensorrt_llm",
    {"input_ids": "_INPUT_ID", "input_lengths": "_REQUEST_INPUT_LEN", "request_output_len": "_REQUEST_OUTPUT_LEN",
     "end_id": "_PREPROCESSOR_END_ID", "pad_id": "_PREPROCESSOR_PAD_ID", "streaming": "stream"},
    {"output_ids": "_TOKENS_BATCH", "sequence_length": "_SEQUENCE_LENGTH"},
)


def _post_step(decoupled: bool) -> _Step:
    inputs = {"TOKENS_BATCH": "_TOKENS_BATCH", "SEQUENCE_LENGTH": "_SEQUENCE_LENGTH"}
    if not decoupled:
        # One response, prompt included; decoupled this would stall every response after the first (docstring).
        inputs["REQUEST_INPUT_LEN"] = "_REQUEST_INPUT_LEN"
    return ("postprocessing", inputs, {"OUTPUT": "text_output"})


def _tensors(kind: str, tensors: list[_Tensor]) -> str:
    rows = [f'  {{ name: "{n}" data_type: {t} dims: [ {d} ]{" optional: true" if opt else ""} }}'
            for n, t, d, opt in tensors]
    return f"{kind} [\n" + ",\n".join(rows) + "\n]"


def _string_param(key: str, value: str) -> str:
    if any(c in value for c in '"\\\n'):
        raise SpecError(f"cannot write {key}={value!r} into config.pbtxt")
    return f'parameters: {{ key: "{key}" value: {{ string_value: "{value}" }} }}'


def _python_model(name: str, *, batch_size: int, tokenizer_dir: str, inputs: list[_Tensor],
                  outputs: list[_Tensor]) -> bytes:
    lines = [
        f'name: "{name}"',
        'backend: "python"',
        f"max_batch_size: {batch_size}",
        "dynamic_batching { }",
        _tensors("input", inputs),
        _tensors("output", outputs),
        # Tokenising is CPU work; the GPU belongs to tensorrt_llm.
        "instance_group [ { count: 1 kind: KIND_CPU } ]",
        _string_param("tokenizer_dir", tokenizer_dir),
    ]
    return ("\n".join(lines) + "\n").encode()


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
    maps += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
    return f'    {{\n      model_name: "{model}"\n      model_version: -1\n' + "\n".join(maps) + "\n    }"


def _ensemble(batch_size: int, decoupled: bool) -> bytes:
    # No model_transaction_policy here: Triton treats an ensemble with a decoupled step as decoupled itself.
    steps = [_PRE_STEP, _TRTLLM_STEP, _post_step(decoupled)]
    lines = [
        'name: "ensemble"',
        'platform: "ensemble"',  # ENS L28
        f"max_batch_size: {batch_size}",
        _tensors("input", _ENS_INPUTS),
        _tensors("output", _ENS_OUTPUTS),
        "ensemble_scheduling {\n  step [\n" + ",\n".join(_step(*s) for s in steps) + "\n  ]\n}",
    ]
    return ("\n".join(lines) + "\n").encode()


_VERSION_README = b"""\
This directory is intentionally empty of models: Triton loads a model only from a numbered version directory, and
an ensemble (platform "ensemble", config.pbtxt one level up) has nothing to put in it, but the directory must exist
for Triton to find version 1. Written by Kiln.
"""


def _model_source(name: str) -> bytes:
    from importlib import resources  # only when an ensemble is written: it imports zipfile and tempfile

    return resources.files(__package__).joinpath("triton_models", name).read_bytes()


def ensemble_files(*, batch_size: int, tokenizer_dir: str, decoupled: bool) -> dict[str, bytes]:
    """The files (paths relative to the model repository) of preprocessing, postprocessing and ensemble.

    ``tokenizer_dir`` is where the Python models load the tokenizer inside the serving container; ``decoupled``
    must be the ``tensorrt_llm`` model's own setting (it decides what postprocessing is given: module docstring).
    """
    if batch_size < 1:
        raise SpecError(f"batch_size must be at least 1 for a Triton ensemble, got {batch_size}")
    return {
        "preprocessing/config.pbtxt": _python_model("preprocessing", batch_size=batch_size,
                                                    tokenizer_dir=tokenizer_dir, inputs=_PRE_INPUTS,
                                                    outputs=_PRE_OUTPUTS),
        "preprocessing/1/model.py": _model_source("preprocessing_model.py"),
        "postprocessing/config.pbtxt": _python_model("postprocessing", batch_size=batch_size,
                                                     tokenizer_dir=tokenizer_dir, inputs=_POST_INPUTS,
                                                     outputs=_POST_OUTPUTS),
        "postprocessing/1/model.py": _model_source("postprocessing_model.py"),
        "ensemble/config.pbtxt": _ensemble(batch_size, decoupled),
        "ensemble/1/README.md": _VERSION_README,
    }
