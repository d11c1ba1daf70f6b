"""Manifests are untrusted data (DESIGN invariant 5).

`Manifest.parse` must refuse anything that could write outside the destination, declare
unbounded sizes or carry malformed digests, with an UnsafeManifestError that names the
problem; and materialising never writes outside ``--dest``.

Links cannot be expressed in a manifest at all: a layer is a (path, digest, size) of a
regular file's bytes, and materialise creates regular files (hard links to blobs, or
copies) in a fresh staging directory. So "no links out of the destination" reduces to the
path rules tested here plus refusing a destination that is itself a symlink.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_kiln, write_fake_model
from kiln import api
from kiln.cache import Store
from kiln.cache._fsutil import atomic_write_bytes
from kiln.errors import UnsafeManifestError
from kiln.manifests import IndexEntry, entry_from_record
from kiln.manifests._record import make_record, utc_now
from kiln.manifests._manifest import (
    CONFIG_MEDIA_TYPE,
    MAX_ARTIFACT_SIZE,
    MAX_BLOB_SIZE,
    MAX_CONFIG_BYTES,
    MAX_FILES,
    MAX_MANIFEST_BYTES,
    MAX_PATH,
    TITLE,
    Descriptor,
    FileEntry,
    Manifest,
)
from kiln.spec import BuildSpec

TOOLCHAIN = {"torch": "2.0.0", "transformers": "5.0.0", "hardware": "cpu-test"}
PINS = [f"--toolchain={k}={v}" for k, v in TOOLCHAIN.items()]
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def base() -> dict[str, Any]:
    """A valid manifest as JSON data, to be broken one field at a time."""
    return Manifest(
        Descriptor(CONFIG_MEDIA_TYPE, D1, 10),
        (FileEntry("engine/model.pt2", D2, 100), FileEntry("config.json", D1, 10)),
        {"dev.kiln.key": "k"},
    ).to_json()


def with_paths(*paths: Any) -> dict[str, Any]:
    m = base()
    m["layers"] = [
        {"mediaType": "application/octet-stream", "digest": D2, "size": 1, "annotations": {TITLE: p}} for p in paths
    ]
    return m


def parse(data: Any) -> Manifest:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return Manifest.parse(raw)


def test_base_manifest_is_accepted() -> None:
    m = parse(base())
    assert [f.path for f in m.files] == ["engine/model.pt2", "config.json"]
    assert Manifest.parse(m.to_bytes()) == m


@pytest.mark.parametrize(
    "path, problem",
    [
        ("../escape", "climbs out"),
        ("a/../../escape", "climbs out"),
        ("a/..", "climbs out"),
        ("..", "climbs out"),
        ("/etc/passwd", "absolute"),
        ("//server/share", "absolute"),
        ("C:/Windows/x", "absolute"),
        ("./x", "not normalised"),
        ("a/./b", "not normalised"),
        (".", "not normalised"),
        ("a//b", "not normalised"),
        ("a/", "not normalised"),
        ("a\\..\\..\\b", "backslash"),
        ("a\x00b", "NUL"),
        ("x" * (MAX_PATH + 1), "too long"),
        ("", "empty"),
        (None, "empty or not a string"),
        (7, "not a string"),
    ],
)
def test_unsafe_paths_are_refused(path: Any, problem: str) -> None:
    with pytest.raises(UnsafeManifestError, match=problem):
        parse(with_paths(path))


def test_duplicate_paths_are_refused() -> None:
    with pytest.raises(UnsafeManifestError, match="'a/b' appears twice"):
        parse(with_paths("a/b", "c", "a/b"))


@pytest.mark.parametrize("paths", [("a", "a/b"), ("a/b/c", "a"), ("x/y", "x/y/z/w")])
def test_file_directory_clash_is_refused(paths: tuple[str, ...]) -> None:
    with pytest.raises(UnsafeManifestError, match="both a file and the directory"):
        parse(with_paths(*paths))


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "A" * 64,  # upper case: two spellings of one blob
        "sha256:" + "1" * 63,
        "sha256:" + "1" * 65,
        "sha256:" + "1" * 64 + "\n",
        "sha256:../../../../etc/passwd" + "0" * 40,
        "md5:" + "1" * 32,
        "1" * 64,
        "",
        None,
        64,
    ],
)
def test_malformed_layer_digests_are_refused(digest: Any) -> None:
    m = base()
    m["layers"][0]["digest"] = digest
    with pytest.raises(UnsafeManifestError, match="is not a sha256 digest"):
        parse(m)


def test_malformed_config_digest_is_refused() -> None:
    m = base()
    m["config"]["digest"] = "sha256:zz"
    with pytest.raises(UnsafeManifestError, match="config: 'sha256:zz' is not a sha256 digest"):
        parse(m)


@pytest.mark.parametrize("size", [-1, True, False, MAX_BLOB_SIZE + 1, 1.5, "10", None, 10**400])
def test_bad_layer_sizes_are_refused(size: Any) -> None:
    m = base()
    m["layers"][0]["size"] = size
    with pytest.raises(UnsafeManifestError, match=r"engine/model.pt2: size .* is not an integer in \[0, "):
        parse(m)


def test_largest_allowed_blob_size_is_accepted() -> None:
    m = base()
    m["layers"][0]["size"] = MAX_BLOB_SIZE
    assert parse(m).files[0].size == MAX_BLOB_SIZE


def test_oversized_config_is_refused() -> None:
    m = base()
    m["config"]["size"] = MAX_CONFIG_BYTES + 1
    with pytest.raises(UnsafeManifestError, match=r"config: size \d+ is not an integer"):
        parse(m)


def test_total_artifact_size_is_bounded() -> None:
    n = MAX_ARTIFACT_SIZE // MAX_BLOB_SIZE + 1
    m = with_paths(*[f"shard-{i}" for i in range(n)])
    for layer in m["layers"]:
        layer["size"] = MAX_BLOB_SIZE
    with pytest.raises(UnsafeManifestError, match="above the .* bound"):
        parse(m)


def test_too_many_files_are_refused() -> None:
    m = base()
    m["layers"] = [{}] * (MAX_FILES + 1)
    with pytest.raises(UnsafeManifestError, match=f"at most {MAX_FILES} files"):
        parse(m)


def test_oversized_manifest_bytes_are_refused() -> None:
    data = json.dumps(base()).encode()
    data = data + b" " * (MAX_MANIFEST_BYTES + 1 - len(data))
    with pytest.raises(UnsafeManifestError, match=f"exceeds {MAX_MANIFEST_BYTES}"):
        Manifest.parse(data)


@pytest.mark.parametrize(
    "mutate, problem",
    [
        (lambda m: m.update(mediaType="application/vnd.docker.distribution.manifest.v2+json"), "mediaType"),
        (lambda m: m.pop("mediaType"), "mediaType"),
        (lambda m: m.update(schemaVersion=1), "schemaVersion"),
        (lambda m: m.update(artifactType="application/vnd.example.other"), "is not a Kiln artifact"),
        (lambda m: m.pop("artifactType"), "None is not a Kiln artifact"),
        (lambda m: m["config"].update(mediaType="application/vnd.oci.image.config.v1+json"), "not a Kiln build record"),
        (lambda m: m.update(config=[]), "not a Kiln build record"),
        (lambda m: m.update(layers={"a": 1}), "must be a list"),
        (lambda m: m.update(layers=["engine"]), "layer 0 is not an object"),
        (lambda m: m["layers"][1].update(annotations=[TITLE, "x"]), "layer 1 annotations are not an object"),
        (lambda m: m["layers"][0].update(annotations="engine"), "layer 0 annotations are not an object"),
        (lambda m: m.update(annotations={"a": 1}), "map strings to strings"),
    ],
)
def test_malformed_structure_is_refused(mutate: Any, problem: str) -> None:
    m = copy.deepcopy(base())
    mutate(m)
    with pytest.raises(UnsafeManifestError, match=problem):
        parse(m)


@pytest.mark.parametrize(
    "raw, problem",
    [
        (b"", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"[]", "not an OCI image manifest"),
        (b'"manifest"', "not an OCI image manifest"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"layers": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    ],
)
def test_non_manifests_are_refused(raw: bytes, problem: str) -> None:
    with pytest.raises(UnsafeManifestError, match=problem):
        Manifest.parse(raw)


# ------------------------------------------------------------------ materialise never escapes dest


def _spec(model: Path) -> BuildSpec:
    return BuildSpec(target="torch-aoti", model=str(model), n_positions=128, batch_size=1, dtype="fp32")


def _spec_args(model: Path) -> list[str]:
    return [str(model), "-t", "torch-aoti", "--n-positions", "128", "--batch-size", "1", "--dtype", "fp32", *PINS]


def _plant(store: Store, model: Path, manifest_bytes: bytes) -> api.Resolution:
    """Put hand-crafted manifest bytes in the store and point the spec's index entry at them.

    The entry says what the crafted manifest and its (real) build record say, as a publish
    would write it, so that only what the test crafted is wrong; a manifest that does not even
    parse gets an entry built from the resolution alone."""
    res = api.resolve(_spec(model), store=store, toolchain=TOOLCHAIN)
    with store.writer_lock():  # what every writer holds (keeps gc away)
        mdigest, _ = store.put_bytes(manifest_bytes)
    try:
        manifest = Manifest.parse(manifest_bytes)
        entry = entry_from_record(store.read_record(manifest), mdigest, manifest)
    except UnsafeManifestError:
        entry = IndexEntry(
            key=res.key, manifest=mdigest, spec=res.entry_spec(), model=res.model_summary(),
            toolchain=res.inputs()["toolchain"], size=0, created="2026-01-01T00:00:00.000000Z", files=1,
        )
    atomic_write_bytes(store.entry_path(entry.model_hex, res.key), entry.to_bytes())
    return res


def _crafted(store: Store, model: Path, files: dict[str, bytes]) -> bytes:
    """A manifest listing ``files`` with the real build record of ``model``'s spec as its config."""
    res = api.resolve(_spec(model), store=store, toolchain=TOOLCHAIN)
    record = make_record(key=res.key, inputs=res.inputs(), spec=res.spec.to_json(), model=res.model.to_json(),
                         toolchain=res.inputs()["toolchain"], started=utc_now(), duration_s=0.0)
    entries = []
    with store.writer_lock():
        cdigest, csize = store.put_bytes(json.dumps(record, sort_keys=True).encode())
        for path, data in files.items():
            d, s = store.put_bytes(data)
            entries.append(FileEntry(path, d, s))
    return Manifest(Descriptor(CONFIG_MEDIA_TYPE, cdigest, csize), tuple(entries),
                    annotations={"dev.kiln.key": res.key, "org.opencontainers.image.created": utc_now()}).to_bytes()


