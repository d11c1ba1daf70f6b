"""safetensors headers: read and checked as the safetensors library checks them (no tensor data read).

Used by the checks before a build (:mod:`._weights`) and by tensor signatures
(:mod:`._architecture`, also over headers fetched from the Hub by ranged GETs).

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
from typing import Any

from .._input import show, show_path
from ..errors import ModelError

__all__ = ["check_safetensors", "safetensors_tensors", "parse_header", "header_length", "shard_names", "TensorInfo",
           "MAX_HEADER_BYTES", "MAX_INDEX_BYTES", "WEIGHTS_FILE", "INDEX_FILE", "FIX"]

MAX_HEADER_BYTES = 100_000_000  # safetensors' MAX_HEADER_SIZE
WEIGHTS_FILE = "model.safetensors"  # what transformers loads first (SAFE_WEIGHTS_NAME) ...
INDEX_FILE = "model.safetensors.index.json"  # ... else this index and its shards (SAFE_WEIGHTS_INDEX_NAME)
MAX_INDEX_BYTES = 64 << 20
# Bits per element of each safetensors dtype (safetensors 0.8 Dtype::bitsize).
_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
FIX = "re-download the model (an interrupted download?) or replace the file"


def _bad(where: str, what: str) -> ModelError:
    return ModelError(f"weight file {where} is not a valid safetensors file: {what}; {FIX}.")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# A tensor as a signature sees it: (dtype, shape).
TensorInfo = tuple[str, tuple[int, ...]]


def check_safetensors(path: Path) -> int:
    """Check one safetensors file's header against the file; return its number of tensors."""
    return len(safetensors_tensors(path))


def safetensors_tensors(path: Path) -> dict[str, TensorInfo]:
    """Every tensor of one safetensors file (name → (dtype, shape)), its header checked against the file."""
    where = show_path(path)
    try:
        # O_NONBLOCK + fstat: a FIFO named *.safetensors is refused, never waited on.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
        with open(fd, "rb", closefd=True) as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode) \
                    else "a socket or device"
                raise ModelError(f"weight file {where} is {kind}, not a regular file; {FIX}.")
            size = st.st_size
            n = header_length(f.read(8), size, where)
            raw = f.read(n)
    except OSError as e:
        raise ModelError(f"cannot read weight file {where}: {e.strerror}; {FIX}.") from None
    return parse_header(raw, size, where)


def header_length(first8: bytes, size: int, where: str) -> int:
    """The header length a safetensors file of ``size`` bytes starts with (``first8``), checked."""
    if size < 8 or len(first8) < 8:
        raise _bad(where, f"it is {size} bytes, shorter than the 8-byte header length (truncated)")
    n = int.from_bytes(first8[:8], "little")
    if n > MAX_HEADER_BYTES:
        raise _bad(where, f"its header length field says {n} bytes, more than safetensors allows "
                          f"({MAX_HEADER_BYTES}); the file is garbage or not safetensors")
    if 8 + n > size:
        raise _bad(where, f"its header length field says {n} bytes, past the end of the "
                          f"{size}-byte file (truncated, or not safetensors)")
    return n


def parse_header(raw: bytes, size: int, where: str) -> dict[str, TensorInfo]:
    """The tensors a safetensors header (``raw``, of a ``size``-byte file) describes, checked as the
    library checks them; ``where`` names the file in messages (a local path, or a Hub URL)."""
    if size < 8 + len(raw):
        raise _bad(where, "its header is longer than the file")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise _bad(where, "its header is not UTF-8 JSON (garbage, or not safetensors)") from None
    if not isinstance(header, dict):
        raise _bad(where, f"its header is JSON {type(header).__name__}, not an object of tensors")
    data_len = size - 8 - len(raw)
    spans: list[tuple[int, int, str]] = []
    tensors: dict[str, TensorInfo] = {}
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise _bad(where, "its __metadata__ is not an object of strings")
            continue
        what = f"tensor {show(name)}"
        if not isinstance(info, dict):
            raise _bad(where, f"{what} is described by {show(info)}, not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str):
            raise _bad(where, f"{what} has no dtype")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise _bad(where, f"{what} has shape {show(shape)}, not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            raise _bad(where, f"{what} has data_offsets {show(offsets)}, not [begin, end]")
        begin, end = offsets
        if begin > end or end > data_len:
            raise _bad(where, f"{what} has data_offsets [{begin}, {end}] outside the {data_len} bytes of data "
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
                raise _bad(where, f"{what} of dtype {dtype} and shape {show(shape)} needs {need} bytes, "
                                  f"but its data_offsets span {end - begin}")
        spans.append((begin, end, name))
        tensors[name] = (dtype, tuple(shape))
    expected = 0
    for begin, end, name in sorted(spans):
        if begin != expected:
            raise _bad(where, f"tensor {show(name)} starts at byte {begin} of the data, not {expected} "
                              "(tensors overlap or leave a gap)")
        expected = end
    if expected != data_len:
        raise _bad(where, f"its tensors cover {expected} of the {data_len} bytes of data after the header "
                          "(truncated, or bytes appended)")
    return tensors


def shard_names(raw: bytes, where: str) -> list[str]:
    """The shard file names a ``model.safetensors.index.json`` (its bytes) maps tensors to."""
    try:
        index = json.loads(raw.decode("utf-8-sig"))
    except (ValueError, RecursionError):
        raise ModelError(f"{where} is not valid JSON; {FIX}.") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelError(f"{where} has no weight_map object of tensor name → shard file; {FIX}.")
    return sorted(set(weight_map.values()))


