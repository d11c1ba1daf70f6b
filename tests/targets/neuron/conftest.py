"""Fixtures the Neuron tests share: Llama-2 7B/13B (+chat) in the offline HF cache."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from ...conftest import write_hf_cache_model

LLAMA2 = {
    "7b": {"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 11008,
           "num_hidden_layers": 32},
    "13b": {"hidden_size": 5120, "num_attention_heads": 40, "num_key_value_heads": 40, "intermediate_size": 13824,
            "num_hidden_layers": 40},
}
MAX_POSITION_EMBEDDINGS = 4096  # meta-llama/Llama-2-*-hf config.json


def stand_in_weights(tag: str) -> bytes:
    """A tiny well-formed safetensors file, different per model (the header check reads it). A stand-in."""
    header = json.dumps({"__metadata__": {"model": tag},
                         "w": {"dtype": "U8", "shape": [len(tag)], "data_offsets": [0, len(tag)]}}).encode()
    return len(header).to_bytes(8, "little") + header + tag.encode()


@pytest.fixture
def llama2_cache() -> None:
    """Llama-2 7B/13B (+chat) in the offline HF cache: real configs, stand-in weight bytes."""
    hub = Path(os.environ["HF_HUB_CACHE"])
    for size, dims in LLAMA2.items():
        for suffix in ("hf", "chat-hf"):
            cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                   "max_position_embeddings": MAX_POSITION_EMBEDDINGS, "vocab_size": 32000,
                   **dims}
            files = {"config.json": json.dumps(cfg).encode(), "model.safetensors": stand_in_weights(f"{size}-{suffix}"),
                     "tokenizer.json": b"{}"}
            write_hf_cache_model(hub, f"meta-llama/Llama-2-{size}-{suffix}", files,
                                 commit=hashlib.sha1(f"{size}{suffix}".encode()).hexdigest())
