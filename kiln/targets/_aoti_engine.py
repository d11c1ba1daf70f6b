"""The heavy half of the ``torch-aoti`` target: export + AOTInductor compile, and load + run.

This module imports torch and transformers at the top: only worker processes (see
``_aoti_worker``) and code that loads engines import it, never the light CLI paths.

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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

from ._aoti_worker import SUPPORTED_ARCHITECTURES, unsupported_message

__all__ = [
    "ENGINE_FORMAT",
    "ENGINE_FORMAT_VERSION",
    "SUPPORTED_ARCHITECTURES",
    "DTYPES",
    "UnsupportedArchitectureError",
    "check_architecture",
    "Engine",
    "export_engine",
    "load_engine",
    "read_engine_metadata",
]

ENGINE_FORMAT = "kiln-torch-aoti-engine"
ENGINE_FORMAT_VERSION = 1

PACKAGE_FILE = "engine.pt2"
WEIGHTS_FILE = "weights.safetensors"
METADATA_FILE = "engine.json"

# SUPPORTED_ARCHITECTURES: those whose export has been verified (tokens and logits equal
# eager transformers). Others may well work (the wrapper is generic over decoder-only models
# with a StaticCache), but an unverified one is refused rather than risking a silently wrong
# engine. The list lives in the torch-free worker module so spec validation can read it
# without importing torch.
_MOE_ARCHITECTURES = ("MixtralForCausalLM",)

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

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
_COPIED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)

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


class UnsupportedArchitectureError(ValueError):
    """The model's architecture is not (yet) supported by the torch-aoti target."""


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


class _StaticCacheLM(torch.nn.Module):
    """``(input_ids [B, S], cache_position [S]) -> logits [B, S, V]`` over a static KV cache.

    The cache is a transformers ``StaticCache`` whose per-layer tensors are registered here as
    non-persistent buffers (names ``kiln_kv_*``), so export lifts them as mutable constants.
    Sliding-window layers are replaced by full-length static layers: the sliding-window mask
    still applies (the model builds it from ``config.sliding_window``), and a full-length layer
    has no data-dependent control flow, so generation past the window is exact.
    """

    def __init__(self, model: Any, batch_size: int, max_cache_len: int, device: torch.device) -> None:
        super().__init__()
        from transformers.cache_utils import StaticCache, StaticLayer

        config = model.config.get_text_config()
        self.model = model
        self.static_cache = StaticCache(config=config, max_cache_len=max_cache_len)
        for i, layer in enumerate(self.static_cache.layers):
            if type(layer) is not StaticLayer:
                self.static_cache.layers[i] = StaticLayer(max_cache_len)
        self.static_cache.early_initialization(
            batch_size, int(config.num_key_value_heads), _head_dim(config), model.dtype, device
        )
        for i, layer in enumerate(self.static_cache.layers):
            self.register_buffer(_KV_KEY.format(i), layer.keys, persistent=False)
            self.register_buffer(_KV_VALUE.format(i), layer.values, persistent=False)
            self.register_buffer(_KV_LENGTH.format(i), layer.cumulative_length, persistent=False)

    def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        # The model takes its positions from the cache length; set it from the caller's
        # position on every call so that the KV tensors are the only state between calls.
        for layer in self.static_cache.layers:
            layer.cumulative_length.copy_(cache_position[0])
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


