#!/usr/bin/env python
"""Benchmark the local store against baselines measured in the same run.

* put: ``kiln.api.put`` of an artifact of several large files (copy into the store, sha256,
  fsync of every blob) vs ``cp -r`` of the same files (no fsync) and ``cp -r`` + ``sync`` of
  the copies (fsync, like put).
* materialise: ``Store.materialize`` by default (``kiln fetch``: a copy-on-write clone where the
  filesystem has reflinks, else read, sha256 and write every byte) and with ``link=True``
  (``kiln fetch --link``: hard links) vs ``cp -r``; the default also one file at a time (the
  same-run "before" of copying files out in parallel), in balanced rounds with ``cp -r``.
* lookup: wall time of the real CLI, ``python -m kiln lookup`` (a new process each run, as a
  serving container would call it), with N artifacts in the index, vs ``python -c pass``; both
  in a plain venv that finds this checkout as an installed Kiln is found (``plain_python``), not
  in the dev venv, whose editable-install finder makes its own start-up ~20 ms slower.

The index is populated through the real publish path (``kiln.api.put``: blob, build record,
manifest, index entry, with fsyncs) for N distinct specs (n_positions x batch_size) of ONE
model, so all N entries sit in one index directory: the worst case for a miss, which lists
and reads that directory to explain itself. Each tiny artifact holds one small file with the
same bytes (one shared blob); every artifact has its own build record and manifest.

Everything lives under a temporary directory that is removed at the end. Page cache is warm
(the artifact was just written); nothing here drops caches.

    python scripts/bench_store.py                    # 1 GiB artifact (4 files), 10,000 artifacts
    python scripts/bench_store.py --size-mib 64 --artifacts 200 --runs 5   # quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from kiln import api  # noqa: E402
from kiln.cache import Store, _per_file  # noqa: E402
from kiln.cache._fsutil import WriteBehind  # noqa: E402
from kiln.spec import BuildSpec  # noqa: E402
from _rounds import balanced_orders, timed_rounds  # noqa: E402

TOOLCHAIN = {"torch": "2.0.0", "transformers": "5.0.0", "hardware": "cpu-bench"}
MODEL_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    "num_attention_heads": 8, "num_key_value_heads": 4, "num_hidden_layers": 2,
    "max_position_embeddings": 4096, "vocab_size": 512,
}
CHUNK = 16 << 20


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _shares_extents(path: Path) -> bool:
    """Whether ``path`` shares extents with another file (filefrag marks them "shared")."""
    try:
        out = subprocess.run(["filefrag", "-v", str(path)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "shared" in out


def write_artifact(root: Path, size: int, files: int) -> None:
    """``files`` files of random bytes, ``size`` bytes in all, each distinct (no dedup)."""
    root.mkdir(parents=True)
    per = size // files
    rng = random.Random(0)
    block = rng.randbytes(CHUNK)
    for i in range(files):
        with open(root / f"rank{i}.engine", "wb") as f:
            left = per
            n = 0
            while left:
                # A distinct 16-byte header per chunk keeps every file's bytes unique cheaply.
                piece = (b"%08d%08d" % (i, n)) + block[16:min(CHUNK, left)]
                f.write(piece[:left])
                left -= min(CHUNK, left)
                n += 1
    (root / "config.json").write_text('{"engine": "bench"}')


def write_model(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(MODEL_CONFIG))
    (root / "model.safetensors").write_bytes(b"\0" * 4096)
    return root


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True)


def median_walls(cmds: dict[str, tuple[list[str], dict[str, str], int]], runs: int) -> dict[str, float]:
    """Median wall time of each command (name -> (argv, env, expected exit status)).

    One untimed run of each first (it writes the .pyc files a real install has), then ``runs``
    rounds that run every command once, in balanced orders (``_rounds.py``), so a slow spell of
    the machine hits all of them alike instead of one whole series.
    """
    times: dict[str, list[float]] = {name: [] for name in cmds}
    names = list(cmds)
    orders = balanced_orders(len(names))
    for round_ in range(runs + 1):
        for name in (names[i] for i in orders[round_ % len(orders)]):
            cmd, env, expect = cmds[name]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            elapsed = time.perf_counter() - t0
            if r.returncode != expect:
                raise SystemExit(f"{' '.join(cmd)} exited {r.returncode}, expected {expect}: {r.stderr.decode()[-500:]}")
            if round_:
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


def plain_python(where: Path) -> str:
    """An interpreter that finds Kiln the way an installed Kiln is found: a venv without pip
    whose one ``.pth`` puts this checkout and the running interpreter's site-packages on
    ``sys.path`` as plain entries (their own ``.pth`` files are not run).

    The dev venv's ``python -c pass`` runs its ``.pth`` files at start-up, and the editable
    install's finder imports pathlib, re, urllib.parse and more there (~20 ms on this machine):
    the baseline paid for imports a lookup needs, which hid that much of the lookup's cost.
    """
    import sysconfig
    import venv

    venv.create(where, with_pip=False, symlinks=True)
    python = str(where / "bin" / "python")
    # Its own site-packages, as it computes it (a distro Python's scheme can differ from a venv's).
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    entries = [str(REPO), *dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))]
    Path(site, "_kiln_bench.pth").write_text("\n".join(entries) + "\n")
    return python


def resolution(store: Store, model: Path, n_positions: int, batch_size: int) -> api.Resolution:
    spec = BuildSpec(target="torch-aoti", model=str(model), n_positions=n_positions, batch_size=batch_size, dtype="fp32")
    return api.resolve(spec, store=store, toolchain=TOOLCHAIN)


def populate(store: Store, base: api.Resolution, tiny: Path, n: int) -> list[tuple[int, int]]:
    """N artifacts with distinct specs of one model, through the real publish path."""
    specs = [(p, b) for b in range(1, n // 4096 + 2) for p in range(1, 4097)][:n]
    t0 = time.perf_counter()
    for i, (p, b) in enumerate(specs):
        res = dataclasses.replace(base, spec=base.spec.replace(n_positions=p, batch_size=b))
        api.put(res, tiny, store=store)
        if (i + 1) % 1000 == 0:
            log(f"  populated {i + 1}/{n} ({time.perf_counter() - t0:.0f} s)")
    return specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="artifact size for put/materialise (default 1024)")
    ap.add_argument("--files", type=int, default=4, help="files in that artifact (default 4)")
    ap.add_argument("--artifacts", type=int, default=10_000, help="artifacts in the index for lookup (default 10000)")
    ap.add_argument("--runs", type=int, default=21, help="CLI runs per lookup measurement; the median is reported")
    ap.add_argument("--repeat", type=int, default=2, help="repeats of each throughput measurement; the best is reported")
    ap.add_argument("--dir", type=Path, default=None, help="parent of the temporary directory (default: system temp)")
    args = ap.parse_args()

    size = args.size_mib << 20
    mb = size / 1e6
    tmp = Path(tempfile.mkdtemp(prefix="kiln-bench-store-", dir=args.dir))
    rows: list[tuple[str, str, str, str]] = []
    try:
        model = write_model(tmp / "model")
        src = tmp / "artifact"
        log(f"writing a {args.size_mib} MiB artifact ({args.files} files) under {tmp}")
        write_artifact(src, size, args.files)

        # ---------------------------------------------------------------- put vs cp
        def best(fn, cleanup) -> float:  # type: ignore[no-untyped-def]
            ts = []
            for _ in range(args.repeat):
                ts.append(timed(fn))
                cleanup()
            return min(ts)

        cp_dest = tmp / "cp-copy"
        t_cp = best(lambda: sh("cp", "-r", str(src), str(cp_dest)), lambda: shutil.rmtree(cp_dest))

        put_root = tmp / "put-store"
        res = resolution(Store(put_root), model, 2048, 1)

        def put(root: Path, write_behind: bool) -> None:
            every = WriteBehind.EVERY
            if not write_behind:  # the same-run "before" of issue 18's write-behind (docs/benchmarks.md)
                WriteBehind.EVERY = 1 << 62
            try:
                api.put(res, src, store=Store(root))
            finally:
                WriteBehind.EVERY = every

        def cp_sync(dest: Path) -> None:
            sh("cp", "-r", str(src), str(dest))
            sh("sync", *[str(p) for p in dest.iterdir()])

        # cp + sync, put and put without write-behind alternate, and each ratio is the median of the
        # per-round ratios: a round sees one state of the disk. Each copy is deleted right after it
        # is timed, and the orders are balanced (scripts/_rounds.py): on this machine's disk (ext4 mounted
        # with `discard`, over a thin-provisioned virtual disk) whichever writer ran just after a
        # deletion was 2-3x slower in some rounds, and keeping the copies instead made every write
        # land on freshly discarded blocks, 3-5x slower for all three. The artifact's own dirty
        # pages are written back first.
        os.sync()
        put_times = timed_rounds({"cp-copy": lambda: cp_sync(tmp / "cp-copy"),
                                  "put-store": lambda: put(tmp / "put-store", True),
                                  "put-without": lambda: put(tmp / "put-without", False)},
                                 max(args.repeat, 3), after=lambda name: shutil.rmtree(tmp / name))
        rounds = list(zip(put_times["cp-copy"], put_times["put-store"], put_times["put-without"]))
        t_cp_sync = min(r[0] for r in rounds)
        t_put = min(r[1] for r in rounds)
        t_put_nowb = min(r[2] for r in rounds)
        put_speed = statistics.median(c / p for c, p, _ in rounds)  # the ratio: >= 0.8x
        put_speed_nowb = statistics.median(c / n for c, _, n in rounds)
        log(f"put {t_put:.2f} s (without write-behind {t_put_nowb:.2f} s), cp -r {t_cp:.2f} s, cp -r + sync "
            f"{t_cp_sync:.2f} s; rounds (cp+sync, put, put without write-behind): "
            + ", ".join(f"({c:.2f}, {p:.2f}, {n:.2f})" for c, p, n in rounds))

        rows.append((f"put {args.size_mib} MiB ({args.files} files), `kiln.api.put`",
                     f"{t_put:.2f} s", f"{mb / t_put:.0f} MB/s", ""))
        rows.append(("baseline: `cp -r` (no fsync)", f"{t_cp:.2f} s", f"{mb / t_cp:.0f} MB/s", f"put/cp time {t_put / t_cp:.2f}x"))
        rows.append(("baseline: `cp -r` + `sync` of the copies", f"{t_cp_sync:.2f} s", f"{mb / t_cp_sync:.0f} MB/s",
                     f"put speed {put_speed:.2f}x cp+sync (median of {len(rounds)} rounds)"))
        rows.append(("put without write-behind (same rounds)", f"{t_put_nowb:.2f} s", f"{mb / t_put_nowb:.0f} MB/s",
                     f"put speed {put_speed_nowb:.2f}x cp+sync"))

        # ---------------------------------------------------------------- materialise
        put_store = Store(put_root)
        api.put(res, src, store=put_store)
        manifest = put_store.read_manifest(api.lookup(res, store=put_store).entry.manifest)  # type: ignore[union-attr]
        dest = tmp / "dest"
        t_link = best(lambda: put_store.materialize(manifest, dest, link=True), lambda: shutil.rmtree(dest))
        put_store.materialize(manifest, dest)
        first = next(f for f in manifest.files)
        how = "clones" if _shares_extents(dest / first.path) else "copies"
        shutil.rmtree(dest)

        def materialize(threads: int | None) -> None:
            default = _per_file.FILE_THREADS
            if threads is not None:  # the same-run "before" of copying files out in parallel
                _per_file.FILE_THREADS = threads
            try:
                put_store.materialize(manifest, dest)
            finally:
                _per_file.FILE_THREADS = default

        # cp -r, the default materialise and the same one file at a time, in balanced rounds.
        out_times = timed_rounds({"cp": lambda: sh("cp", "-r", str(src), str(dest)), "fetch": lambda: materialize(None),
                                  "fetch-serial": lambda: materialize(1)},
                                 max(args.repeat, 3), after=lambda name: shutil.rmtree(dest))
        out_rounds = [dict(zip(out_times, r)) for r in zip(*out_times.values())]
        t_copy = min(r["fetch"] for r in out_rounds)
        t_copy_serial = min(r["fetch-serial"] for r in out_rounds)
        copy_vs_cp = statistics.median(r["fetch"] / r["cp"] for r in out_rounds)
        serial_vs_cp = statistics.median(r["fetch-serial"] / r["cp"] for r in out_rounds)
        log(f"materialise: links {t_link:.3f} s, default ({how}) {t_copy:.2f} s, one file at a time "
            f"{t_copy_serial:.2f} s; rounds (cp -r, default, one at a time): "
            + ", ".join(f"({r['cp']:.2f}, {r['fetch']:.2f}, {r['fetch-serial']:.2f})" for r in out_rounds))
        rows.append((f"materialise, default `kiln fetch` ({how}: sha256 while copying, files in parallel)"
                     if how == "copies" else "materialise, default `kiln fetch` (reflink clones)", f"{t_copy:.2f} s",
                     f"{mb / t_copy:.0f} MB/s", f"fetch/cp time {copy_vs_cp:.2f}x (median of {len(out_rounds)} rounds)"))
        rows.append(("materialise, default, one file at a time (same rounds)", f"{t_copy_serial:.2f} s",
                     f"{mb / t_copy_serial:.0f} MB/s", f"fetch/cp time {serial_vs_cp:.2f}x"))
        rows.append(("materialise, `kiln fetch --link` (hard links)", f"{t_link * 1000:.1f} ms",
                     f"{mb / t_link:.0f} MB/s (logical)", f"vs cp -r: {t_cp / t_link:.0f}x faster"))
        shutil.rmtree(put_store.root)
        shutil.rmtree(src)

        # ---------------------------------------------------------------- lookup
        py = plain_python(tmp / "plain-venv")
        env = dict(os.environ)
        env.pop("KILN_REMOTE", None)
        # A shell that sets PYTHONDONTWRITEBYTECODE leaves stale .pyc files stale, and every run
        # recompiles the changed modules: tens of ms that no installed Kiln pays.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        pins = [f"--toolchain={k}={v}" for k, v in TOOLCHAIN.items()]

        def lookup_cmd(p: int, b: int) -> list[str]:
            return [py, "-m", "kiln", "lookup", str(model), "-t", "torch-aoti", "--n-positions", str(p),
                    "--batch-size", str(b), "--dtype", "fp32", *pins]

        tiny = tmp / "tiny"
        tiny.mkdir()
        (tiny / "engine.bin").write_bytes(b"tiny engine" * 10)

        one = Store(tmp / "store-1")
        api.put(resolution(one, model, 2048, 1), tiny, store=one)

        big = Store(tmp / "store-n")
        log(f"populating {args.artifacts} artifacts (api.put, distinct specs of one model)")
        t_pop = timed(lambda: populate(big, resolution(big, model, 2048, 1), tiny, args.artifacts))
        specs = [(p, b) for b in range(1, args.artifacts // 4096 + 2) for p in range(1, 4097)][: args.artifacts]
        hit_spec = specs[len(specs) // 2]
        miss_spec = (4096, specs[-1][1] + 1)
        entries = sum(1 for _ in big.iter_entries())
        assert entries == args.artifacts, entries

        walls = median_walls({
            "pass": ([py, "-c", "pass"], env, 0),
            "pass-dev": ([sys.executable, "-c", "pass"], env, 0),
            "hit1": (lookup_cmd(2048, 1), {**env, "KILN_HOME": str(one.root)}, 0),
            "hitN": (lookup_cmd(*hit_spec), {**env, "KILN_HOME": str(big.root)}, 0),
            "missN": (lookup_cmd(*miss_spec), {**env, "KILN_HOME": str(big.root)}, 1),
        }, args.runs)
        t_pass, t_hit1, t_hit, t_miss = walls["pass"], walls["hit1"], walls["hitN"], walls["missN"]

        def over_pass(t: float) -> str:
            return f"{t / t_pass:.1f}x python -c pass (+{(t - t_pass) * 1000:.0f} ms)"

        log(f"pass {t_pass * 1000:.0f} ms, hit(1) {t_hit1 * 1000:.0f} ms, hit(N) {t_hit * 1000:.0f} ms, miss(N) {t_miss * 1000:.0f} ms")
        rows.append(("baseline: `python -c pass`", f"{t_pass * 1000:.0f} ms", "", ""))
        rows.append(("(`python -c pass` of the running venv, its .pth files run: not the baseline)",
                     f"{walls['pass-dev'] * 1000:.0f} ms", "", over_pass(walls["pass-dev"])))
        rows.append(("`kiln lookup` hit, 1 artifact in store", f"{t_hit1 * 1000:.0f} ms", "", over_pass(t_hit1)))
        rows.append((f"`kiln lookup` hit, {args.artifacts:,} artifacts in store", f"{t_hit * 1000:.0f} ms", "", over_pass(t_hit)))
        rows.append((f"`kiln lookup` miss (explains nearest), {args.artifacts:,} artifacts of that model",
                     f"{t_miss * 1000:.0f} ms", "", over_pass(t_miss)))
        rows.append((f"populate: {args.artifacts:,} x `api.put` of a tiny artifact", f"{t_pop:.1f} s",
                     f"{args.artifacts / t_pop:.0f} publishes/s", ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{os.cpu_count()} CPUs; Python {sys.version.split()[0]}; size {args.size_mib} MiB in {args.files} files; "
          f"{args.artifacts:,} artifacts; lookup: median of {args.runs} runs; throughput: best of {args.repeat}\n")
    print("| measurement | time | throughput | ratio |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
