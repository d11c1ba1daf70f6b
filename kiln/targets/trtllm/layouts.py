"""Deployment layouts of TensorRT-LLM engines (the mechanism: ``kiln.targets._layouts``).

``lmi``    the engine directory as LMI's TensorRT-LLM container (0.33+) loads it without
           compiling — config.json with build_config, rank{N}.engine, tokenizer files — plus a
           serving.properties matching the engine (engine=MPI, rolling_batch=trtllm, same TP
           degree and max batch size).
``triton`` a Triton model repository for the ``tensorrtllm`` backend (also what LMI <= 0.32
           recognises as prebuilt: a sub-directory with config.pbtxt and tokenizer_config.json):
           ``tensorrt_llm/config.pbtxt``, ``tensorrt_llm/1/<engine files>`` and the tokenizer
           files beside config.pbtxt.
"""

from __future__ import annotations

import posixpath
from typing import Any

from ...errors import SpecError
from ...manifests import FileEntry, IndexEntry, Manifest
from .._layouts import Layout, serving_properties
from .._plan import BUILD_LOG

__all__ = ["LAYOUTS", "plan_trtllm_layout"]

LAYOUTS = ("lmi", "triton")
_ENGINE_FILES = ("config.json",)


def _is_engine(path: str) -> bool:
    return path in _ENGINE_FILES or (path.startswith("rank") and path.endswith(".engine"))


def _lmi_props(entry: IndexEntry) -> dict[str, Any]:
    s = entry.spec
    q = s.get("quantization") or {}
    return {
        "engine": "MPI",
        "option.rolling_batch": "trtllm",
        "option.tensor_parallel_degree": s["tp_degree"],
        "option.max_rolling_batch_size": s["batch_size"],
        # max_seq_len is what the engine was built with (input + output); Kiln's parser reads it
        # back as n_positions, and LMI passes it on to trtllm-build's argument of that name.
        "option.max_seq_len": s["n_positions"],
        "option.max_input_len": s["n_positions"],
        "option.dtype": s["dtype"],
        "option.quantize": "smoothquant" if q.get("smoothquant_alpha") is not None else None,
        "option.smoothquant_alpha": q.get("smoothquant_alpha"),
        "option.smoothquant_per_token": q.get("per_token") if q.get("smoothquant_alpha") is not None else None,
        "option.smoothquant_per_channel": q.get("per_channel") if q.get("smoothquant_alpha") is not None else None,
    }


def _config_pbtxt(entry: IndexEntry, engine_dir: str) -> bytes:
    s = entry.spec
    params = {
        "gpt_model_type": "inflight_fused_batching",
        "gpt_model_path": engine_dir,
        "batch_scheduler_policy": "guaranteed_no_evict",
        "max_tokens_in_paged_kv_cache": str(s["n_positions"] * s["batch_size"]),
    }
    lines = [
        'name: "tensorrt_llm"',
        'backend: "tensorrtllm"',
        f"max_batch_size: {s['batch_size']}",
        "model_transaction_policy { decoupled: false }",
        'input [ { name: "input_ids" data_type: TYPE_INT32 dims: [ -1 ] },',
        '        { name: "input_lengths" data_type: TYPE_INT32 dims: [ 1 ] reshape: { shape: [ ] } },',
        '        { name: "request_output_len" data_type: TYPE_INT32 dims: [ 1 ] reshape: { shape: [ ] } } ]',
        'output [ { name: "output_ids" data_type: TYPE_INT32 dims: [ -1, -1 ] },',
        '         { name: "sequence_length" data_type: TYPE_INT32 dims: [ -1 ] } ]',
        "instance_group [ { count: 1 kind: KIND_CPU } ]",
    ]
    for k, v in params.items():
        lines.append(f'parameters: {{ key: "{k}" value: {{ string_value: "{v}" }} }}')
    return ("\n".join(lines) + "\n").encode()


def plan_trtllm_layout(layout: str, entry: IndexEntry, manifest: Manifest, container: str) -> Layout:
    files = [f for f in manifest.files if f.path != BUILD_LOG]
    if not any(f.path.endswith(".engine") for f in files):
        raise SpecError(
            f"artifact {entry.key[:12]} holds no TensorRT-LLM engine (is it a conversion stage?); "
            "build the engine on a GPU machine first."
        )
    if layout == "lmi":
        return Layout(files, {"serving.properties": serving_properties(_lmi_props(entry))},
                      {"OPTION_MODEL_ID": container})
    out, model = [], "tensorrt_llm"
    for f in files:
        where = f"{model}/1/{f.path}" if _is_engine(f.path) else f"{model}/{f.path}"
        out.append(FileEntry(where, f.digest, f.size))
    engine_dir = posixpath.join(container, model, "1")
    return Layout(out, {f"{model}/config.pbtxt": _config_pbtxt(entry, engine_dir)}, {"TRITON_MODEL_REPO": container})
