"""Damaged local index entries: skipped by listings, a loud miss (one warning line) for a direct
lookup, never a traceback, never a wrong hit.

Before: an entry file with ``spec: {}`` (or a string where a number belongs) was accepted by
the parser and crashed `kiln ls` with a KeyError later; a deeply nested one raised
RecursionError out of every command; an entry of artifact B stored under A's key was served
as a hit for A.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_kiln
from tests.manifests.bad_documents import BAD_ENTRY_DOCUMENTS
from tests.remote.conftest import spec_args, store_put, write_tree


def _store() -> Path:
    import os

    return Path(os.environ["KILN_HOME"])


def _entry_file(key: str) -> Path:
    [path] = _store().glob(f"index/*/{key}.json")
    return path


def _no_traceback(r) -> None:  # type: ignore[no-untyped-def]
    assert "Traceback" not in r.stderr + r.stdout, r.stderr


@pytest.mark.parametrize("kind", sorted(BAD_ENTRY_DOCUMENTS))
def test_damaged_local_entry_is_skipped_by_listings_and_an_error_for_lookups(
    kind: str, fake_model: Path, tmp_path: Path
) -> None:
    model = fake_model
    key = store_put(write_tree(tmp_path / "art", {"engine.bin": b"e" * 100}), model)
    other = store_put(write_tree(tmp_path / "art2", {"engine.bin": b"f" * 100}), model, batch_size=2)
    path = _entry_file(key)
    path.write_bytes(BAD_ENTRY_DOCUMENTS[kind](json.loads(path.read_bytes())))

    listed = run_kiln("ls")
    _no_traceback(listed)
    assert listed.returncode == 0 and other[:12] in listed.stdout and key[:12] not in listed.stdout, listed.stdout
    as_json = run_kiln("ls", "--json")
    _no_traceback(as_json)
    assert as_json.returncode == 0 and key not in as_json.stdout and other in as_json.stdout

    for command in (["lookup", str(model), *spec_args()],
                    ["fetch", str(model), *spec_args(), "--dest", str(tmp_path / "dest")]):
        r = run_kiln(*command)
        _no_traceback(r)
        # A loud miss (issue 12: not a dead end): one warning naming the file and the way out.
        assert r.returncode == 1, (command, r.returncode, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kiln: WARNING: index entry ") and str(path) in lines[0], lines
        assert "treated as a miss" in lines[0] and "`kiln gc`" in lines[0] and "`kiln build`" in lines[0]
    assert not (tmp_path / "dest").exists()
    # the other artifact of the model is still served
    ok = run_kiln("lookup", str(model), *spec_args(2))
    assert ok.returncode == 0, ok.stderr


def test_entry_stored_under_another_key_is_never_a_hit(fake_model: Path, tmp_path: Path) -> None:
    model = fake_model
    key = store_put(write_tree(tmp_path / "art", {"engine.bin": b"e" * 100}), model)
    other = store_put(write_tree(tmp_path / "art2", {"engine.bin": b"f" * 100}), model, batch_size=2)
    shutil.copyfile(_entry_file(other), _entry_file(key))  # key's file now describes `other`
    dest = tmp_path / "dest"
    r = run_kiln("fetch", str(model), *spec_args(), "--dest", str(dest))
    _no_traceback(r)
    assert r.returncode == 1 and "not the place it is stored at" in r.stderr, (r.returncode, r.stderr)  # a loud miss
    assert not dest.exists()
    listed = json.loads(run_kiln("ls", "--json").stdout)
    assert other in json.dumps(listed) and json.dumps(listed).count(other) == 1
