#!/usr/bin/env python
"""Remote transfer benchmark: Kiln push/pull against raw clients, same bytes, same server, same run.

Starts an S3-protocol server on 127.0.0.1, a separate process (``python -m moto.server``, or with
``--server s3rver`` the npm package s3rver, installed under ``.bench/`` on first use), and uses
a directory as a filesystem remote. For an artifact of several files (default 1 GiB):

* Kiln ``push`` / ``pull`` (the library calls the CLI makes: stat + upload of every blob with
  boto3's transfer manager, index entry last; pull downloads, sha256-verifies, fsyncs and
  publishes into an empty local store);
* the second push of the unchanged artifact (bytes moved, seconds; in-process and via the CLI);
* baselines with the same bytes as ONE object: boto3 ``upload_file``/``download_file``
  (transfer manager defaults: 8 MiB parts, 10 threads), boto3 ``put_object``/``get_object``
  (one request each way), obstore ``put``/``get`` (Rust object_store; defaults: 5 MiB parts,
  12 concurrent) and, for the directory, a plain copy + fsync;
* ``--rounds`` paired rounds, in balanced orders (``_rounds.py``), every round printed: Kiln's S3
  pull, one get_object, one get_object + fsync; Kiln's directory pull, a copy + fsync. What a run
  wrote is deleted after its timing. The ratios the goals name are medians of these per-round
  ratios (single timings here vary by 2-3x from run to run).

    .venv/bin/python scripts/bench_remote.py                 # 1 GiB
    .venv/bin/python scripts/bench_remote.py --size-mib 128  # quick
    .venv/bin/python scripts/bench_remote.py --size-mib 256 --rounds 12  # docs/benchmarks.md, issue 18
    .venv/bin/python scripts/bench_remote.py --size-mib 256 --rounds 12 --server s3rver  # ranges at their cost

moto is an in-memory Python server (werkzeug, one process, the GIL): on a small machine it is
usually the bottleneck, and client and server share the CPU, so absolute numbers say little
about real S3; the ratios between clients on the same server say more, and still understate
the difference a faster client makes against a fast server. moto also reads a whole object to
serve any range of it, so Kiln's parallel ranged parts cost it more than one plain GET does;
s3rver (Node.js, objects as files) reads only the range.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from _rounds import timed_rounds  # noqa: E402
MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(argv: list[str], port: int, probe: str, name: str) -> tuple[subprocess.Popen, str]:
    """Start a server process on 127.0.0.1:``port`` and wait until ``probe`` answers."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(endpoint + probe, timeout=2) as r:
                r.read()
            return proc, endpoint
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"{name} did not start")
            time.sleep(0.1)


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    return _serve([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port, "/moto-api/",
                  "moto server")


S3RVER = "s3rver@3.7.1"  # npm; Node's own S3 stand-in, objects as files on disk
S3RVER_HOME = REPO / ".bench" / "s3rver"


def start_s3rver(data: Path) -> tuple[subprocess.Popen, str]:
    """s3rver from npm (installed under .bench/ on first use), its objects under ``data``.

    Unlike moto, whose ranged GET reads the whole object and slices it (a 64 MiB range of a
    384 MiB object took as long as the whole object), s3rver reads a range from its file, as
    S3 serves one: a client's parallel ranged parts are not penalised by the stand-in.
    """
    binary = S3RVER_HOME / "node_modules" / ".bin" / "s3rver"
    if not binary.exists():
        if shutil.which("npm") is None or shutil.which("node") is None:
            raise SystemExit("--server s3rver needs Node.js and npm (Debian: apt-get install nodejs npm)")
        print(f"installing {S3RVER} under {S3RVER_HOME} (npm)", flush=True)
        subprocess.run(["npm", "install", "--silent", "--prefix", str(S3RVER_HOME), S3RVER], check=True)
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    return _serve([str(binary), "-d", str(data), "-a", "127.0.0.1", "-p", str(port), "--silent"], port, "/",
                  "s3rver")


def write_artifact(root: Path, total: int, n_files: int, seed: int = 0) -> dict[str, int]:
    """n_files large files of random bytes (unequal sizes) plus two small ones."""
    rng = random.Random(seed)
    weights = [n_files - i for i in range(n_files)]
    sizes = [total * w // sum(weights) for w in weights]
    sizes[0] += total - sum(sizes)
    out = {}
    for i, size in enumerate(sizes):
        p = root / ("weights" if i == 0 else "engine") / f"part-{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            left = size
            while left:
                n = min(left, 64 * MiB)
                f.write(rng.randbytes(n))
                left -= n
        out[p.relative_to(root).as_posix()] = size
    for name, data in (("config.json", b'{"bench": true}'), ("tokenizer.json", b'{"version": "1.0"}')):
        (root / name).write_bytes(data)
        out[name] = len(data)
    return out


def concat(root: Path, files: dict[str, int], dest: Path) -> None:
    with open(dest, "wb") as out:
        for rel in files:
            with open(root / rel, "rb") as f:
                shutil.copyfileobj(f, out, 8 * MiB)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    r = fn()
    return time.perf_counter() - t0, r


def copy_fsync(src: Path, dest: Path) -> None:
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        shutil.copyfileobj(fin, fout, 8 * MiB)
        fout.flush()
        os.fsync(fout.fileno())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="artifact size (default 1024)")
    ap.add_argument("--files", type=int, default=4, help="large files in the artifact (default 4)")
    ap.add_argument("--workdir", type=Path, help="scratch directory (default: a temp dir, removed afterwards)")
    ap.add_argument("--server", choices=("moto", "s3rver"), default="moto",
                    help="the S3-protocol server: moto (Python, in memory; the default) or s3rver (Node.js, from npm, "
                         "files on disk; ranged GETs cost what the range costs)")
    ap.add_argument("--rounds", type=int, default=6,
                    help="paired rounds, in balanced orders: S3 (kiln pull, get_object, get_object + fsync) and the "
                         "directory remote (kiln pull, copy + fsync); rounded up to whole cycles of the orders (default 6)")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="kiln-bench-remote-"))
    work.mkdir(parents=True, exist_ok=True)
    key = "S3RVER" if args.server == "s3rver" else "bench"  # s3rver accepts its own fixed key pair only
    os.environ.update(
        AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=key, AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true", KILN_HOME=str(work / "store"),
    )
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "KILN_REMOTE"):
        os.environ.pop(name, None)
    sys.path.insert(0, str(REPO))

    import boto3
    import obstore
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config
    from obstore.store import S3Store

    from kiln import api
    from kiln.cache import Store
    from kiln.cache.remotes import open_remote
    from kiln.cache._sync import pull, push
    from kiln.spec import BuildSpec

    size = args.size_mib * MiB
    rows: list[tuple[str, float, int]] = []  # (what, seconds, bytes)

    def row(what: str, seconds: float, nbytes: int) -> None:
        rows.append((what, seconds, nbytes))
        rate = f"{nbytes / 1e6 / seconds:8.1f} MB/s" if nbytes else ""
        print(f"  {what:<58} {seconds:8.2f} s {rate}", flush=True)

    server, endpoint = start_moto() if args.server == "moto" else start_s3rver(work / "s3rver-data")
    try:
        print(f"artifact: {args.size_mib} MiB in {args.files} large files + 2 small; {args.server} at {endpoint}; "
              f"work {work}", flush=True)
        src = work / "artifact"
        files = write_artifact(src, size, args.files)
        total = sum(files.values())
        single = work / "single.bin"
        concat(src, files, single)
        model = work / "model"
        model.mkdir(exist_ok=True)
        (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                       "hidden_size": 64, "num_attention_heads": 8, "num_hidden_layers": 2,
                                                       "max_position_embeddings": 4096, "vocab_size": 512}))
        (model / "model.safetensors").write_bytes(b"\0" * 4096)
        store = Store()
        res = api.resolve(BuildSpec(target="torch-aoti", model=str(model), n_positions=256), store=store,
                          toolchain={"torch": "2.0.0", "transformers": "5.0.0", "hardware": "cpu-bench"})
        t, entry = timed(lambda: api.put(res, src, store=store))
        row("local: kiln store put (hash + copy + fsync)", t, total)

        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
        ostore_kw = dict(endpoint=endpoint, access_key_id=key, secret_access_key=key, region="us-east-1",
                         virtual_hosted_style_request=False, client_options={"allow_http": True, "timeout": "600s"})

        def wipe(bucket: str) -> None:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for o in page.get("Contents", []):
                    client.delete_object(Bucket=bucket, Key=o["Key"])

        # ---------------------------------------------------------------- S3: Kiln
        print(f"S3 ({args.server}):", flush=True)
        client.create_bucket(Bucket="kiln-bench")
        url = f"s3://kiln-bench/kiln?endpoint={endpoint}"
        remote = open_remote(url)
        t, pushed = timed(lambda: push(store, remote, entry))
        row(f"kiln push ({pushed.uploaded} blobs)", t, pushed.uploaded_bytes)
        kiln_push = (t, pushed.uploaded_bytes)
        t, again = timed(lambda: push(store, remote, entry))
        row(f"kiln push again, unchanged ({again.uploaded_bytes} bytes moved)", t, 0)
        second_push = (t, again.uploaded_bytes)
        t, cli = timed(lambda: subprocess.run(
            [sys.executable, "-m", "kiln.cli", "--remote", url, "push", "--key", entry.key, "--json"],
            capture_output=True, text=True, check=True))
        cli_moved = json.loads(cli.stdout)[0]["uploaded_bytes"]
        row(f"`kiln push` CLI again, unchanged ({cli_moved} bytes moved, process start incl.)", t, 0)
        cli_second = (t, cli_moved)
        fresh = Store(work / "pull-store")
        t, pulled = timed(lambda: pull(fresh, remote, entry))
        row(f"kiln pull into an empty store ({pulled.downloaded} blobs, verified, fsynced)", t, pulled.downloaded_bytes)
        kiln_pull = (t, pulled.downloaded_bytes)
        shutil.rmtree(work / "pull-store")

        # ---------------------------------------------------------------- S3: raw clients, one object
        client.create_bucket(Bucket="raw-bench")
        dl = work / "download.bin"
        ost = S3Store("raw-bench", **ostore_kw)
        kiln_cfg = remote.transfer  # Kiln's TransferConfig: 64 MiB parts, 8 threads
        raw: dict[str, float] = {}

        def measure(name: str, label: str, fn: Callable[[], Any]) -> None:
            t, _ = timed(fn)
            row(label, t, total)
            raw[name] = t

        def put_object() -> None:
            with open(single, "rb") as f:
                client.put_object(Bucket="raw-bench", Key="one", Body=f)

        def get_object() -> None:
            body = client.get_object(Bucket="raw-bench", Key="one")["Body"]
            with open(dl, "wb") as f:
                for chunk in body.iter_chunks(8 * MiB):
                    f.write(chunk)

        def ob_get() -> None:
            with open(dl, "wb") as f:
                for chunk in obstore.get(ost, "one").stream(min_chunk_size=8 * MiB):
                    f.write(chunk)

        cases = [
            ("b3_tm", "boto3 upload_file / download_file, defaults (8 MiB parts, 10 threads)",
             lambda: client.upload_file(str(single), "raw-bench", "one", Config=TransferConfig()),
             lambda: client.download_file("raw-bench", "one", str(dl), Config=TransferConfig())),
            ("b3_kiln", "boto3 upload_file / download_file, Kiln's settings (64 MiB parts, 8 threads)",
             lambda: client.upload_file(str(single), "raw-bench", "one", Config=kiln_cfg),
             lambda: client.download_file("raw-bench", "one", str(dl), Config=kiln_cfg)),
            ("b3_one", "boto3 put_object / get_object, one request each", put_object, get_object),
            ("ob_mp", "obstore put (8 MiB parts, 10 concurrent) / get (one request)",
             lambda: obstore.put(ost, "one", single, chunk_size=8 * MiB, max_concurrency=10), ob_get),
            ("ob_def", "obstore put defaults (5 MiB parts, 12 concurrent) / get",
             lambda: obstore.put(ost, "one", single), ob_get),
            ("ob_one", "obstore put (one request) / get (one request)",
             lambda: obstore.put(ost, "one", single, use_multipart=False), ob_get),
        ]
        for name, label, up, down in cases:
            measure(name + "_up", f"{label} -- upload", up)
            measure(name + "_down", f"{label} -- download", down)
            dl.unlink()
            wipe("raw-bench")

        # ---------------------------------------------------------------- S3: paired rounds
        # Kiln's pull (verified, fsynced, published), one get_object into a file, and the same
        # get_object with an fsync at the end, in balanced orders: single timings on a shared
        # 2-core machine move by more than the differences measured.
        put_object()

        def pull_once(from_remote: Any) -> None:
            pull(Store(work / "pull-store"), from_remote, entry)

        def get_object_once(fsync: bool) -> None:
            get_object()
            if fsync:
                with open(dl, "rb+") as f:
                    os.fsync(f.fileno())

        outputs = {"get_object": dl, "get_object_fsync": dl, "copy_fsync": work / "copy.bin"}

        def delete_output(name: str) -> None:  # after each timing, outside it
            if name == "pull":
                shutil.rmtree(work / "pull-store")
            else:
                outputs[name].unlink()

        rounds = timed_rounds({"pull": lambda: pull_once(remote), "get_object": lambda: get_object_once(False),
                               "get_object_fsync": lambda: get_object_once(True)}, args.rounds, after=delete_output)
        paired = {name: statistics.median(ts) for name, ts in rounds.items()}
        row(f"kiln pull, median of {len(rounds['pull'])} balanced rounds", paired["pull"], total)
        row("boto3 get_object, one request, same rounds", paired["get_object"], total)
        row("boto3 get_object + fsync, same rounds", paired["get_object_fsync"], total)
        wipe("raw-bench")
        wipe("kiln-bench")

        # ---------------------------------------------------------------- filesystem remote
        print("filesystem remote (same disk):", flush=True)
        froot = work / "fs-remote"
        fremote = open_remote(str(froot))
        t, fp = timed(lambda: push(store, fremote, entry))
        row(f"kiln push to a directory ({fp.uploaded} blobs, fsynced)", t, fp.uploaded_bytes)
        fs_push = t
        t, fa = timed(lambda: push(store, fremote, entry))
        row(f"kiln push again, unchanged ({fa.uploaded_bytes} bytes moved)", t, 0)

        # Kiln's pull from the directory and a copy + fsync of the same bytes, in balanced rounds.
        fs_rounds = timed_rounds({"pull": lambda: pull_once(fremote),
                                  "copy_fsync": lambda: copy_fsync(single, work / "copy.bin")},
                                 args.rounds, after=delete_output)
        fs_pull, fs_copy = (statistics.median(fs_rounds[n]) for n in ("pull", "copy_fsync"))
        row(f"kiln pull from the directory (verified, fsynced), median of {len(fs_rounds['pull'])} rounds", fs_pull, total)
        row("copy + fsync of the same bytes, one file (baseline), same rounds", fs_copy, total)
        shutil.rmtree(froot)
    finally:
        server.kill()
        server.wait()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    mb = total / 1e6

    def rate(t: float) -> str:
        return f"{mb / t:.0f} MB/s"

    print("\nratios (time of the baseline / time of the first: >1 means the first is faster):")
    print(f"  kiln push vs boto3 upload_file (defaults)      {raw['b3_tm_up'] / kiln_push[0]:.2f}x  ({rate(kiln_push[0])} vs {rate(raw['b3_tm_up'])})")
    print(f"  kiln push vs boto3 upload_file (Kiln settings) {raw['b3_kiln_up'] / kiln_push[0]:.2f}x  ({rate(raw['b3_kiln_up'])})")
    print(f"  kiln pull vs boto3 download_file (defaults)    {raw['b3_tm_down'] / kiln_pull[0]:.2f}x  ({rate(kiln_pull[0])} vs {rate(raw['b3_tm_down'])})")
    print(f"  kiln pull vs boto3 download_file (Kiln sett.)  {raw['b3_kiln_down'] / kiln_pull[0]:.2f}x  ({rate(raw['b3_kiln_down'])})")
    print(f"  kiln pull vs boto3 get_object                  {raw['b3_one_down'] / kiln_pull[0]:.2f}x  ({rate(raw['b3_one_down'])})")
    ratios = [g / p for g, p in zip(rounds["get_object"], rounds["pull"])]
    ratios_fsync = [g / p for g, p in zip(rounds["get_object_fsync"], rounds["pull"])]
    print(f"  kiln pull vs get_object, paired rounds         {statistics.median(ratios):.2f}x median of {len(ratios)} "
          f"(vs get_object + fsync {statistics.median(ratios_fsync):.2f}x)")
    print(f"  obstore vs boto3, multipart upload, 8 MiB parts {raw['b3_tm_up'] / raw['ob_mp_up']:.2f}x")
    print(f"  obstore vs boto3, one-request upload            {raw['b3_one_up'] / raw['ob_one_up']:.2f}x")
    print(f"  obstore vs boto3, one-request download          {raw['b3_one_down'] / raw['ob_one_down']:.2f}x")
    fs_ratios = [c / p for c, p in zip(fs_rounds["copy_fsync"], fs_rounds["pull"])]
    print(f"  kiln push to dir vs copy+fsync (one push)       {fs_copy / fs_push:.2f}x")
    print(f"  kiln pull from dir vs copy+fsync, paired rounds {statistics.median(fs_ratios):.2f}x median of {len(fs_ratios)}")
    print(f"  second push: {second_push[1]} bytes in {second_push[0]:.3f} s in-process, "
          f"{cli_second[1]} bytes in {cli_second[0]:.3f} s via the CLI")
    print("\n| measurement | time | throughput |\n| --- | --- | --- |")
    for what, seconds, nbytes in rows:
        rate = f"{nbytes / 1e6 / seconds:.0f} MB/s" if nbytes else ""
        print(f"| {what} | {seconds:.2f} s | {rate} |")


if __name__ == "__main__":
    main()
