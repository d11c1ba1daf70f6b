"""`kiln gc --remote`: deletes blobs no artifact on the remote references, once they are older
than --grace; never a referenced blob; --dry-run deletes nothing."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from tests.remote.conftest import RemoteView, blob_key, check_remote, kiln_remote, spec_args, store_put, tree, write_tree


def test_remote_gc_deletes_only_old_unreferenced_blobs(remote: RemoteView, model: Path, tmp_path: Path) -> None:
    rng = random.Random(3)
    weights = rng.randbytes(400_000)
    a_files = {"weights.bin": weights, "engine.bin": rng.randbytes(100_000), "config.json": b'{"b": 1}'}
    b_files = {"weights.bin": weights, "engine.bin": rng.randbytes(100_001), "config.json": b'{"b": 2}'}
    key_a = store_put(write_tree(tmp_path / "a", a_files), model, batch_size=1)
    key_b = store_put(write_tree(tmp_path / "b", b_files), model, batch_size=2)
    assert kiln_remote(remote.url, "push", "--all").returncode == 0
    manifests = check_remote(remote, deep=True)
    assert manifests.keys() == {key_a, key_b}

    def objects_of(key: str) -> set[str]:
        [ekey] = [k for k in remote.objects() if k.endswith(f"/{key}.json")]
        m = manifests[key]
        return ({blob_key(json.loads(remote.read(ekey))["manifest"]), blob_key(m["config"]["digest"])}
                | {blob_key(layer["digest"]) for layer in m["layers"]})

    a_objs, b_objs = objects_of(key_a), objects_of(key_b)
    b_only = b_objs - a_objs
    # manifest, build record, engine and config are B's own; the weights blob is shared with A
    assert len(b_only) == 4 and blob_key("sha256:" + hashlib.sha256(weights).hexdigest()) in a_objs
    # B's index entry disappears (as if its push died just before writing it): its manifest,
    # record, engine and config blobs are now unreferenced; the shared weights blob is still A's.
    [b_entry] = [k for k in remote.objects() if k.endswith(f"/{key_b}.json")]
    remote.delete(b_entry)
    before = remote.objects()

    def gc(*args: str) -> dict:
        r = kiln_remote(remote.url, "gc", "--remote", *args, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    young = gc()  # default grace (24h): everything is young
    assert young["blobs"] == [] and young["young"] == len(b_only) and young["kept"] == len(a_objs)
    assert remote.objects() == before

    plan = gc("--grace", "0s", "--dry-run")
    assert plan["dry_run"] and {b["key"] for b in plan["blobs"]} == b_only
    assert plan["bytes_freed"] == sum(before[k] for k in b_only)
    assert remote.objects() == before  # a dry run deletes nothing

    done = gc("--grace", "0s")
    assert {b["key"] for b in done["blobs"]} == b_only and done["kept"] == len(a_objs)
    after = remote.objects()
    assert set(after) == set(before) - b_only
    assert a_objs <= set(after)  # every blob A's manifest references survived, however old
    assert check_remote(remote, deep=True).keys() == {key_a}
    assert gc("--grace", "0s")["blobs"] == []

    dest = tmp_path / "dest"
    r = kiln_remote(remote.url, "ensure", str(model), *spec_args(1), "--dest", str(dest), env={"KILN_HOME": str(tmp_path / "fresh")})
    assert r.returncode == 0, r.stderr
    assert tree(dest) == a_files

    # B can be pushed again: only what gc removed goes up (the shared weights blob stays).
    again = kiln_remote(remote.url, "push", "--key", key_b, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)[0]["uploaded_blobs"] == len(b_only)
    assert check_remote(remote, deep=True).keys() == {key_a, key_b}
    human = kiln_remote(remote.url, "gc", "--remote", "--grace", "0s")
    assert human.returncode == 0 and "deleted 0 unreferenced blobs" in human.stdout, human.stdout


def test_remote_gc_reports_broken_entries_and_keeps_going(remote: RemoteView, model: Path, tmp_path: Path) -> None:
    key = store_put(write_tree(tmp_path / "a", {"engine.bin": b"x" * 1000}), model)
    assert kiln_remote(remote.url, "push", "--key", key).returncode == 0
    [ekey] = [k for k in remote.objects() if k.startswith("index/")]
    entry = json.loads(remote.read(ekey))
    remote.delete(blob_key(entry["manifest"]))  # an entry whose manifest is gone
    r = kiln_remote(remote.url, "gc", "--remote", "--grace", "0s", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["broken_entries"]) == 1 and "missing" in out["broken_entries"][0]
    human = kiln_remote(remote.url, "gc", "--remote", "--grace", "0s", "--dry-run")
    assert human.returncode == 0 and "WARNING" in human.stderr and ekey in human.stderr
