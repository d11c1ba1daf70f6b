"""A store nobody may write to still serves every reader; writers say why they cannot.

Two real ways a store is read-only, each through the real CLI in a subprocess:

* ``read-only mount``: the store directory is bind-mounted read-only (``mount -o
  remount,bind,ro``) in a private mount namespace of the command (``unshare -m`` as root,
  ``unshare -rm`` — a user namespace — otherwise), as a baked image layer or a read-only
  volume is. Root's privileges do not help against EROFS.
* ``another user's store``: the store belongs to root and the command runs as ``nobody``
  (``setpriv``) — or, when the tests do not run as root, the store is ``chmod -R a-w``.

Readers (fetch, ensure of a stored artifact — twice —, lookup, ls, show, verify) must succeed
and leave the store as it was; writers (build, pull, store put, gc, rm, ensure --on-miss build,
ensure pulling from a remote) must fail with one line naming the store, saying it is
read-only, which command needs write access, and the fix — before any work.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

from kiln import api
from kiln.cache import Store
from kiln.spec import BuildSpec
from tests.conftest import write_fake_model

TOOLCHAIN = {"torch": "2.0.0", "transformers": "5.0.0", "hardware": "cpu-test"}
PINS = [f"--toolchain={k}={v}" for k, v in TOOLCHAIN.items()]
FILES = {"engine.pt2": b"engine bytes " * 1000, "nested/dir/weights.bin": os.urandom(20_000), "config.json": b"{}"}
NOBODY = 65534

# Bind-mount $1 read-only over itself, then run the rest of argv (in the namespace unshare made).
RO_MOUNT = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'

Runner = Callable[..., subprocess.CompletedProcess]


class World:
    """A model, a store holding one artifact of it (batch 1), and a file remote holding another
    (batch 2), in a directory every user may read (so ``nobody`` can too)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="kiln-ro-"))
        os.chmod(self.root, 0o755)
        self.home = self.root / "store"
        self.model = write_fake_model(self.root / "model")
        self.remote = self.root / "remote"
        self.out = self.root / "out"  # where the reader writes: its own
        self.out.mkdir()
        self.env = {"KILN_HOME": str(self.home), "HF_HOME": str(self.root / "hf"), "HOME": str(self.root / "user")}
        store = Store(self.home)
        for batch in (1, 2):
            src = self.root / f"src{batch}"
            for rel, data in FILES.items():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                (src / rel).write_bytes(data + bytes([batch]))
            entry = api.put(self.res(store, batch), src, store=store)
            if batch == 2:  # only on the remote
                api.push(store, api.open_remote(str(self.remote)), entry)
                store.remove_entry(entry)
        self.entry = next(store.iter_entries())
        self.manifest = store.read_manifest(self.entry.manifest)
        store.gc()  # batch 2's blobs go; the store has locks/, stamps/, … as a used store has
        for d in (self.root / "user", self.root / "hf"):
            d.mkdir()
        for p in [self.root, *self.root.rglob("*")]:  # readable by all, writable by root only
            if not p.is_symlink():
                os.chmod(p, (os.stat(p).st_mode | 0o444 | (0o111 if p.is_dir() else 0)) & ~0o022)
        for p in [self.out, self.root / "user", self.root / "hf"]:
            os.chmod(p, 0o777)

    def res(self, store: Store, batch: int) -> api.Resolution:
        return api.resolve(BuildSpec(target="torch-aoti", model=str(self.model), n_positions=128,
                                     batch_size=batch, dtype="fp32"), store=store, toolchain=TOOLCHAIN)

    def args(self, batch: int) -> list[str]:
        return [str(self.model), "-t", "torch-aoti", "--n-positions", "128", "--batch-size", str(batch),
                "--dtype", "fp32", *PINS]

    def snapshot(self) -> dict[str, tuple[int, int, int]]:
        return {p.relative_to(self.home).as_posix(): (st.st_ino, st.st_size, st.st_mtime_ns)
                for p in sorted(self.home.rglob("*")) for st in [os.lstat(p)]}


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _ro_mount_runner(world: World) -> Runner:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare(1) here: cannot make a read-only mount")
    prefix = [unshare, "-m"] if os.geteuid() == 0 else [unshare, "-r", "-m"]
    probe = world.home / "probe"
    if not _works([*prefix, "sh", "-c", RO_MOUNT, "sh", str(world.home), "sh", "-c", f"! touch {probe}"]) \
            or probe.exists():
        pytest.skip("this machine does not allow a read-only bind mount in a private mount namespace "
                    "(no CAP_SYS_ADMIN and no user namespaces)")

    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [*prefix, "sh", "-c", RO_MOUNT, "sh", str(world.home), sys.executable, "-m", "kiln.cli", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **world.env}, timeout=120)

    return run


