"""Deployment layouts of TensorRT-LLM engines, per consumer release (the mechanism: ``kiln.targets._layouts``).

The artifact's consumer (its keyed ``consumer`` option, :mod:`.consumers`) decides the layout; citations are
those of ``docs/research/trtllm-consumers.md``:

``lmi``    for ``lmi-trtllm`` releases.
           0.33 and 0.35+ (``lmi-async``): the engine directory at the root (config.json with build_config:
           LU@0.33.0-dlc L98-103 skips compiling) and a serving.properties for the async LLM-API service, as LMI's
           own CI configures it (PREP@0.35.0-dlc L1074-1085): option.entryPoint=djl_python.lmi_trtllm.trtllm_async_service,
           option.async_mode=true (the recommender never sets it for an engine directory, and without it the sync
           engine receives a coroutine: "Invalid output type"), option.rolling_batch=disable, no engine=MPI; plus the
           engine's tp (the LLM API refuses another), batch, max_seq_len and the attention window.
           0.28-0.32 and 0.34 (``lmi-pbtxt``): what their check recognises, a sub-directory holding config.pbtxt and
           tokenizer_config.json (LU@0.32.0-dlc L93-109): ``tensorrt_llm/{config.pbtxt, tokenizer files}`` with the
           engines in ``tensorrt_llm/1/`` and gpt_model_path the container path (TUT@0.32.0-dlc L238-292), and the
           documented properties: engine=Python, option.mpi_mode=true, option.rolling_batch=trtllm.
``triton-ensemble`` the same plus preprocessing, postprocessing and ensemble models (Kiln's own Python models,
           :mod:`.ensemble`), so clients send text (``text_input``, ``max_tokens``, ``stream``) and get text back.
``triton`` for ``triton-trtllm`` releases: a Triton model repository with the ``tensorrt_llm`` model, its
           config.pbtxt carrying every parameter the backend release reads without a default (MIS), decoupled
           (streaming; a request batch above one needs it too: utils.cc@v0.19.0 L900-907).

An engine whose recorded tensorrt_llm / tensorrt differ from the consumer's image is refused, naming both:
nothing downstream checks (the backend never reads the engine's version; TensorRT refuses the plan at load).
"""

from __future__ import annotations

import posixpath
from typing import Any

from ...errors import SpecError
from ...manifests import FileEntry, IndexEntry, Manifest
from .._layouts import Layout, serving_properties
from .._plan import BUILD_LOG
from .config import TRT_DTYPES
from .consumers import DEFAULT_CONSUMER, TrtllmConsumer, get_consumer, version_tuple
from .ensemble import ensemble_files

__all__ = ["LAYOUTS", "plan_trtllm_layout", "tensorrt_llm_pbtxt", "ASYNC_ENTRY_POINT"]

LAYOUTS = ("lmi", "triton", "triton-ensemble")
ASYNC_ENTRY_POINT = "djl_python.lmi_trtllm.trtllm_async_service"  # PM@0.35.0-dlc L186-187
_ENGINE_FILES = ("config.json",)
_MODEL = "tensorrt_llm"  # the model name LMI's pbtxt check and the backend's ensemble expect


def _is_engine(path: str) -> bool:
    return path in _ENGINE_FILES or (path.startswith("rank") and path.endswith(".engine"))


def _consumer(entry: IndexEntry) -> TrtllmConsumer:
    return get_consumer(str((entry.spec.get("options") or {}).get("consumer") or DEFAULT_CONSUMER))


def _check_toolchain(entry: IndexEntry, consumer: TrtllmConsumer) -> None:
    differ = [f"{name} {entry.toolchain.get(name, 'unrecorded')} (the consumer ships {want})"
              for name, want in consumer.toolchain.items() if entry.toolchain.get(name) != want]
    if differ:
        raise SpecError(f"artifact {entry.key[:12]} was built with {', '.join(differ)}; {consumer.ref} cannot load it "
                        "(a TensorRT engine loads only on the TensorRT it was built with): rebuild with --consumer "
                        f"{consumer.ref}.")


def _quant_props(q: dict[str, Any]) -> dict[str, Any]:
    """LMI's own quantization properties, so the properties read back to the same Kiln key (the prebuilt engine's
    handler does not read them: its quantization is in the engine)."""
    sq = q.get("smoothquant_alpha") is not None
    return {
        "option.quantize": "smoothquant" if sq else None,
        "option.smoothquant_alpha": q.get("smoothquant_alpha"),
        "option.smoothquant_per_token": q.get("per_token") if sq else None,
        "option.smoothquant_per_channel": q.get("per_channel") if sq else None,
        "option.int8_kv_cache": True if q.get("int8_kv_cache") else None,
    }


