"""Models: resolving a model ref (a local directory or a Hugging Face Hub id) to its files and digest.

Also the cheap checks of a model's files that run before a build starts any worker
(:func:`check_weight_files`: every safetensors header is read and checked against its file).
"""

from ._resolve import (
    MODEL_FILE_IGNORES,
    ModelFile,
    ModelLocation,
    ModelSource,
    fetch_model_files,
    locate_model,
    parse_model_ref,
    read_config,
    resolve_model,
)
from ._weights import check_weight_files, check_safetensors

__all__ = [
    "MODEL_FILE_IGNORES",
    "ModelFile",
    "ModelLocation",
    "ModelSource",
    "check_safetensors",
    "check_weight_files",
    "fetch_model_files",
    "locate_model",
    "parse_model_ref",
    "read_config",
    "resolve_model",
]
