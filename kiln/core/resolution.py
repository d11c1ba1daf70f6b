"""Resolution: a spec checked against its model, its target and this machine's toolchain.

A :class:`Resolution` holds everything a build key needs. Resolving is fast (no weights are
read beyond hashing, memoised) and happens before any expensive work, so bad input fails in
milliseconds with a message naming the value and the fix. The order is cheapest first: the
spec's target (against the registry, aliases normalised), the model's directory and its
config.json (each field validation reads is checked, naming the file), the spec against the
model and target — and only then are the model's files hashed.

This is where the Python API and the CLI meet: ``kiln.resolve(kiln.BuildSpec(...))`` and
``kiln key ...`` run the same checks and raise the same :class:`~kiln.errors.KilnError` s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..cache import Store
from .._input import show
from ..errors import SpecError, ToolchainError
from ..models import ModelSource, architecture_or_why, keep_model_record, locate_or_recall, resolve_model
from ..spec import BuildSpec, build_key, key_inputs
from ..targets import TOKENIZER_FILES, get_target, normalize_target
from ..targets.base import model_dims
from .specs import SpecSource

if TYPE_CHECKING:  # annotations only: the remotes are imported when one is opened
    from ..cache import Remote

__all__ = ["Resolution", "resolve", "compute_key"]


@dataclass(frozen=True)
class Resolution:
    """A spec resolved against its model and this machine: everything a key needs."""

    spec: BuildSpec  # resolved (defaults filled)
    model: ModelSource
    toolchain: Mapping[str, str | None]  # None: not installed here and not pinned
    toolchain_origin: Mapping[str, str]  # component -> "detected" / "pinned" / "unknown"
    notes: tuple[str, ...] = ()
    ignored: tuple[tuple[str, str], ...] = ()
    key_options: frozenset[str] = field(default_factory=frozenset)
    given: frozenset[str] = field(default_factory=frozenset)
    warnings: tuple[str, ...] = ()  # worth telling whoever builds this (never changes the key)
    model_note: str | None = None  # how a model record resolved the model (also in notes); None: from its files
    # A weight-independent target: the model's architecture digest (kiln.models._architecture), which keys
    # the compiled engine; None: the target embeds the weights, or the model has none (architecture_note: why).
    architecture_digest: str | None = None
    architecture_note: str | None = None

    @property
    def complete(self) -> bool:
        return all(v is not None for v in self.toolchain.values())

    @property
    def unknown_components(self) -> list[str]:
        return sorted(k for k, v in self.toolchain.items() if v is None)

    @property
    def shape(self) -> dict[str, Any]:
        return self.spec.shape_json(self.key_options)

    @property
    def model_hex(self) -> str:
        return self.model.tree_digest.split(":", 1)[1]

    def model_identity(self) -> dict[str, str]:
        """What identifies the model in the build key: its weights, and its architecture where that keys the engine."""
        identity = {"tree_digest": self.model.tree_digest}
        if self.architecture_digest is not None:
            identity["architecture_digest"] = self.architecture_digest
        return identity

    def engine_identity(self) -> dict[str, str]:
        """What the compiled engine of a weight-independent target is keyed by: the architecture, else the weights."""
        if self.architecture_digest is not None:
            return {"architecture_digest": self.architecture_digest}
        return {"tree_digest": self.model.tree_digest}

    @property
    def engine_key(self) -> str | None:
        """A weight-independent target: the key of its compiled engine (a build stage); None otherwise."""
        target = get_target(self.spec.target)
        return target.engine_stage(self).key if target.weight_independent else None

    def key_parts(self) -> dict[str, Any]:
        """Which inputs key the compiled engine and which the weights (`kiln key --explain`)."""
        target = get_target(self.spec.target)
        if not target.weight_independent:
            return {"engine": {"key": None, "keyed_by": ["spec", "toolchain", "model.tree_digest"],
                               "why": f"{target.name} engines hold the weights: keyed by them"},
                    "weights": None}
        engine: dict[str, Any] = {"key": self.engine_key, "keyed_by": ["spec", "toolchain"]}
        if self.architecture_digest is not None:
            engine["keyed_by"].append("model.architecture_digest")
            signature = self.model.signature
            engine["architecture"] = {
                "digest": self.architecture_digest,
                "tensors": signature.tensors if signature is not None else None,
                "config_fields_left_out": dict(target.config_fields_without_compute),
            }
        else:
            engine["keyed_by"].append("model.tree_digest")
            engine["why"] = f"no architecture digest: {self.architecture_note}"
        return {"engine": engine, "weights": {"keyed_by": ["model.tree_digest"]}}

    def inputs(self) -> dict[str, Any]:
        if not self.complete:
            raise ToolchainError(
                f"the {self.spec.target} toolchain is not installed here, so the key cannot be "
                f"computed: {', '.join(self.unknown_components)} unknown. Pin it with "
                + " ".join(f"--toolchain {c}=VERSION" for c in self.unknown_components)
                + " (as on the build machine), or run on a machine with the toolchain."
            )
        return key_inputs(self.spec, self.model_identity(), {k: str(v) for k, v in self.toolchain.items()}, self.key_options)

    @property
    def key(self) -> str:
        return build_key(self.inputs())

    def entry_spec(self) -> dict[str, Any]:
        return {**self.shape, "model": self.spec.model}

    def model_summary(self) -> dict[str, Any]:
        m = self.model
        return {**self.model_identity(), "ref": m.ref, "repo_id": m.repo_id, "commit": m.commit}

    def model_json(self) -> dict[str, Any]:
        """The build record's model: the resolved source (every file), and its architecture digest where keyed."""
        data = self.model.to_json()
        if self.architecture_digest is not None:
            data["architecture_digest"] = self.architecture_digest
        return data


