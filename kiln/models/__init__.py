"""Models: resolving a model ref (a local directory or a Hugging Face Hub id) to its files and digest."""

from ._resolve import ModelFile, ModelSource, parse_model_ref, resolve_model

__all__ = ["ModelFile", "ModelSource", "parse_model_ref", "resolve_model"]
