"""The load half of the ``torch-aoti`` target: run a stored engine without compiling.

What a server imports to serve an engine: torch (and safetensors), never transformers or the
export machinery. An engine directory is what ``export.export_engine`` wrote (see there).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from ._facts import ENGINE_FORMAT, ENGINE_FORMAT_VERSION, METADATA_FILE

__all__ = ["DTYPES", "Engine", "load_engine", "load_package", "read_engine_metadata", "tensor_dtype_name"]

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def tensor_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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


# The call spec export.py's wrapper traces (``forward(input_ids, cache_position, attention_span)
# -> logits``), as pytree's JSON (torch 2.13, torch/utils/_pytree.py treespec_dumps): three
# positional tensors, no keyword arguments, one tensor out.
_LEAF = {"type": None, "context": None, "children_spec": []}
_ENGINE_CALL_SPEC = (
    [1, {"type": "builtins.tuple", "context": "null", "children_spec": [
        {"type": "builtins.tuple", "context": "null", "children_spec": [_LEAF, _LEAF, _LEAF]},
        {"type": "builtins.dict", "context": "[]", "children_spec": []}]}],
    [1, _LEAF],
)


class _PackageRunner:
    """An AOTI package's C++ loader, called the way export.py's graph takes its inputs.

    torch's own wrapper (``torch.export.pt2_archive._package.AOTICompiledModel``) does the same
    with pytree, but importing its module imports torch._dynamo and torch.export's serde: about
    1.1 s of a 2.5 s cold start on the tiny engine (python -X importtime, torch 2.13). The loader
    itself is in torch._C.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.loader.boxed_run(list(inputs))[0]  # boxed_run takes the list over

    def get_constant_fqns(self) -> list[str]:
        return self.loader.get_constant_fqns()

    def get_metadata(self) -> dict[str, str]:
        return self.loader.get_metadata()

    def load_constants(self, constants: dict[str, torch.Tensor], *, check_full_update: bool, user_managed: bool) -> None:
        self.loader.load_constants(constants, False, check_full_update, user_managed)  # False: not the folded set


def load_package(path: Path, device: torch.device, device_index: int) -> Any:
    """Load an AOTI package without compiling anything, and without torch's export machinery.

    ``torch._inductor.aoti_load_package`` first probes this machine's vector ISA by compiling
    small C++ programs (torch 2.13, ``get_device_information``) only to log a warning on a
    mismatch: that needs a C++ compiler at load time. We check compatibility ourselves (from
    torch's cpuid helpers) and construct the C++ loader directly, the way torch's own fallback
    does. A package whose call spec is not the one export.py traces is run through torch's own
    pytree wrapper instead (slower to import, same result).
    """
    try:
        from torch._C._aoti import AOTIModelPackageLoader
    except ImportError:  # pragma: no cover - layout of a different torch version
        return torch._inductor.aoti_load_package(str(path), device_index=device_index)
    package_meta = AOTIModelPackageLoader.load_metadata_from_package(str(path), "model")
    _check_runtime_compat(dict(package_meta), device, path.parent)
    loader = AOTIModelPackageLoader(str(path), "model", False, 1, device_index)
    if tuple(json.loads(spec) for spec in loader.get_call_spec()) == _ENGINE_CALL_SPEC:
        return _PackageRunner(loader)
    from torch.export.pt2_archive._package import AOTICompiledModel

    return AOTICompiledModel(loader)


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
        self._runner = load_package(self.engine_dir / meta["files"]["package"], self.device, device_index)
        expected = set(self._runner.get_constant_fqns())

        weights = load_file(str(self.engine_dir / meta["files"]["weights"]), device=str(self.device))
        self._buffers: dict[str, torch.Tensor] = {}
        for spec in meta["runtime_buffers"]:
            self._buffers[spec["name"]] = torch.zeros(
                spec["shape"], dtype=getattr(torch, spec["dtype"]), device=self.device
            )
        self._kv = list(self._buffers.values())
        # The graph's attention_span input: only its length is read (attend over positions
        # 0..length-1, see export.py), so every call passes a view of this one tensor.
        self._span = torch.arange(self.n_positions, dtype=torch.long, device=self.device)
        # A weights blob is shared by many engines and fetched separately: check it is the one
        # this engine was built with (names, shapes, dtypes) before handing pointers to C++.
        for spec in meta["weights"]:
            t = weights.get(spec["name"])
            have = None if t is None else (list(t.shape), tensor_dtype_name(t.dtype))
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
        return self._runner(ids, pos, self._span[: start + seq])

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

