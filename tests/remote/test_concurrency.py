"""Several processes on one remote at once: two pushers of one artifact, a pusher and a puller.

Real processes against the real server (or directory). Two `kiln push` of the same artifact
race to write identical blobs and the same entry: both succeed and the remote is consistent.
A pusher uploading six artifacts (slowed down by a progress callback that sleeps, so its
transfers are long) runs beside a process that runs `kiln ensure` in a loop on empty stores:
every ensure is either a hit whose materialised files equal the source byte for byte, or a
clean miss (exit 1, no warning) — never an error, never a partial artifact.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

from kiln import api
from kiln.cache import Store
from kiln.spec import BuildSpec
from tests.remote.conftest import (
    SPEC,
    TOOLCHAIN,
    RemoteView,
    check_remote,
    kiln_remote,
    spec_args,
    store_put,
    tree,
    write_tree,
)

PUSHER = r"""
import json, sys, time
from kiln.cache import Store
from kiln.cache.remotes import open_remote
from kiln.cache._sync import push

url, keys, pause = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
store = Store()
remote = open_remote(url)
entries = {e.key: e for e in store.iter_entries()}
done = []
for key in keys:
    r = push(store, remote, entries[key], progress=lambda n: time.sleep(pause))
    done.append(r.to_json())
print(json.dumps(done))
"""

PULLER = r"""
import contextlib, hashlib, io, json, os, random, shutil, sys, time
from pathlib import Path
from kiln.cli import main

url, model, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
spec, expected, first = json.loads(sys.argv[4]), json.loads(sys.argv[5]), sys.argv[6]

def digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}