def resolve(
    source: SpecSource | BuildSpec,
    *,
    store: Store,
    toolchain: Mapping[str, str] | None = None,
    remote: Remote | Callable[[], Remote | None] | None = None,
    strict_revision: bool | None = None,
) -> Resolution:
    """Resolve the model, validate the spec (fast, before any work), settle the toolchain.

    Raises a :class:`~kiln.errors.KilnError` naming the bad value and the fix: SpecError for
    an unknown target, ModelError for a model that cannot be found or read (config.json
    included), ValidationError for a spec that does not fit the model or the target.

    Model records (:mod:`kiln.models._recorded`): a Hub id resolved from its snapshot is
    recorded in ``store``; one whose snapshot is not here (offline) resolves from the records
    of ``store``, then of ``remote`` (a Remote, or a callable opening it only when needed), a
    branch or tag to its newest recorded commit with a note — unless ``strict_revision``
    (None: ``KILN_STRICT_REVISION``), which refuses all but ``@<commit>``. Such a model has no
    files here: key, lookup and fetch work, a build says the weights are missing.
    """
    if isinstance(source, BuildSpec):
        source = SpecSource(source)
    elif not isinstance(source, SpecSource):
        raise SpecError(f"resolve() takes a kiln.BuildSpec (or a SpecSource), not {show(source)}.")
    spec = source.spec
    name = normalize_target(spec.target, "target")  # the CLI's check and message; aliases allowed
    if name != spec.target:
        spec = spec.replace(target=name)
    target = get_target(name)
    opener = remote if callable(remote) or remote is None else (lambda: remote)
    location = locate_or_recall(spec.model, store=store, remote=opener, strict=strict_revision,
                                signature=target.weight_independent)
    config = location.config()
    model_dims(config, str(location.config_path))  # every field validation reads, checked naming the file
    resolved = target.validate(spec, config)
    model = resolve_model(location, store.memo)  # hashing last: bad input never waits for it
    keep_model_record(store, model)  # best effort: what a machine without the weights resolves it by
    pins = dict(toolchain or {})
    unknown = set(pins) - set(target.components)
    if unknown:
        raise ToolchainError(
            f"--toolchain {', '.join(sorted(unknown))}: not a component of the {target.name} "
            f"toolchain; its components are {', '.join(target.components)}."
        )
    detected = target.detect_toolchain(resolved.spec)
    chain: dict[str, str | None] = {}
    origin: dict[str, str] = {}
    for comp in target.components:
        if comp in pins:
            chain[comp], origin[comp] = pins[comp], "pinned"
        elif detected.get(comp) is not None:
            chain[comp], origin[comp] = detected[comp], target.toolchain_source(resolved.spec, comp)
        else:
            chain[comp], origin[comp] = None, "unknown"
    warnings = []
    names = {f.path.rsplit("/", 1)[-1] for f in model.files}
    if not names & set(TOKENIZER_FILES) and not any(n.endswith(".gguf") for n in names):  # GGUF embeds its tokenizer
        warnings.append(
            f"model {model.ref} has no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, …): the artifact will hold "
            "none, so `kiln generate` and servers that tokenize text cannot use it; add them to the model directory."
        )
    architecture, architecture_note = None, None
    if target.weight_independent:
        architecture, architecture_note = architecture_or_why(
            config, model.signature, model.signature_note, target.config_fields_without_compute)
    return Resolution(
        spec=resolved.spec,
        model=model,
        toolchain=chain,
        toolchain_origin=origin,
        notes=source.notes + ((location.note,) if location.note else ()) + resolved.notes,
        ignored=source.ignored,
        key_options=target.key_options(),
        given=source.given,
        warnings=tuple(warnings),
        model_note=location.note,
        architecture_digest=architecture,
        architecture_note=architecture_note,
    )


def compute_key(source: SpecSource | BuildSpec, *, store: Store, toolchain: Mapping[str, str] | None = None) -> Resolution:
    """Like :func:`resolve`, but raise ToolchainError (naming the pins to add) unless the key is computable."""
    res = resolve(source, store=store, toolchain=toolchain)
    res.inputs()
    return res
