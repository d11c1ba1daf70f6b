"""Artifacts in and out of the store: publish a build, fetch into a deployment layout, queries.

``put`` is the one way a built directory becomes an artifact (blobs, build record, manifest,
index entry last); ``fetch`` is lookup + materialise in the consumer's layout (planned by the
artifact's target); ``fetch_by_key`` the same for a deployment pinned to a build key, with no
model at all — the layout is planned from the artifact's entry, which verification has held
against its build record, since there is no user spec; ``list_artifacts`` / ``find_artifact``
answer queries from the index.

A fetch pins what it found: it holds the store's shared (reader) lock from the lookup — the
local hit, or the pull from the remote — until the artifact is materialised, so a concurrent
gc (exclusive lock) cannot evict it in between. It writes nothing to the store it does not
have to (a layout's generated files are written into DEST from memory), so a read-only store
serves it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from dataclasses import replace as replace_fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

from ..cache import Store
from ..errors import CorruptBlobError, NotFoundError, SpecError, StoreError
from ..manifests import MAX_CONFIG_BYTES, FileEntry, IndexEntry, Manifest, make_record, utc_now
from ..spec import build_key
from ..targets import get_target
from .find import LookupResult, ambiguous_key, find_by_key, key_prefix, lookup
from .resolution import Resolution

if TYPE_CHECKING:  # annotations only: the remotes are imported when one is opened
    from ..cache import Remote

__all__ = ["put", "fetch", "fetch_by_key", "lookup_key", "KeyLookup", "materialize_layout", "Query", "list_artifacts", "entry_consumer", "consumer_matches",
           "find_artifact"]


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
    toolchain = {k: str(v) for k, v in res.toolchain.items()}
    record = make_record(
        key=key, inputs=inputs, spec=res.spec.to_json(), model=res.model_json(), toolchain=toolchain,
        started=started or utc_now(), duration_s=duration_s, notes=res.notes, command=command, extra=extra,
    )
    return store.publish(artifact_dir, key=key, spec=res.entry_spec(), model=res.model_summary(),
                         toolchain=toolchain, record=record, move=move)


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
    link: bool = False,
) -> tuple[LookupResult, Path | None]:
    """Lookup (local, then remote), then materialise a hit into ``dest`` in ``layout``.

    Files are copy-on-write clones or copies, so writes into ``dest`` never reach the store;
    ``link=True`` hard-links them instead (instant, but a write through a link — root ignores
    the blobs' read-only mode — corrupts the stored artifact). When ``dest`` already holds
    exactly this artifact it is left untouched (a note says so); when it holds something else,
    that is an error unless ``replace``. ``copy`` is accepted for compatibility (the default).
    """
    return _pinned_fetch(store, remote, lambda: lookup(res, store=store, remote=remote), dest,
                         "fetch again, or rebuild with `kiln build`",
                         layout=layout, replace=replace, link=link, container_dir=container_dir)


_Found = TypeVar("_Found", LookupResult, "KeyLookup")


def _pinned_fetch(store: Store, remote: Remote | None, find: Callable[[], _Found], dest: Path, retry: str,
                  **how: Any) -> tuple[_Found, Path | None]:
    """``find()``, then materialise its hit into ``dest``, under the pin; the one body of
    :func:`fetch` and :func:`fetch_by_key`.

    The pin: gc waits for the reader lock, so what the lookup found stays until it is in place
    (nested shared acquisitions in this thread — pull, materialise — skip gc's gate). A blob
    that went bad since the lookup makes the result a loud miss advising ``retry``.
    """
    with store.reader_lock(create=remote is not None):
        result = find()
        if not result.hit:
            return result, None
        assert result.manifest is not None and result.entry is not None
        try:
            path, env, kept = materialize_layout(store, result.entry, result.manifest, dest, **how)
        except (CorruptBlobError, NotFoundError) as e:
            failed = f"artifact {result.entry.key[:12]} failed while fetched: {e}"
            return replace_fields(result, entry=None, manifest=None, explanation=(retry,), source=None,
                                  damaged=result.damaged + (failed,)), None
    notes = result.notes + ((f"{path} already held this artifact: left untouched",) if kept else ())
    return replace_fields(result, notes=notes, env=env), path


# --------------------------------------------------------------------------- by key alone


@dataclass(frozen=True)
class KeyLookup:
    """The answer of :func:`lookup_key` / :func:`fetch_by_key`: the hit, or why it missed.

    Its JSON is the lookup document (docs/json.md) for a query of a key alone: ``query`` is
    ``{"key_prefix": …}``; on a miss ``spec``, ``model`` and ``toolchain`` are null (nothing
    else was asked), on a hit they describe the artifact found.
    """

    wanted: str  # the key or key prefix asked for (lowercase hex)
    entry: IndexEntry | None
    manifest: Manifest | None
    explanation: tuple[str, ...] = ()
    damaged: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    source: str | None = None
    env: Mapping[str, str] | None = None

    @property
    def hit(self) -> bool:
        return self.entry is not None and self.manifest is not None

    def to_json(self) -> dict[str, Any]:
        e = self.entry if self.hit else None
        return {
            "status": "hit" if e else "miss", "hit": e is not None, "source": self.source if e else None,
            "key": e.key if e else (self.wanted if len(self.wanted) == 64 else None),
            "manifest": e.manifest if e else None,
            "spec": dict(e.spec) if e else None, "model": dict(e.model) if e else None,
            "toolchain": dict(e.toolchain) if e else None,
            "query": {"key_prefix": self.wanted}, "toolchain_origin": {},
            "entry": e.to_json() if e else None,
            "explanation": list(self.explanation), "damaged": list(self.damaged), "notes": list(self.notes),
            "env": dict(self.env or {}),
        }


def lookup_key(ref: str, *, store: Store, remote: Remote | None = None) -> KeyLookup:
    """The artifact with this key (or unique prefix of at least 12 hex digits): local, else the remote.

    No model is resolved and nothing but the store and the remote is read. A miss says where
    it looked; an artifact that was found but refused is a loud miss (``damaged``).
    SpecError for a malformed or ambiguous key.
    """
    wanted = key_prefix(ref)
    found = find_by_key(store, remote, wanted)
    if found.entry is not None:
        e = found.entry
        named = () if e.key == wanted else (
            f"key {wanted} is {e.key} ({e.model.get('ref')}, {e.spec.get('target')}); pin the full key",)
        return KeyLookup(wanted, e, found.manifest, (), found.damaged, named + found.notes, found.source)
    where = str(store.root) + (f" and {remote.describe()}" if remote is not None else
                               " (no remote: pass --remote URL or set KILN_REMOTE to look there too)")
    asked = wanted if len(wanted) == 64 else f"starting {wanted}"
    if found.damaged:
        why = (f"an artifact with key {asked} was found in {where} but refused (see the warning): pull it again "
               "(`kiln pull --key`), rebuild it from its model with `kiln build` (`--push` replaces it on the "
               "remote), or repair the remote's objects.")
    else:
        why = (f"no artifact with key {asked} in {where}; `kiln ls` (with `--remote`, the remote's) lists the keys "
               "there.")
    return KeyLookup(wanted, None, None, (why,), found.damaged, found.notes)


def fetch_by_key(
    ref: str,
    dest: Path,
    *,
    store: Store,
    remote: Remote | None = None,
    replace: bool = False,
    layout: str = "raw",
    container_dir: str | None = None,
    link: bool = False,
) -> tuple[KeyLookup, Path | None]:
    """:func:`lookup_key`, then materialise the hit into ``dest`` in ``layout``, as :func:`fetch` does.

    The same pin (the store's reader lock from the lookup until the files are in place), the
    same copies or ``link``s, the same handling of a ``dest`` that already holds something.
    """
    return _pinned_fetch(store, remote, lambda: lookup_key(ref, store=store, remote=remote), dest,
                         "fetch again; `kiln verify` checks the store",
                         layout=layout, replace=replace, link=link, container_dir=container_dir)


def materialize_layout(
    store: Store,
    entry: IndexEntry,
    manifest: Manifest,
    dest: Path,
    *,
    layout: str = "raw",
    replace: bool = False,
    link: bool = False,
    container_dir: str | None = None,
) -> tuple[Path, dict[str, str], bool]:
    """Materialise an artifact in a deployment layout.

    Returns the path, the consumer's environment, and whether ``dest`` already held exactly
    this (left untouched). A non-empty ``dest`` holding anything else is refused unless
    ``replace``, saying what differs.
    """
    from ..trust import SIGNATURE_FILE  # materialising reads signatures; a lookup does not

    dest = Path(dest).absolute()
    store.check_destination(dest)  # before anything is read or written
    target = get_target(str(entry.spec.get("target")))
    plan = target.plan_layout(layout, entry, manifest, lambda d: store.read_blob(d, MAX_CONFIG_BYTES),
                              container_dir or target.default_container_dir(layout, str(dest)))
    # The raw layout's model.sig: kept current beside the files, not part of what `holds` compares
    # (a signature added later must not make a deployment's DEST "something else").
    beside = layout == "raw" and all(f.path != SIGNATURE_FILE for f in manifest.files)
    signature = _raw_layout_signature(store, entry, manifest) if beside else None
    side = frozenset({SIGNATURE_FILE}) if beside else frozenset()
    # Generated files are written into DEST from memory (no blob, so no write to the store).
    generated = {"sha256:" + hashlib.sha256(data).hexdigest(): data for data in plan.generated.values()}
    files = list(plan.files) + [FileEntry(rel, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
                                for rel, data in sorted(plan.generated.items())]
    derived = Manifest.parse(Manifest(manifest.config, tuple(files)).to_bytes())  # re-validate every path
    placed = derived
    if signature is not None:
        generated["sha256:" + hashlib.sha256(signature).hexdigest()] = signature
        placed = Manifest.parse(Manifest(manifest.config, tuple(
            files + [FileEntry(SIGNATURE_FILE, "sha256:" + hashlib.sha256(signature).hexdigest(), len(signature))]
        )).to_bytes())
    with store.reader_lock():  # the blobs stay while they are compared and placed
        if dest.is_dir() and not dest.is_symlink() and any(dest.iterdir()):
            same, why = store.holds(derived, dest, side)
            if same:
                if beside:
                    _keep_signature_current(dest, signature)
                return dest, dict(plan.env), True
            if not replace:
                raise StoreError(
                    f"destination {dest} holds something other than artifact {entry.key[:12]} ({layout} "
                    f"layout): {why}. Pass --force to replace it, or choose an empty --dest."
                )
        path = store.materialize(placed, dest, replace=replace, link=link, generated=generated, remember_as=derived)
    return path, dict(plan.env), False


def _keep_signature_current(dest: Path, signature: bytes | None) -> None:
    """DEST/model.sig holds ``signature`` (replaced atomically), or is absent for an unsigned artifact."""
    from ..trust import SIGNATURE_FILE

    target = dest / SIGNATURE_FILE
    try:
        current = target.read_bytes() if target.is_file() else None
    except OSError:
        current = None
    if current == signature:
        return
    if signature is None:
        target.unlink(missing_ok=True)
        return
    tmp = dest / f".{SIGNATURE_FILE}.kiln-{os.getpid()}"
    tmp.write_bytes(signature)
    os.replace(tmp, target)


def _raw_layout_signature(store: Store, entry: IndexEntry, manifest: Manifest) -> bytes | None:
    """The bundle written as ``model.sig`` beside a raw layout, so that model-signing's own
    ``model_signing verify key DEST --signature DEST/model.sig --public_key PUB`` checks the
    files independently of Kiln: the signature the trust policy accepted, else the first stored."""
    sigs = store.signatures_of(entry)
    if not sigs:
        return None
    accepted = store.check_trusted(entry, manifest)
    return accepted.data if accepted is not None else sigs[0].data


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
    consumer: str | None = None  # NAME[:VERSION] of the spec's consumer option (a NAME alone: any release)

    def matches(self, e: IndexEntry) -> bool:
        s = e.spec
        if self.ref is not None and self.ref not in (e.model.get("ref"), e.model.get("repo_id")):
            return False
        if self.consumer is not None and not consumer_matches(self.consumer, entry_consumer(e)):
            return False
        for name in ("target", "n_positions", "batch_size", "tp_degree", "dtype"):
            want = getattr(self, name)
            if want is not None and s.get(name) != want:
                return False
        return all(e.toolchain.get(k) == v for k, v in self.toolchain.items())


def entry_consumer(e: IndexEntry) -> str | None:
    """The consumer an entry was built for (its spec's ``consumer`` option), if its target has consumers."""
    value = (e.spec.get("options") or {}).get("consumer")
    return str(value) if value is not None else None


def consumer_matches(wanted: str, have: str | None) -> bool:
    wanted = wanted.strip().lower()
    return have is not None and (have == wanted or (":" not in wanted and have.split(":", 1)[0] == wanted))


def list_artifacts(store: Store, query: Query | None = None) -> list[IndexEntry]:
    """The local store's artifacts that match ``query`` (all when None), newest first."""
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
        raise ambiguous_key(wanted, found, str(store.root))
    return found[0]
