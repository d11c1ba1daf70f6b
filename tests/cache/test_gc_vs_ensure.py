"""Under a stream of concurrent `kiln gc --max-size 0`, every `kiln ensure` either succeeds with
a verified directory or misses cleanly — never a failure after it found (or downloaded) the
artifact, never a traceback.

`gc --max-size 0` evicts every artifact it finds. An ensure pins what it is using: it holds
the store's shared lock from the lookup (the local hit, or the pull from the remote) until
the artifact is materialised, so a gc waits for it. Without that pin a gc that waited for the
pull evicts the artifact the instant the pull is done, and the ensure fails after
downloading it.

gc also never removes a run directory (``run/engine-*``) that a live process uses, whatever its
age: the process leases it; one whose process died goes.

Real processes throughout: gc loops, ensures from a file:// remote (which always holds the
artifacts: such an ensure must always succeed) and from the local store (republished all the
time by a thread: it may miss if a gc evicted it first, but only cleanly — no artifact found
damaged on the way).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from kiln import api
from kiln.cache import Store
from tests.cache.test_materialize import Pub, write_tree
from tests.conftest import run_kiln

REMOTE_BATCHES = (1, 2, 3)
LOCAL_BATCHES = (4, 5)
ROUNDS = 4
GC_LOOPS = 3


def files_for(batch: int) -> dict[str, bytes]:
    """A few MB per artifact, so a pull takes long enough for a gc to queue behind it."""
    seed = hashlib.sha256(b"batch %d" % batch).digest()
    return {
        "engine/model.bin": seed * (2_000_000 // 32),
        "engine/rank1/part.bin": seed[::-1] * (1_000_000 // 32),
        "config.json": b'{"batch": %d}' % batch,
    }


def expected(batch: int) -> dict[str, str]:
    return {rel: "sha256:" + hashlib.sha256(data).hexdigest() for rel, data in files_for(batch).items()}


def verified(dest: Path, manifest_files: dict[str, str]) -> bool:
    """``dest`` holds exactly the manifest's files, each hashing to its digest."""
    got = {p.relative_to(dest).as_posix(): "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
           for p in dest.rglob("*") if p.is_file()}
    return got == manifest_files


