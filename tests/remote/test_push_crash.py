"""`kiln push` SIGKILLed at random moments never leaves an incomplete artifact on the remote.

A real `kiln push` process uploads artifacts of several MB in several files (one weights
blob shared by all) and is killed with SIGKILL after a random delay, many times (seeded).
After every kill the remote is read back without Kiln (boto3 / os.walk) and every index
entry must resolve: manifest and build record present and digest-correct, every blob present
with the manifest's size. Between rounds part of what a killed push left is deleted again (in
a safe order), so later pushes start from many different partial states. At the end one
push completes everything and a pull into an empty store reproduces every artifact.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from kiln import api
from kiln.cache import Store
from kiln.spec import BuildSpec
from tests.conftest import run_kiln
from tests.remote.conftest import TOOLCHAIN, FileView, RemoteView, blob_key, check_remote, kiln_remote, tree, write_tree

BATCHES = (1, 2, 3, 4, 5, 6)
KILLS = {"s3": 15, "file": 15}


def write_sources(src: Path) -> dict[int, dict[str, bytes]]:
    rng = random.Random(11)
    weights = rng.randbytes(2 << 20)
    out = {}
    for b in BATCHES:
        files = {
            "weights.safetensors": weights,
            "engine/rank0.engine": rng.randbytes((1 << 20) + b * 4099),
            "engine/rank1.engine": rng.randbytes((768 << 10) + b),
            "engine/plugins/libplugin.so": rng.randbytes(300_000 + b),
            "config.json": json.dumps({"batch_size": b}).encode(),
            "tokenizer.json": b'{"version": "1.0"}',
        }
        write_tree(src / f"b{b}", files)
        out[b] = files
    return out


def artifact_objects(store: Store, entry) -> set[str]:  # type: ignore[no-untyped-def]
    m = store.read_manifest(entry.manifest)
    return {blob_key(entry.manifest), blob_key(m.config.digest)} | {blob_key(f.digest) for f in m.files}


def forget_some(view: RemoteView, entry, objects: set[str], rng: random.Random) -> None:  # type: ignore[no-untyped-def]
    """Undo part of a push the way a careful operator would: index entry first, then some of
    the blobs no remaining entry references (so the remote stays consistent)."""
    view.delete(f"index/{entry.model_hex}/{entry.key}.json")
    remaining = check_remote(view)
    referenced = set()
    for key, manifest in remaining.items():
        referenced |= {blob_key(manifest["config"]["digest"])} | {blob_key(layer["digest"]) for layer in manifest["layers"]}
    referenced |= {blob_key(json.loads(view.read(k))["manifest"]) for k in view.objects() if k.startswith("index/")}
    for k in sorted(objects - referenced):
        if rng.random() < 0.7:
            view.delete(k)


def test_sigkilled_push_never_leaves_an_incomplete_artifact(remote: RemoteView, model: Path, tmp_path: Path) -> None:
    sources = write_sources(tmp_path / "src")
    store = Store()
    entries = {}
    for b in BATCHES:
        res = api.resolve(BuildSpec(target="torch-aoti", model=str(model), n_positions=256, batch_size=b),
                          store=store, toolchain=TOOLCHAIN)
        entries[b] = api.put(res, tmp_path / "src" / f"b{b}", store=store)
    objects = {b: artifact_objects(store, e) for b, e in entries.items()}
    rng = random.Random(1234)

    def start(b: int, err: Path) -> tuple[subprocess.Popen, object]:
        f = open(err, "wb")
        cmd = [sys.executable, "-m", "kiln.cli", "--remote", remote.url, "push", "--key", entries[b].key]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f, stdin=subprocess.DEVNULL), f

    # How long one full push takes here (process start-up included): kills land within it.
    t0 = time.monotonic()
    r = kiln_remote(remote.url, "push", "--key", entries[1].key)
    full = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    forget_some(remote, entries[1], objects[1], random.Random(0))

    # Kill rounds until enough kills landed, and enough of them mid-transfer. The window a kill
    # falls in follows how long a push takes *now* (each push that finished updates it), so the
    # kills keep landing inside pushes when the machine gets busier or quieter mid-test.
    kills = mid_push = rounds = 0
    while kills < KILLS[remote.kind] or mid_push < 3:
        rounds += 1
        assert rounds <= 8 * KILLS[remote.kind], (
            f"only {mid_push} of {kills} kills landed mid-transfer in {rounds - 1} rounds (a push takes {full:.2f} s)")
        b = rng.choice(BATCHES)
        err = tmp_path / f"push-{rounds}.err"
        started = time.monotonic()
        proc, f = start(b, err)
        try:
            proc.wait(timeout=rng.uniform(0.15 * full, 1.1 * full))
            killed = False
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            killed = proc.returncode == -signal.SIGKILL
        finally:
            f.close()  # type: ignore[attr-defined]
        if not killed:
            assert proc.returncode == 0, err.read_text()
            full = 0.5 * full + 0.5 * (time.monotonic() - started)
        kills += killed

        found = check_remote(remote)  # the invariant, after every kill
        present = set(remote.objects())
        if killed and entries[b].key not in found and objects[b] & present:
            mid_push += 1  # killed while transferring: some blobs up, no entry
        if entries[b].key in found:
            assert objects[b] <= present
        if rng.random() < 0.6:
            forget_some(remote, entries[b], objects[b], rng)

    print(f"\n{remote.kind}: {kills} kills ({mid_push} mid-transfer) in {rounds} rounds; full push {full:.2f} s")

    # A later push completes whatever the killed ones left, and a pull reproduces every artifact.
    done = kiln_remote(remote.url, "push", "--all", "--json")
    assert done.returncode == 0, done.stderr
    assert check_remote(remote, deep=True).keys() == {e.key for e in entries.values()}
    fresh = {"KILN_HOME": str(tmp_path / "fresh-store")}
    pulled = kiln_remote(remote.url, "pull", "--all", "--json", env=fresh)
    assert pulled.returncode == 0, pulled.stderr
    assert len(json.loads(pulled.stdout)) == len(BATCHES)
    assert run_kiln("verify", env=fresh).returncode == 0
    fresh_store = Store(tmp_path / "fresh-store")
    for b, entry in entries.items():
        manifest = fresh_store.check_artifact(entry)
        assert tree(fresh_store.materialize(manifest, tmp_path / "out" / str(b))) == sources[b]
    if isinstance(remote, FileView):
        # Killed uploads leave hidden temp files; Kiln never lists or serves them.
        assert all(p.name.startswith(".") for p in remote.temp_files())
