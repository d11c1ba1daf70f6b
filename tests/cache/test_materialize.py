"""Materialising an artifact: independent copy-on-write clones or copies by default, hard links
with --link, nested directories, and --force replacement that is atomic: at every instant
``dest`` is the complete old tree or the complete new one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import run_kiln, write_fake_model
from kiln import api
from kiln.cache import Store
from kiln.spec import BuildSpec

TOOLCHAIN = {"torch": "2.0.0", "transformers": "5.0.0", "hardware": "cpu-test"}
PINS = [f"--toolchain={k}={v}" for k, v in TOOLCHAIN.items()]


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def nested_files(tag: str, n: int = 6, seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(f"{tag}-{seed}")
    files = {"MARKER": tag.encode(), f"top-{tag}.json": b"{}"}
    for i in range(n):
        files[f"engine/rank{i % 2}/layer{i % 3}/part-{i}.bin"] = rng.randbytes(rng.randrange(1, 50_000))
    files["zzz/last"] = tag.encode()  # the last file materialised (files go in walk order)
    return files


class Pub:
    def __init__(self, tmp_path: Path, store: Store) -> None:
        self.tmp, self.store = tmp_path, store
        self.model = write_fake_model(tmp_path / "model")

    def res(self, batch_size: int) -> api.Resolution:
        return api.resolve(
            BuildSpec(target="torch-aoti", model=str(self.model), n_positions=128, batch_size=batch_size, dtype="fp32"),
            store=self.store, toolchain=TOOLCHAIN,
        )

    def args(self, batch_size: int) -> list[str]:
        return [str(self.model), "-t", "torch-aoti", "--n-positions", "128", "--batch-size", str(batch_size),
                "--dtype", "fp32", *PINS]

    def publish(self, batch_size: int, files: dict[str, bytes]):  # type: ignore[no-untyped-def]
        src = self.tmp / f"src-{batch_size}"
        write_tree(src, files)
        entry = api.put(self.res(batch_size), src, store=self.store)
        return self.store.read_manifest(entry.manifest)


@pytest.fixture
def pub(tmp_path: Path, store: Store) -> Pub:
    return Pub(tmp_path, store)


def test_fetch_link_hard_links_blobs_into_nested_directories(pub: Pub, store: Store, tmp_path: Path) -> None:
    files = nested_files("A")
    manifest = pub.publish(1, files)
    dest = tmp_path / "deploy" / "new" / "engine"  # parents do not exist yet
    r = run_kiln("fetch", *pub.args(1), "--dest", str(dest), "--link", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["dest"] == str(dest)
    assert tree(dest) == files
    assert (dest / "engine" / "rank1" / "layer2").is_dir()
    for f in manifest.files:
        got, blob = os.stat(dest / f.path), os.stat(store.blob_path(f.digest))
        assert (got.st_dev, got.st_ino) == (blob.st_dev, blob.st_ino), f.path
        assert got.st_nlink >= 2
        assert stat.S_IMODE(got.st_mode) == 0o444  # read-only: an in-place write fails instead of corrupting
    # A second fetch shares the same inodes; the link did not cost a re-hash next time (stamps).
    dest2 = tmp_path / "second"
    result, path = api.fetch(pub.res(1), dest2, store=store, link=True)
    assert result.hit and path == dest2.absolute()
    assert os.stat(dest2 / "MARKER").st_ino == os.stat(dest / "MARKER").st_ino
    assert sorted(os.listdir(dest.parent)) == ["engine"]  # no staging leftovers
    assert run_kiln("verify").returncode == 0


@pytest.mark.parametrize("flags", [[], ["--copy"]], ids=["default", "copy-flag"])
def test_fetch_gives_independent_files(pub: Pub, store: Store, tmp_path: Path, flags: list[str]) -> None:
    files = nested_files("A")
    manifest = pub.publish(1, files)
    dest = tmp_path / "copy"
    r = run_kiln("fetch", *pub.args(1), "--dest", str(dest), *flags)
    assert r.returncode == 0, r.stdout + r.stderr
    assert tree(dest) == files
    for f in manifest.files:
        assert os.stat(dest / f.path).st_ino != os.stat(store.blob_path(f.digest)).st_ino
    # Editing the copy leaves the store intact.
    victim = next(f for f in manifest.files if f.path.endswith(".bin"))
    target = dest / victim.path
    target.chmod(0o644)
    target.write_bytes(b"edited by the user")
    assert store.blob_path(victim.digest).read_bytes() == files[victim.path]
    assert run_kiln("lookup", *pub.args(1)).returncode == 0
    assert run_kiln("verify").returncode == 0


def test_cross_filesystem_dest_falls_back_to_verified_copies(pub: Pub, store: Store) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or os.stat(shm).st_dev == os.stat(store.root.parent).st_dev:
        pytest.skip("no second writable filesystem (/dev/shm) here")
    files = nested_files("A")
    manifest = pub.publish(1, files)
    other = Path(tempfile.mkdtemp(dir=shm, prefix="kiln-test-"))
    try:
        result, path = api.fetch(pub.res(1), other / "dest", store=store)
        assert result.hit and path is not None
        assert tree(path) == files
        for f in manifest.files:
            assert os.stat(path / f.path).st_dev != os.stat(store.blob_path(f.digest)).st_dev
    finally:
        shutil.rmtree(other)


_POLLER = r"""
import os, sys
dest, stop = sys.argv[1], sys.argv[2]
seen = absent = incomplete = 0
while not os.path.exists(stop):
    seen += 1
    try:
        os.stat(dest + "/zzz/last")  # one path walk: whichever tree dest names now
    except FileNotFoundError:
        if os.path.exists(dest):
            incomplete += 1
        else:
            absent += 1
