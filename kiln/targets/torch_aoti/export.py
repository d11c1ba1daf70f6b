"""The build half of the ``torch-aoti`` target: export + AOTInductor compile.

This module imports torch and transformers at the top: only the worker process
(``kiln.targets.torch_aoti.worker``) imports it. Loading an engine is ``runtime``'s job and
needs neither this module nor transformers.

What an engine directory holds (all written by :func:`export_engine`)::

    engine.pt2           AOTInductor package: compiled kernels + wrapper, NO weights
                         (``aot_inductor.package_constants_in_so=False``), a few MB at most
    weights.safetensors  the model's parameters in the engine dtype, keyed by the constant
                         FQNs the AOTI runner expects. It depends only on (model, dtype,
                         device), never on batch_size / n_positions: engines of one model and
                         dtype share one weights blob byte for byte.
    engine.json          metadata (see ``export_engine``); also the list of runtime buffers
                         (KV cache) that the loader creates zero-filled
    config.json, generation_config.json, tokenizer files   copied from the model, so the
                         directory is self-contained (load needs nothing else)

How the graph is shaped: a small wrapper (:class:`_StaticCacheLM`) owns a transformers
``StaticCache`` of ``[batch_size, n_kv_heads, n_positions, head_dim]`` per layer and registers
its tensors as buffers, so that ``torch.export`` lifts them as mutable constants of the graph.
The sequence dimension is dynamic (1..n_positions): the prompt is prefilled in one call and each
decode step is a one-token call to the same compiled graph. The model derives token positions
from the cache length, which the wrapper sets from ``cache_position[0]`` on every call, so a
forward is a pure function of (input_ids, cache_position, KV cache) — no hidden counters.

Attention reads only the cache positions written so far: the graph's third input,
``attention_span``, is a tensor whose length (a second dynamic dimension, 1..n_positions) is
the number of leading cache positions attention reads, and the loader passes
``cache_position[-1] + 1``. Positions past it hold nothing a causal mask would let through, so
the result is the same as attending over the whole cache; the work is not (format version 1
attended over all ``n_positions`` at every step: the mask, the grouped-query expansion of K/V and
the attention itself scaled with the cache, not with the sequence).

KV-cache buffers are user-managed at load (``load_constants(..., user_managed=True)``): the
runner uses our tensors in place, so ``Engine.reset()`` is a ``zero_()`` and the buffers are
never part of any file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.cache_utils import StaticCache, StaticLayer

from .._model_files import GENERATION_CONFIG, TOKENIZER_FILES
from .._safetensors import save_deterministic
from .._worker_main import UnsupportedArchitectureError
from ._facts import (
    ENGINE_FORMAT,
    ENGINE_FORMAT_VERSION,
    METADATA_FILE,
    PACKAGE_FILE,
    SUPPORTED_ARCHITECTURES,
    WEIGHTS_FILE,
    unsupported_message,
)
from .runtime import DTYPES, load_package, tensor_dtype_name

__all__ = ["INDUCTOR_CONFIGS", "MODEL_FIELDS", "UnsupportedArchitectureError", "check_architecture", "export_engine",
           "write_weights"]

_MOE_ARCHITECTURES = ("MixtralForCausalLM",)

# Inductor settings every engine is compiled with (recorded in engine.json):
# - package_constants_in_so=False: weights stay out of the package; they are loaded at run
#   time with load_constants, so one weights blob serves every (batch, n_positions) engine.
# - check_lowerbound=False: with AOTI_RUNTIME_CHECK_INPUTS=1 the runtime would otherwise
#   reject a one-token decode step (export treats dynamic dims as >= 2).
INDUCTOR_CONFIGS: dict[str, Any] = {
    "aot_inductor.package_constants_in_so": False,
    "aot_inductor.check_lowerbound": False,
}

# Files copied from the model directory so that an engine directory is self-contained.
_COPIED_FILES = ("config.json", GENERATION_CONFIG, *TOKENIZER_FILES)

# Names of the buffers the wrapper registers; they never go into weights.safetensors.
_KV_KEY = "kiln_kv_key_{}"
_KV_VALUE = "kiln_kv_value_{}"
_KV_LENGTH = "kiln_kv_length_{}"
_RUNTIME_PREFIX = "kiln_kv_"

# Warnings torch / transformers emit on every export of these models and that are not
# actionable for us (see _quiet_export). Matched precisely, so anything new still shows.
_EXPORT_NOISE = (
    # dynamo notices transformers' output-capturing hook as a side effect; harmless for
    # inference (it collects hidden states only when asked to).
    (UserWarning, r"While compiling, we found certain side effects happened in the model\.forward"),
    # torch's own pytree pickling during AOTI packaging (torch 2.13).
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # torch.utils.mkldnn, imported by Inductor on first use, defines TorchScript modules.
    (DeprecationWarning, r"`torch\.jit\.script_method` is deprecated"),
)


# --------------------------------------------------------------------------------------
# export


def _architecture(config: Any) -> str:
    archs = getattr(config, "architectures", None) or []
    return str(archs[0]) if archs else type(config).__name__.replace("Config", "ForCausalLM")


def check_architecture(architecture: str) -> None:
    """Raise :class:`UnsupportedArchitectureError` unless ``architecture`` is supported."""
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(unsupported_message(architecture))


def _find_gguf(model_dir: Path) -> str | None:
    """The GGUF file to load when a directory holds a GGUF model and no HF weights."""
    if (model_dir / "config.json").is_file():
        return None
    ggufs = sorted(p.name for p in model_dir.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    if len(ggufs) > 1:
        raise ValueError(
            f"{model_dir} holds several GGUF files ({', '.join(ggufs)}) and no config.json; "
            "pass gguf_file= to choose one"
        )
    return None


def _head_dim(config: Any) -> int:
    head_dim = getattr(config, "head_dim", None)
    return int(head_dim) if head_dim else int(config.hidden_size // config.num_attention_heads)


class _OneDnnLinear(torch.nn.Linear):
    """``nn.Linear`` computed by oneDNN (``torch.ops.mkldnn._linear_pointwise``) on plain weights.

    On a CPU, a decode step is one matrix-vector product per weight, and ATen's ``mm`` (MKL
    sgemm here) is the slower kernel for it: SmolLM2's 211 linears of one fp32 decode step took
    27 ms through ``mm`` and 18 ms through oneDNN, and its lm_head 7.5 ms against 2.6–3.4 ms
    (2 cores, torch 2.13; docs/benchmarks.md). AOTInductor calls the op through its C shim
    (``aoti_torch_cpu__linear_pointwise``). The weight stays the module's own parameter in its
    plain layout (oneDNN's prepacked layout would be a per-machine blob, not the shared weights
    file), so names, shapes and bytes of weights.safetensors are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def _linear_kernel(dev: torch.device, dtype: str) -> str:
    """Which kernel the engine's linears use: "onednn" for fp32 on a CPU with torch's oneDNN, else "aten".

    Not bf16/fp16: a bf16 1536x576 matrix-vector product took the same time both ways here (48 µs).
    """
    return "onednn" if dev.type == "cpu" and dtype == "fp32" and torch.backends.mkldnn.is_available() else "aten"


