"""Finding artifacts: the one loop every lookup runs, miss explanations, and selection.

Every way Kiln looks for a stored artifact — an engine lookup, a build stage, ``--select``
for an instance — walks candidates in order through :func:`first_verified`: a local entry is
checked in place (its manifest and every blob), a remote one is pulled (verified blob by blob
on the way in) and checked again; the first that holds wins, and each that fails is a loud
warning, never a silent hit (DESIGN invariant 3). The remote is consulted only when no local
candidate holds.

:func:`find_by_key` is the same loop for a deployment pinned to a build key (``--key``), no
model needed: a key prefix names the artifact in the first place that has one — the local
store, else the remote (its index listed by name, ``index/<model hex>/<key>.json``, only the
matching entries read) — and a prefix that names two artifacts there is an error listing them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from .._input import show
from .. import cache  # cache.pull, cache.remote_entry…: the transfers, imported once a remote is asked
from ..cache import Store
from ..errors import CorruptBlobError, KilnError, NotFoundError, RemoteError, SpecError, TrustError, UnsafeManifestError
from ..manifests import IndexEntry, Manifest, spec_differences, toolchain_differences
from ..targets import get_target
from ..targets.instances import instance_devices
from .progress import current_progress
from .resolution import Resolution
from .specs import spec_from_fields

if TYPE_CHECKING:  # annotations only: the remotes are imported when one is opened
    from ..cache import Remote

__all__ = ["LookupResult", "Found", "first_verified", "find_entry", "find_by_key", "key_prefix", "ambiguous_key", "lookup",
           "lookup_any", "select", "matches", "explain_miss"]

LOCAL, REMOTE = "local", "remote"


@dataclass(frozen=True)
class Found:
    """What :func:`first_verified` found: the entry and manifest (or None), and what failed on the way."""

    entry: IndexEntry | None
    manifest: Manifest | None
    source: str | None  # "local" or "remote"
    damaged: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def requested_models(res: Resolution) -> tuple[str, ...]:
    """The model names a deployment asked for (Hub id, ref): a trust policy's ``models`` must admit
    them as well as the model the artifact names (see kiln.trust._policy.TrustedKey.refuses)."""
    return tuple(n for n in (res.model.repo_id, res.model.ref) if n)


def first_verified(store: Store, remote: Remote | None, candidates: Iterable[tuple[IndexEntry, str]],
                   requested: tuple[str, ...] = ()) -> Found:
    """The first candidate ``(entry, "local"|"remote")`` whose artifact verifies.

    ``candidates`` may be a generator: it is advanced only as far as needed, so a remote is
    listed only when no local candidate held.

    The store's trust policy (``store.trust``) is applied to each: a local artifact once it
    verified, a remote one inside the pull, before its file blobs move. A refused candidate is
    passed over (another may be signed); when none is served and one was refused, the refusals
    are a TrustError (exit 2), never a quiet miss that a build would paper over.
    """
    damaged: list[str] = []
    notes: list[str] = []
    refused: list[str] = []
    for entry, where in candidates:
        try:
            if where == REMOTE:
                assert remote is not None
                pulled = cache.pull(store, remote, entry, progress=current_progress(), requested=requested)
            manifest = store.check_artifact(entry)
            trusted = pulled.trusted if where == REMOTE else store.check_trusted(entry, manifest, requested=requested)
        except TrustError as e:
            refused.append(str(e))
            continue
        except (RemoteError, CorruptBlobError, NotFoundError, UnsafeManifestError) as e:
            if where == REMOTE:
                damaged.append(f"remote artifact {entry.key[:12]} on {remote.describe()} failed: {e}")  # type: ignore[union-attr]
            else:
                damaged.append(f"artifact {entry.key[:12]} matches but failed verification: {e}")
            continue
        if where == REMOTE:
            notes.append(
                f"pulled from {remote.describe()}: {pulled.downloaded} blob(s), {pulled.downloaded_bytes} bytes "  # type: ignore[union-attr]
                f"downloaded and verified, {pulled.reused} already local"
            )
        if trusted is not None:
            notes.append(f"signed by {trusted.key_name} ({trusted.fingerprint}): accepted by the trust policy")
        store.touch(entry)
        return Found(entry, manifest, where, tuple(damaged + refused), tuple(notes))
    if refused:
        raise TrustError(" ".join(refused) if len(refused) == 1 else
                         f"{len(refused)} matching artifacts were refused: " + " | ".join(refused))
    return Found(None, None, None, tuple(damaged), tuple(notes))


def find_entry(store: Store, remote: Remote | None, model_hex: str, key: str,
               requested: tuple[str, ...] = ()) -> Found:
    """The artifact (or stage) with exactly this key: local, else pulled from the remote."""

    def candidates() -> Iterator[tuple[IndexEntry, str]]:
        entry = store.get_entry(model_hex, key)
        if entry is not None:
            yield entry, LOCAL
        if remote is not None:
            found = cache.remote_entry(remote, model_hex, key)
            if found is not None:
                yield found, REMOTE

    return first_verified(store, remote, candidates(), requested)


# --------------------------------------------------------------------------- by key alone

MIN_KEY_PREFIX = 12  # 48 bits: a deployment's pin cannot name another build by accident


def key_prefix(ref: str, min_digits: int = MIN_KEY_PREFIX) -> str:
    """``ref`` as a lowercase key prefix; SpecError unless it is ``min_digits`` to 64 hex digits."""
    wanted = ref.strip().lower()
    if not re.fullmatch("[0-9a-f]{%d,64}" % min_digits, wanted):
        raise SpecError(f"--key {show(ref)} is not a build key: give the key (64 hex digits) or at least "
                        f"{min_digits} of its first digits (`kiln ls` and `kiln ls --remote` list them).")
    return wanted


def ambiguous_key(wanted: str, entries: Iterable[IndexEntry | str], where: str) -> SpecError:
    """The error for a prefix that names more than one artifact: every candidate, so the user can pick."""
    described: dict[str, str] = {}
    for e in entries:
        if isinstance(e, str):
            described.setdefault(e, e)
        else:
            described.setdefault(e.key, f"{e.key} ({show(e.model.get('ref'))}, {show(e.spec.get('target'))})")
    shown = sorted(described.values())
    more = f", and {len(shown) - 10} more" if len(shown) > 10 else ""
    return SpecError(f"{wanted!r} matches {len(shown)} artifacts in {where}: {'; '.join(shown[:10])}{more}. "
                     "Give more digits of the key (the full key pins one build).")


def find_by_key(store: Store, remote: Remote | None, ref: str) -> Found:
    """The artifact whose key is ``ref`` or starts with it (at least 12 hex digits): local, else remote.

    Verification, the pull, the pin (the caller's reader lock) and the warnings are those of
    every lookup (:func:`first_verified`). A local match that fails verification is looked for
    on the remote under its exact key (a pull repairs it). SpecError when the prefix is
    ambiguous where it is looked up; RemoteError when the remote cannot be listed or read.
    """
    wanted = key_prefix(ref)
    local = [e for e in store.iter_entries() if e.key.startswith(wanted)]
    if len({e.key for e in local}) > 1:
        raise ambiguous_key(wanted, local, str(store.root))

    def candidates() -> Iterator[tuple[IndexEntry, str]]:
        yield from ((e, LOCAL) for e in local)
        if remote is None:
            return
        if local:
            names = [(local[0].model_hex, local[0].key)]
        else:  # the names alone say which entries to read: the remote's index is not read whole
            names = remote.entry_names(wanted)
            if len({key for _, key in names}) > 1:
                raise ambiguous_key(wanted, (key for _, key in names), remote.describe())
        for model_hex, key in names:
            entry = cache.remote_entry(remote, model_hex, key)  # a malformed one is warned about and skipped
            if entry is not None:
                yield entry, REMOTE

    return first_verified(store, remote, candidates())


# --------------------------------------------------------------------------- engine lookups


@dataclass(frozen=True)
class LookupResult:
    """The answer of :func:`lookup` / :func:`select`: the hit (entry and manifest), or why it missed."""

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
        """The result as ``kiln lookup --json`` prints it (docs/json/lookup.schema.json).

        ``spec``, ``toolchain`` and ``model`` describe the artifact found — for ``--select``
        that is the chosen engine, whose shape may differ from the query's — and on a miss
        what was looked for; ``query`` is always what was asked (spec, toolchain, its key).
        """
        res = self.resolution
        query = {
            "key": res.key if res.complete else None,
            "spec": res.entry_spec(),
            "model": res.model_summary(),
            "toolchain": dict(res.toolchain),
        }
        e = self.entry if self.hit else None
        return {
            "status": "hit" if self.hit else "miss",
            "hit": self.hit,
            "source": self.source,
            "key": e.key if e else query["key"],
            "manifest": e.manifest if e else None,
            "spec": dict(e.spec) if e else query["spec"],
            "model": dict(e.model) if e else query["model"],
            "toolchain": dict(e.toolchain) if e else query["toolchain"],
            "query": query,
            "toolchain_origin": dict(res.toolchain_origin),
            "entry": e.to_json() if e else None,
            "explanation": list(self.explanation),
            "damaged": list(self.damaged),
            "notes": list(res.notes) + list(self.notes),
            "env": dict(self.env or {}),
        }


def matches(res: Resolution, entry: IndexEntry) -> bool:
    """Does ``entry`` hold an engine for ``res`` (same shape; toolchain where ``res`` constrains it)?"""
    if {k: v for k, v in entry.spec.items() if k != "model"} != res.shape:
        return False
    return not toolchain_differences(res.toolchain, entry.toolchain)


def newest_matching(res: Resolution, entries: Iterable[IndexEntry]) -> list[IndexEntry]:
    return sorted((e for e in entries if matches(res, e)), key=lambda e: e.created, reverse=True)


def lookup(res: Resolution, *, store: Store, remote: Remote | None = None) -> LookupResult:
    """Local store first, then the remote (read-through: a remote hit is pulled, verified and
    published locally). Exact lookup when the toolchain is known (one read), else a query over
    the model's entries. A matching artifact that fails verification is a loud miss, never a
    silent hit.
    """
    if res.complete:
        found = find_entry(store, remote, res.model_hex, res.key, requested_models(res))
        notes: tuple[str, ...] = ()
        remote_seen: list[IndexEntry] | None = None
    else:
        local = newest_matching(res, store.iter_entries(res.model_hex))
        notes = ((f"toolchain not installed here ({', '.join(res.unknown_components)} unconstrained): "
                  f"{len(local)} matching artifact(s), newest chosen; pin --toolchain to choose another"),) if local else ()
        remote_seen = []

        def candidates() -> Iterator[tuple[IndexEntry, str]]:
            yield from ((e, LOCAL) for e in local)
            if remote is not None:
                remote_seen.extend(cache.remote_entries(remote, res.model_hex))
                yield from ((e, REMOTE) for e in newest_matching(res, remote_seen))

        found = first_verified(store, remote, candidates(), requested_models(res))
    if found.entry is not None:
        return LookupResult(res, found.entry, found.manifest, (), found.damaged, notes + found.notes, found.source)
    if remote is not None and remote_seen is None:
        remote_seen = list(cache.remote_entries(remote, res.model_hex))
    local_seen = list(store.iter_entries(res.model_hex))
    local_keys = {e.key for e in local_seen}
    seen = local_seen + [e for e in remote_seen or [] if e.key not in local_keys]
    where = f"{store.root}" + (f" and {remote.describe()}" if remote else "")
    explanation = explain_miss(res, store=store, seen=seen, where=where, local_keys=local_keys) + explain_presets(res)
    return LookupResult(res, None, None, tuple(explanation), found.damaged, notes + found.notes)


def lookup_any(candidates: list[tuple[str, Resolution]], refused: list[tuple[str, str]], *, store: Store,
               remote: Remote | None = None, select_one: bool = False) -> LookupResult:
    """One lookup for a query whose consumer is open: each ``(consumer, resolution)`` in turn (newest release
    first). The local store answers first (the newest hit of any consumer); only when none holds one is the
    remote asked, candidate by candidate, so at most one artifact is pulled. ``refused``: the consumers that
    would not load this configuration, with why (said on a miss)."""
    find = select if select_one else lookup
    tried = ", ".join(c for c, _ in candidates)
    local = [(c, find(res, store=store, remote=None)) for c, res in candidates]
    hits = sorted((r for _, r in local if r.hit), key=lambda r: r.entry.created, reverse=True)  # type: ignore[union-attr]
    misses = [r for _, r in local]
    if not hits and remote is not None:
        misses = []
        for _, res in candidates:
            misses.append(find(res, store=store, remote=remote))
            if misses[-1].hit:
                hits = [misses[-1]]
                break
    if hits:
        hit = hits[0]
        consumer = (hit.entry.spec.get("options") or {}).get("consumer")  # type: ignore[union-attr]
        note = (f"consumer open (the configuration names none): {consumer} holds it, of {tried}"
                + (f" ({len(hits)} consumers' artifacts match; the newest chosen, name one to choose)" if len(hits) > 1 else ""))
        return dataclasses.replace(hit, notes=(note,) + hit.notes)
    first = misses[0]  # the newest release's explanation
    lines = [f"consumer open (the configuration names none): none of {tried} has an artifact for it"]
    lines += [f"  {c} not looked up: {why}" for c, why in refused]
    return dataclasses.replace(first, explanation=tuple(lines) + first.explanation,
                               damaged=tuple(dict.fromkeys(d for r in misses for d in r.damaged)))


def _is_engine_of(res: Resolution, entry: IndexEntry) -> bool:
    # build stages (calibration, checkpoint) are entries too, but not engines
    return entry.spec.get("target") == res.spec.target and "stage" not in entry.spec


def explain_miss(res: Resolution, *, store: Store, seen: list[IndexEntry], where: str, limit: int = 3,
                 local_keys: set[str] | None = None) -> list[str]:
    """The closest cached entries and exactly which fields differ (invariant 6).

    ``local_keys``: which of ``seen`` are in the local store (None: all of them), so that an
    identical artifact that only the remote holds, and that was refused, gets advice that works.
    Where the compiled engine of the model's architecture is stored, says that a build compiles nothing.
    """
    return _nearest(res, store=store, seen=seen, where=where, limit=limit, local_keys=local_keys) \
        + _stored_engine(res, store)


def _stored_engine(res: Resolution, store: Store) -> list[str]:
    """A weight-independent target's engine for this architecture, if the local store holds it."""
    if not res.complete or res.architecture_digest is None:
        return []
    key = res.engine_key
    entry = store.get_entry(res.architecture_digest.split(":", 1)[1], key) if key else None
    if entry is None:
        return []
    return [f"The compiled engine for this architecture is stored ({entry.key[:12]}, built for "
            f"{entry.model.get('ref') or 'another model'}): `kiln build` adds this model's weights to it without "
            "compiling."]


def _nearest(res: Resolution, *, store: Store, seen: list[IndexEntry], where: str, limit: int,
             local_keys: set[str] | None) -> list[str]:
    want = res.shape
    scored = []
    for e in seen:
        if not _is_engine_of(res, e):
            continue
        have = {k: v for k, v in e.spec.items() if k != "model"}
        diffs = spec_differences(want, have) + toolchain_differences(res.toolchain, e.toolchain)
        scored.append((len(diffs), e.created, e, diffs))
    lines: list[str] = []
    if scored:
        scored.sort(key=lambda t: (t[0], t[1]))
        lines.append(f"{len(scored)} {res.spec.target} artifact(s) for this model in {where}; nearest:")
        for _, _, e, diffs in scored[:limit]:
            lines.append(f"  {e.key[:12]}: " + "; ".join(diffs or ["identical spec and toolchain (failed verification)"]))
        nearest = scored[0]
        if not nearest[3] and local_keys is not None and nearest[2].key not in local_keys:
            # Only the remote has it, and pulling it was refused (the warning says why): pulling
            # again would be refused again.
            lines.append(
                f"The nearest ({nearest[2].key[:12]}) has the identical spec and toolchain: the remote holds it but it "
                "was refused (see the warning). Rebuild it here with `kiln build` (add `--push` to replace it on the "
                "remote), or repair the remote's objects."
            )
        elif not nearest[3]:
            # Same spec, same toolchain: the artifact is there but did not verify (a corrupt or
            # missing blob; the warning above says which). A new toolchain is not the way out.
            lines.append(
                f"The nearest ({nearest[2].key[:12]}) has the identical spec and toolchain: it is stored but failed "
                "verification (see the warning). Rebuild it with `kiln build --force`, or pull it again from the "
                f"remote (`kiln pull --key {nearest[2].key[:12]}`), which replaces the damaged blobs; `kiln verify` "
                "checks the whole store."
            )
        elif all(d.startswith("toolchain") for d in nearest[3]):
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
        if e.model_hex != res.model_hex and (
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
    from ..presets import PRESETS, load_preset  # only a miss explains itself with presets

    names = {res.spec.model, res.model.repo_id, res.model.ref} - {None}
    lines: list[str] = []
    for preset, (_, target, _) in PRESETS.items():
        if target != res.spec.target:
            continue
        scored = []
        # Rows for the same consumer, resolved as this spec was (defaults filled, LMI values normalised).
        t = get_target(res.spec.target)
        config = res.model.config()
        for row in load_preset(preset, consumer=res.spec.option("consumer")):
            if row.model not in names:
                continue
            try:
                have = t.validate(spec_from_fields(row.fields()), config).spec.shape_json(res.key_options)
            except KilnError:
                continue  # a row this consumer would not load: nothing to suggest
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
    instance = res.spec.option("instance_type")
    if not instance:
        raise SpecError("--select chooses for an instance: pass --instance-type (e.g. ml.inf2.24xlarge).")
    devices = instance_devices(instance)
    entries = {e.key: e for e in store.iter_entries(res.model_hex)}
    local = set(entries)
    if remote is not None:
        for e in cache.remote_entries(remote, res.model_hex):
            entries.setdefault(e.key, e)
    fields = {"n_positions", "batch_size", "tp_degree", "dtype"} & res.given
    fields |= {"quantization"} if {"smoothquant_alpha", "int8_kv_cache"} & res.given else set()
    fit, rejected = [], []
    for e in entries.values():
        if not _is_engine_of(res, e):
            continue
        why = spec_differences({k: res.shape[k] for k in fields}, {k: e.spec.get(k) for k in fields})
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
    found = first_verified(store, remote, ((e, LOCAL if e.key in local else REMOTE) for e, _ in fit),
                           requested_models(res))
    notes += [f"chosen engine failed verification, trying the next: {d}" for d in found.damaged]
    if found.entry is not None:
        # The chosen engine's own spec is what LookupResult.to_json reports (not the query's),
        # and where it came from: pulled from the remote, or local.
        return LookupResult(res, found.entry, found.manifest, (), (), tuple(notes + list(found.notes)),
                            source=found.source)
    return LookupResult(res, None, None, tuple(notes[1:] or ["no stored engine of this model and target at all"]),
                        (), tuple(notes[:1]))
