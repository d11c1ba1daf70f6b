"""Remote JSON of the wrong shape — index entries and build records — on a real S3-protocol
server and on a filesystem remote, read by every command that reads a remote.

Readers (lookup, fetch, ensure, pull --all, ls --remote) skip the bad object with one loud
warning naming it and go on: exit 0/1, never a traceback, nothing published locally.
``gc --remote`` cannot know what an unreadable entry references, so it exits 2 with one line
naming it and deletes nothing.

Before: ``spec: {}`` crashed lookup and ls with KeyError, 100 000-deep nesting raised
RecursionError out of all of them, ls and pull skipped bad entries without a word, and gc
deleted the blobs of every malformed entry as "unreferenced".
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.manifests.bad_documents import BAD_ENTRY_DOCUMENTS
from tests.remote.conftest import RemoteView, blob_key, kiln_remote, spec_args, store_put, write_tree

READERS = ("lookup", "fetch", "ensure", "pull", "ls")


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _no_traceback(r) -> None:  # type: ignore[no-untyped-def]
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-3000:]


def _published(home: Path) -> list[Path]:
    """Every index entry of a local store: what a reader may have published there."""
    return sorted(home.glob("index/*/*.json"))


def _run_reader(name: str, url: str, model: Path, dest: Path, home: Path):  # type: ignore[no-untyped-def]
    args = {
        "lookup": ["lookup", str(model), *spec_args()],
        "fetch": ["fetch", str(model), *spec_args(), "--dest", str(dest)],
        "ensure": ["ensure", str(model), *spec_args(), "--dest", str(dest)],
        "pull": ["pull", "--all"],
        "ls": ["ls", "--remote"],
    }[name]
    return kiln_remote(url, *args, env={"KILN_HOME": str(home)})


def _assert_readers_skip(remote: RemoteView, model: Path, tmp_path: Path, bad_object: str, *,
                         good_key: str | None = None) -> None:
    for name in READERS:
        home, dest = tmp_path / f"deploy-{name}" / "store", tmp_path / f"deploy-{name}" / "engine"
        r = _run_reader(name, remote.url, model, dest, home)
        _no_traceback(r)
        assert r.returncode in (0, 1), (name, r.returncode, r.stdout, r.stderr)
        warnings = [line for line in r.stderr.splitlines() if line.startswith("kiln: WARNING: ")]
        assert any(bad_object in w and "refusing it" in w for w in warnings), (name, r.stderr)
        assert not dest.exists(), name
        published = _published(home)
        if name == "pull" and good_key is not None:
            assert [p.stem for p in published] == [good_key], (name, published)  # the rest was pulled
        else:
            assert published == [], (name, published)
        if name == "ls" and good_key is not None:
            assert good_key[:12] in r.stdout, r.stdout


def _assert_gc_refuses(remote: RemoteView, bad_object: str) -> None:
    before = remote.objects()
    for args in (("--grace", "0s"), ("--grace", "0s", "--dry-run", "--json")):
        r = kiln_remote(remote.url, "gc", "--remote", *args)
        _no_traceback(r)
        assert r.returncode == 2, (args, r.returncode, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kiln: error: remote gc deleted nothing"), lines
        assert bad_object in lines[0], lines[0]
        assert remote.objects() == before, args


@pytest.fixture
def pushed(remote: RemoteView, model: Path, tmp_path: Path) -> tuple[str, str, bytes]:
    """One artifact pushed: (its key, its index entry's object key, the entry's bytes)."""
    key = store_put(write_tree(tmp_path / "art", {"engine.bin": b"e" * 1000, "config.json": b"{}"}), model)
    r = kiln_remote(remote.url, "push", "--key", key)
    assert r.returncode == 0, r.stderr
    [ekey] = [k for k in remote.objects() if k.startswith("index/")]
    return key, ekey, remote.read(ekey)


@pytest.mark.parametrize("kind", sorted(BAD_ENTRY_DOCUMENTS))
def test_bad_index_entry_is_skipped_by_readers_and_stops_gc(
    kind: str, remote: RemoteView, model: Path, tmp_path: Path, pushed: tuple[str, str, bytes],
) -> None:
    _, ekey, good = pushed
    remote.write(ekey, BAD_ENTRY_DOCUMENTS[kind](json.loads(good)))
    _assert_readers_skip(remote, model, tmp_path, ekey)
    _assert_gc_refuses(remote, ekey)


def test_bad_entries_beside_good_ones_leave_the_good_ones_served(
    remote: RemoteView, model: Path, tmp_path: Path, pushed: tuple[str, str, bytes]
) -> None:
    """Skip-and-report means the rest is still listed and pulled; gc names every bad entry."""
    key, ekey, good = pushed
    other = store_put(write_tree(tmp_path / "art2", {"engine.bin": b"o" * 1000}), model, batch_size=2)
    assert kiln_remote(remote.url, "push", "--key", other).returncode == 0
    bad_keys = []
    for i, kind in enumerate(("empty-spec", "deep-nesting", "list")):
        fake = f"{i:064x}"
        bad = ekey.replace(key, fake)
        doc = json.loads(good)
        doc["key"] = fake
        remote.write(bad, BAD_ENTRY_DOCUMENTS[kind](doc))
        bad_keys.append(bad)
    remote.write(ekey, BAD_ENTRY_DOCUMENTS["wrong-types"](json.loads(good)))
    bad_keys.append(ekey)
    _assert_readers_skip(remote, model, tmp_path, ekey, good_key=other)
    ls = kiln_remote(remote.url, "ls", "--remote", env={"KILN_HOME": str(tmp_path / "ls")})
    assert all(k in ls.stderr for k in bad_keys), ls.stderr
    before = remote.objects()
    r = kiln_remote(remote.url, "gc", "--remote", "--grace", "0s")
    assert r.returncode == 2 and all(k in r.stderr for k in bad_keys) and "4 index entries" in r.stderr, r.stderr
    assert remote.objects() == before


# ------------------------------------------------------------------ build records


def _replace_record(remote: RemoteView, ekey: str, record: bytes) -> None:
    """Point the artifact's manifest at ``record`` as its build record (digests all consistent)."""
    entry = json.loads(remote.read(ekey))
    manifest = json.loads(remote.read(blob_key(entry["manifest"])))
    remote.write(blob_key(_sha(record)), record)
    manifest["config"].update(digest=_sha(record), size=len(record))
    mbytes = json.dumps(manifest).encode()
    remote.write(blob_key(_sha(mbytes)), mbytes)
    entry["manifest"] = _sha(mbytes)
    remote.write(ekey, json.dumps(entry).encode())


