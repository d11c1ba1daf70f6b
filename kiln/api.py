"""The Python API the CLI wraps: resolve, key, lookup, fetch, put, ls, show, verify, gc.

Nothing here imports torch or a compiler toolchain: lookups and fetches run in serving
containers that have neither. Builds (which do) run in worker subprocesses.
"""

from __future__ import annotations

import contextvars
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ._lmi import interpret, properties_from_env, read_serving_properties
from ._models import ModelSource, resolve_model
from .cache._remote import Remote
from .cache._store import Store
from .errors import CorruptBlobError, NotFoundError, RemoteError, SpecError, ToolchainError, UnsafeManifestError
from .manifests._index import IndexEntry, spec_differences, toolchain_differences
from .manifests._manifest import FileEntry, Manifest
from .manifests._record import make_record, utc_now
from .spec import BuildSpec, Field, build_key, key_inputs, spec_from_fields
from .targets import get_target

__all__ = [
    "Resolution",
    "LookupResult",
    "spec_from_sources",
    "parse_toolchain_pins",
    "resolve",
    "compute_key",
    "lookup",
    "fetch",
    "put",
    "list_artifacts",
    "find_artifact",
]


# Where transfer progress goes (the CLI sets a progress bar; the API default is silence).
_transfer_progress: contextvars.ContextVar = contextvars.ContextVar("kiln_transfer_progress", default=None)

# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class SpecSource:
    """A spec plus what its parser decided and ignored (for --explain)."""

    spec: BuildSpec
    ignored: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()
    given: frozenset[str] = frozenset()  # spec fields the user actually wrote (not defaults)


def spec_from_sources(
    flags: Mapping[str, Field],
    *,
    from_env: bool = False,
    env: Mapping[str, str] | None = None,
    serving_properties: Path | None = None,
) -> SpecSource:
    """Merge CLI flags with an LMI env and/or serving.properties into one spec.

    Precedence: explicit CLI flags > serving.properties > OPTION_* env (the file beats the
    environment, as in DJL Serving).
    """
    if not from_env and serving_properties is None:
        return SpecSource(spec_from_fields(flags), given=frozenset(flags))
    props = {}
    if from_env:
        props.update(properties_from_env(os.environ if env is None else env))
    if serving_properties is not None:
        props.update(read_serving_properties(serving_properties))
    env_map = os.environ if env is None else env
    instance = flags.get("option.instance_type")
    target_flag = flags.get("target")
    from .targets._instances import instance_devices

    cores = instance_devices(str(instance.value)) if instance is not None else None
    cfg = interpret(
        props,
        target=str(target_flag.value) if target_flag is not None else None,
        instance_type=str(instance.value) if instance is not None else None,
        instance_cores=cores,
        serving_features=env_map.get("SERVING_FEATURES"),
    )
    merged = {**cfg.fields, **flags}
    given = frozenset(k for k, f in merged.items() if not f.source.startswith("LMI default"))
    return SpecSource(spec_from_fields(merged), cfg.ignored, cfg.notes, given)


