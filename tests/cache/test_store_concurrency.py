"""Several writers, readers and gc on one store at once (DESIGN invariants 2 and 4).

Real processes: four publishers publish the same artifact and their own artifacts (all of
them share one weights file), while a reader loops over lookups and fetches (hard links and
copies) and checks every hit byte for byte. A second run adds a process that runs gc in a
loop: gc takes the exclusive store lock and publishers the shared one, so gc never removes a
blob a publisher has written but not yet referenced, nor a live writer's temp file.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_kiln, write_fake_model
from kiln.cache import Store

TOOLCHAIN = {"torch": "2.0.0", "transformers": "5.0.0", "hardware": "cpu-test"}
SHARED_BATCH = 1  # the artifact every publisher publishes

WORKER = r"""
import json, os, random, shutil, sys, time
from pathlib import Path
from kiln import api
from kiln.cache import Store
from kiln.spec import BuildSpec

mode, model, src, work = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
arg = json.loads(sys.argv[5])
toolchain = json.loads(sys.argv[6])
store = Store()
stop = work / "stop"

def res(b):
    spec = BuildSpec(target="torch-aoti", model=model, n_positions=128, batch_size=b, dtype="fp32")
    return api.resolve(spec, store=store, toolchain=toolchain)

def tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}

(work / f"{mode}-{os.getpid()}.ready").touch()
if mode == "publish":
    mine, rounds = arg["mine"], arg["rounds"]
    r_shared, r_mine = res(arg["shared"]), res(mine)
    start = time.time()
    for i in range(rounds):
        for r, b in ((r_shared, arg["shared"]), (r_mine, mine)) if i % 2 else ((r_mine, mine), (r_shared, arg["shared"])):
            api.put(r, src / f"b{b}", store=store)
    print(json.dumps({"published": 2 * rounds, "start": start, "end": time.time()}))
elif mode == "read":
    batches = arg["batches"]
    expected = {b: tree(src / f"b{b}") for b in batches}
    rs = {b: res(b) for b in batches}
    rng = random.Random(os.getpid())
    hits = misses = 0
    damaged, wrong = [], []
    n = 0
    while not stop.exists():
        b = rng.choice(batches)
        n += 1
        dest = work / f"reader-{os.getpid()}" / str(n)
        if rng.random() < 0.5:
            result = api.lookup(rs[b], store=store)
            got = None
        else:
            result, path = api.fetch(rs[b], dest, store=store, copy=rng.random() < 0.3)
            got = tree(path) if path is not None else None
        damaged.extend(result.damaged)
        if result.hit:
            hits += 1
            if got is not None and got != expected[b]:
                wrong.append(f"batch {b}: materialised {sorted(got)} differs from the source")
        else:
            misses += 1
        shutil.rmtree(dest, ignore_errors=True)
    print(json.dumps({"hits": hits, "misses": misses, "damaged": damaged, "wrong": wrong}))
elif mode == "gc":
    runs = removed = 0
    times = []
    while not stop.exists():
        plan = store.gc()
        times.append(time.time())
        runs += 1
        removed += len(plan.blobs) + len(plan.temp_paths)
        time.sleep(0.005)
    print(json.dumps({"runs": runs, "removed": removed, "times": times}))
