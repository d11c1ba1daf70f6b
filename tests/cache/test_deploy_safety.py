"""What a serving container does to DEST can never hurt the store, and `kiln ensure` can run
at every start: writes into materialised files (as root), DEST around KILN_HOME, a second
ensure, a DEST that holds something else, a kill mid-ensure.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln import api
from kiln.cache import Store
from tests.conftest import run_kiln as _kiln

from .test_materialize import Pub, nested_files, tree


@pytest.fixture
def pub(tmp_path: Path, store: Store) -> Pub:
    return Pub(tmp_path, store)


def test_writes_into_a_fetched_file_never_reach_the_store(pub: Pub, store: Store, tmp_path: Path) -> None:
    """SageMaker containers run as root, and root ignores mode 0444: the default must be a copy."""
    files = nested_files("A")
    m1 = pub.publish(1, files)
    pub.publish(2, files)  # a second artifact sharing every blob
    dest = tmp_path / "dest"
    assert _kiln("fetch", *pub.args(1), "--dest", str(dest)).returncode == 0
    victim = next(f for f in m1.files if f.path.endswith(".bin"))
    target = dest / victim.path
    if os.geteuid() != 0:
        target.chmod(0o644)  # as root the write below needs no chmod, which is the point
    with open(target, "wb") as fh:  # `echo > DEST/…`: truncate and write in place
        fh.write(b"\n")
    assert store.blob_path(victim.digest).read_bytes() == files[victim.path]
    assert _kiln("verify").returncode == 0
    for bs in (1, 2):  # both artifacts that share the blob still hit, without a rebuild
        assert _kiln("lookup", *pub.args(bs)).returncode == 0


def test_dest_overlapping_the_store_is_refused_before_anything_is_touched(pub: Pub, store: Store,
                                                                         tmp_path: Path) -> None:
    pub.publish(1, nested_files("A"))
    link = tmp_path / "link-to-store"
    link.symlink_to(store.root)
    before = sorted(p.relative_to(store.root).as_posix() for p in store.root.rglob("*"))
    for dest in (store.root, store.root / "blobs", store.root / "index" / "new", store.root.parent, link,
                 link / "blobs"):
        for command in ("fetch", "ensure"):
            r = _kiln(command, *pub.args(1), "--dest", str(dest), "--force")
            assert r.returncode == 2, f"{command} --dest {dest}: {r.stdout}{r.stderr}"
            assert "overlaps the Kiln store" in r.stderr and "Traceback" not in r.stderr
            assert len(r.stderr.strip().splitlines()) == 1
    after = sorted(p.relative_to(store.root).as_posix() for p in store.root.rglob("*"))
    assert [p for p in after if not p.startswith(("locks", "stamps"))] == \
        [p for p in before if not p.startswith(("locks", "stamps"))]
    assert _kiln("verify").returncode == 0
    ls = _kiln("ls", "--json")
    assert len(json.loads(ls.stdout)) == 1


def test_second_ensure_leaves_an_intact_dest_untouched(pub: Pub, store: Store, tmp_path: Path) -> None:
    files = nested_files("A")
    pub.publish(1, files)
    dest = tmp_path / "dest"
    first = _kiln("ensure", *pub.args(1), "--dest", str(dest), "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    stats = {p: os.stat(p) for p in dest.rglob("*") if p.is_file()}
    second = _kiln("ensure", *pub.args(1), "--dest", str(dest), "--json")
    assert second.returncode == 0, second.stdout + second.stderr
    assert any("already held this artifact" in n for n in json.loads(second.stdout)["notes"])
    for p, st in stats.items():  # not rewritten: same inode, same times
        now = os.stat(p)
        assert (now.st_ino, now.st_mtime_ns, now.st_ctime_ns) == (st.st_ino, st.st_mtime_ns, st.st_ctime_ns), p
    # Without the store's record (a fresh KILN_HOME record bucket), the exact check hashes the files.
    for record in store.deployments_dir.iterdir():
        record.unlink()
    third = _kiln("fetch", *pub.args(1), "--dest", str(dest))
    assert third.returncode == 0 and "already held this artifact" in third.stdout
    assert tree(dest) == files


@pytest.mark.parametrize("change", ["edit", "extra", "missing"])
def test_dest_holding_something_else_is_named_and_force_replaces_it(pub: Pub, store: Store, tmp_path: Path,
                                                                   change: str) -> None:
    files = nested_files("A")
    pub.publish(1, files)
    dest = tmp_path / "dest"
    assert _kiln("ensure", *pub.args(1), "--dest", str(dest)).returncode == 0
    if change == "edit":
        (dest / "MARKER").write_bytes(b"B")  # same size, other bytes: only a hash or the record tells
    elif change == "extra":
        (dest / "notes.txt").write_text("mine")
    else:
        (dest / "zzz" / "last").unlink()
    r = _kiln("ensure", *pub.args(1), "--dest", str(dest))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "holds something other than artifact" in r.stderr and "--force" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    forced = _kiln("ensure", *pub.args(1), "--dest", str(dest), "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert tree(dest) == files


def test_killed_ensure_leaves_dest_absent_or_complete_and_a_rerun_succeeds(pub: Pub, store: Store,
                                                                          tmp_path: Path) -> None:
    files = nested_files("BIG", 200)
    pub.publish(1, files)
    rng = random.Random(7)
    cmd = [sys.executable, "-m", "kiln.cli", "ensure", *pub.args(1)]
    for i in range(5):
        dest = tmp_path / f"dest{i}"
        p = subprocess.Popen(cmd + ["--dest", str(dest)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 0.6))
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert not dest.exists() or tree(dest) == files, f"kill {i}: a partial DEST"
        again = _kiln("ensure", *pub.args(1), "--dest", str(dest))
        assert again.returncode == 0, again.stdout + again.stderr
        assert tree(dest) == files
    assert _kiln("verify").returncode == 0
    result, path = api.fetch(pub.res(1), tmp_path / "api", store=store)
    assert result.hit and path is not None and tree(path) == files
