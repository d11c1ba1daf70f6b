"""Publish is atomic under SIGKILL (DESIGN invariant 2).

A real publisher process (kiln.api.put on a real model directory and real artifact files)
is killed with SIGKILL at random moments, many times, against one store. Afterwards every
index entry must name a complete artifact whose files verify and materialise byte for byte,
and `kiln gc` must remove every leftover (temp files, unreferenced blobs) so that
`kiln verify` passes. A deterministic variant kills the publisher exactly between writing
the manifest and writing the index entry, through Store.publish's ``before_index`` hook.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_kiln, write_fake_model
from kiln import api
from kiln.cache import Store
from kiln.manifests._manifest import Manifest
from kiln.spec import BuildSpec

TOOLCHAIN = {"torch": "2.0.0", "transformers": "5.0.0", "hardware": "cpu-test"}
PINS = [f"--toolchain={k}={v}" for k, v in TOOLCHAIN.items()]
BATCH_SIZES = (1, 2, 3, 4, 5, 6)

# Publishes artifacts src/b<batch> for random batch sizes, forever, until killed.
PUBLISHER = r"""
import json, os, random, signal, sys
from pathlib import Path
from kiln import api
from kiln.cache import Store
from kiln.spec import BuildSpec

model, src, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
batch_sizes = json.loads(sys.argv[4])
toolchain = json.loads(sys.argv[5])
store = Store()
res = {
    b: api.resolve(BuildSpec(target="torch-aoti", model=model, n_positions=128, batch_size=b, dtype="fp32"),
                   store=store, toolchain=toolchain)
    for b in batch_sizes
}
if mode == "loop":
    rng = random.Random(os.getpid())
    print("ready", flush=True)
    while True:
        b = rng.choice(batch_sizes)
        api.put(res[b], src / f"b{b}", store=store)
else:  # "hook-kill" / "hook-exit": die exactly between the manifest and the index entry
    b = batch_sizes[0]
    r = res[b]
    def die():
        if mode == "hook-kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)
    store.publish(src / f"b{b}", key=r.key, spec=r.entry_spec(), model=r.model_summary(),
                  toolchain={k: str(v) for k, v in r.toolchain.items()}, record={"key": r.key},
                  before_index=die)
    print("the hook returned", flush=True)