def _other_user_runner(world: World) -> Runner:
    if os.geteuid() != 0:
        # Not root: the store is this user's, but nobody may write it (chmod -R a-w).
        for p in [world.home, *world.home.rglob("*")]:
            if not p.is_symlink():
                os.chmod(p, os.stat(p).st_mode & ~0o222)
        prefix: list[str] = []
    else:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv(1): cannot run a command as another user")
        prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        if not _works([*prefix, sys.executable, "-c", "import kiln.cli"]):
            pytest.skip(f"uid {NOBODY} cannot run this checkout's Python (not readable by other users)")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, sys.executable, "-m", "kiln.cli", *args], capture_output=True, text=True,
                              env={**os.environ, **world.env}, timeout=120, cwd=world.out)

    return run


@pytest.fixture(params=["read-only mount", "another user's store"])
def ro(request: pytest.FixtureRequest) -> Iterator[tuple[World, Runner]]:
    world = World()
    try:
        runner = _ro_mount_runner(world) if request.param == "read-only mount" else _other_user_runner(world)
        yield world, runner
    finally:
        for p in [world.home, *world.home.rglob("*")]:
            if not p.is_symlink():
                os.chmod(p, os.stat(p).st_mode | stat.S_IWUSR)
        shutil.rmtree(world.root, ignore_errors=True)


def _verified(world: World, dest: Path) -> None:
    """``dest`` holds exactly the artifact: every file hashes to its manifest digest."""
    got = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert got == sorted(f.path for f in world.manifest.files)
    for f in world.manifest.files:
        assert "sha256:" + hashlib.sha256((dest / f.path).read_bytes()).hexdigest() == f.digest, f.path


def _clean(r: subprocess.CompletedProcess, code: int = 0) -> None:
    assert r.returncode == code, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_readers_are_served_by_a_read_only_store(ro: tuple[World, Runner]) -> None:
    world, kiln = ro
    before = world.snapshot()
    for cmd in ("fetch", "ensure"):
        dest = world.out / cmd
        _clean(kiln(cmd, *world.args(1), "--dest", str(dest)))
        _verified(world, dest)
    again = kiln("ensure", *world.args(1), "--dest", str(world.out / "ensure"), "--json")
    _clean(again)
    assert any("already held this artifact" in n for n in json.loads(again.stdout)["notes"])
    _clean(kiln("lookup", *world.args(1)))
    _clean(kiln("lookup", *world.args(2)), code=1)  # a clean miss, no remote given
    ls = kiln("ls", "--json")
    _clean(ls)
    assert [e["key"] for e in json.loads(ls.stdout)] == [world.entry.key]
    _clean(kiln("show", world.entry.key[:12]))
    _clean(kiln("verify"))
    _clean(kiln("rm", world.entry.key[:12], "--dry-run"))
    assert world.snapshot() == before  # nothing was (or could be) written


WRITERS = {
    "`kiln build`": lambda w: ["build", *w.args(3)],
    "`kiln pull`": lambda w: ["pull", "--all", "--remote", str(w.remote)],
    "`kiln store put`": lambda w: ["store", "put", str(w.root / "src1"), *w.args(4)],
    "`kiln gc`": lambda w: ["gc"],
    "`kiln rm`": lambda w: ["rm", w.entry.key[:12]],
    "`kiln ensure --on-miss build`": lambda w: ["ensure", *w.args(3), "--dest", str(w.out / "b"), "--on-miss", "build"],
    "`kiln ensure`": lambda w: ["ensure", *w.args(2), "--dest", str(w.out / "r"), "--remote", str(w.remote)],
}


@pytest.mark.parametrize("who", list(WRITERS))
def test_writers_say_the_store_is_read_only_and_what_to_do(ro: tuple[World, Runner], who: str) -> None:
    world, kiln = ro
    before = world.snapshot()
    r = kiln(*WRITERS[who](world))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("kiln: ")]  # progress lines aside
    assert len(lines) == 1 and lines[0].startswith("kiln: error: ") and "Traceback" not in r.stderr, r.stderr
    assert f"the store at {world.home} is read-only (" in lines[0], lines[0]
    assert f"; {who} needs write access to it: set KILN_HOME to a writable directory" in lines[0], lines[0]
    assert world.snapshot() == before
    assert not any(world.out.iterdir())  # refused before materialising (or building) anything
