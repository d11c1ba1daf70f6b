"""What crashed processes leave behind is cleaned up, and only that.

* Staging directories of killed fetches (``.<dest>.kiln-<pid>-<host>-<rand>`` beside DEST) are
  removed by the next fetch into the same parent — but never one whose owner is alive.
* ``locks/build-<key>.lock`` files do not accumulate: a holder removes its own as it releases
  (single-flight still holds: never two holders at once), and gc removes those of holders that
  died, never a live holder's.
* Killing only `kiln build` (SIGKILL) takes its compile worker down with it, and leaves the
  store consistent: no entry, and a build directory the next gc removes.

Real processes, real signals, real files; waiting loops poll for a state, never for a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from kiln.cache import Store
from kiln.cache._materialize import _host_tag
from kiln.targets import BUILD_LOG
from tests.conftest import run_kiln
from tests.tiny_models import make_tiny_model

from .test_materialize import Pub, nested_files

DEADLINE_S = 180  # generous: only a hang reaches it


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {DEADLINE_S} s"
        time.sleep(0.01)


def staging_dirs(parent: Path) -> set[str]:
    return {p.name for p in parent.iterdir() if p.name.startswith(".dest.kiln-")}


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a dead process nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_the_next_fetch_removes_dead_fetches_staging_but_never_a_live_ones(tmp_path: Path, store: Store) -> None:
    pub = Pub(tmp_path, store)
    files = nested_files("BIG", 300)  # long enough to materialise that a kill lands midway
    manifest = pub.publish(1, files)
    parent = tmp_path / "deploy"
    parent.mkdir()
    dest = parent / "dest"
    cmd = [sys.executable, "-m", "kiln.cli", "fetch", *pub.args(1), "--dest", str(dest), "--copy"]
    for _ in range(3):
        before = staging_dirs(parent)
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until(lambda: bool(staging_dirs(parent) - before) or p.poll() is not None, "staging")
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert not dest.exists(), "the kill came too late: the fetch finished"
        # Each fetch first removes what the fetches killed before it left: one leftover at most.
        assert len(staging_dirs(parent)) == 1, staging_dirs(parent)
    # Live owners' staging directories: this process's, and another live process's.
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        live = {f".dest.kiln-{os.getpid()}-{_host_tag()}-0000beef", f".dest.kiln-{sleeper.pid}-{_host_tag()}-0000cafe",
                f".dest.kiln-old-{sleeper.pid}-{_host_tag()}-0000f00d"}
        for name in live:
            (parent / name).mkdir()
            (parent / name / "part").write_bytes(b"still being written")
        (parent / ".dest.kiln-not-ours").mkdir()  # not a name Kiln makes: never touched
        r = run_kiln("fetch", *pub.args(1), "--dest", str(dest))
        assert r.returncode == 0, r.stdout + r.stderr
        for f in manifest.files:
            assert "sha256:" + hashlib.sha256((dest / f.path).read_bytes()).hexdigest() == f.digest
        assert staging_dirs(parent) == live | {".dest.kiln-not-ours"}
        assert all((parent / name / "part").read_bytes() == b"still being written" for name in live)
    finally:
        assert sleeper.stdin is not None
        sleeper.stdin.close()
        sleeper.wait()


HOLD_AND_CHECK = r"""
import os, sys
from pathlib import Path
from kiln.cache._locks import single_flight
lock_dir, key, marker, rounds = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
for _ in range(rounds):
    with single_flight(lock_dir, key):
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if another holder is inside
        os.close(fd)
        os.unlink(marker)
