"""Load a stored engine inside a server: lookup → materialise → load, never compile.

Which targets load in-process, and how, is each target's answer (``Target.loads_in_process``,
``Target.load_engine``); others are materialised with `kiln fetch --dest` for their runtime.
"""

from __future__ import annotations

import atexit
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cache import Store
from ..errors import ModelError, NotFoundError, ToolchainError
from ..manifests import IndexEntry, Manifest
from ..targets import TOKENIZER_FILES, get_target
from .artifacts import find_artifact
from .find import lookup
from .resolution import Resolution

__all__ = ["LoadedEngine", "load_engine", "load_engine_by_key"]


@dataclass
class LoadedEngine:
    engine: Any  # the target's engine object (torch-aoti: kiln.targets.torch_aoti.runtime.Engine)
    directory: Path  # the materialised artifact (tokenizer and config live here too)
    entry: IndexEntry  # the index entry it came from

    def tokenizer(self) -> Any:
        """The model's tokenizer, from the files stored with the engine."""
        if not any((self.directory / name).is_file() for name in TOKENIZER_FILES):
            raise ModelError(
                f"artifact {self.entry.key[:12]} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, …): "
                "it was built from a model directory without them. Rebuild from a directory that has the "
                "tokenizer, or give the engine token ids through the Python API (LoadedEngine.engine.generate)."
            )
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.directory)
        except (OSError, ValueError) as e:
            raise ModelError(f"the tokenizer stored with artifact {self.entry.key[:12]} cannot be loaded: {e}") from None


def load_engine(res: Resolution, *, store: Store, device: str | None = None, directory: Path | None = None) -> LoadedEngine:
    """Find the engine for ``res`` and load it; a miss raises NotFoundError with the explanation."""
    target = get_target(res.spec.target)
    if not target.loads_in_process:
        raise ToolchainError(
            f"{target.name} engines are loaded by their own runtime; materialise one with "
            "`kiln fetch --dest DIR` and point the runtime at DIR."
        )
    found = lookup(res, store=store)
    if not found.hit:
        lines = "\n".join(found.damaged + found.explanation)
        raise NotFoundError(
            f"no {target.name} engine for {res.model.ref} with {res.spec.summary()}.\n{lines}\n"
            f"Build it first: kiln build {res.model.ref} {res.spec.cli_flags()}"
        )
    assert found.manifest is not None and found.entry is not None
    return _load_artifact(found.entry, found.manifest, store=store,
                          device=device or res.spec.option("device", "cpu") or "cpu", directory=directory)


def load_engine_by_key(key: str, *, store: Store, device: str = "cpu", directory: Path | None = None) -> LoadedEngine:
    """Load by build key (or unique prefix): what a deployment that has only the store uses."""
    entry = find_artifact(store, key)
    target = get_target(str(entry.spec.get("target")))
    if not target.loads_in_process:
        raise ToolchainError(f"artifact {entry.key[:12]} is a {target.name} engine; use `kiln fetch` for it.")
    manifest = store.check_artifact(entry)
    return _load_artifact(entry, manifest, store=store, device=device, directory=directory)


def _load_artifact(entry: IndexEntry, manifest: Manifest, *, store: Store, device: str,
                   directory: Path | None) -> LoadedEngine:
    if directory is None:
        parent = store.new_run_dir()
        atexit.register(shutil.rmtree, parent, True)
        directory = parent / "engine"
    # Kiln's own run directory under the store: hard links (instant; nothing writes into it).
    store.materialize(manifest, directory, link=True)
    store.touch(entry)
    engine = get_target(str(entry.spec.get("target"))).load_engine(directory, device)
    return LoadedEngine(engine, directory, entry)