"""


def blob_sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_sources(src: Path, batches: list[int]) -> tuple[bytes, dict[int, dict[str, bytes]]]:
    rng = random.Random(11)
    weights = rng.randbytes(2 << 20)
    out = {}
    for b in batches:
        files = {
            "weights.safetensors": weights,  # identical in every artifact
            "engine/model.pt2": rng.randbytes(200_000 + b),
            "engine/rank0/config.json": json.dumps({"batch_size": b}).encode(),
        }
        for rel, data in files.items():
            (src / f"b{b}" / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / f"b{b}" / rel).write_bytes(data)
        out[b] = files
    return weights, out


class Run:
    def __init__(self, tmp_path: Path) -> None:
        self.model = write_fake_model(tmp_path / "model")
        self.src = tmp_path / "src"
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.script = tmp_path / "worker.py"
        self.script.write_text(WORKER)
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, mode: str, arg: dict) -> None:
        p = subprocess.Popen(
            [sys.executable, str(self.script), mode, str(self.model), str(self.src), str(self.work),
             json.dumps(arg), json.dumps(TOOLCHAIN)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.procs.append((mode, p))

    def wait_ready(self, n: int) -> None:
        deadline = time.monotonic() + 60
        while len(list(self.work.glob("*.ready"))) < n:
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.01)

    def finish(self) -> dict[str, list[dict]]:
        results: dict[str, list[dict]] = {}
        for mode, p in [x for x in self.procs if x[0] == "publish"]:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, f"publisher failed:\n{err}"
            results.setdefault(mode, []).append(json.loads(out))
        (self.work / "stop").touch()
        for mode, p in [x for x in self.procs if x[0] != "publish"]:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, f"{mode} failed:\n{err}"
            results.setdefault(mode, []).append(json.loads(out))
        return results

    def cleanup(self) -> None:
        """Whatever happened, leave no worker running (readers and gc loop until told to stop)."""
        (self.work / "stop").touch()
        for _, p in self.procs:
            if p.poll() is None:
                try:
                    p.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.communicate()


@pytest.fixture
def run(tmp_path: Path):  # type: ignore[no-untyped-def]
    r = Run(tmp_path)
    yield r
    r.cleanup()


def check_store(store: Store, sources: dict[int, dict[str, bytes]], weights: bytes, out: Path) -> None:
    entries = list(store.iter_entries())
    assert sorted(e.spec["batch_size"] for e in entries) == sorted(sources)
    referenced: set[str] = set()
    for e in entries:
        m = store.check_artifact(e)
        dest = store.materialize(m, out / e.key, copy=True)
        got = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
        assert got == sources[e.spec["batch_size"]]
        referenced |= {e.manifest, m.config.digest} | {f.digest for f in m.files}
    # Normal (not killed) publishers leave no temp files, even when racing on one artifact.
    assert list(store.tmp_dir.iterdir()) == []
    assert list(store.quarantine_dir.glob("*")) == []
    r = run_kiln("verify", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    # Racing publishers of the same artifact each wrote a manifest; one index entry won and
    # the others are unreferenced until gc. After gc: exactly the referenced blobs, and the
    # weights file that every artifact holds is stored once.
    store.gc()
    blobs = dict(store.all_blobs())
    assert set(blobs) == referenced
    w = blob_sha(weights)
    assert w in blobs
    stored_bytes = sum(p.stat().st_size for p in blobs.values())
    assert stored_bytes < 2 * len(weights)  # one copy of the 2 MiB weights, not one per artifact
    assert sum(1 for p in blobs.values() if p.stat().st_size == len(weights)) == 1


def test_concurrent_publishers_and_reader(run: Run, tmp_path: Path, store: Store) -> None:
    batches = [SHARED_BATCH, 2, 3, 4, 5]
    weights, sources = write_sources(run.src, batches)
    run.start("read", {"batches": batches})
    for i in range(4):
        run.start("publish", {"shared": SHARED_BATCH, "mine": batches[1 + i], "rounds": 5})
    run.wait_ready(5)
    results = run.finish()

    (reader,) = results["read"]
    assert reader["damaged"] == [], reader["damaged"]  # never an entry whose blobs were missing or bad
    assert reader["wrong"] == [], reader["wrong"]
    assert reader["hits"] > 0, reader
    check_store(store, sources, weights, tmp_path / "final")


def test_gc_concurrent_with_publishers_never_breaks_an_artifact(run: Run, tmp_path: Path, store: Store) -> None:
    batches = [SHARED_BATCH, 2, 3, 4]
    weights, sources = write_sources(run.src, batches)
    run.start("gc", {})
    run.start("read", {"batches": batches})
    for i in range(3):
        run.start("publish", {"shared": SHARED_BATCH, "mine": batches[1 + i], "rounds": 6})
    run.wait_ready(5)
    results = run.finish()

    # gc got the exclusive lock again and again while publishers (and the reader's fetches)
    # overlapped one another. flock alone grants new shared locks while any is held, which
    # starved gc (0-1 runs here); store_lock's gate makes later lockers queue behind gc.
    (gc,) = results["gc"]
    start = min(p["start"] for p in results["publish"])
    end = max(p["end"] for p in results["publish"])
    during = sum(1 for t in gc["times"] if start <= t <= end)
    assert during >= 3, f"gc ran {during} times while publishers ran ({gc['runs']} in all)"
    (reader,) = results["read"]
    assert reader["damaged"] == [], reader["damaged"]
    assert reader["wrong"] == [], reader["wrong"]
    assert reader["hits"] > 0
    check_store(store, sources, weights, tmp_path / "final")


NESTED = r"""
import sys, time
from pathlib import Path
from kiln.cache import Store
from kiln.manifests._manifest import Manifest

store, work = Store(), Path(sys.argv[1])
manifest = Manifest.parse(Path(sys.argv[2]).read_bytes())
with store.writer_lock():  # a shared store lock, held
    (work / "holding").touch()
    while not (work / "gc-waiting").exists():
        time.sleep(0.01)
    time.sleep(0.3)  # gc is now blocked on the exclusive lock
    store.materialize(manifest, work / "dest")  # takes the shared lock again, nested
print("nested ok", flush=True)
"""


def test_nested_shared_lock_does_not_deadlock_behind_waiting_gc(tmp_path: Path, store: Store) -> None:
    """gc waiting for the exclusive lock makes new shared lockers queue behind it; a thread
    that already holds a shared lock must not queue (it would wait for itself)."""
    from kiln import api
    from kiln.spec import BuildSpec

    model = write_fake_model(tmp_path / "model")
    src = tmp_path / "src"
    src.mkdir()
    (src / "engine.bin").write_bytes(b"engine")
    res = api.resolve(BuildSpec(target="torch-aoti", model=str(model), n_positions=128, batch_size=1, dtype="fp32"),
                      store=store, toolchain=TOOLCHAIN)
    entry = api.put(res, src, store=store)
    manifest_file = tmp_path / "manifest.json"
    manifest_file.write_bytes(store.blob_path(entry.manifest).read_bytes())
    work = tmp_path / "work"
    work.mkdir()

    holder = subprocess.Popen([sys.executable, "-c", NESTED, str(work), str(manifest_file)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gc = None
    try:
        deadline = time.monotonic() + 60
        while not (work / "holding").exists():
            assert holder.poll() is None, holder.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        gc = subprocess.Popen([sys.executable, "-m", "kiln.cli", "gc", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        assert gc.poll() is None  # blocked: the holder has the shared lock
        (work / "gc-waiting").touch()
        out, err = holder.communicate(timeout=20)
        assert holder.returncode == 0 and "nested ok" in out, err
        out, err = gc.communicate(timeout=20)
        assert gc.returncode == 0, err
        assert (work / "dest" / "engine.bin").read_bytes() == b"engine"
    finally:
        for p in (holder, gc):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
