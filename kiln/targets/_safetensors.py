"""Deterministic safetensors writing, shared by every worker that writes weights.

Same tensors → same bytes (names sorted, contiguous copies), so that identical weights of two
builds are one blob in the store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

__all__ = ["save_deterministic"]


def save_deterministic(tensors: Mapping[str, Any], path: Path) -> None:
    """Write ``tensors`` (torch tensors) to ``path`` atomically, mode 0644."""
    from safetensors.torch import save_file

    # Contiguous CPU tensors with distinct, whole storages: safetensors refuses shared or
    # partial ones (tied embeddings). Only a tensor whose storage was already seen is copied,
    # so saving does not double the memory.
    seen: set[tuple[int, int]] = set()
    out: dict[str, Any] = {}
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add((t.untyped_storage().data_ptr(), t.storage_offset()))
        out[name] = t
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(out, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)  # safetensors creates 0600 files; artifacts are meant to be shared
    os.replace(tmp, path)