def _tensor_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _eos_ids(generation_config: Any, config: Any) -> list[int]:
    for source in (generation_config, config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if eos is None:
            continue
        return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    return []


def _save_weights(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``tensors`` to safetensors deterministically (same tensors -> same bytes)."""
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            # safetensors refuses shared or partial storages (tied embeddings): own a copy.
            t = t.clone()
        seen.add(key)
        out[name] = t
    tmp = path.with_name(path.name + ".tmp")
    save_file(out, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)  # safetensors creates 0600 files; the other engine files are 0644
    os.replace(tmp, path)


def export_engine(
    model_dir: Path,
    out_dir: Path,
    *,
    batch_size: int,
    n_positions: int,
    dtype: str,
    device: str = "cpu",
    gguf_file: str | None = None,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Export + AOT-compile the causal LM in ``model_dir`` into ``out_dir``; return its metadata.

    The engine serves exactly ``batch_size`` sequences of at most ``n_positions`` tokens in
    total (prompt + generated), in ``dtype`` ("fp32", "fp16" or "bf16") on ``device`` ("cpu"
    or "cuda[:i]"). ``model_dir`` is a Hugging Face model directory; a directory holding a
    single ``.gguf`` file and no config.json is loaded from GGUF (or name it with
    ``gguf_file``). Progress lines go to ``log``.

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
    load_kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}

    t0 = time.perf_counter()
    config = AutoConfig.from_pretrained(model_dir, **load_kwargs)
    architecture = _architecture(config)
    check_architecture(architecture)
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos is not None and n_positions > int(max_pos):
        raise ValueError(
            f"n_positions={n_positions} exceeds the model's max_position_embeddings={max_pos}; "
            f"build with n_positions <= {max_pos}"
        )

    log(f"stage: load model={model_dir} arch={architecture} dtype={dtype} device={dev}")
    model_kwargs: dict[str, Any] = dict(load_kwargs, dtype=torch_dtype, attn_implementation="sdpa")
    if architecture in _MOE_ARCHITECTURES:
        # batched_mm lowers to plain aten ops (index, bmm): the package then needs no
        # Python-registered custom op at load time (grouped_mm's CPU fallback is one).
        model_kwargs["experts_implementation"] = "batched_mm"
    model = AutoModelForCausalLM.from_pretrained(model_dir, **model_kwargs)
    model.to(dev)
    model.eval()
    model.requires_grad_(False)
    log(f"stage: load done in {time.perf_counter() - t0:.1f}s")

    out_dir.mkdir(parents=True, exist_ok=True)
    wrapper = _StaticCacheLM(model, batch_size, n_positions, dev).eval()

    # Trace with a sequence length of 2 (not 1: export specialises dims of size 0/1).
    example_len = 2
    example = (
        torch.zeros((batch_size, example_len), dtype=torch.long, device=dev),
        torch.arange(example_len, dtype=torch.long, device=dev),
    )
    seq = torch.export.Dim("seq", min=1, max=n_positions)
    t1 = time.perf_counter()
    log("stage: export")
    with torch.no_grad(), _quiet_export():
        exported = torch.export.export(
            wrapper, example, dynamic_shapes=({1: seq}, {0: seq}), strict=True
        )
    log(f"stage: export done in {time.perf_counter() - t1:.1f}s")

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
    log(f"stage: compile done in {time.perf_counter() - t2:.1f}s")

    # Split the runner's constants into weights (from the model; shape-independent) and
    # runtime buffers (our KV cache; created zero-filled at load).
    t3 = time.perf_counter()
    log("stage: weights")
    runner = _load_package(package_path, dev, -1)
    constant_names = sorted(runner.get_constant_fqns())
    # Platform, CPU ISA or CUDA arch the kernels were built for (part of the toolchain).
    aoti_metadata = {str(k): str(v) for k, v in sorted(runner.get_metadata().items())}
    del runner
    state: dict[str, torch.Tensor] = dict(wrapper.named_parameters(remove_duplicate=False))
    state.update(wrapper.named_buffers(remove_duplicate=False))
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
                {"name": name, "shape": list(t.shape), "dtype": _tensor_dtype_name(t.dtype), "role": role}
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
    _save_weights(weights, out_dir / WEIGHTS_FILE)
    log(f"stage: weights done in {time.perf_counter() - t3:.1f}s")

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
        "eos_token_id": _eos_ids(model.generation_config, config),
        "pad_token_id": getattr(model.generation_config, "pad_token_id", None),
        "inputs": [
            {"name": "input_ids", "dtype": "int64", "shape": [batch_size, "seq"]},
            {"name": "cache_position", "dtype": "int64", "shape": ["seq"]},
        ],
        "outputs": [{"name": "logits", "dtype": _tensor_dtype_name(torch_dtype), "shape": [batch_size, "seq", "vocab_size"]}],
        "files": {"package": PACKAGE_FILE, "weights": WEIGHTS_FILE},
        "weights": [
            {"name": n, "shape": list(t.shape), "dtype": _tensor_dtype_name(t.dtype)} for n, t in sorted(weights.items())
        ],
        "runtime_buffers": runtime_buffers,
        "inductor_configs": dict(INDUCTOR_CONFIGS),
        "aoti_metadata": aoti_metadata,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "gguf_file": gguf_file,
    }
    tmp_meta = out_dir / (METADATA_FILE + ".tmp")
    tmp_meta.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_meta, out_dir / METADATA_FILE)
    log(f"stage: done in {time.perf_counter() - t0:.1f}s")
    return metadata


# --------------------------------------------------------------------------------------
# load and run


def read_engine_metadata(engine_dir: Path) -> dict[str, Any]:
    """engine.json of ``engine_dir``, checked for format and version."""
    path = Path(engine_dir) / METADATA_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} does not exist: {engine_dir} is not a torch-aoti engine directory"
        ) from None
    if meta.get("format") != ENGINE_FORMAT:
        raise ValueError(f"{path} is not a {ENGINE_FORMAT} metadata file (format={meta.get('format')!r})")
    if meta.get("format_version") != ENGINE_FORMAT_VERSION:
        raise ValueError(
            f"{path} has engine format version {meta.get('format_version')}, this kiln reads "
            f"version {ENGINE_FORMAT_VERSION}; rebuild the engine with this kiln"
        )
    return meta


_X86_ISA_CHECKS = {
    "avx2": "_is_avx2_supported",
    "avx512": "_is_avx512_supported",
    "avx512_vnni": "_is_vnni_supported",
    "amx_tile": "_is_amx_tile_supported",
}


def _check_runtime_compat(package_meta: dict[str, str], device: torch.device, where: Path) -> None:
    """Refuse, with a clear message, a package whose kernels this machine cannot run.

    A CPU package uses the vector ISA of its build machine (AMX/AVX-512 code dies with SIGILL
    on an AVX2-only CPU); a CUDA package holds cubins for one compute capability.
    """
    import platform

    built_machine = package_meta.get("AOTI_MACHINE", "")
    if built_machine and built_machine != platform.machine():
        raise ValueError(
            f"engine {where} was compiled for {built_machine}, this machine is {platform.machine()}; "
            "build an engine on this kind of machine"
        )
    if device.type == "cpu":
        isa = package_meta.get("AOTI_CPU_ISA", "").lower().split()
        lacking = [
            name
            for name in isa
            if name in _X86_ISA_CHECKS
            and not getattr(torch.cpu, _X86_ISA_CHECKS[name], lambda: True)()
        ]
        if lacking:
            raise ValueError(
                f"engine {where} was compiled for CPU ISA {' '.join(isa)}, this CPU lacks "
                f"{' '.join(lacking)}; build an engine on a machine of this CPU class"
            )
    elif device.type == "cuda":
        built_cc = package_meta.get("AOTI_COMPUTE_CAPABILITY", "")
        major, minor = torch.cuda.get_device_capability(device)
        if built_cc and built_cc != f"{major}{minor}":
            raise ValueError(
                f"engine {where} was compiled for CUDA compute capability {built_cc}, this GPU is "
                f"{major}{minor}; build an engine for this GPU class"
            )


def _load_package(path: Path, device: torch.device, device_index: int) -> Any:
    """Load an AOTI package without compiling anything.

    ``torch._inductor.aoti_load_package`` first probes this machine's vector ISA by compiling
    small C++ programs (torch 2.13, ``get_device_information``) only to log a warning on a
    mismatch: that needs a C++ compiler at load time. We check compatibility ourselves (from
    torch's cpuid helpers) and construct the loader directly, the way torch's own fallback does.
    """
    try:
        from torch._C._aoti import AOTIModelPackageLoader
        from torch.export.pt2_archive._package import AOTICompiledModel
    except ImportError:  # pragma: no cover - layout of a different torch version
        return torch._inductor.aoti_load_package(str(path), device_index=device_index)
    package_meta = AOTIModelPackageLoader.load_metadata_from_package(str(path), "model")
    _check_runtime_compat(dict(package_meta), device, path.parent)
    return AOTICompiledModel(AOTIModelPackageLoader(str(path), "model", False, 1, device_index))


class Engine:
    """A loaded torch-aoti engine: a compiled graph, its weights, and a static KV cache.

    Shapes are fixed at build time: every call takes exactly ``batch_size`` rows, and a
    sequence holds at most ``n_positions`` tokens (prompt + generated). There is no padding
    support: a batch is a set of equal-length prompts.

    Not thread-safe: the KV cache is state shared by all calls on one Engine.
    """

    def __init__(self, engine_dir: Path, device: str = "cpu") -> None:
        from safetensors.torch import load_file

        self.engine_dir = Path(engine_dir)
        self.metadata = meta = read_engine_metadata(self.engine_dir)
        self.batch_size: int = int(meta["batch_size"])
        self.n_positions: int = int(meta["n_positions"])
        self.vocab_size: int = int(meta["vocab_size"])
        self.dtype: str = str(meta["dtype"])
        self.eos_token_id: list[int] = [int(e) for e in meta.get("eos_token_id") or []]
        pad = meta.get("pad_token_id")
        self.pad_token_id: int | None = int(pad) if pad is not None else None
        self.device = torch.device(device)
        built_for = str(meta["device"])
        if self.device.type != built_for:
            raise ValueError(
                f"engine {self.engine_dir} was compiled for {built_for}, cannot run it on {self.device}; "
                f"load it with device={built_for!r} or build one for {self.device.type}"
            )

        device_index = self.device.index if self.device.type == "cuda" and self.device.index is not None else -1
        self._runner = _load_package(self.engine_dir / meta["files"]["package"], self.device, device_index)
        expected = set(self._runner.get_constant_fqns())

        weights = load_file(str(self.engine_dir / meta["files"]["weights"]), device=str(self.device))
        self._buffers: dict[str, torch.Tensor] = {}
        for spec in meta["runtime_buffers"]:
            self._buffers[spec["name"]] = torch.zeros(
                spec["shape"], dtype=getattr(torch, spec["dtype"]), device=self.device
            )
        self._kv = list(self._buffers.values())
        # A weights blob is shared by many engines and fetched separately: check it is the one
        # this engine was built with (names, shapes, dtypes) before handing pointers to C++.
        for spec in meta["weights"]:
            t = weights.get(spec["name"])
            have = None if t is None else (list(t.shape), _tensor_dtype_name(t.dtype))
            if have != (spec["shape"], spec["dtype"]):
                raise ValueError(
                    f"{self.engine_dir}: weights file has {spec['name']!r} as {have or 'missing'}, the "
                    f"engine needs {spec['shape']} {spec['dtype']}; the weights blob does not belong "
                    "to this engine (rebuild it or fetch the matching weights)"
                )
        missing = expected - set(weights) - set(self._buffers)
        if missing:
            raise ValueError(
                f"{self.engine_dir}: weights file lacks {len(missing)} constant(s) the engine needs "
                f"(e.g. {sorted(missing)[0]!r}); the weights blob does not belong to this engine"
            )
        constants = {name: t for name, t in weights.items() if name in expected}
        constants.update(self._buffers)
        # user_managed=True: the runner uses these tensors in place (no copy). We keep them
        # alive on self, and reset() zeroes the KV cache in place.
        self._runner.load_constants(constants, check_full_update=True, user_managed=True)
        self._weights = constants

    # -- low level --------------------------------------------------------------------

    def reset(self) -> None:
        """Zero the KV cache (start a new batch of sequences)."""
        for t in self._kv:
            t.zero_()

    def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        """Run ``input_ids [batch_size, seq]`` at positions ``cache_position [seq]``.

        ``cache_position`` must be consecutive (``start, start+1, ...``) with
        ``start + seq <= n_positions``; the KV cache at positions ``>= start`` is overwritten.
        Returns logits ``[batch_size, seq, vocab_size]``.
        """
        input_ids = torch.as_tensor(input_ids)
        cache_position = torch.as_tensor(cache_position)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be 2-D [batch, seq], got shape {tuple(input_ids.shape)}")
        batch, seq = input_ids.shape
        if batch != self.batch_size:
            raise ValueError(
                f"this engine was built for batch_size={self.batch_size}, got a batch of {batch}; "
                f"send exactly {self.batch_size} sequences per call or build an engine with "
                f"batch_size={batch}"
            )
        if seq < 1:
            raise ValueError("input_ids has no tokens (seq length 0)")
        if cache_position.dim() != 1 or cache_position.shape[0] != seq:
            raise ValueError(
                f"cache_position must be 1-D with one entry per token ({seq}), got shape "
                f"{tuple(cache_position.shape)}"
            )
        start = int(cache_position[0])
        if start < 0 or start + seq > self.n_positions:
            raise ValueError(
                f"positions {start}..{start + seq - 1} do not fit in this engine's n_positions="
                f"{self.n_positions}; build an engine with a larger n_positions or send fewer tokens"
            )
        if seq > 1 and not torch.equal(
            cache_position.cpu(), torch.arange(start, start + seq, dtype=cache_position.dtype)
        ):
            raise ValueError("cache_position must be consecutive positions (start, start+1, ...)")
        # AOTI packages assume contiguous inputs with the exact traced dtypes and give wrong
        # numbers otherwise (unless AOTI_RUNTIME_CHECK_INPUTS=1, then they raise).
        ids = input_ids.to(device=self.device, dtype=torch.long).contiguous()
        pos = cache_position.to(device=self.device, dtype=torch.long).contiguous()
        return self._runner(ids, pos)

    __call__ = forward

    # -- generation -------------------------------------------------------------------

    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        eos_token_id: int | Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Greedy decoding: ``[batch_size, prompt_len]`` -> ``[batch_size, prompt_len + k]``.

        The prompt is prefilled in one call, then one token per call. Prompts in a batch must
        have equal length (no padding support). ``eos_token_id``: None uses the model's
        (from generation_config), ``[]`` never stops early. A sequence that has produced EOS
        is filled with the pad token (or its EOS) until every sequence has finished or
        ``max_new_tokens`` tokens were produced — the same output as transformers' greedy
        ``generate``. Resets the KV cache first.
        """
        input_ids = torch.as_tensor(input_ids)
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, prompt_len], got shape {tuple(input_ids.shape)}")
        prompt_len = int(input_ids.shape[1])
        max_new_tokens = int(max_new_tokens)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if prompt_len < 1:
            raise ValueError("the prompt is empty")
        if prompt_len + max_new_tokens > self.n_positions:
            raise ValueError(
                f"prompt of {prompt_len} tokens + max_new_tokens={max_new_tokens} = "
                f"{prompt_len + max_new_tokens} exceeds this engine's n_positions={self.n_positions}; "
                f"build an engine with n_positions >= {prompt_len + max_new_tokens} or lower "
                f"max_new_tokens to <= {max(self.n_positions - prompt_len, 0)}"
            )
        if eos_token_id is None:
            eos = list(self.eos_token_id)
        elif isinstance(eos_token_id, int):
            eos = [eos_token_id]
        else:
            eos = [int(e) for e in eos_token_id]
        pad = self.pad_token_id if self.pad_token_id is not None else (eos[0] if eos else 0)

        ids = input_ids.to(device=self.device, dtype=torch.long)
        eos_t = torch.tensor(eos, dtype=torch.long, device=self.device)
        finished = torch.zeros(self.batch_size, dtype=torch.bool, device=self.device)
        out = [ids]
        self.reset()
        with torch.no_grad():
            logits = self.forward(ids, torch.arange(prompt_len, device=self.device))
            pos = prompt_len
            for step in range(max_new_tokens):
                nxt = logits[:, -1, :].argmax(dim=-1)
                nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
                out.append(nxt.unsqueeze(1))
                if eos:
                    finished |= torch.isin(nxt, eos_t)
                    if bool(finished.all()):
                        break
                if step + 1 == max_new_tokens:
                    break
                logits = self.forward(nxt.unsqueeze(1), torch.tensor([pos], device=self.device))
                pos += 1
        return torch.cat(out, dim=1)


def load_engine(engine_dir: Path, device: str = "cpu") -> Engine:
    """Load an engine directory written by :func:`export_engine` (no compilation)."""
    return Engine(Path(engine_dir), device=device)