class GcStream:
    """``GC_LOOPS`` threads, each running `kiln gc --max-size 0` back to back until stopped."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.runs = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(GC_LOOPS)]

    def _loop(self) -> None:
        while not self.stop.is_set():
            r = subprocess.run([sys.executable, "-m", "kiln.cli", "gc", "--max-size", "0"], capture_output=True,
                               text=True, timeout=300)
            with self._lock:
                self.runs += 1
                if r.returncode != 0 or "Traceback" in r.stderr:
                    self.failures.append(r.stdout + r.stderr)

    def __enter__(self) -> "GcStream":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=300)


class Republisher:
    """Publishes the local artifacts again and again (gc evicts them all the time), in a thread."""

    def __init__(self, pub: Pub, tmp_path: Path) -> None:
        self.stop = threading.Event()
        self.store = Store(pub.store.root)  # its own Store object, as another process would have
        self.res = {b: pub.res(b) for b in LOCAL_BATCHES}
        self.tmp_path = tmp_path
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(0.05):
            for b in LOCAL_BATCHES:
                api.put(self.res[b], self.tmp_path / f"src-{b}", store=self.store)

    def __enter__(self) -> "Republisher":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=300)


def test_every_ensure_succeeds_verified_or_misses_cleanly_under_gc(tmp_path: Path, store: Store) -> None:
    pub = Pub(tmp_path, store)
    remote_dir = tmp_path / "remote"
    remote = api.open_remote(str(remote_dir))
    manifests = {}
    for b in (*REMOTE_BATCHES, *LOCAL_BATCHES):
        src = tmp_path / f"src-{b}"
        write_tree(src, files_for(b))
        entry = api.put(pub.res(b), src, store=store)
        manifest = store.read_manifest(entry.manifest)
        manifests[b] = {f.path: f.digest for f in manifest.files}
        assert manifests[b] == expected(b)  # the manifest names the bytes we wrote
        if b in REMOTE_BATCHES:
            api.push(store, remote, entry)
    url = f"file://{remote_dir}"
    outcomes: dict[str, int] = {"remote ok": 0, "local ok": 0, "local miss": 0}
    problems: list[str] = []
    with GcStream() as gc, Republisher(pub, tmp_path):
        for rnd in range(ROUNDS):
            procs = []
            for b in (*REMOTE_BATCHES, *LOCAL_BATCHES):
                dest = tmp_path / "deploy" / f"r{rnd}-b{b}"
                args = ["ensure", *pub.args(b), "--dest", str(dest), "--json"]
                if b in REMOTE_BATCHES:
                    args += ["--remote", url]
                procs.append((b, dest, subprocess.Popen([sys.executable, "-m", "kiln.cli", *args],
                                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
            for b, dest, p in procs:
                out, err = p.communicate(timeout=300)
                where = "remote" if b in REMOTE_BATCHES else "local"
                what = f"round {rnd}, {where} ensure of batch {b}: exit {p.returncode}\n{out}{err}"
                if "Traceback" in err:
                    problems.append(what)
                elif p.returncode == 0:
                    if verified(dest, manifests[b]):
                        outcomes[f"{where} ok"] += 1
                    else:
                        problems.append("DEST does not verify: " + what)
                elif p.returncode == 1 and where == "local" and json.loads(out)["damaged"] == []:
                    outcomes["local miss"] += 1  # evicted before it was looked up: a clean miss
                else:
                    # A remote ensure must never miss (the remote holds it), a local one never
                    # after finding the artifact, and nothing may fail (exit 2).
                    problems.append(what)
    assert not gc.failures, gc.failures[:3]
    assert not problems, f"{len(problems)} bad ensure(s) ({outcomes}, {gc.runs} gc runs); first:\n" + problems[0]
    assert outcomes["remote ok"] == ROUNDS * len(REMOTE_BATCHES)
    assert gc.runs >= ROUNDS  # gc really ran alongside
    print(outcomes, gc.runs, "gc runs")


# A process that uses a run directory as the in-process loader does (Store.new_run_dir, kept
# for the life of the process), until the test closes its stdin.
RUN_DIR_USER = r"""
import sys
from kiln.cache import Store
run = Store().new_run_dir()
(run / "engine").mkdir()
(run / "engine" / "model.bin").write_bytes(b"weights in use")
print(run, flush=True)
sys.stdin.read()
"""


def test_gc_never_removes_a_run_directory_in_use_whatever_its_age(store: Store) -> None:
    def start() -> tuple[subprocess.Popen, Path]:
        p = subprocess.Popen([sys.executable, "-c", RUN_DIR_USER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
        assert p.stdout is not None
        return p, Path(p.stdout.readline().strip())

    server, in_use = start()
    crashed, abandoned = start()
    try:
        crashed.kill()  # died without cleaning up: its run directory is nobody's now
        crashed.communicate()
        legacy = store.run_dir_root / "engine-legacy"  # no lease (an older Kiln): age decides
        legacy.mkdir()
        two_days_ago = time.time() - 2 * 86400
        for d in (in_use, legacy):
            os.utime(d, (two_days_ago, two_days_ago))
        young_legacy = store.run_dir_root / "engine-young"
        young_legacy.mkdir()
        r = run_kiln("gc", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        removed = set(json.loads(r.stdout)["temp_paths"])
        assert str(in_use) not in removed and (in_use / "engine" / "model.bin").read_bytes() == b"weights in use"
        assert {str(abandoned), str(legacy)} <= removed and not abandoned.exists() and not legacy.exists()
        assert young_legacy.exists()
    finally:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.close()
        server.wait()
        server.stdout.close()
    # Its process gone, the run directory is collected at once.
    r = run_kiln("gc", "--json")
    assert str(in_use) in json.loads(r.stdout)["temp_paths"] and not in_use.exists()
