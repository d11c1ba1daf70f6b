"""Randomised hostile remotes (issue 12, "must hold"), on a filesystem remote and on a real
S3-protocol server (moto on 127.0.0.1).

Each case starts from a remote holding two good artifacts, pushed by the real CLI (they share
a blob), applies a seeded random set of mutations from :mod:`tests.remote.hostile_data`, and
runs every remote reader and remote gc through the real CLI, each in a fresh KILN_HOME and
DEST inside the case's sandbox. It must hold, for every command:

* no traceback; exit code in the documented set (0, 1, 2); stderr only ``kiln: …`` lines,
  bounded in number and length; ``--json`` output parseable;
* it finishes before the deadline (DEADLINE seconds; S3 URLs also carry ``?timeout=5``), and
  never writes more than WRITE_CAP bytes (a download that is not capped at its declared size);
* nothing written outside its KILN_HOME and DEST: the rest of the sandbox (other runs' stores,
  a sentinel next to DEST, TMPDIR, HOME, the files links point at) and the model are unchanged,
  and readers leave the remote unchanged;
* an artifact none of whose objects a mutation touched is served exactly (lookup, fetch and
  ensure hit it, pull --all and ls --remote find it unless a mutation broke the listing itself);
  an artifact a mutation made a lie is never served (no lookup hit, not published by a pull);
* ``gc --remote --grace 0s`` deletes only blobs under blobs/, deletes nothing when it exits 2,
  and never a blob that any index entry on the remote may reference (read leniently: the
  entry's manifest and whatever that manifest names); afterwards the untouched artifacts still
  pull and verify.

A failure names the case seed (``KILN_HOSTILE_SEED``, kind, case number) and the mutations,
so it reproduces: ``KILN_HOSTILE_SEED=12 pytest tests/remote/test_hostile_random.py -k 's3 and 7'``.
``KILN_HOSTILE_REPORT=FILE`` appends each failing case as a JSON line (for triage).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conftest import write_fake_model
from tests.remote.conftest import MotoServer, kiln_remote, new_bucket, s3_client, spec_args, store_put, write_tree
from tests.remote.hostile_data import (
    Artifact, Fifo, Layout, Link, MkDir, Mutation, Op, Outside, Put, Remove, blob_key, generate_case, sha,
)

BASE_SEED = os.environ.get("KILN_HOSTILE_SEED", "12")
N_FILE = int(os.environ.get("KILN_HOSTILE_CASES", "24"))
N_S3 = int(os.environ.get("KILN_HOSTILE_S3_CASES", "18"))
DEADLINE = float(os.environ.get("KILN_HOSTILE_DEADLINE", "60"))
REPORT = os.environ.get("KILN_HOSTILE_REPORT")
WRITE_CAP = 256 << 20  # the good artifacts are a few KiB; nothing hostile is accepted into a store
PREFIX = "kiln/prefix"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
_SUMMARY = re.compile(r"\d+ artifact\(s\), .* stored")  # the one plain line `kiln ls` prints on stderr


# --------------------------------------------------------------------------- the good artifacts


@dataclass
class Goods:
    model: Path
    home: Path  # the store they were made in
    layout: Layout


@pytest.fixture(scope="module")
def goods(tmp_path_factory: pytest.TempPathFactory) -> Goods:
    """Two artifacts of one model (batch 1 and 2) sharing a blob, pushed by the CLI once."""
    base = tmp_path_factory.mktemp("hostile-goods")
    model = write_fake_model(base / "model")
    env = {"KILN_HOME": str(base / "home"), "HF_HOME": str(base / "hf")}
    rng = random.Random(BASE_SEED)
    shared = rng.randbytes(3000)
    files = {
        "A": {"engine.bin": rng.randbytes(2000), "weights.bin": shared, "config.json": b'{"a": 1}'},
        "B": {"engine.bin": rng.randbytes(2100), "weights.bin": shared, "tokenizer/vocab.txt": b"hello\n"},
    }
    keys = {n: store_put(write_tree(base / n, f), model, batch_size=i + 1, env=env) for i, (n, f) in enumerate(files.items())}
    remote = base / "pristine"
    remote.mkdir()
    r = kiln_remote(str(remote), "push", "--all", env=env)
    assert r.returncode == 0, r.stderr
    objects = {p.relative_to(remote).as_posix(): p.read_bytes() for p in remote.rglob("*") if p.is_file()}
    arts = []
    for name, key in keys.items():
        [ekey] = [k for k in objects if k.endswith(f"/{key}.json")]
        entry = json.loads(objects[ekey])
        mkey = blob_key(entry["manifest"])
        manifest = json.loads(objects[mkey])
        arts.append(Artifact(name, key, ekey, mkey, blob_key(manifest["config"]["digest"]),
                             tuple(blob_key(layer["digest"]) for layer in manifest["layers"]), files[name]))
    model_hex = arts[0].entry_key.split("/")[1]
    return Goods(model, base / "home", Layout(model_hex, tuple(arts), objects))


@pytest.fixture(scope="module")
def s3_pristine(goods: Goods, moto_server: MotoServer) -> MotoServer:
    """The same two artifacts pushed by the CLI to the S3 server: byte for byte the file remote's objects."""
    client = s3_client(moto_server.endpoint)
    bucket = new_bucket(client)
    env = {**_aws_env(), "KILN_HOME": str(goods.home)}
    r = kiln_remote(f"s3://{bucket}/{PREFIX}?endpoint={moto_server.endpoint}", "push", "--all", env=env)
    assert r.returncode == 0, r.stderr
    pushed = {o: client.get_object(Bucket=bucket, Key=f"{PREFIX}/{o}")["Body"].read() for o in goods.layout.objects}
    assert pushed == goods.layout.objects
    return moto_server


