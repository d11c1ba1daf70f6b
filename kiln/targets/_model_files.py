"""Which files of a Hugging Face model directory a runtime needs beside a compiled engine."""

from __future__ import annotations

__all__ = ["TOKENIZER_FILES", "GENERATION_CONFIG"]

# Every file a tokenizer (fast, sentencepiece, BPE) or a chat template may be read from.
TOKENIZER_FILES = (
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
GENERATION_CONFIG = "generation_config.json"  # eos/pad ids and sampling defaults