def _listing(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.mark.parametrize("bad_path", ["../escape", "/tmp/kiln-escape-test", "sub/../../escape", "a\\..\\escape"])
def test_hostile_manifest_in_store_is_a_loud_miss_and_writes_nothing(
    tmp_path: Path, store: Store, bad_path: str
) -> None:
    model = write_fake_model(tmp_path / "model")
    outside = tmp_path / "outside"
    outside.mkdir()
    good = _crafted(store, model, {"ok.bin": b"fine"})
    raw = json.loads(good)
    raw["layers"][0]["annotations"][TITLE] = bad_path  # bytes are a valid blob; the path is not
    _plant(store, model, json.dumps(raw).encode())
    before = _listing(tmp_path)

    dest = outside / "dest"
    r = run_kiln("fetch", *_spec_args(model), "--dest", str(dest))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "WARNING" in r.stderr and "failed verification" in r.stderr
    assert any(w in r.stderr for w in ("climbs out", "absolute", "backslash")), r.stderr
    assert not dest.exists()
    assert _listing(tmp_path) == before  # nothing appeared anywhere, escape or otherwise
    assert not Path("/tmp/kiln-escape-test").exists()

    r = run_kiln("lookup", *_spec_args(model))
    assert r.returncode == 1 and "failed verification" in r.stderr


def test_crafted_manifest_materialises_only_inside_dest(tmp_path: Path, store: Store) -> None:
    model = write_fake_model(tmp_path / "model")
    files = {"engine/rank0/model.pt2": b"engine bytes", "config.json": b"{}", "deep/a/b/c/d.txt": b"deep"}
    _plant(store, model, _crafted(store, model, files))
    work = tmp_path / "work"
    work.mkdir()
    dest = work / "dest"
    r = run_kiln("fetch", *_spec_args(model), "--dest", str(dest))
    assert r.returncode == 0, r.stdout + r.stderr
    got = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert got == files
    # Only dest itself appeared beside it: no staging leftovers.
    assert sorted(os.listdir(work)) == ["dest"]


def test_symlink_dest_is_refused(tmp_path: Path, store: Store) -> None:
    model = write_fake_model(tmp_path / "model")
    _plant(store, model, _crafted(store, model, {"engine.bin": b"engine"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "dest-link"
    link.symlink_to(elsewhere, target_is_directory=True)

    r = run_kiln("fetch", *_spec_args(model), "--dest", str(link))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "symbolic link" in r.stderr
    assert list(elsewhere.iterdir()) == []
    assert link.is_symlink()
    # --force does not make a symlink acceptable either.
    r = run_kiln("fetch", *_spec_args(model), "--dest", str(link), "--force")
    assert r.returncode == 2 and "symbolic link" in r.stderr
    assert list(elsewhere.iterdir()) == [] and link.is_symlink()
    # A dangling link is refused too (it would otherwise be created through).
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    r = run_kiln("fetch", *_spec_args(model), "--dest", str(dangling))
    assert r.returncode == 2 and "symbolic link" in r.stderr
    assert not (tmp_path / "nowhere").exists()


def test_non_empty_dest_needs_force(tmp_path: Path, store: Store) -> None:
    model = write_fake_model(tmp_path / "model")
    _plant(store, model, _crafted(store, model, {"engine.bin": b"new engine"}))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_text("user data")

    r = run_kiln("fetch", *_spec_args(model), "--dest", str(dest))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "mine.txt is not part of the artifact" in r.stderr and "--force" in r.stderr
    assert sorted(os.listdir(dest)) == ["mine.txt"] and (dest / "mine.txt").read_text() == "user data"

    file_dest = tmp_path / "a-file"
    file_dest.write_text("x")
    r = run_kiln("fetch", *_spec_args(model), "--dest", str(file_dest), "--force")
    assert r.returncode == 2 and "not a directory" in r.stderr
    assert file_dest.read_text() == "x"

    r = run_kiln("fetch", *_spec_args(model), "--dest", str(dest), "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(os.listdir(dest)) == ["engine.bin"] and (dest / "engine.bin").read_bytes() == b"new engine"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