def _aws_env() -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "kiln-test-key", "AWS_SECRET_ACCESS_KEY": "kiln-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


# --------------------------------------------------------------------------- the remote, raw


class FileRaw:
    """A filesystem remote, read and changed with os calls (never opening what is not a regular file)."""

    kind = "file"

    def __init__(self, root: Path, outside: Path) -> None:
        self.root, self.outside = root, outside
        self.url = str(root)

    def path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def apply(self, op: Op) -> None:
        if isinstance(op, Outside):
            p = self.outside / op.name
            if op.data is None:
                p.mkdir(parents=True, exist_ok=True)
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(op.data)
            return
        p = self.path(op.key)
        if os.path.lexists(p):  # whatever was there (a FIFO must never be opened for writing)
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        if isinstance(op, Remove):
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(op, Put):
            p.write_bytes(op.data)
        elif isinstance(op, Fifo):
            os.mkfifo(p)
        elif isinstance(op, MkDir):
            p.mkdir()
        elif isinstance(op, Link):
            t = op.target
            target = (self.outside / t[9:] if t.startswith("@outside/") else self.outside / "no-such-file"
                      if t == "@dangling" else self.root / t[8:] if t.startswith("@remote/") else Path(t))
            p.symlink_to(target)

    def snapshot(self) -> dict[str, tuple]:
        return snapshot(self.root, set())

    def keys(self) -> list[str]:
        """Object keys as a listing sees them: files and links to files, no descent into linked directories."""
        out = []
        for d, _dirs, files in os.walk(self.root):
            out += [(Path(d) / n).relative_to(self.root).as_posix() for n in files]
        return out

    def read_regular(self, key: str) -> bytes | None:
        p = self.path(key)
        try:
            st = os.stat(p)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size > 64 << 20:
            return None
        return p.read_bytes()


