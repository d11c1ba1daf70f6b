"""Facts about torch-aoti engines that the light side, the exporter and the loader share.

Torch-free on purpose: spec validation reads the architecture list without importing torch.
"""

from __future__ import annotations

__all__ = ["SUPPORTED_ARCHITECTURES", "ENGINE_FORMAT", "ENGINE_FORMAT_VERSION", "PACKAGE_FILE",
           "WEIGHTS_FILE", "METADATA_FILE", "unsupported_message"]

# Those whose export has been verified (tokens and logits equal eager transformers). Others
# may well work (the wrapper is generic over decoder-only models with a StaticCache), but an
# unverified one is refused rather than risking a silently wrong engine.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM")

ENGINE_FORMAT = "kiln-torch-aoti-engine"
# Bumped whenever export.py writes other files or another graph. It is part of every torch-aoti
# build key (the target's static toolchain): an engine of an older format is never a hit.
# 2: attention reads only the positions written so far (the attention_span input).
ENGINE_FORMAT_VERSION = 2

PACKAGE_FILE = "engine.pt2"
WEIGHTS_FILE = "weights.safetensors"
METADATA_FILE = "engine.json"


def unsupported_message(architecture: str) -> str:
    return (
        f"architecture {architecture} is not supported by torch-aoti yet; "
        f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )
