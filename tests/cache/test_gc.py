"""`kiln gc`: unreferenced blobs and temp leftovers go; referenced blobs stay; --max-size evicts
least recently used artifacts (a blob shared by two artifacts stays while either refers to
it); --older-than; --dry-run computes the same plan and removes nothing; --json; a failed
build's log is kept for 30 days, then collected.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from pathlib import Path

import pytest

from tests.conftest import run_kiln, write_fake_model
from tests.tiny_models import break_weights, make_tiny_model
from kiln import api
from kiln.cache import Store
from kiln.manifests import IndexEntry
from kiln.spec import BuildSpec

TOOLCHAIN = {"torch": "2.0.0", "transformers": "5.0.0", "hardware": "cpu-test"}
WEIGHTS = random.Random(0).randbytes(500_000)  # shared by every artifact: one blob


class Artifacts:
    def __init__(self, tmp_path: Path, store: Store) -> None:
        self.tmp = tmp_path
        self.store = store
        self.model = write_fake_model(tmp_path / "model")
        self.res: dict[str, api.Resolution] = {}
        self.entries: dict[str, IndexEntry] = {}
        self.engines: dict[str, bytes] = {}

    def publish(self, name: str, batch_size: int, engine_size: int) -> IndexEntry:
        src = self.tmp / "src" / name
        (src / "engine").mkdir(parents=True)
        engine = random.Random(name).randbytes(engine_size)
        (src / "engine" / "model.pt2").write_bytes(engine)
        (src / "weights.safetensors").write_bytes(WEIGHTS)
        res = api.resolve(
            BuildSpec(target="torch-aoti", model=str(self.model), n_positions=128, batch_size=batch_size, dtype="fp32"),
            store=self.store, toolchain=TOOLCHAIN,
        )
        entry = api.put(res, src, store=self.store)
        self.res[name], self.entries[name], self.engines[name] = res, entry, engine
        return entry

    def hit(self, name: str) -> bool:
        return api.lookup(self.res[name], store=self.store).hit

    def referenced(self) -> set[str]:
        out = set()
        for e in self.store.iter_entries():
            m = self.store.read_manifest(e.manifest)
            out |= {e.manifest, m.config.digest} | {f.digest for f in m.files}
        return out

    def unique_bytes(self, name: str) -> int:
        """Bytes that evicting ``name`` frees: its engine and its build record."""
        m = self.store.read_manifest(self.entries[name].manifest)
        return len(self.engines[name]) + m.config.size

    def set_last_used(self, name: str, seconds_ago: float) -> None:
        e = self.entries[name]
        t = time.time() - seconds_ago
        os.utime(self.store.entry_path(e.model_hex, e.key), (t, t))


def blob_digests(store: Store) -> set[str]:
    return {d for d, _ in store.all_blobs()}


def digest_of(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def gc_json(*args: str) -> dict:
    r = run_kiln("gc", "--json", *args)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def arts(tmp_path: Path, store: Store) -> Artifacts:
    a = Artifacts(tmp_path, store)
    a.publish("A", 1, 100_000)
    a.publish("B", 2, 200_000)
    a.publish("C", 4, 300_000)
    return a


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and "locks" not in p.parts:
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (st.st_ino, st.st_size)
    return out


def make_leftovers(store: Store) -> tuple[set[str], list[Path]]:
    """What killed writers leave: blobs nothing refers to and temp files."""
    with store.writer_lock():
        strays = {store.put_bytes(b"orphan blob %d" % i)[0] for i in range(3)}
    temps = [store.tmp_dir / "12345-deadbeef0000", store.tmp_dir / "12345-deadbeef0001"]
    temps[0].write_bytes(b"half a blob")
    temps[1].write_bytes(b"")
    model_dir = next(store.index_dir.iterdir())
    temps.append(model_dir / ".0123.json.tmp-999-abcd0123")
    temps[-1].write_bytes(b'{"half": ')
    stamp_dir = next(store.stamp_dir.iterdir())
    temps.append(stamp_dir / ".ffff.tmp-999-abcd0123")
    temps[-1].write_bytes(b"1:2")
    return strays, temps


def test_gc_removes_unreferenced_blobs_and_leftovers_only(arts: Artifacts, store: Store) -> None:
    strays, temps = make_leftovers(store)
    referenced = arts.referenced()
    assert blob_digests(store) == referenced | strays
    assert digest_of(WEIGHTS) in referenced

    plan = gc_json()
    assert plan["dry_run"] is False
    assert plan["evicted"] == []
    assert {b["digest"] for b in plan["blobs"]} == strays
    assert plan["bytes_freed"] == sum(b["size"] for b in plan["blobs"]) == sum(len(b"orphan blob 0") for _ in strays)
    assert set(plan["temp_paths"]) == {str(p) for p in temps}
    assert plan["bytes_kept"] >= sum(len(e) for e in arts.engines.values()) + len(WEIGHTS)

    assert blob_digests(store) == referenced
    assert not any(p.exists() for p in temps)
    assert list(store.tmp_dir.iterdir()) == []
    assert all(arts.hit(n) for n in "ABC")
    assert run_kiln("verify").returncode == 0
    # Nothing left to do: a second gc is empty.
    again = gc_json()
    assert again["blobs"] == [] and again["temp_paths"] == [] and again["evicted"] == []


def test_dry_run_removes_nothing_and_reports_the_same_plan(arts: Artifacts, store: Store) -> None:
    make_leftovers(store)
    arts.set_last_used("A", 3600)
    before = snapshot(store.root)
    dry = gc_json("--dry-run", "--max-size", str(10**9), "--older-than", "30m")
    assert snapshot(store.root) == before
    assert dry["dry_run"] is True
    assert [e["key"] for e in dry["evicted"]] == [arts.entries["A"].key]

    r = run_kiln("gc", "--dry-run", "--older-than", "30m")
    assert r.returncode == 0 and "would remove" in r.stdout and "removed" not in r.stdout
    assert snapshot(store.root) == before

    real = gc_json("--max-size", str(10**9), "--older-than", "30m")
    assert real["dry_run"] is False
    for field in ("evicted", "blobs", "temp_paths", "bytes_freed", "bytes_kept"):
        assert real[field] == dry[field], field
    assert snapshot(store.root) != before
    assert not arts.hit("A") and arts.hit("B") and arts.hit("C")


def test_max_size_evicts_least_recently_used_and_keeps_shared_blobs(arts: Artifacts, store: Store) -> None:
    # Last use: A oldest, then C, then B (the entry file's mtime is the last-use time).
    arts.set_last_used("A", 3000)
    arts.set_last_used("C", 2000)
    arts.set_last_used("B", 1000)
    weights = digest_of(WEIGHTS)
    kept = store.gc(dry_run=True).kept_bytes

    # Just enough room for all but A.
    plan = gc_json("--max-size", str(kept - arts.unique_bytes("A")))
    assert [e["key"] for e in plan["evicted"]] == [arts.entries["A"].key]
    assert digest_of(arts.engines["A"]) in {b["digest"] for b in plan["blobs"]}
    assert weights not in {b["digest"] for b in plan["blobs"]}
    assert store.has_blob(weights)  # B and C still refer to it
    assert not arts.hit("A") and arts.hit("B") and arts.hit("C")
    assert blob_digests(store) == arts.referenced()

    # A hit records a use: B was used long ago, a lookup makes it the most recent.
    arts.set_last_used("B", 500)
    arts.set_last_used("C", 400)
    assert arts.hit("B")
    kept = store.gc(dry_run=True).kept_bytes
    plan = gc_json("--max-size", str(kept - 1))
    assert [e["key"] for e in plan["evicted"]] == [arts.entries["C"].key]
    assert store.has_blob(weights) and arts.hit("B") and not arts.hit("C")

    # Size 0: everything goes, the shared blob with the last artifact that refers to it.
    plan = gc_json("--max-size", "0")
    assert [e["key"] for e in plan["evicted"]] == [arts.entries["B"].key]
    assert weights in {b["digest"] for b in plan["blobs"]}
    assert plan["bytes_kept"] == 0
    assert blob_digests(store) == set()
    assert list(store.iter_entries()) == []
    assert run_kiln("verify").returncode == 0


def test_max_size_with_human_sizes(arts: Artifacts, store: Store) -> None:
    r = run_kiln("gc", "--max-size", "1G")
    assert r.returncode == 0 and "removed 0 artifacts" in r.stdout
    r = run_kiln("gc", "--max-size", "700K")  # A+B+C+weights is ~1.1 MB; C+weights is ~0.8 MB
    assert r.returncode == 0, r.stderr
    assert "removed 3 artifacts" in r.stdout
    r = run_kiln("gc", "--max-size", "lots")
    assert r.returncode == 2 and "not a size" in r.stderr


def test_older_than_evicts_by_last_use(arts: Artifacts, store: Store) -> None:
    arts.set_last_used("A", 10 * 86400)
    arts.set_last_used("B", 3600)
    plan = gc_json("--older-than", "2d")
    assert [e["key"] for e in plan["evicted"]] == [arts.entries["A"].key]
    assert store.has_blob(digest_of(WEIGHTS))
    assert not arts.hit("A") and arts.hit("B") and arts.hit("C")  # hits refresh last use

    arts.set_last_used("B", 3600)
    plan = gc_json("--older-than", "30m")
    assert [e["key"] for e in plan["evicted"]] == [arts.entries["B"].key]
    assert arts.hit("C")
    assert blob_digests(store) == arts.referenced()
    assert run_kiln("verify").returncode == 0


def test_gc_on_missing_store_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no-store"
    r = run_kiln("gc", "--json", env={"KILN_HOME": str(missing)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["blobs"] == []
    assert not missing.exists()


def fail_a_build(model: Path, store: Store) -> Path:
    """Run a real build that fails in its worker (as tests/compile/test_build.py provokes one)
    and return the log the store kept for it."""
    r = run_kiln("build", str(model), "--target", "torch-aoti", "--n-positions", "32")
    assert r.returncode == 2 and "worker log (tail)" in r.stderr, r.stdout + r.stderr
    found = re.search(r"Full log: (\S+\.log)", r.stderr)
    assert found, r.stderr
    log = Path(found.group(1))
    assert log.parent == store.logs_dir and log.is_file(), log
    assert "Traceback (most recent call last)" in log.read_text()
    return log


def set_age(path: Path, days: float) -> None:
    t = time.time() - days * 86400
    os.utime(path, (t, t))


def test_failed_build_logs_are_kept_30_days_then_collected(tmp_path: Path, store: Store) -> None:
    model = make_tiny_model("llama", tmp_path / "m", seed=4)
    break_weights(model)  # well-formed, wrong shapes: the worker fails and leaves its log
    old = fail_a_build(model, store)
    young = fail_a_build(model, store)
    assert old != young and sorted(store.logs_dir.iterdir()) == sorted([old, young])
    assert list(store.iter_entries()) == []  # a failed build publishes nothing
    set_age(old, 31)
    set_age(young, 29)  # younger than FAILED_LOG_MAX_AGE_S (30 days): the user may still read it
    young_text = young.read_text()

    before = snapshot(store.root)
    dry = gc_json("--dry-run")
    assert dry["dry_run"] is True
    assert [Path(p) for p in dry["logs"]] == [old]
    # A failed build leaves nothing else behind: its build directory and lock are gone.
    assert dry["evicted"] == [] and dry["blobs"] == [] and dry["temp_paths"] == []
    assert snapshot(store.root) == before and old.exists()

    r = run_kiln("gc")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "removed 0 artifacts" in r.stdout and "1 failed-build logs older than 30 days" in r.stdout, r.stdout
    assert not old.exists()
    assert young.read_text() == young_text
    old_rel = old.relative_to(store.root).as_posix()
    assert snapshot(store.root) == {k: v for k, v in before.items() if k != old_rel}

    again = gc_json()
    assert again["logs"] == [] and young.exists()