class S3Raw:
    kind = "s3"

    def __init__(self, server: MotoServer) -> None:
        self.client = s3_client(server.endpoint)
        self.bucket = new_bucket(self.client)
        self.url = f"s3://{self.bucket}/{PREFIX}?endpoint={server.endpoint}&timeout=5"
        # Objects outside the prefix: nothing Kiln does may touch them.
        self.client.put_object(Bucket=self.bucket, Key="kiln/other/blobs/sha256/" + "0" * 64, Body=b"not yours")
        self.client.put_object(Bucket=self.bucket, Key="sentinel.txt", Body=b"not yours either")

    def apply(self, op: Op) -> None:
        if isinstance(op, Put):
            self.client.put_object(Bucket=self.bucket, Key=f"{PREFIX}/{op.key}", Body=op.data)
        elif isinstance(op, Remove):
            self.client.delete_object(Bucket=self.bucket, Key=f"{PREFIX}/{op.key}")
        else:
            raise AssertionError(f"{op} cannot exist on S3")

    def snapshot(self) -> dict[str, tuple]:
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for o in page.get("Contents", []):
                key = o["Key"][len(PREFIX) + 1:] if o["Key"].startswith(PREFIX + "/") else "(outside prefix) " + o["Key"]
                out[key] = (o["Size"], o["ETag"], o["LastModified"].isoformat())
        return out

    def keys(self) -> list[str]:
        return [k for k in self.snapshot() if not k.startswith("(outside")]

    def read_regular(self, key: str) -> bytes | None:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=f"{PREFIX}/{key}")["Body"].read())
        except Exception:
            return None


Raw = FileRaw | S3Raw


# --------------------------------------------------------------------------- observing the sandbox


def snapshot(root: Path, skip: set[Path]) -> dict[str, tuple]:
    """Every path under ``root`` (links not followed, FIFOs never opened) with what identifies its content."""
    out: dict[str, tuple] = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [n for n in dirs if Path(d) / n not in skip]
        for name in dirs + files:
            p = Path(d) / name
            if p in skip:
                continue
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            rel = p.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode)
            else:
                out[rel] = ("special", stat.S_IFMT(st.st_mode), st.st_mode)
    return out


