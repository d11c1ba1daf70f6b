"""Load a stored engine for use inside a server: lookup → materialise → load, never compile.

Only the torch-aoti target can be loaded in-process today; trtllm and neuron engines are
loaded by their own runtimes (materialise them with `kiln fetch --dest`).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api import LookupResult, Resolution, lookup
from .cache._store import Store
from .errors import NotFoundError, ToolchainError

__all__ = ["LoadedEngine", "load_engine", "load_engine_by_key"]


@dataclass
class LoadedEngine:
    engine: Any  # kiln.targets._aoti_engine.Engine
    directory: Path  # the materialised artifact (tokenizer and config live here too)
    entry: Any  # the IndexEntry it came from

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.directory)


def load_engine(res: Resolution, *, store: Store, device: str | None = None, directory: Path | None = None) -> LoadedEngine:
    """Find the engine for ``res`` and load it; a miss raises NotFoundError with the explanation."""
    if res.spec.target != "torch-aoti":
        raise ToolchainError(
            f"{res.spec.target} engines are loaded by their own runtime; materialise one with "
            "`kiln fetch --dest DIR` and point the runtime at DIR."
        )
    found = lookup(res, store=store)
    if not found.hit:
        lines = "\n".join(found.damaged + found.explanation)
        raise NotFoundError(
            f"no torch-aoti engine for {res.model.ref} with {res.spec.summary()}.\n{lines}\n"
            f"Build it first: kiln build {res.model.ref} --target torch-aoti --n-positions {res.spec.n_positions} "
            f"--batch-size {res.spec.batch_size} --dtype {res.spec.dtype}"
        )
    assert found.manifest is not None and found.entry is not None
    return _load_artifact(found.entry, found.manifest, found, store=store,
                          device=device or res.spec.option("device", "cpu") or "cpu", directory=directory)


def load_engine_by_key(key: str, *, store: Store, device: str = "cpu", directory: Path | None = None) -> LoadedEngine:
    """Load by build key (or unique prefix): what a deployment that has only the store uses."""
    from .api import find_artifact

    entry = find_artifact(store, key)
    if entry.spec.get("target") != "torch-aoti":
        raise ToolchainError(f"artifact {entry.key[:12]} is a {entry.spec.get('target')} engine; use `kiln fetch` for it.")
    manifest = store.check_artifact(entry)
    return _load_artifact(entry, manifest, None, store=store, device=device, directory=directory)


def _load_artifact(entry: Any, manifest: Any, found: LookupResult | None, *, store: Store, device: str,
                   directory: Path | None) -> LoadedEngine:
    if directory is None:
        # Under the store root, so materialising hard-links instead of copying; gc removes
        # directories left here by processes that did not exit cleanly (after a day).
        (store.root / "run").mkdir(parents=True, exist_ok=True)
        parent = Path(tempfile.mkdtemp(prefix="engine-", dir=store.root / "run"))
        atexit.register(shutil.rmtree, parent, True)
        directory = parent / "engine"
    store.materialize(manifest, directory)
    store.touch(entry)
    from .targets._aoti_engine import load_engine as _load

    return LoadedEngine(_load(directory, device=device), directory, entry)