def _lmi_async_props(entry: IndexEntry, consumer: TrtllmConsumer) -> dict[str, Any]:
    s, options = entry.spec, entry.spec.get("options") or {}
    window = options.get("attention_window")
    return {
        "option.entryPoint": ASYNC_ENTRY_POINT,
        "option.async_mode": True,
        "option.rolling_batch": "disable",
        "option.tensor_parallel_degree": s["tp_degree"],
        "option.max_rolling_batch_size": s["batch_size"],  # TP: LLM(max_batch_size=max_rolling_batch_size)
        "option.max_seq_len": s["n_positions"],
        "option.max_input_len": s["n_positions"],  # TP's default is 1024: a prompt may take the whole sequence
        "option.max_num_tokens": options.get("max_num_tokens"),
        # TensorRT-LLM's own dtype name, the engine's pretrained_config.dtype (LLM(dtype=...)).
        "option.dtype": TRT_DTYPES[s["dtype"]],
        # TP get_kv_cache_config: json.loads(max_attention_window) → KvCacheConfig(max_attention_window=[W]).
        "option.max_attention_window": f"[{window}]" if window else None,
        **_quant_props(s.get("quantization") or {}),
        "option.kiln_consumer": consumer.ref,  # an extra TP never reads; Kiln reads it back
    }


def _lmi_pbtxt_props(entry: IndexEntry, consumer: TrtllmConsumer) -> dict[str, Any]:
    s, options = entry.spec, entry.spec.get("options") or {}
    # engine=MPI as 0.28-0.30 document it (TUT@v0.28.0 L273-279, TUT@0.30.0-dlc L250-256); from 0.31 the tutorial
    # writes engine=Python with option.mpi_mode=true (TUT@0.32.0-dlc L238-257). TRB@0.32.0-dlc L38-42 asserts
    # mpi_mode ("Need mpi_mode to start tensorrt llm RollingBatcher"): written too, whatever sets it besides.
    old_docs = version_tuple(consumer.version) <= (0, 30)
    return {
        "engine": "MPI" if old_docs else "Python",
        "option.mpi_mode": True,
        "option.rolling_batch": "trtllm",
        "option.tensor_parallel_degree": s["tp_degree"],
        "option.max_rolling_batch_size": s["batch_size"],
        "option.max_seq_len": s["n_positions"],
        "option.max_num_tokens": options.get("max_num_tokens"),
        "option.dtype": s["dtype"],  # LMI's own names here (TUT@0.32.0-dlc: option.dtype=fp16)
        **_quant_props(s.get("quantization") or {}),
        "option.kiln_consumer": consumer.ref,
    }


def _param(key: str, value: str) -> str:
    if any(c in value for c in '"\\\n'):
        raise SpecError(f"cannot write {key}={value!r} into config.pbtxt")
    return f'parameters: {{ key: "{key}" value: {{ string_value: "{value}" }} }}'


def tensorrt_llm_pbtxt(backend: str, *, batch_size: int, engine_dir: str, tokenizer_dir: str, decoupled: bool,
                       attention_window: int | None = None, exclude_input_in_output: bool = False) -> bytes:
    """The ``tensorrt_llm`` model's config.pbtxt for tensorrtllm_backend ``backend`` (MIS at that tag)."""
    v = version_tuple(backend)
    params = {
        "gpt_model_type": "inflight_fused_batching",  # MIS@v0.19.0 L59-79: read without a default at every tag
        "gpt_model_path": engine_dir,  # MIS@v0.19.0 L743-772: must name an existing engine directory
        "batch_scheduler_policy": "guaranteed_no_evict",
    }
    if attention_window:
        # MIS: one int32 up to v0.12 (v0.12 L127), a comma-separated list from v0.13 (v0.13 L129); one value
        # applies to every layer in both.
        params["max_attention_window_size"] = str(attention_window)
    if exclude_input_in_output:
        # MIS@v0.19.0 L797-807 (every tag v0.9.0-v0.19.0): default false, the prompt comes back in front of the text.
        params["exclude_input_in_output"] = "true"
    if v >= (0, 19):
        # MIS@v0.19.0 L410-449 (and the TensorRT-LLM triton_backend copy): read without a default. The C++ path does
        # not use tokenizer_dir; empty xgrammar/guided-decoding values switch guided decoding off.
        params.update(tokenizer_dir=tokenizer_dir, xgrammar_tokenizer_info_path="", guided_decoding_backend="")
    inputs = [
        '{ name: "input_ids" data_type: TYPE_INT32 dims: [ -1 ] allow_ragged_batch: true }',
        '{ name: "input_lengths" data_type: TYPE_INT32 dims: [ 1 ] reshape: { shape: [ ] } }',
        '{ name: "request_output_len" data_type: TYPE_INT32 dims: [ 1 ] reshape: { shape: [ ] } }',
        '{ name: "end_id" data_type: TYPE_INT32 dims: [ 1 ] reshape: { shape: [ ] } optional: true }',
        '{ name: "pad_id" data_type: TYPE_INT32 dims: [ 1 ] reshape: { shape: [ ] } optional: true }',
        '{ name: "streaming" data_type: TYPE_BOOL dims: [ 1 ] reshape: { shape: [ ] } optional: true }',
    ]
    lines = [
        f'name: "{_MODEL}"',
        'backend: "tensorrtllm"',
        f"max_batch_size: {batch_size}",
        f"model_transaction_policy {{ decoupled: {'true' if decoupled else 'false'} }}",
        "dynamic_batching { preferred_batch_size: [ %d ] max_queue_delay_microseconds: 0 }" % batch_size,
        "input [ " + ",\n        ".join(inputs) + " ]",
        'output [ { name: "output_ids" data_type: TYPE_INT32 dims: [ -1, -1 ] },',
        '         { name: "sequence_length" data_type: TYPE_INT32 dims: [ -1 ] } ]',
        "instance_group [ { count: 1 kind: KIND_CPU } ]",
        *(_param(k, val) for k, val in params.items()),
    ]
    return ("\n".join(lines) + "\n").encode()


