"""Cheap checks of a model's weight files, run before a build starts any worker.

A truncated download, a file of garbage named ``*.safetensors`` or a hostile header would
otherwise be found minutes (for TensorRT-LLM: after calibration) into a build, by a worker
traceback. Reading a safetensors header costs one small read per file (8 bytes, then the
JSON header), never the tensor data, so every weight file is checked up front and the first
problem is a :class:`~kiln.errors.ModelError` naming the file and what is wrong. The header
rules are :mod:`kiln.models._safetensors`'.
"""

from __future__ import annotations

from typing import Iterable

from .._input import read_small_file, show, show_path
from ..errors import ModelError
from ._resolve import ModelSource
from ._safetensors import FIX as _FIX
from ._safetensors import INDEX_FILE, MAX_INDEX_BYTES, check_safetensors, shard_names

__all__ = ["check_weight_files"]


def _index_shards(model: ModelSource) -> Iterable[str]:
    """The shard names a model.safetensors.index.json refers to (checked: they must all exist)."""
    path = model.require_local() / INDEX_FILE
    if not any(f.path == INDEX_FILE for f in model.files):
        return []
    raw = read_small_file(path, MAX_INDEX_BYTES, "shard index", ModelError, _FIX)  # never a FIFO, never unbounded
    return shard_names(raw, show_path(path))


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
                f"{show_path(root / INDEX_FILE)} names the shard {show(shard)}, which is not in the model "
                f"directory; {_FIX}."
            )
    for f in model.files:
        if f.path.endswith(".safetensors"):
            check_safetensors(root / f.path)