print("ok", flush=True)
"""

HOLD_FOREVER = r"""
import sys
from pathlib import Path
from kiln.cache._locks import single_flight
lock = single_flight(Path(sys.argv[1]), sys.argv[2])
lock.acquire()
print("held", flush=True)
sys.stdin.read()  # until the test closes stdin
lock.release()
"""


def test_build_locks_do_not_accumulate_and_single_flight_still_holds(tmp_path: Path, store: Store) -> None:
    lock_dir = store.lock_dir
    lock_dir.mkdir(parents=True)
    keys = ["a" * 64, "b" * 64]
    procs = [subprocess.Popen([sys.executable, "-c", HOLD_AND_CHECK, str(lock_dir), key, str(tmp_path / f"in-{key[0]}"),
                               "150"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for key in keys for _ in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=DEADLINE_S)
        assert p.returncode == 0 and out == "ok\n", err  # never two holders inside at once
    assert list(lock_dir.glob("build-*.lock")) == []  # every holder removed its lock file

    # A holder that dies leaves its file (it cannot unlink it): gc removes it, never a live one's.
    dead = subprocess.Popen([sys.executable, "-c", HOLD_FOREVER, str(lock_dir), "d" * 64], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    live = subprocess.Popen([sys.executable, "-c", HOLD_FOREVER, str(lock_dir), "e" * 64], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        for p in (dead, live):
            assert p.stdout is not None and p.stdout.readline() == "held\n"
        dead.kill()
        dead.wait()
        assert sorted(p.name for p in lock_dir.glob("build-*.lock")) == [f"build-{'d' * 64}.lock",
                                                                         f"build-{'e' * 64}.lock"]
        r = run_kiln("gc")
        assert r.returncode == 0, r.stdout + r.stderr
        assert [p.name for p in lock_dir.glob("build-*.lock")] == [f"build-{'e' * 64}.lock"]
    finally:
        for p in (dead, live):
            assert p.stdin is not None and p.stdout is not None
            p.stdin.close()
            p.wait()
            p.stdout.close()
    assert list(lock_dir.glob("build-*.lock")) == []


WORKER_MODULE = "kiln.targets.torch_aoti.worker"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def descendants(pid: int) -> list[int]:
    out = children(pid)
    for c in list(out):
        out.extend(descendants(c))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals and /proc are Linux's")
def test_killing_the_build_parent_kills_its_worker_and_leaves_the_store_consistent(tmp_path: Path,
                                                                                  store: Store) -> None:
    model = make_tiny_model("llama", tmp_path / "m", seed=11)
    parent = subprocess.Popen([sys.executable, "-m", "kiln.cli", "build", str(model), "--target", "torch-aoti",
                               "--n-positions", "32"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []

    def worker_started() -> bool:
        workers[:] = [c for c in children(parent.pid) if WORKER_MODULE in cmdline(c)]
        return bool(workers) or parent.poll() is not None

    until(worker_started, "a worker")
    assert parent.poll() is None and len(workers) == 1, "the build ended before its worker was seen"
    worker = workers[0]

    def compiling() -> bool:  # the worker's long silent phase: nothing it prints can fail meanwhile
        return any("stage: compile" in log.read_text() for log in store.builds_dir.glob(f"*/{BUILD_LOG}")) \
            or parent.poll() is not None

    until(compiling, "compiling")
    engine = [d / "artifact" / "engine.pt2" for d in store.builds_dir.iterdir() if d.is_dir()]
    assert len(engine) == 1 and not engine[0].exists()
    group = descendants(worker)
    parent.kill()  # SIGKILL: no cleanup code runs in the parent
    parent.wait()
    until(lambda: not any(alive(pid) for pid in (worker, *group)), f"worker {worker} and its children gone")
    # It died with its parent: it did not compile to the end for nobody (which would have
    # written engine.pt2 and only then failed, writing its next line to a closed pipe).
    assert not engine[0].exists()

    assert list(store.iter_entries()) == []  # nothing was published
    leftovers = sorted(p for p in store.builds_dir.iterdir())
    assert leftovers, "the killed build left no build directory (nothing to check gc against)"
    gc = run_kiln("gc", "--json")
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert set(json.loads(gc.stdout)["temp_paths"]) >= {str(p) for p in leftovers}
    assert list(store.builds_dir.iterdir()) == []
    assert list(store.lock_dir.glob("build-*.lock")) == []  # the dead builder's lock went with gc
    assert run_kiln("verify").returncode == 0