def _record_of(remote: RemoteView, ekey: str) -> dict:
    entry = json.loads(remote.read(ekey))
    manifest = json.loads(remote.read(blob_key(entry["manifest"])))
    return json.loads(remote.read(blob_key(manifest["config"]["digest"])))


def _record_edit(change):  # type: ignore[no-untyped-def]
    def make(record: dict) -> bytes:
        doc = copy.deepcopy(record)
        out = change(doc)
        return json.dumps(doc if out is None else out).encode()
    return make


BAD_RECORDS = {
    "list": _record_edit(lambda r: [r]),
    "null": lambda r: b"null",
    "empty-object": lambda r: b"{}",
    "deep-nesting": lambda r: b"[" * 100_000 + b"]" * 100_000,
    "deep-in-extra": lambda r: json.dumps(dict(r, extra="X")).encode().replace(b'"X"', b'{"a": ' * 5000 + b"1" + b"}" * 5000),
    "no-provenance": _record_edit(lambda r: r.pop("provenance") and None),
    "spec-wrong-type": _record_edit(lambda r: r["spec"].update(n_positions="abc")),
    "key-inputs-list": _record_edit(lambda r: r.update(key_inputs=[r["key_inputs"]])),
    "key-inputs-forged": _record_edit(lambda r: r["key_inputs"]["spec"].update(batch_size=8)),
    "other-key": _record_edit(lambda r: r.update(key="0" * 64)),
    "binary": lambda r: bytes(range(256)),
}


