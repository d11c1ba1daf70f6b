"""A corrupt blob is a loud miss, never a silent hit (DESIGN invariant 3).

Blobs are damaged the way a user or a failing disk would: make the read-only file writable,
change bytes in place, make it read-only again — sometimes restoring the mtime too, which
only the ctime in the verification stamp can catch. Then the real CLI runs in subprocesses.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import run_kiln, write_fake_model
from kiln import api
from kiln.cache import Store
from kiln.spec import BuildSpec

TOOLCHAIN = {"torch": "2.0.0", "transformers": "5.0.0", "hardware": "cpu-test"}
PINS = [f"--toolchain={k}={v}" for k, v in TOOLCHAIN.items()]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_artifact(root: Path, seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {
        "engine/model.pt2": rng.randbytes(1 << 20),
        "engine/weights.bin": rng.randbytes(300_000),
        "config.json": b'{"engine": true}',
        "tokenizer/tokenizer.json": b'{"version": "1.0"}',
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


class Setup:
    def __init__(self, tmp_path: Path, store: Store) -> None:
        self.tmp = tmp_path
        self.store = store
        self.model = write_fake_model(tmp_path / "model")
        self.src = tmp_path / "artifact"
        self.files = make_artifact(self.src)
        self.res = api.resolve(
            BuildSpec(target="torch-aoti", model=str(self.model), n_positions=128, batch_size=2, dtype="fp32"),
            store=store, toolchain=TOOLCHAIN,
        )

    @property
    def args(self) -> list[str]:
        return [str(self.model), "-t", "torch-aoti", "--n-positions", "128", "--batch-size", "2", "--dtype", "fp32", *PINS]

    def publish(self):  # type: ignore[no-untyped-def]
        return api.put(self.res, self.src, store=self.store)

    def publish_cli(self) -> None:
        r = run_kiln("store", "put", str(self.src), *self.args)
        assert r.returncode == 0, r.stdout + r.stderr

    def blob(self, rel: str) -> Path:
        return self.store.blob_path(digest_of(self.files[rel]))

    def manifest_blob(self) -> Path:
        entry = self.store.get_entry(self.res.model.tree_digest.split(":")[1], self.res.key)
        assert entry is not None
        return self.store.blob_path(entry.manifest)

    def assert_hit_and_fetch_ok(self, name: str) -> None:
        r = run_kiln("lookup", *self.args)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "WARNING" not in r.stderr
        dest = self.tmp / name
        r = run_kiln("fetch", *self.args, "--dest", str(dest))
        assert r.returncode == 0, r.stdout + r.stderr
        assert tree(dest) == self.files


    def assert_hit_api(self, name: str) -> None:
        result, path = api.fetch(self.res, self.tmp / name, store=self.store)
        assert result.hit and not result.damaged and path is not None
        assert tree(path) == self.files


def tamper(path: Path, change: Callable[[object], None], *, keep_mtime: bool = False) -> None:
    st = os.stat(path)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        change(f)
    os.chmod(path, st.st_mode & 0o777)
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def flip_byte(offset: int) -> Callable[[object], None]:
    def change(f) -> None:  # type: ignore[no-untyped-def]
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))

    return change


def truncate(size: int) -> Callable[[object], None]:
    return lambda f: f.truncate(size)  # type: ignore[attr-defined]


def append(data: bytes) -> Callable[[object], None]:
    def change(f) -> None:  # type: ignore[no-untyped-def]
        f.seek(0, 2)
        f.write(data)

    return change


@pytest.fixture
def setup(tmp_path: Path, store: Store) -> Setup:
    s = Setup(tmp_path, store)
    s.publish()
    return s


DAMAGE = {
    "flip": (flip_byte(123_456), "is corrupt"),
    "truncate": (truncate(1000), "has 1000 bytes, the manifest says 1048576"),
    "append": (append(b"\0"), "has 1048577 bytes, the manifest says 1048576"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_blob_is_a_loud_miss(setup: Setup, kind: str) -> None:
    change, lookup_says = DAMAGE[kind]
    digest = digest_of(setup.files["engine/model.pt2"])
    blob = setup.blob("engine/model.pt2")
    tamper(blob, change)

    r = run_kiln("verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"blob {digest} is corrupt" in r.stderr
    assert "FAILED" in r.stdout
    if kind != "flip":
        assert "engine/model.pt2" in r.stderr and "wrong size" in r.stderr

    # fetch first (it looks up first): a loud miss that materialises nothing.
    dest = setup.tmp / "deploy" / "engine"
    r = run_kiln("fetch", *setup.args, "--dest", str(dest))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "kiln: WARNING" in r.stderr and digest in r.stderr and lookup_says in r.stderr
    assert r.stdout.startswith("miss")
    assert not dest.exists()
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []  # no staging leftovers

    # The bad blob went to quarantine: the next lookup is still a loud miss (now: missing).
    assert not blob.exists()
    quarantined = list(setup.store.quarantine_dir.iterdir())
    assert [p.name.split(".")[0] for p in quarantined] == [digest.split(":")[1]]
    r = run_kiln("lookup", *setup.args)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "kiln: WARNING" in r.stderr and digest in r.stderr and "missing" in r.stderr
    r = run_kiln("verify")
    assert r.returncode == 1 and "engine/model.pt2" in r.stderr and "missing" in r.stderr

    # Publishing the same artifact again repairs it.
    setup.publish_cli()
    setup.assert_hit_and_fetch_ok("after-repair")
    r = run_kiln("verify")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_republish_after_verify_replaces_a_damaged_blob(setup: Setup, kind: str) -> None:
    """`kiln verify` reports (it does not quarantine); re-publishing must not keep the bad blob
    just because a file of that name exists."""
    change, _ = DAMAGE[kind]
    tamper(setup.blob("engine/model.pt2"), change)
    assert not setup.store.verify().ok
    setup.publish()
    assert setup.blob("engine/model.pt2").read_bytes() == setup.files["engine/model.pt2"]
    setup.assert_hit_api("after-repair")
    assert setup.store.verify().ok


def test_tamper_that_restores_mtime_is_still_detected(setup: Setup) -> None:
    digest = digest_of(setup.files["engine/weights.bin"])
    blob = setup.blob("engine/weights.bin")
    # A first hit leaves a stamp the fast path trusts (no re-hash while the stat is unchanged).
    assert run_kiln("lookup", *setup.args).returncode == 0
    hexdigest = digest.split(":", 1)[1]
    stamp = setup.store.stamp_dir / hexdigest[:2] / hexdigest  # the layout in kiln/cache/_store.py
    assert stamp.exists()
    before = os.stat(blob)

    tamper(blob, flip_byte(5), keep_mtime=True)
    after = os.stat(blob)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)

    r = run_kiln("lookup", *setup.args)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "kiln: WARNING" in r.stderr and f"blob {digest} is corrupt" in r.stderr
    setup.publish()
    setup.assert_hit_api("after-repair")


def test_corrupt_manifest_blob_is_a_loud_miss(setup: Setup) -> None:
    mblob = setup.manifest_blob()
    mdigest = "sha256:" + mblob.name
    tamper(mblob, flip_byte(40))  # inside the JSON text: still parseable or not, either way wrong

    dest = setup.tmp / "dest"
    r = run_kiln("fetch", *setup.args, "--dest", str(dest))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "kiln: WARNING" in r.stderr and mdigest in r.stderr and "does not match its digest" in r.stderr
    assert not dest.exists()

    # Quarantined by that read: still a loud miss, and verify names the unusable manifest.
    r = run_kiln("lookup", *setup.args)
    assert r.returncode == 1 and "kiln: WARNING" in r.stderr and mdigest in r.stderr
    r = run_kiln("verify")
    assert r.returncode == 1 and "manifest unusable" in r.stderr and mdigest in r.stderr

    setup.publish_cli()
    setup.assert_hit_and_fetch_ok("after-repair")
    assert run_kiln("verify").returncode == 0


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_republish_after_damaged_manifest(setup: Setup, damage: str) -> None:
    # No lookup or verify in between (those would quarantine it). The new manifest has a new
    # digest (it records its creation time); the damaged one is left unreferenced for gc.
    mblob = setup.manifest_blob()
    old_record = setup.store.read_manifest("sha256:" + mblob.name).config.digest
    tamper(mblob, flip_byte(40) if damage == "flip" else truncate(10))
    setup.publish()
    setup.assert_hit_api("after-repair")
    assert not setup.store.verify().ok  # the old, damaged, now unreferenced blob
    plan = setup.store.gc()
    assert sorted(d for d, _ in plan.blobs) == sorted(["sha256:" + mblob.name, old_record])
    assert setup.store.verify().ok


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_put_bytes_replaces_a_damaged_blob_of_the_same_name(store: Store, damage: str) -> None:
    data = b'{"record": "' + b"x" * 200 + b'"}'
    with store.writer_lock():
        digest, _ = store.put_bytes(data)
    tamper(store.blob_path(digest), flip_byte(20) if damage == "flip" else truncate(10))
    with store.writer_lock():
        assert store.put_bytes(data) == (digest, len(data))
    assert store.blob_path(digest).read_bytes() == data
    assert store.read_blob(digest, 1 << 20) == data
    assert store.verify().ok


def test_corruption_after_fetch_does_not_reach_the_next_fetch(setup: Setup) -> None:
    """A blob damaged after an earlier hard-linked fetch is caught on the next fetch."""
    setup.assert_hit_and_fetch_ok("first")
    blob = setup.blob("config.json")
    tamper(blob, flip_byte(2), keep_mtime=True)
    dest = setup.tmp / "second"
    r = run_kiln("fetch", *setup.args, "--dest", str(dest), "--copy")
    assert r.returncode == 1 and "WARNING" in r.stderr and not dest.exists()


@pytest.mark.parametrize("content", [b"", b"[]", b'{"key": "x"}', b"\xff\xfe garbage"])
def test_verify_reports_a_damaged_index_entry(setup: Setup, content: bytes) -> None:
    entry = next(setup.store.iter_entries())
    path = setup.store.entry_path(entry.model_hex, entry.key)
    os.chmod(path, 0o644)
    path.write_bytes(content)
    r = run_kiln("verify")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"index entry {path} is damaged" in r.stderr and "Traceback" not in r.stderr