def parse_toolchain_pins(pins: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pin in pins:
        for part in str(pin).split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, version = part.partition("=")
            if not sep or not name.strip() or not version.strip():
                raise ToolchainError(
                    f"--toolchain {part!r} is not NAME=VERSION; write e.g. --toolchain neuronx-cc=2.15.128 "
                    "or --toolchain hardware=cuda-sm90."
                )
            out[name.strip()] = version.strip()
    return out


# --------------------------------------------------------------------------- resolution


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

    @property
    def complete(self) -> bool:
        return all(v is not None for v in self.toolchain.values())

    @property
    def unknown_components(self) -> list[str]:
        return sorted(k for k, v in self.toolchain.items() if v is None)

    @property
    def shape(self) -> dict[str, Any]:
        return self.spec.shape_json(self.key_options)

    def inputs(self) -> dict[str, Any]:
        if not self.complete:
            raise ToolchainError(
                f"the {self.spec.target} toolchain is not installed here, so the key cannot be "
                f"computed: {', '.join(self.unknown_components)} unknown. Pin it with "
                + " ".join(f"--toolchain {c}=VERSION" for c in self.unknown_components)
                + " (as on the build machine), or run on a machine with the toolchain."
            )
        return key_inputs(self.spec, self.model.tree_digest, {k: str(v) for k, v in self.toolchain.items()}, self.key_options)

    @property
    def key(self) -> str:
        return build_key(self.inputs())

    def entry_spec(self) -> dict[str, Any]:
        return {**self.shape, "model": self.spec.model}

    def model_summary(self) -> dict[str, Any]:
        m = self.model
        return {"tree_digest": m.tree_digest, "ref": m.ref, "repo_id": m.repo_id, "commit": m.commit}


def resolve(
    source: SpecSource | BuildSpec,
    *,
    store: Store,
    toolchain: Mapping[str, str] | None = None,
) -> Resolution:
    """Resolve the model, validate the spec (fast, before any work), settle the toolchain."""
    if isinstance(source, BuildSpec):
        source = SpecSource(source)
    target = get_target(source.spec.target)
    model = resolve_model(source.spec.model, store.memo)
    resolved = target.validate(source.spec, model.config())
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
            chain[comp], origin[comp] = detected[comp], "detected"
        else:
            chain[comp], origin[comp] = None, "unknown"
    return Resolution(
        spec=resolved.spec,
        model=model,
        toolchain=chain,
        toolchain_origin=origin,
        notes=source.notes + resolved.notes,
        ignored=source.ignored,
        key_options=target.key_options(),
        given=source.given,
    )


def compute_key(source: SpecSource | BuildSpec, *, store: Store, toolchain: Mapping[str, str] | None = None) -> Resolution:
    res = resolve(source, store=store, toolchain=toolchain)
    res.inputs()  # raises ToolchainError with the pins to add when the toolchain is unknown
    return res


# --------------------------------------------------------------------------- lookup


@dataclass(frozen=True)
class LookupResult:
    resolution: Resolution
    entry: IndexEntry | None
    manifest: Manifest | None
    explanation: tuple[str, ...] = ()  # why a miss, and the nearest entries
    damaged: tuple[str, ...] = ()  # loud warnings: matching artifacts that failed verification
    notes: tuple[str, ...] = ()
    source: str | None = None  # "local" or "remote" on a hit
    env: Mapping[str, str] | None = None  # after a fetch in a deployment layout: the consumer's environment

    @property
    def hit(self) -> bool:
        return self.entry is not None and self.manifest is not None

    def to_json(self) -> dict[str, Any]:
        res = self.resolution
        return {
            "hit": self.hit,
            "source": self.source,
            "key": self.entry.key if self.entry else (res.key if res.complete else None),
            "manifest": self.entry.manifest if self.entry else None,
            "spec": res.entry_spec(),
            "model": res.model_summary(),
            "toolchain": dict(res.toolchain),
            "toolchain_origin": dict(res.toolchain_origin),
            "entry": self.entry.to_json() if self.entry else None,
            "explanation": list(self.explanation),
            "damaged": list(self.damaged),
            "notes": list(res.notes) + list(self.notes),
            "env": dict(self.env or {}),
        }


def _matches(res: Resolution, entry: IndexEntry) -> bool:
    if {k: v for k, v in entry.spec.items() if k != "model"} != res.shape:
        return False
    return not toolchain_differences(res.toolchain, entry.toolchain)


def _candidates(res: Resolution, entries: Iterable[IndexEntry]) -> list[IndexEntry]:
    return sorted((e for e in entries if _matches(res, e)), key=lambda e: e.created, reverse=True)


def lookup(res: Resolution, *, store: Store, remote: Remote | None = None) -> LookupResult:
    """Local store first, then the remote (read-through: a remote hit is pulled, verified and
    published locally). Exact lookup when the toolchain is known (one read), else a query over
    the model's entries. A matching artifact that fails verification is a loud miss, never a
    silent hit.
    """
    model_hex = res.model.tree_digest.split(":", 1)[1]
    notes: list[str] = []
    damaged: list[str] = []
    if res.complete:
        exact = store.get_entry(model_hex, res.key)
        candidates = [exact] if exact is not None else []
    else:
        candidates = _candidates(res, store.iter_entries(model_hex))
        if candidates:
            notes.append(
                f"toolchain not installed here ({', '.join(res.unknown_components)} unconstrained): "
                f"{len(candidates)} matching artifact(s), newest chosen; pin --toolchain to choose another"
            )
    for entry in candidates:
        try:
            manifest = store.check_artifact(entry)
        except (CorruptBlobError, NotFoundError, UnsafeManifestError) as e:
            damaged.append(f"artifact {entry.key[:12]} matches but failed verification: {e}")
            continue
        store.touch(entry)
        return LookupResult(res, entry, manifest, (), tuple(damaged), tuple(notes), source="local")

    remote_seen: list[IndexEntry] = []
    if remote is not None:
        from .cache._sync import pull, remote_entries, remote_entry

        if res.complete:
            found = remote_entry(remote, model_hex, res.key)
            remote_cands = [found] if found is not None else []
        else:
            remote_seen = list(remote_entries(remote, model_hex))
            remote_cands = _candidates(res, remote_seen)
        for entry in remote_cands:
            try:
                pulled = pull(store, remote, entry, progress=_transfer_progress.get())
                manifest = store.check_artifact(entry)
            except (RemoteError, CorruptBlobError, NotFoundError, UnsafeManifestError) as e:
                damaged.append(f"remote artifact {entry.key[:12]} on {remote.describe()} failed: {e}")
                continue
            notes.append(
                f"pulled from {remote.describe()}: {pulled.downloaded} blob(s), {pulled.downloaded_bytes} bytes "
                f"downloaded and verified, {pulled.reused} already local"
            )
            return LookupResult(res, entry, manifest, (), tuple(damaged), tuple(notes), source="remote")
        if res.complete:
            remote_seen = list(remote_entries(remote, model_hex))
    local_seen = list(store.iter_entries(model_hex))
    local_keys = {e.key for e in local_seen}
    seen = local_seen + [e for e in remote_seen if e.key not in local_keys]
    where = f"{store.root}" + (f" and {remote.describe()}" if remote else "")
    explanation = explain_miss(res, store=store, seen=seen, where=where) + explain_presets(res)
    return LookupResult(res, None, None, tuple(explanation), tuple(damaged), tuple(notes))


def explain_miss(res: Resolution, *, store: Store, seen: list[IndexEntry], where: str, limit: int = 3) -> list[str]:
    """The closest cached entries and exactly which fields differ (invariant 6)."""
    model_hex = res.model.tree_digest.split(":", 1)[1]
    want = res.shape
    scored = []
    for e in seen:
        if e.spec.get("target") != res.spec.target or "stage" in e.spec:
            continue  # build stages (calibration, checkpoint) are not engines
        have = {k: v for k, v in e.spec.items() if k != "model"}
        diffs = spec_differences(want, have) + toolchain_differences(res.toolchain, e.toolchain)
        scored.append((len(diffs), e.created, e, diffs))
    lines: list[str] = []
    if scored:
        scored.sort(key=lambda t: (t[0], t[1]))
        lines.append(f"{len(scored)} {res.spec.target} artifact(s) for this model in {where}; nearest:")
        for _, _, e, diffs in scored[:limit]:
            lines.append(f"  {e.key[:12]}: " + "; ".join(diffs or ["identical spec (damaged artifact?)"]))
        only_toolchain = all(all(d.startswith("toolchain") for d in t[3]) for t in scored[:1])
        if only_toolchain:
            lines.append(
                "The nearest differs only in toolchain: engines are tied to the compiler version and "
                "hardware they were built with; rebuild here with `kiln build`, or deploy where that "
                "toolchain runs."
            )
        else:
            lines.append("Rebuild for this spec with `kiln build`, or change the deployment config to match an entry.")
        return lines
    others = [
        e for e in store.iter_entries()
        if e.model_hex != model_hex and (
            (res.model.repo_id and e.model.get("repo_id") == res.model.repo_id) or e.model.get("ref") == res.model.ref
        )
    ]
    if others:
        e = max(others, key=lambda x: x.created)
        lines.append(
            f"{len(others)} artifact(s) exist for {res.model.ref} but with other weights: want tree "
            f"{res.model.tree_digest[:19]} (commit {res.model.commit or 'local'}), nearest has "
            f"{str(e.model.get('tree_digest'))[:19]} (commit {e.model.get('commit') or 'local'}). "
            "Weights changed since they were built; rebuild with `kiln build`."
        )
        return lines
    lines.append(
        f"no {res.spec.target} artifact for this model ({res.model.tree_digest[:19]}) in {where}; "
        "build one with `kiln build`."
    )
    return lines


def explain_presets(res: Resolution, limit: int = 3) -> list[str]:
    """Nearest rows of shipped presets for this model and target (what could be prebuilt)."""
    from .presets import PRESETS, load_preset

    names = {res.spec.model, res.model.repo_id, res.model.ref} - {None}
    lines: list[str] = []
    for preset, (_, target, _) in PRESETS.items():
        if target != res.spec.target:
            continue
        scored = []
        for row in load_preset(preset):
            if row.model not in names:
                continue
            row_spec = spec_from_fields(row.fields())
            have = row_spec.shape_json(res.key_options)
            diffs = spec_differences(res.shape, have)
            scored.append((len(diffs), row.id, diffs))
        if scored:
            scored.sort()
            lines.append(f"nearest rows of preset {preset} (`kiln build --preset {preset}` builds them):")
            lines.extend(f"  {rid}: " + ("; ".join(d) or "matches this spec") for _, rid, d in scored[:limit])
    return lines


def select(res: Resolution, *, store: Store, remote: Remote | None = None) -> LookupResult:
    """Choose, among the stored engines of this model and target, the best for the instance.

    Like NVIDIA NIM's profile selection: the fields the user gave (flags, env, properties)
    must match; the others are free. Candidates must fit the hardware (hardware class, and
    tp_degree at most the instance's NeuronCores/GPUs); among them the largest tp_degree wins
    (all devices used), then the largest batch size, then the longest n_positions, then the
    newest. The notes say what was chosen and why the others were not.
    """
    from .targets._instances import instance_devices

    instance = res.spec.option("instance_type")
    if not instance:
        raise SpecError("--select chooses for an instance: pass --instance-type (e.g. ml.inf2.24xlarge).")
    devices = instance_devices(instance)
    model_hex = res.model.tree_digest.split(":", 1)[1]
    entries = {e.key: e for e in store.iter_entries(model_hex)}
    if remote is not None:
        from .cache._sync import remote_entries

        for e in remote_entries(remote, model_hex):
            entries.setdefault(e.key, e)
    fields = {"n_positions", "batch_size", "tp_degree", "dtype"} & res.given
    fields |= {"quantization"} if {"smoothquant_alpha", "int8_kv_cache"} & res.given else set()
    fit, rejected = [], []
    for e in entries.values():
        if e.spec.get("target") != res.spec.target or "stage" in e.spec:
            continue
        why = [d for d in spec_differences({k: res.shape[k] for k in fields}, {k: e.spec.get(k) for k in fields})]
        why += toolchain_differences(res.toolchain, e.toolchain)
        if devices is not None and e.spec["tp_degree"] > devices:
            why.append(f"tp_degree {e.spec['tp_degree']} > {devices} devices of {instance}")
        (rejected if why else fit).append((e, why))
    fit.sort(key=lambda t: (t[0].spec["tp_degree"], t[0].spec["batch_size"], t[0].spec["n_positions"], t[0].created),
             reverse=True)
    notes = [f"selecting for {instance} ({devices if devices is not None else '?'} devices) among {len(entries)} "
             f"stored {res.spec.target} engine(s) of this model; constrained by: {', '.join(sorted(fields)) or 'nothing'}"]
    for e, _ in fit:
        s_ = e.spec
        label = f"{e.key[:12]} (n_positions {s_['n_positions']}, batch {s_['batch_size']}, tp {s_['tp_degree']}, {s_['dtype']})"
        notes.append(("chosen: " if e is fit[0][0] else "fits, ranked lower: ") + label)
    for e, why in rejected[:5]:
        notes.append(f"rejected {e.key[:12]}: " + "; ".join(why))
    for e, _ in fit:
        try:
            if store.get_entry(model_hex, e.key) is None and remote is not None:
                from .cache._sync import pull

                pull(store, remote, e, progress=_transfer_progress.get())
            manifest = store.check_artifact(e)
        except (RemoteError, CorruptBlobError, NotFoundError, UnsafeManifestError) as err:
            notes.append(f"chosen engine {e.key[:12]} failed verification, trying the next: {err}")
            continue
        store.touch(e)
        return LookupResult(res, e, manifest, (), (), tuple(notes), source="local")
    return LookupResult(res, None, None, tuple(notes[1:] or ["no stored engine of this model and target at all"]),
                        (), tuple(notes[:1]))


def fetch(
    res: Resolution,
    dest: Path,
    *,
    store: Store,
    remote: Remote | None = None,
    replace: bool = False,
    copy: bool = False,
    layout: str = "raw",
    container_dir: str | None = None,
) -> tuple[LookupResult, Path | None]:
    """Lookup (local, then remote), then materialise a hit into ``dest`` in ``layout``."""
    result = lookup(res, store=store, remote=remote)
    if not result.hit:
        return result, None
    assert result.manifest is not None and result.entry is not None
    try:
        path, env = materialize_layout(store, result.entry, result.manifest, dest, layout=layout,
                                       replace=replace, copy=copy, container_dir=container_dir)
    except (CorruptBlobError, NotFoundError) as e:
        # A blob went bad (or gc removed it) between lookup and materialise: a loud miss.
        damaged = result.damaged + (f"artifact {result.entry.key[:12]} failed while fetched: {e}",)
        return LookupResult(res, None, None, ("fetch again, or rebuild with `kiln build`",), damaged), None
    return LookupResult(res, result.entry, result.manifest, result.explanation, result.damaged, result.notes,
                        result.source, env), path


def materialize_layout(
    store: Store,
    entry: IndexEntry,
    manifest: Manifest,
    dest: Path,
    *,
    layout: str = "raw",
    replace: bool = False,
    copy: bool = False,
    container_dir: str | None = None,
) -> tuple[Path, dict[str, str]]:
    """Materialise an artifact in a deployment layout; return the path and the consumer's env."""
    from .manifests._layouts import plan_layout
    from .manifests._manifest import MAX_CONFIG_BYTES as _MAX

    dest = Path(dest).absolute()
    plan = plan_layout(layout, entry, manifest, lambda d: store.read_blob(d, _MAX), dest=str(dest),
                       container_dir=container_dir)
    # Generated files become (tiny) blobs; the shared lock keeps gc from collecting them
    # before they are linked into place.
    with store.writer_lock():
        files = list(plan.files)
        for rel, data in sorted(plan.generated.items()):
            digest, size = store.put_bytes(data)
            files.append(FileEntry(rel, digest, size))
        derived = Manifest.parse(Manifest(manifest.config, tuple(files)).to_bytes())  # re-validate every path
        path = store.materialize(derived, dest, replace=replace, copy=copy)
    return path, dict(plan.env)


# --------------------------------------------------------------------------- put / query


def put(
    res: Resolution,
    artifact_dir: Path,
    *,
    store: Store,
    duration_s: float = 0.0,
    started: str | None = None,
    move: bool = False,
    extra: Mapping[str, Any] | None = None,
    command: Sequence[str] | None = None,
) -> IndexEntry:
    """Publish a directory as the artifact for ``res`` (blobs, manifest, index entry last)."""
    inputs = res.inputs()
    key = build_key(inputs)
    record = make_record(
        key=key,
        inputs=inputs,
        spec=res.spec.to_json(),
        model=res.model.to_json(),
        toolchain={k: str(v) for k, v in res.toolchain.items()},
        started=started or utc_now(),
        duration_s=duration_s,
        notes=res.notes,
        command=command,
        extra=extra,
    )
    return store.publish(
        artifact_dir,
        key=key,
        spec=res.entry_spec(),
        model=res.model_summary(),
        toolchain={k: str(v) for k, v in res.toolchain.items()},
        record=record,
        move=move,
    )


@dataclass(frozen=True)
class Query:
    """Filters for `kiln ls` / queries: every field optional."""

    model_hex: str | None = None
    ref: str | None = None
    target: str | None = None
    n_positions: int | None = None
    batch_size: int | None = None
    tp_degree: int | None = None
    dtype: str | None = None
    toolchain: Mapping[str, str] = field(default_factory=dict)

    def matches(self, e: IndexEntry) -> bool:
        s = e.spec
        if self.ref is not None and self.ref not in (e.model.get("ref"), e.model.get("repo_id")):
            return False
        for name in ("target", "n_positions", "batch_size", "tp_degree", "dtype"):
            want = getattr(self, name)
            if want is not None and s.get(name) != want:
                return False
        return all(e.toolchain.get(k) == v for k, v in self.toolchain.items())


def list_artifacts(store: Store, query: Query | None = None) -> list[IndexEntry]:
    query = query or Query()
    entries = [e for e in store.iter_entries(query.model_hex) if query.matches(e)]
    return sorted(entries, key=lambda e: e.created, reverse=True)


def find_artifact(store: Store, ref: str) -> IndexEntry:
    """An entry by key (or unique key prefix of at least 6 hex digits) or manifest digest."""
    ref = ref.strip().lower()
    wanted = ref[len("sha256:"):] if ref.startswith("sha256:") else ref
    if len(wanted) < 6:
        raise SpecError(f"{ref!r} is too short to name an artifact; give at least 6 hex digits of its key.")
    found = [
        e for e in store.iter_entries()
        if e.key.startswith(wanted) or e.manifest.split(":", 1)[1].startswith(wanted)
    ]
    if not found:
        raise NotFoundError(f"no artifact with key or manifest digest starting {wanted!r} in {store.root}; see `kiln ls`.")
    if len({e.key for e in found}) > 1:
        raise SpecError(f"{wanted!r} matches {len(found)} artifacts; give more digits of the key.")
    return found[0]