@pytest.mark.parametrize("kind", sorted(BAD_RECORDS))
def test_bad_build_record_is_refused_and_nothing_is_published(
    kind: str, remote: RemoteView, model: Path, tmp_path: Path, pushed: tuple[str, str, bytes]
) -> None:
    key, ekey, _ = pushed
    _replace_record(remote, ekey, BAD_RECORDS[kind](_record_of(remote, ekey)))
    for name in ("lookup", "fetch", "ensure", "pull"):
        home, dest = tmp_path / f"deploy-{name}" / "store", tmp_path / f"deploy-{name}" / "engine"
        r = _run_reader(name, remote.url, model, dest, home)
        _no_traceback(r)
        assert "build record" in r.stderr and key[:12] in r.stderr, (name, r.stderr)
        if name == "pull":  # `pull --all` names what it cannot pull: nothing else to do
            assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        else:  # a loud miss
            assert r.returncode == 1 and "WARNING" in r.stderr, (name, r.returncode, r.stderr)
        assert not dest.exists() and _published(home) == [], name
    listed = kiln_remote(remote.url, "ls", "--remote")  # ls reads entries only: the artifact is listed
    assert listed.returncode == 0 and key[:12] in listed.stdout


def test_entry_that_lies_about_its_spec_is_refused(
    remote: RemoteView, model: Path, tmp_path: Path, pushed: tuple[str, str, bytes]
) -> None:
    """An entry at its right key whose spec claims another batch size: queries match on the
    entry's spec, so pulling it would make a wrong hit. The build record proves the lie."""
    key, ekey, good = pushed
    entry = json.loads(good)
    entry["spec"]["batch_size"] = 4
    remote.write(ekey, json.dumps(entry).encode())
    home = tmp_path / "deploy"
    r = kiln_remote(remote.url, "pull", "--all", env={"KILN_HOME": str(home)})
    _no_traceback(r)
    assert r.returncode == 2 and "differs from its build record" in r.stderr and "batch_size" in r.stderr, r.stderr
    assert _published(home) == []


# ------------------------------------------------------------------ generated entries

_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | st.text(max_size=16)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=10), c, max_size=3),
    max_leaves=12,
)
_FIELDS = ["spec", "spec.target", "spec.n_positions", "spec.batch_size", "spec.tp_degree", "spec.dtype",
           "spec.quantization", "spec.options", "spec.model", "model", "model.tree_digest", "model.ref",
           "toolchain", "toolchain.torch", "size", "created", "files", "key", "manifest", "schema"]


def test_generated_entries_never_crash_a_reader(file_view: RemoteView, model: Path, tmp_path: Path) -> None:
    """Random fields of a real entry replaced by random JSON, on a filesystem remote: every
    reader exits 0/1 (or 2 with one line) without a traceback and publishes nothing it refused;
    gc exits 0 (the document was still valid) or 2 deleting nothing. Bounded: a few
    deterministic examples, each seven short subprocesses."""
    remote = file_view
    key = store_put(write_tree(tmp_path / "art", {"engine.bin": b"g" * 100}), model)
    assert kiln_remote(remote.url, "push", "--key", key).returncode == 0
    [ekey] = [k for k in remote.objects() if k.startswith("index/")]
    good = remote.read(ekey)
    runs = iter(range(10**6))

    @settings(max_examples=8, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(changes=st.lists(st.tuples(st.sampled_from(_FIELDS), _json), min_size=1, max_size=3))
    def check(changes: list) -> None:
        tmp = tmp_path / f"run{next(runs)}"
        doc = json.loads(good)
        for path, value in changes:
            *parents, last = path.split(".")
            node = doc
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node[last] = value
        remote.write(ekey, json.dumps(doc).encode())
        for name in READERS:
            dest, home = tmp / f"dest-{name}", tmp / f"deploy-{name}"
            r = _run_reader(name, remote.url, model, dest, home)
            _no_traceback(r)
            if r.returncode == 2:  # pull --all of an artifact it must refuse: one line, nothing else to do
                assert name == "pull" and len(r.stderr.strip().splitlines()) == 1, (name, doc, r.stderr)
            else:
                assert r.returncode in (0, 1), (name, doc, r.returncode, r.stderr)
            if r.returncode != 0:
                assert not dest.exists() and _published(home) == [], (name, doc)
        before = remote.objects()
        r = kiln_remote(remote.url, "gc", "--remote", "--dry-run")
        _no_traceback(r)
        assert r.returncode in (0, 2) and remote.objects() == before, (doc, r.stderr)
        if r.returncode == 2:
            assert r.stderr.startswith("kiln: error: remote gc deleted nothing") and ekey in r.stderr

    check()