def _use_onednn_linears(model: torch.nn.Module) -> None:
    """Compute every plain ``nn.Linear`` of ``model`` with :class:`_OneDnnLinear` (same parameters)."""
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = _OneDnnLinear


class _SpanLayer(StaticLayer):
    """A full-length static cache layer whose attention reads only its first ``span`` positions.

    The wrapper sets ``span`` on every call (a symbolic size while exporting). New keys and
    values are still written at their positions in the full-length cache; ``update`` hands
    attention the leading ``span`` positions and ``get_mask_sizes`` sizes the mask to match
    (transformers 5.24 ``cache_utils.StaticLayer``: ``update`` returns the whole cache and
    ``get_mask_sizes`` returns ``max_cache_len``, which is what this overrides).
    """

    def __init__(self, max_cache_len: int) -> None:
        super().__init__(max_cache_len)
        self.span: Any = max_cache_len

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        return keys[:, :, : self.span], values[:, :, : self.span]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.span, 0


class _StaticCacheLM(torch.nn.Module):
    """``(input_ids [B, S], cache_position [S], attention_span [T]) -> logits [B, S, V]`` over a
    static KV cache, attending over cache positions ``0..T-1`` (the caller passes
    ``T = cache_position[-1] + 1``; only ``attention_span``'s length is read).

    The cache is a transformers ``StaticCache`` whose per-layer tensors are registered here as
    non-persistent buffers (names ``kiln_kv_*``), so export lifts them as mutable constants.
    Every layer is a full-length static layer that attends over the span (:class:`_SpanLayer`);
    sliding-window layers are replaced too: the sliding-window mask still applies (the model
    builds it from ``config.sliding_window``), and a full-length layer has no data-dependent
    control flow, so generation past the window is exact.
    """

    def __init__(self, model: Any, batch_size: int, max_cache_len: int, device: torch.device) -> None:
        super().__init__()
        config = model.config.get_text_config()
        self.model = model
        self.static_cache = StaticCache(config=config, max_cache_len=max_cache_len)
        for i in range(len(self.static_cache.layers)):
            self.static_cache.layers[i] = _SpanLayer(max_cache_len)
        self.static_cache.early_initialization(
            batch_size, int(config.num_key_value_heads), _head_dim(config), model.dtype, device
        )
        for i, layer in enumerate(self.static_cache.layers):
            self.register_buffer(_KV_KEY.format(i), layer.keys, persistent=False)
            self.register_buffer(_KV_VALUE.format(i), layer.values, persistent=False)
            self.register_buffer(_KV_LENGTH.format(i), layer.cumulative_length, persistent=False)

    def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor,
                attention_span: torch.Tensor) -> torch.Tensor:
        # The model takes its positions from the cache length; set it from the caller's
        # position on every call so that the KV tensors are the only state between calls.
        for layer in self.static_cache.layers:
            layer.cumulative_length.copy_(cache_position[0])
            layer.span = attention_span.shape[0]
        out = self.model(
            input_ids=input_ids,
            attention_mask=None,
            past_key_values=self.static_cache,
            use_cache=True,
        )
        return out.logits


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    with warnings.catch_warnings():
        for category, message in _EXPORT_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def _eos_ids(generation_config: Any, config: Any) -> list[int]:
    for source in (generation_config, config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if eos is None:
            continue
        return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    return []


def _load_model(model_dir: Path, dtype: str, dev: torch.device, gguf_file: str | None,
                log: Callable[[str], Any]) -> tuple[Any, Any, str, dict[str, Any]]:
    """(config, model, architecture, from_pretrained kwargs) of the causal LM in ``model_dir``, in eval mode."""
    load_kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    t0 = time.perf_counter()
    config = AutoConfig.from_pretrained(model_dir, **load_kwargs)
    architecture = _architecture(config)
    check_architecture(architecture)
    log(f"stage: load model={model_dir} arch={architecture} dtype={dtype} device={dev}")
    model_kwargs: dict[str, Any] = dict(load_kwargs, dtype=DTYPES[dtype], attn_implementation="sdpa")
    if architecture in _MOE_ARCHITECTURES:
        # batched_mm lowers to plain aten ops (index, bmm): the package then needs no
        # Python-registered custom op at load time (grouped_mm's CPU fallback is one).
        model_kwargs["experts_implementation"] = "batched_mm"
    model = AutoModelForCausalLM.from_pretrained(model_dir, **model_kwargs)
    model.to(dev)
    model.eval()
    model.requires_grad_(False)
    log(f"load done in {time.perf_counter() - t0:.1f}s")
    return config, model, architecture, model_kwargs


def export_engine(
    model_dir: Path,
    out_dir: Path,
    *,
    batch_size: int,
    n_positions: int,
    dtype: str,
    device: str = "cpu",
    gguf_file: str | None = None,
    engine_only: bool = False,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Export + AOT-compile the causal LM in ``model_dir`` into ``out_dir``; return its metadata.

    The engine serves exactly ``batch_size`` sequences of at most ``n_positions`` tokens in
    total (prompt + generated), in ``dtype`` ("fp32", "fp16" or "bf16") on ``device`` ("cpu"
    or "cuda[:i]"). ``model_dir`` is a Hugging Face model directory; a directory holding a
    single ``.gguf`` file and no config.json is loaded from GGUF (or name it with
    ``gguf_file``). Progress lines go to ``log``.

    ``engine_only``: write only what does not depend on the weight values — engine.pt2 and
    engine.json without the model's own fields (:data:`MODEL_FIELDS`) — the build stage every
    model of this architecture shares; :func:`write_weights` completes it for one model.

    Raises :class:`UnsupportedArchitectureError` (a ValueError) for an architecture not in
    :data:`SUPPORTED_ARCHITECTURES`, before loading any weights, and ValueError for bad shapes
    or dtypes.
    """
    model_dir = Path(model_dir)
    out_dir = Path(out_dir)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported by torch-aoti; choose one of {', '.join(DTYPES)}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if int(n_positions) < 2:
        raise ValueError(f"n_positions must be >= 2, got {n_positions}")
    batch_size, n_positions = int(batch_size), int(n_positions)
    torch_dtype = DTYPES[dtype]
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available in this torch build")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported by torch-aoti; use cpu or cuda")

    if gguf_file is None:
        gguf_file = _find_gguf(model_dir)
    t0 = time.perf_counter()
    config = AutoConfig.from_pretrained(model_dir, **({"gguf_file": gguf_file} if gguf_file else {}))
    check_architecture(_architecture(config))
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos is not None and n_positions > int(max_pos):
        raise ValueError(
            f"n_positions={n_positions} exceeds the model's max_position_embeddings={max_pos}; "
            f"build with n_positions <= {max_pos}"
        )
    config, model, architecture, model_kwargs = _load_model(model_dir, dtype, dev, gguf_file, log)

    out_dir.mkdir(parents=True, exist_ok=True)
    linear_kernel = _linear_kernel(dev, dtype)
    if linear_kernel == "onednn":
        _use_onednn_linears(model)
    wrapper = _StaticCacheLM(model, batch_size, n_positions, dev).eval()

    # Trace with a sequence length of 2 (not 1: export specialises dims of size 0/1) and a
    # span of 3 where the cache allows it (a span equal to the sequence would trace the prefill's
    # case only).
    example_len, example_span = 2, min(3, n_positions)
    example = (
        torch.zeros((batch_size, example_len), dtype=torch.long, device=dev),
        torch.arange(example_len, dtype=torch.long, device=dev),
        torch.arange(example_span, dtype=torch.long, device=dev),
    )
    seq = torch.export.Dim("seq", min=1, max=n_positions)
    span = torch.export.Dim("span", min=1, max=n_positions)
    t1 = time.perf_counter()
    log("stage: export")
    with torch.no_grad(), _quiet_export():
        exported = torch.export.export(
            wrapper, example, dynamic_shapes=({1: seq}, {0: seq}, {0: span}), strict=True
        )
    log(f"export done in {time.perf_counter() - t1:.1f}s")

    t2 = time.perf_counter()
    log("stage: compile")
    package_path = out_dir / PACKAGE_FILE
    # Compile into a private directory, then rename into place: a crash never leaves a
    # half-written engine.pt2. Same file name, because the archive's root folder is named
    # after it.
    tmp_dir = Path(tempfile.mkdtemp(prefix=".engine-", dir=out_dir))
    try:
        with torch.no_grad(), _quiet_export():
            torch._inductor.aoti_compile_and_package(
                exported, package_path=str(tmp_dir / PACKAGE_FILE), inductor_configs=dict(INDUCTOR_CONFIGS)
            )
        os.replace(tmp_dir / PACKAGE_FILE, package_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    log(f"compile done in {time.perf_counter() - t2:.1f}s")

    # Split the runner's constants into weights (from the model; shape-independent) and
    # runtime buffers (our KV cache; created zero-filled at load).
    t3 = time.perf_counter()
    runner = load_package(package_path, dev, -1)
    constant_names = sorted(runner.get_constant_fqns())
    # Platform, CPU ISA or CUDA arch the kernels were built for (part of the toolchain).
    aoti_metadata = {str(k): str(v) for k, v in sorted(runner.get_metadata().items())}
    del runner
    state = _model_state(wrapper)
    for name, value in exported.constants.items():
        if isinstance(value, torch.Tensor):
            state.setdefault(name, value)
    weights: dict[str, torch.Tensor] = {}
    runtime_buffers: list[dict[str, Any]] = []
    for name in constant_names:
        if name.startswith(_RUNTIME_PREFIX):
            t = state[name]
            role = "kv_length" if "length" in name else "kv_cache"
            runtime_buffers.append(
                {"name": name, "shape": list(t.shape), "dtype": tensor_dtype_name(t.dtype), "role": role}
            )
        elif name.startswith("model.") and name in state:
            weights[name] = state[name]
        else:
            # A lifted constant that is neither a model parameter nor our cache would have
            # to be stored per engine; refuse rather than mix it into the shared weights.
            raise RuntimeError(
                f"AOTI package expects constant {name!r}, which is neither a model weight nor a "
                "KV-cache buffer; this model needs support in kiln's torch-aoti target"
            )

    text_config = model.config.get_text_config()
    metadata: dict[str, Any] = {
        "format": ENGINE_FORMAT,
        "format_version": ENGINE_FORMAT_VERSION,
        "architecture": architecture,
        "model_type": str(getattr(config, "model_type", "")),
        "batch_size": batch_size,
        "n_positions": n_positions,
        "dtype": dtype,
        "device": dev.type,
        "vocab_size": int(text_config.vocab_size),
        "num_hidden_layers": int(text_config.num_hidden_layers),
        "sliding_window": getattr(text_config, "sliding_window", None),
        "experts_implementation": model_kwargs.get("experts_implementation"),
        "linear_kernel": linear_kernel,
        "inputs": [
            {"name": "input_ids", "dtype": "int64", "shape": [batch_size, "seq"]},
            {"name": "cache_position", "dtype": "int64", "shape": ["seq"]},
            # only its length is read: the number of leading cache positions attention reads
            {"name": "attention_span", "dtype": "int64", "shape": ["span"]},
        ],
        "outputs": [{"name": "logits", "dtype": tensor_dtype_name(torch_dtype), "shape": [batch_size, "seq", "vocab_size"]}],
        "files": {"package": PACKAGE_FILE, "weights": WEIGHTS_FILE},
        "weights": _weight_list(weights),
        "runtime_buffers": runtime_buffers,
        "inductor_configs": dict(INDUCTOR_CONFIGS),
        "aoti_metadata": aoti_metadata,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }
    if not engine_only:
        log("stage: weights")
        save_deterministic(weights, out_dir / WEIGHTS_FILE)
        _copy_model_files(model_dir, out_dir, config, model, gguf_file)
        metadata.update(_model_fields(model, config, gguf_file))
        log(f"weights done in {time.perf_counter() - t3:.1f}s")
    _write_metadata(out_dir, metadata)
    log(f"engine written in {time.perf_counter() - t0:.1f}s")
    return metadata


# --------------------------------------------------------------------------------------
# weights: one model's part of an engine compiled for its architecture

# What engine.json says of the model itself rather than of the compiled graph: written by
# write_weights for each model (a fine-tune may stop on other tokens than its base model).
MODEL_FIELDS = ("eos_token_id", "pad_token_id", "gguf_file")


def write_weights(model_dir: Path, engine_dir: Path, out_dir: Path, *, gguf_file: str | None = None,
                  log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Complete the shared engine in ``engine_dir`` (an ``engine_only`` export) with ``model_dir``'s
    weights into ``out_dir``: the deployable engine directory of that model.

    The model's tensors (names as the AOTI runner expects them, shapes, dtypes in the engine's
    dtype) must be exactly the constants the engine was compiled against; anything else is an
    error, never an engine loaded with weights it was not built for. Weights are loaded on the
    CPU: casting is exact, and the same bytes serve a CUDA engine.
    """
    model_dir, engine_dir, out_dir = Path(model_dir), Path(engine_dir), Path(out_dir)
    metadata = json.loads((engine_dir / METADATA_FILE).read_text())
    if metadata.get("format") != ENGINE_FORMAT or metadata.get("format_version") != ENGINE_FORMAT_VERSION:
        raise ValueError(f"{engine_dir / METADATA_FILE} is not a {ENGINE_FORMAT} v{ENGINE_FORMAT_VERSION} engine")
    if gguf_file is None:
        gguf_file = _find_gguf(model_dir)
    t0 = time.perf_counter()
    config, model, architecture, _kwargs = _load_model(model_dir, metadata["dtype"], torch.device("cpu"),
                                                       gguf_file, log)
    if architecture != metadata["architecture"]:
        raise ValueError(f"the engine was compiled for {metadata['architecture']}, the model is {architecture}")
    log("stage: weights")
    state = {"model." + name: t for name, t in _model_state(model).items()}  # the wrapper holds it as .model
    expected = {w["name"]: w for w in metadata["weights"]}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"the engine expects {len(missing)} tensor(s) this model does not have, e.g. {missing[0]}")
    weights = {name: state[name] for name in sorted(expected)}
    # A tensor of this model that the engine has no constant for, and that is not one it does have
    # under another name (tied weights share storage), would be silently dropped: refuse instead.
    # (Parameters only: buffers such as rotary inv_freq are derived from the config, not loaded.)
    used = {t.untyped_storage().data_ptr() for t in weights.values()}
    params = {"model." + name: t for name, t in model.named_parameters(remove_duplicate=False)}
    unused = sorted(n for n, t in params.items() if n not in expected and t.untyped_storage().data_ptr() not in used)
    if unused:
        raise ValueError(f"this model has {len(unused)} tensor(s) the engine was not compiled for, e.g. {unused[0]} "
                         "(untied where the engine's model was tied?): it needs an engine of its own")
    differ = [w for w in _weight_list(weights) if w != expected[w["name"]]]
    if differ:
        raise ValueError(f"tensor {differ[0]['name']} of this model is {differ[0]['shape']} "
                         f"{differ[0]['dtype']}, the engine expects {expected[differ[0]['name']]['shape']} "
                         f"{expected[differ[0]['name']]['dtype']}")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_deterministic(weights, out_dir / WEIGHTS_FILE)
    shutil.copyfile(engine_dir / PACKAGE_FILE, out_dir / PACKAGE_FILE)
    _copy_model_files(model_dir, out_dir, config, model, gguf_file)
    metadata = {**{k: v for k, v in metadata.items() if k not in MODEL_FIELDS}, **_model_fields(model, config, gguf_file)}
    _write_metadata(out_dir, metadata)
    log(f"weights done in {time.perf_counter() - t0:.1f}s")
    return metadata


def _model_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by its qualified name (tied ones under each name)."""
    state: dict[str, torch.Tensor] = dict(module.named_parameters(remove_duplicate=False))
    state.update(module.named_buffers(remove_duplicate=False))
    return state


def _weight_list(weights: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    return [{"name": n, "shape": list(t.shape), "dtype": tensor_dtype_name(t.dtype)} for n, t in sorted(weights.items())]


def _model_fields(model: Any, config: Any, gguf_file: str | None) -> dict[str, Any]:
    return {
        "eos_token_id": _eos_ids(model.generation_config, config),
        "pad_token_id": getattr(model.generation_config, "pad_token_id", None),
        "gguf_file": gguf_file,
    }


def _copy_model_files(model_dir: Path, out_dir: Path, config: Any, model: Any, gguf_file: str | None) -> None:
    """config, generation config and tokenizer files beside the engine, so the directory is self-contained."""
    for fname in _COPIED_FILES:
        src = model_dir / fname
        if src.is_file():
            shutil.copyfile(src, out_dir / fname)
    if gguf_file:
        # A GGUF directory has no HF config/tokenizer files: write them from what was loaded.
        from transformers import AutoTokenizer

        if not (out_dir / "config.json").exists():
            config.save_pretrained(out_dir)
        if model.generation_config is not None and not (out_dir / "generation_config.json").exists():
            model.generation_config.save_pretrained(out_dir)
        if not (out_dir / "tokenizer.json").exists():
            AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_file).save_pretrained(out_dir)


def _write_metadata(out_dir: Path, metadata: dict[str, Any]) -> None:
    tmp_meta = out_dir / (METADATA_FILE + ".tmp")
    tmp_meta.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_meta, out_dir / METADATA_FILE)
