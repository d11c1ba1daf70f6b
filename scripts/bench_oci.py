#!/usr/bin/env python
"""OCI registry client benchmark (issue 17): Kiln's own HTTP client vs oras-py vs raw http.client.

Starts one real registry (Debian's ``docker-registry``, distribution 2.8, on 127.0.0.1; the test
suite's tests/remote/oci_registry.start_registry) and moves ONE artifact of several files of
random bytes (default 256 MiB in 4 files, 4:3:2:1) through it with each client, in the same run:

* **Kiln**: ``kiln push --key KEY`` to ``oci://127.0.0.1:PORT/REPO?plain-http=true`` (a CLI
  process, as a user runs it) and the library call it makes (``kiln.cache._sync.push``); then
  ``kiln fetch --key KEY --dest D`` with an empty KILN_HOME (CLI: download, sha256-verify, fsync,
  publish into the store, materialise into D), the same ``fetch`` again once that store holds
  the artifact (process start, lookup, materialising: no download), and the library's ``pull``
  into an empty store (download, verify, fsync, publish; no process, no materialising);
* **oras-py** (PyPI ``oras``; NOT a Kiln dependency): ``Registry(insecure=True).push(files=…)``
  to a tag (its default: one monolithic PUT per file, each file first hashed and then read
  whole into memory), the same with ``do_chunked=True, chunk_size=64 MiB`` (Kiln's chunk size),
  and ``pull(outdir=D)``;
* **raw**: ``http.client`` by hand, the digests known beforehand: per file one POST + one
  monolithic PUT streaming the file; per file one GET streamed to a file, and the same GET
  hashing while it streams and fsyncing (what inline verification costs at the least).

Every push starts from an empty registry storage (the registry's storage directory is emptied
between measurements; it runs with no blob-descriptor cache), and every pull is checked
afterwards against the source bytes (outside the timing). Each measurement is repeated
``--runs`` times, the clients in balanced orders (``_rounds.py``: the balance is exact over
multiples of 6 runs, the number of orders for three clients); medians are reported, and
ratios of medians (kiln/oras, kiln/raw: > 1 means Kiln took longer).

Then, not throughput: the fixed cost of a push (a 1 MiB artifact: time, requests by method from
the registry's log, and how much of it Kiln spends in ``oci.settle``, the wait before checking a
directory-index update), each client's cost per request (100 HEADs), and two behaviour checks:
a registry that accepts connections and never answers (Kiln's deadline vs oras-py's), and a
blob damaged on the registry's disk (does the client's pull notice?). Last, what oras-py would
cost a light serving install: the distributions it needs beyond Kiln's light core (installed
size, as in this environment) and its import time on top of Kiln's OCI remote.

    .venv/bin/python -m pip install --target /tmp/oras-py --no-deps oras==0.2.43  # requests, jsonschema: in .venv
    .venv/bin/python scripts/bench_oci.py --oras-path /tmp/oras-py
    .venv/bin/python scripts/bench_oci.py --oras-path /tmp/oras-py --size-mib 64 --runs 1   # quick

Client and registry share the machine's cores and disk, so absolute numbers say little about a
remote registry; the ratios between clients on the same registry in the same run say more.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib.metadata as md
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from _rounds import balanced_orders  # noqa: E402

MiB = 1 << 20
TOOLCHAIN = {"torch": "2.0.0", "transformers": "5.0.0", "hardware": "cpu-bench"}


def write_artifact(root: Path, total: int, n_files: int, seed: int = 0) -> dict[str, int]:
    """n_files files of random bytes, sizes in the ratio n:…:2:1."""
    rng = random.Random(seed)
    weights = [n_files - i for i in range(n_files)]
    sizes = [total * w // sum(weights) for w in weights]
    sizes[0] += total - sum(sizes)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, size in enumerate(sizes):
        p = root / f"part-{i}.bin"
        with open(p, "wb") as f:
            left = size
            while left:
                n = min(left, 32 * MiB)
                f.write(rng.randbytes(n))
                left -= n
        out[p.name] = size
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    r = fn()
    return time.perf_counter() - t0, r


def kiln_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "kiln.cli", *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"kiln {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r


# ------------------------------------------------------------------------------ raw http.client


def raw_request(host: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                ) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(host, timeout=120)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    resp.conn = conn  # type: ignore[attr-defined]  # closed by the caller
    return resp


def raw_push(host: str, repository: str, src: Path, files: dict[str, str], sizes: dict[str, int]) -> None:
    """Per file: POST an upload, PUT the whole file (streamed by http.client) with its digest."""
    for name, digest in files.items():
        r = raw_request(host, "POST", f"/v2/{repository}/blobs/uploads/", headers={"content-length": "0"})
        r.read()
        r.conn.close()  # type: ignore[attr-defined]
        location = r.getheader("location") or ""
        assert r.status == 202 and location, (r.status, location)
        u = urlparse(location)
        target = (u.path or location) + ("?" + u.query + "&" if u.query else "?") + f"digest={digest}"
        with open(src / name, "rb") as f:
            r = raw_request(host, "PUT", target, body=f, headers={
                "content-type": "application/octet-stream", "content-length": str(sizes[name])})
            r.read()
            r.conn.close()  # type: ignore[attr-defined]
        assert r.status == 201, (r.status, name)


def raw_pull(host: str, repository: str, dest: Path, files: dict[str, str], verify: bool) -> None:
    """Per file: one GET streamed to a file (1 MiB reads); with ``verify``, sha256 while streaming + fsync."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, digest in files.items():
        r = raw_request(host, "GET", f"/v2/{repository}/blobs/{digest}")
        assert r.status == 200, (r.status, name)
        h = hashlib.sha256() if verify else None
        with open(dest / name, "wb") as f:
            while chunk := r.read(MiB):
                f.write(chunk)
                if h is not None:
                    h.update(chunk)
            if verify:
                f.flush()
                os.fsync(f.fileno())
        r.conn.close()  # type: ignore[attr-defined]
        if h is not None and "sha256:" + h.hexdigest() != digest:
            raise SystemExit(f"raw pull: {name} does not match its digest")