def _subdir_layout(files: list[FileEntry], entry: IndexEntry, container: str, backend: str, *,
                   decoupled: bool, exclude_input_in_output: bool = False) -> tuple[list[FileEntry], bytes]:
    """``tensorrt_llm/1/<engine files>``, ``tensorrt_llm/<tokenizer files>`` and its config.pbtxt."""
    out = [FileEntry(f"{_MODEL}/1/{f.path}" if _is_engine(f.path) else f"{_MODEL}/{f.path}", f.digest, f.size)
           for f in files]
    window = (entry.spec.get("options") or {}).get("attention_window")
    pbtxt = tensorrt_llm_pbtxt(backend, batch_size=entry.spec["batch_size"],
                               engine_dir=posixpath.join(container, _MODEL, "1"),
                               tokenizer_dir=posixpath.join(container, _MODEL), decoupled=decoupled,
                               attention_window=int(window) if window else None,
                               exclude_input_in_output=exclude_input_in_output)
    return out, pbtxt


def plan_trtllm_layout(layout: str, entry: IndexEntry, manifest: Manifest, container: str) -> Layout:
    files = [f for f in manifest.files if f.path != BUILD_LOG]
    if not any(f.path.endswith(".engine") for f in files):
        raise SpecError(
            f"artifact {entry.key[:12]} holds no TensorRT-LLM engine (is it a conversion stage?); "
            "build the engine on a GPU machine first."
        )
    consumer = _consumer(entry)
    wants = {"lmi": "lmi-trtllm", "triton": "triton-trtllm", "triton-ensemble": "triton-trtllm"}[layout]
    if consumer.name != wants:
        raise SpecError(f"layout {layout} is for {wants} consumers; artifact {entry.key[:12]} was built for "
                        f"{consumer.ref}: build with --consumer {wants}:RELEASE (the release decides the layout and "
                        "the toolchain), or fetch --layout raw.")
    _check_toolchain(entry, consumer)
    if consumer.layout == "lmi-async":
        return Layout(files, {"serving.properties": serving_properties(_lmi_async_props(entry, consumer))},
                      {"OPTION_MODEL_ID": container})
    assert consumer.backend is not None
    if consumer.layout == "lmi-pbtxt":
        if not any(f.path == "tokenizer_config.json" for f in files):
            raise SpecError(f"{consumer.ref} recognises a prebuilt engine only beside tokenizer_config.json "
                            f"(LmiUtils: a sub-directory with config.pbtxt and tokenizer_config.json); artifact "
                            f"{entry.key[:12]} has none: add it to the model and rebuild.")
        out, pbtxt = _subdir_layout(files, entry, container, consumer.backend, decoupled=False)
        return Layout(out, {f"{_MODEL}/config.pbtxt": pbtxt,
                            "serving.properties": serving_properties(_lmi_pbtxt_props(entry, consumer))},
                      {"OPTION_MODEL_ID": container})
    if layout == "triton-ensemble":
        # Text in, text out: Kiln's own preprocessing/postprocessing models around the engine (.ensemble). The
        # decoupled ensemble cannot hand postprocessing the prompt length on every streamed response, so the
        # engine leaves the prompt out of its output.
        out, pbtxt = _subdir_layout(files, entry, container, consumer.backend, decoupled=True,
                                    exclude_input_in_output=True)
        models = ensemble_files(batch_size=entry.spec["batch_size"], tokenizer_dir=posixpath.join(container, _MODEL),
                                decoupled=True)
        return Layout(out, {f"{_MODEL}/config.pbtxt": pbtxt, **models}, {"TRITON_MODEL_REPO": container})
    out, pbtxt = _subdir_layout(files, entry, container, consumer.backend, decoupled=True)
    return Layout(out, {f"{_MODEL}/config.pbtxt": pbtxt}, {"TRITON_MODEL_REPO": container})