print(seen, absent, incomplete)
"""


def test_force_replace_is_atomic_for_readers(pub: Pub, store: Store, tmp_path: Path) -> None:
    old, new = nested_files("OLD", 12), nested_files("NEW", 8)
    m_old, m_new = pub.publish(1, old), pub.publish(2, new)
    dest = tmp_path / "dest"
    store.materialize(m_old, dest)
    stop = tmp_path / "stop"
    poller = subprocess.Popen([sys.executable, "-c", _POLLER, str(dest), str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # let it start polling
        for i in range(60):
            store.materialize(m_new if i % 2 == 0 else m_old, dest, replace=True)
    finally:
        stop.touch()
        out, _ = poller.communicate(timeout=60)
    seen, absent, incomplete = map(int, out.split())
    assert seen > 100
    # With two renames (dest aside, then staging in) readers find no dest at all in between;
    # an exchange never leaves that moment.
    assert (absent, incomplete) == (0, 0), f"{absent} absent, {incomplete} incomplete of {seen} looks"
    assert tree(dest) == old  # 60 replaces: the last one put the old tree back
    assert sorted(os.listdir(tmp_path)) == sorted(["dest", "stop", "model", "src-1", "src-2"])


def test_killed_force_fetch_leaves_old_or_new_tree(pub: Pub, store: Store, tmp_path: Path) -> None:
    old = nested_files("OLD", 150)
    new = nested_files("NEW", 120)
    pub.publish(1, old)
    pub.publish(2, new)
    dest = tmp_path / "dest"
    assert run_kiln("fetch", *pub.args(1), "--dest", str(dest)).returncode == 0
    rng = random.Random(1234)
    cmd = [sys.executable, "-m", "kiln.cli", "fetch", "--dest", str(dest), "--force"]
    outcomes = []
    for i in range(6):
        p = subprocess.Popen(cmd + pub.args(2 if i % 2 == 0 else 1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.15, 0.45))
        p.send_signal(signal.SIGKILL)
        p.wait()
        got = tree(dest)
        assert got == old or got == new, f"kill {i}: dest is neither the old nor the new tree"
        outcomes.append("old" if got == old else "new")
    # A killed fetch may leave its hidden staging directory beside dest; never inside it.
    for p in tmp_path.iterdir():
        assert p.name in {"dest", "model", "src-1", "src-2"} or p.name.startswith(".dest.kiln-"), p
    assert run_kiln("verify").returncode == 0
