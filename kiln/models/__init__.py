"""Models: resolving a model ref (a local directory or a Hugging Face Hub id) to its files and digest.

A Hub id whose files are not here (offline) resolves from its model record (:mod:`._recorded`).

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
from ._architecture import TensorSignature, architecture_or_why
from ._recorded import keep_model_record, locate_or_recall, strict_revision_from_env
from ._safetensors import check_safetensors
from ._weights import check_weight_files

__all__ = [
    "MODEL_FILE_IGNORES",
    "TensorSignature",
    "architecture_or_why",
    "ModelFile",
    "ModelLocation",
    "ModelSource",
    "check_safetensors",
    "check_weight_files",
    "fetch_model_files",
    "keep_model_record",
    "locate_model",
    "locate_or_recall",
    "parse_model_ref",
    "read_config",
    "resolve_model",
    "strict_revision_from_env",
]