"""


def write_sources(src: Path) -> dict[int, dict[str, bytes]]:
    """Artifacts of a few MB: one weights file shared by all, a per-spec engine, small files."""
    rng = random.Random(7)
    weights = rng.randbytes(3 << 20)
    out: dict[int, dict[str, bytes]] = {}
    for b in BATCH_SIZES:
        files = {
            "weights.safetensors": weights,
            "engine/model.pt2": rng.randbytes((1 << 20) + b * 4099),
            "engine/meta/config.json": json.dumps({"batch_size": b}).encode(),
            "tokenizer.json": b'{"version": "1.0"}',
        }
        for rel, data in files.items():
            (src / f"b{b}" / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / f"b{b}" / rel).write_bytes(data)
        out[b] = files
    return out


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def start_publisher(script: Path, model: Path, src: Path, mode: str, batch_sizes=BATCH_SIZES) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(script), str(model), str(src), mode, json.dumps(list(batch_sizes)), json.dumps(TOOLCHAIN)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def referenced_blobs(store: Store) -> set[str]:
    out: set[str] = set()
    for e in store.iter_entries():
        m = store.read_manifest(e.manifest)
        out |= {e.manifest, m.config.digest} | {f.digest for f in m.files}
    return out


def hidden_temps(store: Store) -> list[Path]:
    return [p for d in (store.index_dir, store.stamp_dir, store.root / "hash-memo") if d.exists()
            for p in d.rglob(".*.tmp-*")]


def assert_every_entry_complete(store: Store, sources: dict[int, dict[str, bytes]], out: Path) -> int:
    n = 0
    for entry in store.iter_entries():
        manifest = store.check_artifact(entry)  # raises on a missing or corrupt blob
        dest = store.materialize(manifest, out / entry.key)
        assert tree(dest) == sources[entry.spec["batch_size"]], f"artifact {entry.key} is not its source"
        assert entry.files == len(manifest.files) == 4
        n += 1
    return n


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    model = write_fake_model(tmp_path / "model")
    src = tmp_path / "src"
    sources = write_sources(src)
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)
    return model, src, sources, script


def test_sigkilled_publishers_never_leave_a_visible_partial_artifact(setup, store: Store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, src, sources, script = setup
    rng = random.Random(20260101)
    kills = 30
    for i in range(kills):
        p = start_publisher(script, model, src, "loop")
        try:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == "ready", p.stderr.read() if p.stderr else ""
            time.sleep(rng.uniform(0.0, 0.25))
        finally:
            p.send_signal(signal.SIGKILL)
            p.communicate()
        assert p.returncode == -signal.SIGKILL, f"publisher {i} died on its own: rc={p.returncode}"
        if i % 10 == 9:
            # Between kills, as a reader would: only complete artifacts are visible.
            assert_every_entry_complete(store, sources, tmp_path / f"check-{i}")

    published = assert_every_entry_complete(store, sources, tmp_path / "final")
    assert published >= 3, "the publisher never finished an artifact; the kills prove nothing"
    assert {e.spec["batch_size"] for e in store.iter_entries()} <= set(BATCH_SIZES)

    # The kills must have interrupted publishes midway (else this test proves nothing).
    referenced = referenced_blobs(store)
    all_blobs = {d for d, _ in store.all_blobs()}
    leftovers = list(store.tmp_dir.iterdir()) + hidden_temps(store) + sorted(all_blobs - referenced)
    assert leftovers, "no kill landed inside a publish"

    r = run_kiln("gc", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    plan = json.loads(r.stdout)
    assert plan["evicted"] == []
    assert {b["digest"] for b in plan["blobs"]} == all_blobs - referenced

    assert list(store.tmp_dir.iterdir()) == []
    assert hidden_temps(store) == []
    assert {d for d, _ in store.all_blobs()} == referenced_blobs(store) == referenced
    r = run_kiln("verify")
    assert r.returncode == 0, r.stdout + r.stderr
    assert assert_every_entry_complete(store, sources, tmp_path / "after-gc") == published

    # And the CLI agrees: every published spec is a hit.
    for b in {e.spec["batch_size"] for e in store.iter_entries()}:
        args = [str(model), "-t", "torch-aoti", "--n-positions", "128", "--batch-size", str(b), "--dtype", "fp32", *PINS]
        r = run_kiln("lookup", *args)
        assert r.returncode == 0 and "WARNING" not in r.stderr, r.stdout + r.stderr
        break  # one CLI round trip is enough; the API checked them all


@pytest.mark.parametrize("mode", ["hook-kill", "hook-exit"])
def test_death_between_manifest_and_index_entry_leaves_no_entry(setup, store: Store, tmp_path: Path, mode: str) -> None:  # type: ignore[no-untyped-def]
    model, src, sources, script = setup
    p = start_publisher(script, model, src, mode, batch_sizes=(2,))
    out, err = p.communicate(timeout=60)
    assert "the hook returned" not in out
    assert p.returncode == (-signal.SIGKILL if mode == "hook-kill" else 3), err

    # Everything but the index entry was written: blobs, build record and manifest.
    assert list(store.iter_entries()) == []
    blobs = {d: path for d, path in store.all_blobs()}
    manifests = []
    for d, path in blobs.items():
        try:
            manifests.append(Manifest.parse(path.read_bytes()))
        except Exception:
            continue
    assert len(manifests) == 1
    assert {f.path for f in manifests[0].files} == set(sources[2])
    assert len(blobs) == len(sources[2]) + 2  # files + record + manifest

    args = [str(model), "-t", "torch-aoti", "--n-positions", "128", "--batch-size", "2", "--dtype", "fp32", *PINS]
    r = run_kiln("lookup", *args)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "WARNING" not in r.stderr  # a plain miss: nothing half-published is visible

    r = run_kiln("gc", "--json")
    assert r.returncode == 0, r.stderr
    assert {b["digest"] for b in json.loads(r.stdout)["blobs"]} == set(blobs)
    assert list(store.all_blobs()) == []
    assert list(store.tmp_dir.iterdir()) == [] and hidden_temps(store) == []
    assert run_kiln("verify").returncode == 0

    # The store is healthy: publishing again works and is a hit.
    res = api.resolve(BuildSpec(target="torch-aoti", model=str(model), n_positions=128, batch_size=2, dtype="fp32"),
                      store=store, toolchain=TOOLCHAIN)
    api.put(res, src / "b2", store=store)
    result, path = api.fetch(res, tmp_path / "dest", store=store)
    assert result.hit and path is not None and tree(path) == sources[2]
