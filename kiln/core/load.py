"""Load a stored engine inside a server: lookup → materialise → load, never compile.

Which targets load in-process, and how, is each target's answer (``Target.loads_in_process``,
``Target.load_engine``); others are materialised with `kiln fetch --dest` for their runtime.

The device, one rule for both entry points: an engine runs on the device it was compiled for,
which is its spec's ``device`` option (torch-aoti: ``-o device=cuda``; absent means ``cpu``).
For :func:`load_engine` that is the spec of the artifact the lookup found, for
:func:`load_engine_by_key` the stored entry's spec. Passing ``device=`` overrides it (for
example ``"cuda:1"`` to choose a GPU for a CUDA engine).

What a loaded engine uses is pinned: the lookup and the materialisation run under the store's
reader lock (gc cannot evict the artifact in between), and the run directory it is
materialised into is leased by this process for as long as it lives (gc never removes a
leased one, whatever its age). A read-only store still serves: the engine is then copied
into a private temporary directory instead of a run directory of the store.
"""

from __future__ import annotations

import atexit
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cache import Store
from ..errors import ModelError, NotFoundError, StoreError, ToolchainError
from ..manifests import IndexEntry, Manifest
from ..targets import TOKENIZER_FILES, get_target
from .artifacts import find_artifact
from .find import lookup
from .resolution import Resolution

if TYPE_CHECKING:  # annotations only: the remotes are imported when one is opened
    from ..cache import Remote

__all__ = ["LoadedEngine", "load_engine", "load_engine_by_key", "engine_device"]


def engine_device(entry: IndexEntry) -> str:
    """The device an artifact's engine was compiled for: its spec's ``device`` option, else cpu."""
    options = entry.spec.get("options") if isinstance(entry.spec, dict) else None
    device = options.get("device") if isinstance(options, dict) else None
    return str(device) if device else "cpu"


@dataclass
class LoadedEngine:
    """A stored engine loaded in this process, with the directory it was materialised into."""

    engine: Any  # the target's engine object (torch-aoti: kiln.targets.torch_aoti.runtime.Engine)
    directory: Path  # the materialised artifact (tokenizer and config live here too)
    entry: IndexEntry  # the index entry it came from

    def fast_tokenizer(self) -> Any:
        """The model's ``tokenizer.json`` through the ``tokenizers`` library (``tokenizers.Tokenizer``):
        what a server that only encodes and decodes needs, without importing transformers (about
        2 s of a cold start on 2 cores, scripts/bench_coldstart.py).

        It is the file as saved, without what transformers changes after loading it: no chat
        template, and special tokens as the file's post-processor adds them (transformers may
        rebuild that from ``add_bos_token``/``add_eos_token`` in tokenizer_config.json), so use
        ``encode(text, add_special_tokens=False)`` and add them yourself, or :meth:`tokenizer`,
        where the two may differ. Truncation and padding saved in the file are switched off."""
        path = self.directory / "tokenizer.json"
        if not path.is_file():
            raise ModelError(
                f"artifact {self.entry.key[:12]} holds no tokenizer.json (a fast tokenizer): use "
                "LoadedEngine.tokenizer(), which reads the model's other tokenizer files through transformers."
            )
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ModelError("LoadedEngine.fast_tokenizer() needs the `tokenizers` package: pip install tokenizers") from None
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises its own Exception type for a bad file
            raise ModelError(f"the tokenizer.json stored with artifact {self.entry.key[:12]} cannot be loaded: {e}") from None
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return tokenizer

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


def load_engine(res: Resolution, *, store: Store, remote: Remote | None = None, device: str | None = None,
                directory: Path | None = None) -> LoadedEngine:
    """Find the engine for ``res`` and load it; a miss raises NotFoundError with the explanation.

    Looks in ``store``, then in ``remote`` (as :func:`kiln.lookup` does: a remote hit is pulled
    and verified into ``store``); never compiles. ``device``: None (the default) runs the
    engine on the device it was built for (see the module docstring); ``directory``: where to
    materialise it (default: a run directory of the store, removed at exit).
    """
    target = get_target(res.spec.target)
    if not target.loads_in_process:
        raise ToolchainError(
            f"{target.name} engines are loaded by their own runtime; materialise one with "
            "`kiln fetch --dest DIR` and point the runtime at DIR."
        )
    with store.reader_lock(create=remote is not None):  # the pin, from the lookup until it is in place
        found = lookup(res, store=store, remote=remote)
        if not found.hit:
            lines = "\n".join(found.damaged + found.explanation)
            raise NotFoundError(
                f"no {target.name} engine for {res.model.ref} with {res.spec.summary()}.\n{lines}\n"
                f"Build it first: kiln build {res.model.ref} {res.spec.cli_flags()}"
            )
        assert found.manifest is not None and found.entry is not None
        directory = _materialize(found.entry, found.manifest, store=store, directory=directory)
    return _load(found.entry, directory, device)


def load_engine_by_key(key: str, *, store: Store, device: str | None = None, directory: Path | None = None) -> LoadedEngine:
    """Load by build key (or unique prefix): what a deployment that has only the store uses.

    ``device`` and ``directory`` as for :func:`load_engine`: by default the engine runs on the
    device its stored spec names.
    """
    entry = find_artifact(store, key)
    target = get_target(str(entry.spec.get("target")))
    if not target.loads_in_process:
        raise ToolchainError(f"artifact {entry.key[:12]} is a {target.name} engine; use `kiln fetch` for it.")
    with store.reader_lock():
        manifest = store.check_artifact(entry)
        store.check_trusted(entry, manifest)  # an engine is code: the trust policy first
        directory = _materialize(entry, manifest, store=store, directory=directory)
    return _load(entry, directory, device)


def _materialize(entry: IndexEntry, manifest: Manifest, *, store: Store, directory: Path | None) -> Path:
    """Materialise into ``directory``, or by default into a leased run directory (removed at exit)."""
    link = False
    if directory is None:
        try:
            parent = store.new_run_dir()  # leased by this process until it exits
        except StoreError:  # a read-only store has no run directories: a private temp one
            import shutil
            import tempfile

            parent = Path(tempfile.mkdtemp(prefix="kiln-engine-"))
            atexit.register(shutil.rmtree, parent, True)
        else:
            atexit.register(store.release_run_dir, parent)
            link = True  # Kiln's own run directory under the store: hard links (instant; nothing writes into it)
        directory = parent / "engine"
    store.materialize(manifest, directory, link=link)
    store.touch(entry)
    return directory


def _load(entry: IndexEntry, directory: Path, device: str | None) -> LoadedEngine:
    engine = get_target(str(entry.spec.get("target"))).load_engine(directory, device or engine_device(entry))
    return LoadedEngine(engine, directory, entry)
