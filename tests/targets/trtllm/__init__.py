"""Helpers for the TensorRT-LLM checkpoint tests: tiny models, HF logits, error measures.

Everything runs on CPU with real files: tiny random models written by tests.tiny_models,
real calibration, real conversion, and the plain-torch reference executor reading the
written rank files back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tests.tiny_models import make_tiny_model


def token_ids(batch: int = 2, seq: int = 40, *, vocab: int = 320, seed: int = 0) -> torch.Tensor:
    """Deterministic token ids (ids 0-2 are special tokens and are skipped)."""
    return torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def hf_logits(model_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    """The Hugging Face model's fp32 logits: the ground truth every checkpoint is held to."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def top1(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.argmax(-1) == want.argmax(-1)).float().mean())


def plant_outliers(model_dir: Path, *, channels: tuple[int, ...] = (5, 17, 40), factor: float = 30.0) -> Path:
    """Scale a few channels of every RMSNorm weight: the activations feeding q/k/v and
    gate/up then carry a handful of huge channels, like the outliers of real LLMs."""
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    sd = load_file(str(path))
    for name, t in sd.items():
        if name.endswith(("input_layernorm.weight", "post_attention_layernorm.weight")):
            t[list(channels)] *= factor
    save_file(sd, str(path), metadata={"format": "pt"})
    return model_dir


def tiny(kind: str, dest: Path, **overrides: Any) -> Path:
    return make_tiny_model(kind, dest, **overrides)
