"""Cheap checks of a model's weight files, run before a build starts any worker.

A truncated download, a file of garbage named ``*.safetensors`` or a hostile header would
otherwise be found minutes (for TensorRT-LLM: after calibration) into a build, by a worker
traceback. Reading a safetensors header costs one small read per file (8 bytes, then the
JSON header), never the tensor data, so every weight file is checked up front and the first
problem is a :class:`~kiln.errors.ModelError` naming the file and what is wrong.

The format (https://github.com/huggingface/safetensors, README "Format"): an 8-byte
little-endian header length N, N bytes of UTF-8 JSON — an object mapping each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the byte after the
header) plus an optional ``"__metadata__"`` object of strings — then the tensor data. The
checks mirror what the safetensors library itself refuses (safetensors 0.8,
``src/tensor.rs``: ``MAX_HEADER_SIZE`` 100,000,000; ``Metadata::validate``: tensors sorted by
offset must tile the data exactly, each ``end - begin`` equal to its shape × dtype size; the
data must end at the end of the file), so a file that passes here is one the library opens.
A dtype this module does not know (newer than it) skips only the size check.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Iterable

from .._input import read_small_file, show, show_path
from ..errors import ModelError
from ._resolve import ModelSource

__all__ = ["check_weight_files", "check_safetensors", "MAX_HEADER_BYTES"]

MAX_HEADER_BYTES = 100_000_000  # safetensors' MAX_HEADER_SIZE
_INDEX = "model.safetensors.index.json"
_MAX_INDEX_BYTES = 64 << 20
# Bits per element of each safetensors dtype (safetensors 0.8 Dtype::bitsize).
_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
_FIX = "re-download the model (an interrupted download?) or replace the file"


def _bad(path: Path, what: str) -> ModelError:
    return ModelError(f"weight file {show_path(path)} is not a valid safetensors file: {what}; {_FIX}.")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_safetensors(path: Path) -> int:
    """Check one safetensors file's header against the file; return its number of tensors."""
    try:
        # O_NONBLOCK + fstat: a FIFO named *.safetensors is refused, never waited on.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
        with open(fd, "rb", closefd=True) as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode) \
                    else "a socket or device"
                raise ModelError(f"weight file {show_path(path)} is {kind}, not a regular file; {_FIX}.")
            size = st.st_size
            if size < 8:
                raise _bad(path, f"it is {size} bytes, shorter than the 8-byte header length (truncated)")
            n = int.from_bytes(f.read(8), "little")
            if n > MAX_HEADER_BYTES:
                raise _bad(path, f"its header length field says {n} bytes, more than safetensors allows "
                                 f"({MAX_HEADER_BYTES}); the file is garbage or not safetensors")
            if 8 + n > size:
                raise _bad(path, f"its header length field says {n} bytes, past the end of the "
                                 f"{size}-byte file (truncated, or not safetensors)")
            raw = f.read(n)
    except OSError as e:
        raise ModelError(f"cannot read weight file {show_path(path)}: {e.strerror}; {_FIX}.") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise _bad(path, "its header is not UTF-8 JSON (garbage, or not safetensors)") from None
    if not isinstance(header, dict):
        raise _bad(path, f"its header is JSON {type(header).__name__}, not an object of tensors")
    data_len = size - 8 - n
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise _bad(path, "its __metadata__ is not an object of strings")
            continue
        where = f"tensor {show(name)}"
        if not isinstance(info, dict):
            raise _bad(path, f"{where} is described by {show(info)}, not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str):
            raise _bad(path, f"{where} has no dtype")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise _bad(path, f"{where} has shape {show(shape)}, not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            raise _bad(path, f"{where} has data_offsets {show(offsets)}, not [begin, end]")
        begin, end = offsets
        if begin > end or end > data_len:
            raise _bad(path, f"{where} has data_offsets [{begin}, {end}] outside the {data_len} bytes of data "
                             "after the header (truncated?)")
        bits = _DTYPE_BITS.get(dtype)
        if bits is not None:
            elements = 1
            for d in shape:
                elements *= d
                if elements * bits > 8 * data_len:  # stop multiplying absurd shapes early
                    break
            if elements * bits != 8 * (end - begin):
                need = show((elements * bits + 7) // 8)
                raise _bad(path, f"{where} of dtype {dtype} and shape {show(shape)} needs {need} bytes, "
                                 f"but its data_offsets span {end - begin}")
        spans.append((begin, end, name))
    expected = 0
    for begin, end, name in sorted(spans):
        if begin != expected:
            raise _bad(path, f"tensor {show(name)} starts at byte {begin} of the data, not {expected} "
                             "(tensors overlap or leave a gap)")
        expected = end
    if expected != data_len:
        raise _bad(path, f"its tensors cover {expected} of the {data_len} bytes of data after the header "
                         "(truncated, or bytes appended)")
    return len(spans)


def _index_shards(model: ModelSource) -> Iterable[str]:
    """The shard names a model.safetensors.index.json refers to (checked: they must all exist)."""
    path = model.require_local() / _INDEX
    if not any(f.path == _INDEX for f in model.files):
        return []
    raw = read_small_file(path, _MAX_INDEX_BYTES, "shard index", ModelError, _FIX)  # never a FIFO, never unbounded
    try:
        index = json.loads(raw.decode("utf-8-sig"))
    except (ValueError, RecursionError):
        raise ModelError(f"{show_path(path)} is not valid JSON; {_FIX}.") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelError(f"{show_path(path)} has no weight_map object of tensor name → shard file; {_FIX}.")
    return sorted(set(weight_map.values()))


def check_weight_files(model: ModelSource) -> None:
    """Check every ``*.safetensors`` file of ``model`` (and its shard index) before a build.

    Raises ModelError naming the first bad file and what is wrong; reads only headers. A model
    resolved from a model record (no files here) is a ModelError saying the weights are not on
    this machine and how to get them: every build passes here before any work.
    """
    root = model.require_local()
    names = {f.path for f in model.files}
    for shard in _index_shards(model):
        if shard not in names:
            raise ModelError(
                f"{show_path(root / _INDEX)} names the shard {show(shard)}, which is not in the model "
                f"directory; {_FIX}."
            )
    for f in model.files:
        if f.path.endswith(".safetensors"):
            check_safetensors(root / f.path)