# ------------------------------------------------------------------------------ behaviour checks


def stalled_listener() -> tuple[socket.socket, int, list[socket.socket]]:
    """A TCP server on loopback that accepts connections and never answers (a hung registry)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            held.append(c)

    threading.Thread(target=accept, daemon=True).start()
    return srv, srv.getsockname()[1], held


def dist_closure(names: list[str]) -> set[str]:
    """Distributions ``names`` need (their unconditional requirements, recursively), as installed here."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = re.split(r"[\s<>=!~;\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if not name or name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen.add(name)
        for req in dist.requires or []:
            if ";" in req and "extra" in req.split(";", 1)[1]:
                continue
            if ";" in req and "python_version < \"3.11\"" in req:
                continue
            todo.append(req)
    return seen


def dist_size(name: str) -> int:
    dist = md.distribution(name)
    total = 0
    for f in dist.files or []:
        try:
            total += (dist.locate_file(f)).stat().st_size  # type: ignore[union-attr]
        except OSError:
            pass
    return total


def import_seconds(extra_path: str | None, runs: int = 3) -> tuple[float, float]:
    """Seconds to import Kiln's OCI remote in a fresh process, then oras-py's client on top of it (min of runs)."""
    code = ("import time; t0=time.perf_counter(); import kiln.cache.remotes.oci; t1=time.perf_counter(); "
            "import oras.provider; print(t1-t0, time.perf_counter()-t1)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (extra_path, str(REPO)) if p)}
    ts = []
    for _ in range(runs):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        a, b = r.stdout.split()
        ts.append((float(a), float(b)))
    return min(t[0] for t in ts), min(t[1] for t in ts)


# ------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256, help="artifact size (default 256)")
    ap.add_argument("--files", type=int, default=4, help="files in the artifact (default 4)")
    ap.add_argument("--runs", type=int, default=3, help="repetitions of every measurement (default 3)")
    ap.add_argument("--oras-path", help="a directory holding the oras package (pip install --target DIR oras)")
    ap.add_argument("--workdir", type=Path, help="scratch directory (default: a temp dir, removed afterwards)")
    args = ap.parse_args()

    if args.oras_path:
        sys.path.insert(0, args.oras_path)
    sys.path.insert(0, str(REPO))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="kiln-bench-oci-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "docker-config").mkdir(exist_ok=True)
    os.environ.update(KILN_HOME=str(work / "store"), DOCKER_CONFIG=str(work / "docker-config"))
    for name in ("KILN_REMOTE", "KILN_OCI_USERNAME", "KILN_OCI_PASSWORD", "KILN_OCI_TIMEOUT", "KILN_OCI_DEADLINE"):
        os.environ.pop(name, None)

    import oras.logger
    import oras.provider

    oras.logger.logger.quiet = True
    from kiln import api
    from kiln.cache import Store
    from kiln.cache._sync import pull, push
    from kiln.cache.remotes import open_remote
    from kiln.errors import RemoteError
    from kiln.spec import BuildSpec
    from tests.remote.oci_registry import REGISTRY, start_registry

    if REGISTRY is None:
        raise SystemExit("no docker-registry here (Debian: apt-get install docker-registry)")

    times: dict[str, list[float]] = {}
    notes: list[str] = []

    def record(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds)
        print(f"    {name:<44} {seconds:7.2f} s  {total / 1e6 / seconds:7.1f} MB/s", flush=True)

    reg = start_registry(work / "registry")
    host = reg.host
    try:
        src = work / "artifact"
        sizes = write_artifact(src, args.size_mib * MiB, args.files)
        total = sum(sizes.values())
        digests = {name: sha256_file(src / name) for name in sizes}
        print(f"artifact: {args.size_mib} MiB in {args.files} files "
              f"({', '.join(f'{s / MiB:.0f}' for s in sizes.values())} MiB); registry {REGISTRY} at {host}; "
              f"work {work}", flush=True)

        model = work / "model"
        model.mkdir(exist_ok=True)
        (model / "config.json").write_text(json.dumps({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "num_attention_heads": 8,
            "num_hidden_layers": 2, "max_position_embeddings": 4096, "vocab_size": 512}))
        (model / "model.safetensors").write_bytes(b"\0" * 4096)
        store = Store()
        res = api.resolve(BuildSpec(target="torch-aoti", model=str(model), n_positions=256), store=store,
                          toolchain=TOOLCHAIN)
        t, entry = timed(lambda: api.put(res, src, store=store))
        print(f"  local `kiln store put` (in-process api.put: hash + copy + fsync): {t:.2f} s", flush=True)
        key = entry.key

        def wipe() -> None:
            """An empty registry storage: the next push uploads every byte (no cache is configured)."""
            shutil.rmtree(reg.root / "docker", ignore_errors=True)

        def check_tree(dest: Path, what: str) -> None:
            got = {p.name: sha256_file(p) for p in dest.rglob("*") if p.is_file() and p.name in digests}
            if got != digests:
                raise SystemExit(f"{what}: the pulled files do not match the source")

        def fresh(name: str) -> Path:
            p = work / name
            shutil.rmtree(p, ignore_errors=True)
            return p

        # ------------------------------------------------------------------ one round of each client
        def kiln_round(i: int) -> None:
            url = f"oci://{host}/kiln/cli{i}?plain-http=true"
            wipe()
            t, _ = timed(lambda: kiln_cli("--remote", url, "push", "--key", key, "--json"))
            record("kiln push (CLI process)", t)
            dest, home = fresh("dest-kiln"), fresh("home-kiln")
            t, _ = timed(lambda: kiln_cli("--remote", url, "fetch", "--key", key, "--dest", str(dest),
                                          env={"KILN_HOME": str(home)}))
            record("kiln fetch --key --dest, empty KILN_HOME (CLI)", t)
            check_tree(dest, "kiln fetch")
            dest2 = fresh("dest-kiln-2")
            t, _ = timed(lambda: kiln_cli("--remote", url, "fetch", "--key", key, "--dest", str(dest2),
                                          env={"KILN_HOME": str(home)}))
            record("kiln fetch again, store holds it (CLI)", t)
            check_tree(dest2, "kiln fetch again")
            shutil.rmtree(dest2)
            remote = open_remote(url)
            home = fresh("home-kiln")
            t, pulled = timed(lambda: pull(Store(home), remote, entry))
            assert pulled.downloaded_bytes == total, pulled
            record("kiln pull, library (into an empty store)", t)
            pulled_store = Store(home)
            if any(sha256_file(pulled_store.blob_path(d)) != d for d in digests.values()):
                raise SystemExit("kiln pull: the store's blobs do not match the source")
            shutil.rmtree(home)
            shutil.rmtree(dest)
            wipe()
            url = f"oci://{host}/kiln/lib{i}?plain-http=true"
            t, pushed = timed(lambda: push(store, open_remote(url), entry))
            assert pushed.uploaded_bytes >= total, pushed
            record("kiln push, library", t)

        def oras_round(i: int) -> None:
            client = oras.provider.Registry(hostname=host, insecure=True)
            target = f"{host}/oras/r{i}:v1"
            paths = [str(src / name) for name in sizes]
            wipe()
            t, _ = timed(lambda: client.push(target=target, files=paths, disable_path_validation=True, quiet=True))
            record("oras push (monolithic PUT per file)", t)
            dest = fresh("dest-oras")
            t, _ = timed(lambda: client.pull(target=target, outdir=str(dest)))
            record("oras pull", t)
            check_tree(dest, "oras pull")
            shutil.rmtree(dest)
            wipe()
            t, _ = timed(lambda: client.push(target=f"{host}/oras/c{i}:v1", files=paths, disable_path_validation=True,
                                             quiet=True, do_chunked=True, chunk_size=64 * MiB))
            record("oras push, chunked 64 MiB", t)

        def raw_round(i: int) -> None:
            repository = f"raw/r{i}"
            wipe()
            t, _ = timed(lambda: raw_push(host, repository, src, digests, sizes))
            record("raw http.client: POST + PUT per file", t)
            dest = fresh("dest-raw")
            t, _ = timed(lambda: raw_pull(host, repository, dest, digests, verify=False))
            record("raw http.client: GET per file", t)
            check_tree(dest, "raw pull")
            shutil.rmtree(dest)
            t, _ = timed(lambda: raw_pull(host, repository, dest, digests, verify=True))
            record("raw http.client: GET + sha256 + fsync", t)
            shutil.rmtree(dest)

        rounds = [kiln_round, oras_round, raw_round]
        orders = balanced_orders(len(rounds))
        for i in range(args.runs):
            order = [rounds[k] for k in orders[i % len(orders)]]
            print(f"round {i + 1}/{args.runs}: {', '.join(f.__name__.split('_')[0] for f in order)}", flush=True)
            for f in order:
                f(i)
        wipe()
        cli_start = []
        for _ in range(3):
            t, _ = timed(lambda: kiln_cli("--help"))
            cli_start.append(t)
        notes.append(f"`python -m kiln.cli --help` (process start + imports): {min(cli_start):.2f} s (min of 3)")

        # ------------------------------------------------------------------ behaviour: a hung registry
        print("behaviour checks:", flush=True)
        srv, port, held = stalled_listener()
        stall = f"oci://127.0.0.1:{port}/kiln/hung?plain-http=true&timeout=1&deadline=3"
        t0 = time.perf_counter()
        try:
            open_remote(stall).stat("blobs/sha256/" + "0" * 64)
            kiln_hung = "answered (unexpected)"
        except RemoteError as e:
            kiln_hung = f"RemoteError after {time.perf_counter() - t0:.1f} s: {str(e)[:90]}…"
        oras_state: dict[str, Any] = {}

        def oras_hung() -> None:
            try:
                oras.provider.Registry(hostname=f"127.0.0.1:{port}", insecure=True).get_manifest(
                    f"127.0.0.1:{port}/oras/hung:v1")
                oras_state["result"] = "answered"
            except Exception as e:  # noqa: BLE001 - reported
                oras_state["result"] = f"{type(e).__name__}"
        th = threading.Thread(target=oras_hung, daemon=True)
        th.start()
        th.join(10)
        oras_hung_s = "still waiting after 10 s (no timeout; daemon thread abandoned)" if th.is_alive() \
            else f"returned: {oras_state.get('result')}"
        srv.close()
        notes.append(f"hung registry (accepts, never answers), Kiln `?timeout=1&deadline=3`: {kiln_hung}")
        notes.append(f"hung registry, oras-py `get_manifest`: {oras_hung_s}")
        print("  " + notes[-2] + "\n  " + notes[-1], flush=True)

        # ------------------------------------------------------------------ behaviour: a damaged blob
        small = work / "small"
        small.mkdir(exist_ok=True)
        (small / "weights.bin").write_bytes(random.Random(7).randbytes(MiB))
        digest = sha256_file(small / "weights.bin")
        client = oras.provider.Registry(hostname=host, insecure=True)
        client.push(target=f"{host}/oras/damaged:v1", files=[str(small / "weights.bin")],
                    disable_path_validation=True, quiet=True)
        res2 = api.resolve(BuildSpec(target="torch-aoti", model=str(model), n_positions=256, batch_size=2),
                           store=store, toolchain=TOOLCHAIN)
        entry2 = api.put(res2, small, store=store)
        small_times: dict[str, list[float]] = {"kiln": [], "oras": []}
        import kiln.cache.remotes.oci as oci_module

        real_settle, settled = oci_module.settle, [0.0]

        def timed_settle(gap: float) -> None:  # instrumentation only: the real wait, its length summed
            t0 = time.perf_counter()
            real_settle(gap)
            settled[0] += time.perf_counter() - t0

        oci_module.settle = timed_settle  # type: ignore[assignment]
        for i in range(args.runs):  # what a push costs beyond its bytes: a 1 MiB artifact, fresh repositories
            t, _ = timed(lambda: push(store, open_remote(f"oci://{host}/kiln/small{i}?plain-http=true"), entry2))
            small_times["kiln"].append(t)
            t, _ = timed(lambda: client.push(target=f"{host}/oras/small{i}:v1", files=[str(small / "weights.bin")],
                                             disable_path_validation=True, quiet=True))
            small_times["oras"].append(t)
        time.sleep(0.3)  # the registry's log of the last requests

        def requests_to(repository: str) -> str:
            methods = re.findall(r'msg="response completed[^\n]*?http\.request\.method=(\w+)[^\n]*?'
                                 rf'http\.request\.uri="?/v2/{re.escape(repository)}/', reg.log_text())
            counts = {m: methods.count(m) for m in sorted(set(methods))}
            return f"{len(methods)} requests ({', '.join(f'{n} {m}' for m, n in counts.items())})"

        oci_module.settle = real_settle  # type: ignore[assignment]
        notes.append(f"push of a 1 MiB one-file artifact to a fresh repository (the fixed cost of a push), median of "
                     f"{args.runs}: kiln library {statistics.median(small_times['kiln']) * 1e3:.0f} ms, "
                     f"{requests_to('kiln/small0')}, of which {settled[0] / args.runs * 1e3:.0f} ms (mean) waiting in "
                     f"oci.settle (directory-index read-modify-write checks); oras-py "
                     f"{statistics.median(small_times['oras']) * 1e3:.0f} ms, {requests_to('oras/small0')}")
        print("  " + notes[-1], flush=True)

        # per-request cost of each client: HEAD of one blob, 100 times (after one warm-up)
        kiln_client = open_remote(f"oci://{host}/oras/small0?plain-http=true").client
        blob_path = f"/v2/oras/small0/blobs/{digest}"

        def raw_head() -> None:
            r = raw_request(host, "HEAD", blob_path)
            r.read()
            r.conn.close()  # type: ignore[attr-defined]

        heads = {"kiln RegistryClient (new connection + deadline thread per request)":
                 lambda: kiln_client.request("HEAD", blob_path),
                 "oras-py do_request (requests.Session, keep-alive)":
                 lambda: client.do_request(f"http://{host}{blob_path}", "HEAD"),
                 "raw http.client, new connection": raw_head}
        per_request = []
        for name, fn in heads.items():
            fn()
            t, _ = timed(lambda: [fn() for _ in range(100)])
            per_request.append(f"{name} {t * 10:.2f} ms")
        notes.append("per request (HEAD of a blob, mean of 100): " + "; ".join(per_request))
        print("  " + notes[-1], flush=True)
        url = f"oci://{host}/kiln/damaged?plain-http=true"
        push(store, open_remote(url), entry2)
        dest = fresh("dest-interop")  # interoperability: oras-py pulls the artifact tag Kiln pushed
        client.pull(target=f"{host}/kiln/damaged:{entry2.key}", outdir=str(dest))
        same = (dest / "weights.bin").is_file() and sha256_file(dest / "weights.bin") == digest
        notes.append(f"oras-py `pull` of the artifact tag Kiln pushed (`REPO:<build key>`): "
                     f"{'the files, byte for byte' if same else 'DIFFERENT files (unexpected)'}")
        print("  " + notes[-1], flush=True)
        blob = reg.blob_file(digest)  # one blob file on disk, shared by both repositories
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
        dest = fresh("dest-damaged")
        client.pull(target=f"{host}/oras/damaged:v1", outdir=str(dest))
        got = sha256_file(dest / "weights.bin")
        oras_damaged = ("wrote the damaged bytes, no error" if got != digest else "bytes equal the digest (?)")
        home = fresh("home-damaged")
        r = subprocess.run([sys.executable, "-m", "kiln.cli", "--remote", url, "fetch", "--key", entry2.key,
                            "--dest", str(fresh("dest-damaged-kiln"))], capture_output=True, text=True,
                           env={**os.environ, "KILN_HOME": str(home)})
        said = re.sub(r"\s+", " ", " ".join(ln for ln in r.stderr.splitlines() if "corrupt" in ln) or r.stderr.strip())
        said = re.sub(r"[0-9a-f]{16,}", lambda m: m.group(0)[:12] + "…", said)
        kiln_damaged = f"exit {r.returncode} (a miss), nothing published ({said[:300]})"
        if r.returncode == 0 or any(home.rglob(digest.split(":")[1])):
            kiln_damaged = "ACCEPTED the damaged blob (unexpected): " + kiln_damaged
        notes.append(f"blob damaged on the registry's disk, oras-py `pull`: {oras_damaged}")
        notes.append(f"blob damaged on the registry's disk, `kiln fetch`: {kiln_damaged}")
        print("  " + notes[-2] + "\n  " + notes[-1], flush=True)
    finally:
        reg.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    # ---------------------------------------------------------------------- dependency weight
    light = dist_closure(["kiln-engines"]) | {"kiln-engines"}
    oras_deps = sorted(dist_closure(["requests", "jsonschema"]) - light)
    size_mb = sum(dist_size(d) for d in oras_deps) / 1e6
    kiln_import, oras_import = import_seconds(args.oras_path)
    notes.append(f"distributions oras-py adds to the light core (besides oras itself): {', '.join(oras_deps)} "
                 f"= {size_mb:.1f} MB installed")
    notes.append(f"import kiln.cache.remotes.oci: {kiln_import:.3f} s in a fresh process; then import oras.provider "
                 f"on top of it: +{oras_import:.3f} s (min of 3)")

    # ---------------------------------------------------------------------- report
    med = {k: statistics.median(v) for k, v in times.items()}

    def ratio(a: str, b: str) -> str:
        return f"{med[a] / med[b]:.2f}"

    print(f"\n| {args.size_mib} MiB, {args.files} files, median of {args.runs} | median | min–max | MB/s |")
    print("| --- | --- | --- | --- |")
    for k, v in times.items():
        print(f"| {k} | {med[k]:.2f} s | {min(v):.2f}–{max(v):.2f} s | {total / 1e6 / med[k]:.0f} |")
    print("\n| ratio of medians (>1: Kiln slower) | |\n| --- | --- |")
    pairs = [
        ("push: kiln library / oras", "kiln push, library", "oras push (monolithic PUT per file)"),
        ("push: kiln library / oras chunked 64 MiB", "kiln push, library", "oras push, chunked 64 MiB"),
        ("push: kiln CLI / oras", "kiln push (CLI process)", "oras push (monolithic PUT per file)"),
        ("push: kiln library / raw", "kiln push, library", "raw http.client: POST + PUT per file"),
        ("push: oras / raw", "oras push (monolithic PUT per file)", "raw http.client: POST + PUT per file"),
        ("pull: kiln library / oras", "kiln pull, library (into an empty store)", "oras pull"),
        ("pull: kiln fetch CLI / oras", "kiln fetch --key --dest, empty KILN_HOME (CLI)", "oras pull"),
        ("pull: kiln library / raw GET", "kiln pull, library (into an empty store)", "raw http.client: GET per file"),
        ("pull: kiln library / raw GET + sha256 + fsync", "kiln pull, library (into an empty store)",
         "raw http.client: GET + sha256 + fsync"),
        ("pull: oras / raw GET", "oras pull", "raw http.client: GET per file"),
    ]
    for label, a, b in pairs:
        print(f"| {label} | {ratio(a, b)} |")
    print()
    for n in notes:
        print(f"- {n}")


if __name__ == "__main__":
    main()