def diff(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    out = [f"{k} created" for k in sorted(after.keys() - before.keys())]
    out += [f"{k} removed" for k in sorted(before.keys() - after.keys())]
    out += [f"{k} changed" for k in sorted(before.keys() & after.keys()) if before[k] != after[k]]
    return out


def _bytes_under(paths: list[Path]) -> int:
    total = 0
    for root in paths:
        for d, _dirs, files in os.walk(root):
            for n in files:
                try:
                    total += os.lstat(Path(d) / n).st_size
                except FileNotFoundError:
                    pass
    return total


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _lenient_json(data: bytes | None) -> Any:
    try:
        return json.loads(data) if data is not None else None
    except Exception:  # RecursionError, UnicodeDecodeError, ValueError (5000-digit numbers)…
        return None


def referenced_leniently(raw: Raw) -> set[str]:
    """Every blob an index entry on the remote may reference: its manifest (if the entry names
    one) and what that manifest names. gc must never delete one of these."""
    refs: set[str] = set()
    for k in raw.keys():
        if not (k.startswith("index/") and k.endswith(".json")) or k.rsplit("/", 1)[-1].startswith("."):
            continue
        entry = _lenient_json(raw.read_regular(k))
        if not (isinstance(entry, dict) and isinstance(entry.get("manifest"), str) and _DIGEST.match(entry["manifest"])):
            continue
        mkey = blob_key(entry["manifest"])
        refs.add(mkey)
        m = _lenient_json(raw.read_regular(mkey))
        if not isinstance(m, dict):
            continue
        descs = [m.get("config")] + (m.get("layers") if isinstance(m.get("layers"), list) else [])
        refs.update(blob_key(d["digest"]) for d in descs
                    if isinstance(d, dict) and isinstance(d.get("digest"), str) and _DIGEST.match(d["digest"]))
    return refs


# --------------------------------------------------------------------------- running a command


@dataclass
class Outcome:
    rc: int | None  # None: killed (hang or unbounded write)
    stdout: str
    stderr: str
    killed: str | None = None


def run_kiln_bounded(args: list[str], env: dict[str, str], watch: list[Path]) -> Outcome:
    """The CLI in its own process group, killed at the deadline or once it has written WRITE_CAP bytes."""
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "KILN_")) or k in ("KILN_HOSTILE_SEED",)}
    full.update(env)
    proc = subprocess.Popen([sys.executable, "-m", "kiln.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=full, start_new_session=True)
    t0, killed = time.monotonic(), None
    while True:
        try:
            out, err = proc.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if time.monotonic() - t0 > DEADLINE:
                killed = f"hang: still running after {DEADLINE:g} s"
            elif (n := _bytes_under(watch)) > WRITE_CAP:
                killed = f"unbounded write: {n} bytes written under its store/DEST/TMPDIR"
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                break
    return Outcome(None if killed else proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), killed)


def output_problems(o: Outcome, allowed: set[int], as_json: bool, n_mutations: int) -> list[str]:
    if o.killed:
        return [o.killed + _tail(o.stderr)]
    out = []
    for stream, text in (("stderr", o.stderr), ("stdout", o.stdout)):
        if "Traceback" in text:
            tb = text[text.index("Traceback"):]
            out.append(f"traceback on {stream}: …{tb.strip().splitlines()[-1][:300]!r} ({len(tb.splitlines())} lines)")
    if o.rc not in allowed:
        out.append(f"exit {o.rc}, expected one of {sorted(allowed)}{_tail(o.stderr)}")
    lines = [line for line in o.stderr.splitlines() if line.strip()]
    stray = [line for line in lines if not line.startswith("kiln: ") and not _SUMMARY.match(line)]
    if stray and "Traceback" not in o.stderr:
        out.append(f"stderr line not in 'kiln: …' form: {stray[0][:200]!r}")
    if len(lines) > n_mutations + 20 or any(len(line) > 2000 for line in lines):
        longest = max(lines, key=len)
        out.append(f"stderr dump: {len(lines)} lines, longest {len(longest)} chars: {longest[:160]!r}…")
    if as_json and o.rc in (0, 1):
        try:
            json.loads(o.stdout)
        except ValueError:
            out.append(f"--json output is not JSON: {o.stdout[:200]!r}")
    return out


def _tail(text: str) -> str:
    return f" [stderr: {text.strip()[-400:]!r}]" if text.strip() else ""


# --------------------------------------------------------------------------- one case


class Case:
    def __init__(self, kind: str, number: int, goods: Goods, sandbox: Path, raw: Raw) -> None:
        self.seed = f"{BASE_SEED}:{kind}:{number}"
        self.goods, self.sandbox, self.raw = goods, sandbox, raw
        self.query, self.mutations = generate_case(self.seed, goods.layout, kind)
        self.rng = random.Random(self.seed + ":commands")
        self.problems: list[str] = []
        self.runs = 0
        env_dir = sandbox / "env"
        for d in ("tmp", "user", "hf"):
            (env_dir / d).mkdir(parents=True, exist_ok=True)
        self.env = {**_aws_env(), "TMPDIR": str(env_dir / "tmp"), "HOME": str(env_dir / "user"),
                    "HF_HOME": str(env_dir / "hf"), "HF_HUB_CACHE": str(env_dir / "hf" / "hub"), "HF_HUB_OFFLINE": "1",
                    "XDG_CACHE_HOME": str(env_dir / "user" / ".cache")}
        touched = set().union(*(m.touches for m in self.mutations))
        self.refused = set().union(*(m.refuse for m in self.mutations))
        self.intact = [a for a in goods.layout.artifacts if not a.object_keys() & touched]
        self.listing_broken = any(m.breaks_listing for m in self.mutations)

    def describe(self) -> str:
        q = self.query.name if self.query else "a miss (batch 3)"
        muts = "; ".join(m.label for m in self.mutations)
        return (f"seed {self.seed} (KILN_HOSTILE_SEED={BASE_SEED}), {self.raw.kind} remote, query {q}, "
                f"intact {[a.name for a in self.intact]}, mutations: {muts}")

    def problem(self, command: str, text: str) -> None:
        self.problems.append(f"[{command}] {text}")

    def run(self, name: str, args: list[str], *, allowed: set[int], home: Path | None = None,
            dest: Path | None = None, reader: bool = True) -> tuple[Outcome, Path]:
        """One command, checked for everything every command must hold; returns its outcome and home."""
        self.runs += 1
        run_dir = self.sandbox / "runs" / f"{self.runs:02d}-{name}"
        home = home or run_dir / "home"
        (run_dir / "deploy" / "sentinel").mkdir(parents=True, exist_ok=True)
        (run_dir / "deploy" / "sentinel" / "keep.txt").write_text("a neighbour of DEST\n")
        as_json = "--json" in args
        skip = {home, *([dest] if dest else []), self.sandbox / "remote"}
        before, remote_before = snapshot(self.sandbox, skip), self.raw.snapshot()
        model_before = snapshot(self.goods.model, set())
        o = run_kiln_bounded(["--remote", self.raw.url, *args], {**self.env, "KILN_HOME": str(home)},
                             [home, *([dest] if dest else []), self.sandbox / "env" / "tmp"])
        for p in output_problems(o, allowed, as_json, len(self.mutations)):
            self.problem(name, p)
        for p in diff(before, snapshot(self.sandbox, skip)) + diff(model_before, snapshot(self.goods.model, set())):
            self.problem(name, f"wrote outside its store and DEST: {p}")
        if reader:
            for p in diff(remote_before, self.raw.snapshot()):
                self.problem(name, f"a reader changed the remote: {p}")
        return o, home

    def query_args(self) -> list[str]:
        batch = {"A": 1, "B": 2}.get(self.query.name, 3) if self.query else 3
        return [str(self.goods.model), *spec_args(batch)] + (["--json"] if self.rng.random() < 0.5 else [])

    def check_hit(self, name: str, o: Outcome, dest: Path | None) -> None:
        if o.rc is None:
            return
        q = self.query
        if q is not None and q in self.intact and o.rc != 0:
            self.problem(name, f"artifact {q.name} is intact but was not served (exit {o.rc}){_tail(o.stderr)}")
        if o.rc == 0 and (q is None or q.name in self.refused):
            self.problem(name, f"served a wrong or refused artifact (exit 0): {o.stdout.strip()[:300]!r}")
        if dest is not None:
            if o.rc == 0 and q in self.intact and dest.is_dir() and tree(dest) != q.files:
                self.problem(name, f"DEST differs from artifact {q.name}: {sorted(tree(dest))}")
            if o.rc != 0 and os.path.lexists(dest):
                self.problem(name, f"exit {o.rc} but DEST exists: {sorted(os.listdir(dest)) if dest.is_dir() else 'a file'}")

    def published(self, home: Path) -> set[str]:
        return {p.stem for p in home.glob("index/*/*.json")}

    def readers(self) -> None:
        for name in ("lookup", "fetch", "ensure"):
            dest = self.sandbox / "runs" / f"{self.runs + 1:02d}-{name}" / "deploy" / "dest"
            args = [name, *self.query_args()] + (["--dest", str(dest)] if name != "lookup" else [])
            o, _ = self.run(name, args, allowed={0, 1, 2}, dest=dest if name != "lookup" else None)
            self.check_hit(name, o, dest if name != "lookup" else None)
        o, home = self.run("pull --all", ["pull", "--all"] + (["--json"] if self.rng.random() < 0.5 else []), allowed={0, 2})
        got = self.published(home)
        for a in self.goods.layout.artifacts:
            if a.name in self.refused and a.key in got:
                self.problem("pull --all", f"published artifact {a.name}, which a mutation made a lie")
            if o.rc is not None and a in self.intact and not self.listing_broken and a.key not in got:
                self.problem("pull --all", f"intact artifact {a.name} was not pulled (exit {o.rc}){_tail(o.stderr)}")
        if o.rc is not None:  # what a pull published locally must be a sound store
            self.run("ls (pulled store)", ["ls"], allowed={0}, home=home)
            self.run("verify (pulled store)", ["verify"], allowed={0}, home=home)
        o, _ = self.run("ls --remote", ["ls", "--remote"] + (["--json"] if self.rng.random() < 0.5 else []),
                        allowed={0, 2} if self.listing_broken else {0})
        if o.rc == 0:
            for a in self.intact:
                if a.key[:12] not in o.stdout:
                    self.problem("ls --remote", f"intact artifact {a.name} is not listed")

    def gc(self) -> None:
        orphan = b"an unreferenced, old blob: gc --grace 0s deletes it"
        okey = blob_key(sha(orphan))
        self.raw.apply(Put(okey, orphan))
        protected = referenced_leniently(self.raw) | set().union(*(a.object_keys() for a in self.intact))
        before = self.raw.snapshot()
        o, _ = self.run("gc --remote", ["gc", "--remote", "--grace", "0s"], allowed={0, 2}, reader=False)
        after = self.raw.snapshot()
        changes = diff(before, after)
        if o.rc == 2 and changes:
            self.problem("gc --remote", f"exit 2 but changed the remote: {changes[:5]}")
        for c in changes:
            key, what = c.rsplit(" ", 1)
            if what != "removed" or not key.startswith("blobs/"):
                self.problem("gc --remote", f"did more than delete blobs: {c}")
            elif key in protected:
                self.problem("gc --remote", f"deleted {key}, which an index entry references")
        if o.rc == 0 and okey in after:
            self.problem("gc --remote", "exit 0 but the old unreferenced blob is still there")

    def good_ones_still_work(self) -> None:
        if not self.intact:
            return
        keys = [arg for a in self.intact for arg in ("--key", a.key)]
        o, home = self.run("pull --key (intact)", ["pull", *keys], allowed={0})
        missing = {a.name for a in self.intact} - {a.name for a in self.intact if a.key in self.published(home)}
        if o.rc is not None and missing:
            self.problem("pull --key (intact)", f"intact artifacts {sorted(missing)} were not pulled")
        self.run("verify (intact)", ["verify"], allowed={0}, home=home)

    def check(self) -> None:
        for m in self.mutations:
            for op in m.ops:
                self.raw.apply(op)
        self.readers()
        self.gc()
        self.good_ones_still_work()
        if self.problems and REPORT:
            with open(REPORT, "a") as f:
                f.write(json.dumps({"seed": self.seed, "kind": self.raw.kind, "query": self.query.name if self.query else None,
                                    "intact": [a.name for a in self.intact], "mutations": [m.label for m in self.mutations],
                                    "problems": self.problems}) + "\n")
        assert not self.problems, self.describe() + "\n  " + "\n  ".join(self.problems)


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("case", range(N_FILE))
def test_hostile_file_remote(case: int, goods: Goods, tmp_path: Path) -> None:
    remote, outside = tmp_path / "remote", tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("a file outside the remote\n")
    for k, data in goods.layout.objects.items():
        p = remote.joinpath(*k.split("/"))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    Case("file", case, goods, tmp_path, FileRaw(remote, outside)).check()


@pytest.mark.parametrize("case", range(N_S3))
def test_hostile_s3_remote(case: int, goods: Goods, s3_pristine: MotoServer, tmp_path: Path) -> None:
    raw = S3Raw(s3_pristine)
    for k, data in goods.layout.objects.items():
        raw.apply(Put(k, data))
    Case("s3", case, goods, tmp_path, raw).check()


def test_generator_is_deterministic_and_covers_every_family(goods: Goods) -> None:
    """The same seed gives the same case (a failure reproduces); enough seeds reach every family."""
    first = [[m.label for m in generate_case(f"{BASE_SEED}:file:{i}", goods.layout, "file")[1]] for i in range(5)]
    again = [[m.label for m in generate_case(f"{BASE_SEED}:file:{i}", goods.layout, "file")[1]] for i in range(5)]
    assert first == again
    labels = " | ".join(m.label for kind in ("file", "s3") for i in range(80)
                        for m in generate_case(f"{BASE_SEED}:{kind}:{i}", goods.layout, kind)[1])
    for word in ("entry A", "entry B", "manifest of", "build record of", "blob ", "foreign", "FIFO".lower(),
                 "/dev/zero", "dangling", "S3 key oddity", "spec {}", "stored at", "deep"):
        assert word in labels, word