rng = random.Random(99)
n = 0
with open(work / "puller.jsonl", "w") as log:
    while not (work / "stop").exists():
        n += 1
        # Half the time the artifact pushed first: hits while the rest is still uploading.
        b = first if rng.random() < 0.5 else rng.choice(sorted(expected))
        home, dest = work / f"store-{n}", work / f"dest-{n}"
        os.environ["KILN_HOME"] = str(home)  # an empty store every time: every hit comes from the remote
        out, err = io.StringIO(), io.StringIO()
        rec = {"n": n, "b": b, "code": None, "exc": None, "start": time.time()}
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(["--remote", url, "ensure", model, *spec, "--batch-size", b, "--dest", str(dest), "--json"])
            except SystemExit as e:
                rec["code"] = e.code
            except BaseException as e:
                rec["exc"] = repr(e)
        rec.update(stdout=out.getvalue(), stderr=err.getvalue(), end=time.time())
        if rec["code"] == 0:
            rec["match"] = digests(dest) == expected[b]
        rec["dest_exists"] = dest.exists()
        log.write(json.dumps(rec) + "\n")
        log.flush()
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
"""


def engine_files(seed: int, n: int = 8, size: int = 512 << 10) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {f"engine/rank{i}.engine": rng.randbytes(size + i) for i in range(n)}
    files["config.json"] = json.dumps({"seed": seed}).encode()
    return files


def test_two_pushers_of_one_artifact_at_once(remote: RemoteView, model: Path, tmp_path: Path) -> None:
    files = engine_files(1, size=3 << 20)  # 24 MB: long enough that the two pushes overlap
    key = store_put(write_tree(tmp_path / "art", files), model)
    cmd = [sys.executable, "-m", "kiln.cli", "--remote", remote.url, "push", "--key", key, "--json"]
    uploaded_any_twice = False
    for round_ in range(3):
        remote.clear()
        outs = [open(tmp_path / f"push-{round_}-{i}.out", "w+") for i in range(2)]
        try:
            procs = [subprocess.Popen(cmd, stdout=o, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL) for o in outs]
            codes = [p.wait(timeout=60) for p in procs]
            texts = []
            for o in outs:
                o.seek(0)
                texts.append(o.read())
        finally:
            for o in outs:
                o.close()
        assert codes == [0, 0], texts
        results = [json.loads(t)[0] for t in texts]
        assert all(r["uploaded_blobs"] + r["skipped_blobs"] == len(files) + 2 for r in results)
        uploaded_any_twice |= sum(r["uploaded_blobs"] for r in results) > len(files) + 2
        assert check_remote(remote, deep=True).keys() == {key}
        if uploaded_any_twice:
            break
    # Whether two processes overlap is up to the scheduler (on a loaded 2-core machine they may
    # not); the interleaving that matters is forced deterministically in the test below.

    dest = tmp_path / "dest"
    ensured = kiln_remote(remote.url, "ensure", str(model), *spec_args(), "--dest", str(dest),
                          env={"KILN_HOME": str(tmp_path / "deploy")})
    assert ensured.returncode == 0, ensured.stderr
    assert tree(dest) == files


def test_ensure_loop_beside_a_pusher_sees_only_complete_artifacts(remote: RemoteView, model: Path, tmp_path: Path) -> None:
    import hashlib

    batches = (1, 2, 3, 4, 5, 6)
    store = Store()
    keys, expected = [], {}
    for b in batches:
        files = engine_files(10 + b, n=6)
        res = api.resolve(BuildSpec(target="torch-aoti", model=str(model), n_positions=256, batch_size=b),
                          store=store, toolchain=TOOLCHAIN)
        keys.append(api.put(res, write_tree(tmp_path / f"src{b}", files), store=store).key)
        expected[str(b)] = {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "pusher.py").write_text(PUSHER)
    (tmp_path / "puller.py").write_text(PULLER)
    log = work / "puller.jsonl"

    def records() -> list[dict]:
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]

    def wait_for(n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(records()) < n:
            assert puller.poll() is None, f"puller died: {puller_err.read_text()}"
            assert time.monotonic() < deadline, "puller made no progress"
            time.sleep(0.05)

    puller_err = tmp_path / "puller.err"
    with open(puller_err, "wb") as ferr, open(tmp_path / "pusher.out", "w+") as fout:
        puller = subprocess.Popen(
            [sys.executable, str(tmp_path / "puller.py"), remote.url, str(model), str(work), json.dumps(SPEC), json.dumps(expected), str(batches[0])],
            stdout=subprocess.DEVNULL, stderr=ferr, stdin=subprocess.DEVNULL,
        )
        try:
            wait_for(3)  # misses before anything is pushed
            push_start = time.time()
            pusher = subprocess.Popen(
                [sys.executable, str(tmp_path / "pusher.py"), remote.url, json.dumps(keys), "0.02"],
                stdout=fout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
            assert pusher.wait(timeout=120) == 0, (fout.seek(0), fout.read())[1]
            push_end = time.time()
            wait_for(len(records()) + 6)  # hits after everything is up
        finally:
            (work / "stop").touch()
            puller.wait(timeout=60)
    assert puller.returncode == 0, puller_err.read_text()

    recs = records()
    problems = [r for r in recs if r["exc"] or r["code"] not in (0, 1)]
    assert not problems, problems[:3]
    hits = [r for r in recs if r["code"] == 0]
    misses = [r for r in recs if r["code"] == 1]
    for r in hits:
        assert r["match"], f"ensure {r['n']} materialised something other than artifact b{r['b']}"
        out = json.loads(r["stdout"])
        assert out["hit"] and out["source"] == "remote" and not out["damaged"]
    for r in misses:
        out = json.loads(r["stdout"])
        assert not out["hit"] and not out["damaged"], out
        assert "WARNING" not in r["stderr"] and "error" not in r["stderr"], r["stderr"]
        assert not r["dest_exists"], "a miss left a destination behind"
    # The interesting part: ensures that ran entirely while artifacts were being uploaded.
    during = [r for r in recs if push_start < r["start"] and r["end"] < push_end]
    hits_during = sum(r["code"] == 0 for r in during)
    print(f"\n{remote.kind}: {len(recs)} ensures, {len(hits)} hits, {len(misses)} misses; "
          f"{len(during)} during the push ({hits_during} hits)")
    assert misses and len(hits) >= 6, (len(hits), len(misses))
    assert len(during) >= 4 and 0 < hits_during < len(during), (len(during), hits_during)
    assert check_remote(remote, deep=True).keys() == set(keys)


def test_two_pushes_that_both_find_blobs_missing_stay_consistent(remote: RemoteView, model: Path, tmp_path: Path) -> None:
    """Both pushers check every blob before either uploads one (a barrier in the remote's
    stat: the worst interleaving, forced), then both upload everything and write the entry."""
    import threading

    from kiln.cache.remotes import open_remote
    from kiln.cache._sync import push

    files = engine_files(3, n=4, size=256 << 10)
    key = store_put(write_tree(tmp_path / "art", files), model)
    store = Store()
    entry = api.find_artifact(store, key)
    barrier = threading.Barrier(2, timeout=30)

    def pusher() -> object:
        r = open_remote(remote.url)
        real_stat = r.stat
        calls = {"n": 0}

        def stat(k: str) -> int | None:
            size = real_stat(k)
            calls["n"] += 1
            if calls["n"] == 1:
                barrier.wait()  # neither pusher has uploaded anything yet
            return size

        r.stat = stat  # type: ignore[method-assign]
        return push(store, r, entry)

    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(pusher())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2
    assert sum(r.uploaded for r in results) > len(files) + 2  # both uploaded, concurrently
    assert check_remote(remote, deep=True).keys() == {key}
