"""Faults of the OCI remote against a real registry (Debian's docker-registry, CNCF distribution 2.8).

Every fault must end in a clear one-line message and an exit code, never a traceback, never an
endless wait, never bad bytes served, never a partial artifact published or materialised:

* blobs damaged in the registry's own storage on disk (same length, other bytes; truncated);
* `kiln push` SIGKILLed mid-push: the registry, read over its HTTP API without Kiln, never
  has a tag (or an index object) naming an artifact that is not all there;
* a registry that is down, one that accepts and never answers, one that trickles its
  headers, one that answers 5xx to everything (those three are stand-ins for a broken
  registry: small socket servers on loopback, named as such below), a repository name the
  distribution spec does not allow;
* hostile manifests written through the remote's own key space (raw ``put``), with paths
  that climb out of the destination, absolute paths, sizes that lie.

Registries a test damages are private to it (start_registry in tmp_path); the others use a
fresh repository of the session's registry.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from kiln.cache import Store
from kiln.cache.remotes import open_remote
from kiln.errors import RemoteError
from tests.conftest import run_kiln
from tests.remote.conftest import free_port, kiln_remote, store_put, tree, write_tree
from tests.remote.oci_registry import Registry, needs_registry, start_registry

pytestmark = needs_registry

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
FAKE_KEY = "0123456789abcdef" * 4  # a well-formed build key no store or registry holds


# --------------------------------------------------------------------------- helpers


def _files(seed: int | str, n: int = 3, size: int = 400_000) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {f"engine/part-{i}.bin": rng.randbytes(size + i * 4099) for i in range(n)}
    files["config.json"] = json.dumps({"seed": seed}).encode()
    return files


def _entry(key: str, home: Path | None = None) -> Any:
    """The local store's index entry of ``key`` (model hex, manifest digest)."""
    store = Store(home or Path(os.environ["KILN_HOME"]))
    [entry] = [e for e in store.iter_entries() if e.key == key]
    return entry


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _http(url: str, method: str = "GET", accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request to the registry without Kiln: (status, lower-case headers, body)."""
    req = urllib.request.Request(url, method=method, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, one `kiln: error:` line on stderr naming every needle, no traceback; returns the line."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiln: error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _local_keys(home: Path) -> list[str]:
    r = run_kiln("ls", "--json", env={"KILN_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    return [e["key"] for e in json.loads(r.stdout)]


def _no_downloads_left(home: Path) -> None:
    leftovers = [p for p in (home / "tmp").rglob("*") if p.is_file()] if (home / "tmp").exists() else []
    assert not leftovers, leftovers


@pytest.fixture
def private_registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry of this test alone: it is damaged or killed, so no other test shares its storage."""
    reg = start_registry(tmp_path / "registry")
    try:
        yield reg
    finally:
        reg.stop()


# --------------------------------------------------------------------------- 1. damaged storage


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "flip":
        mid = len(data) // 2
        flipped = bytes(b ^ 0xFF for b in data[mid:mid + 64])
        path.write_bytes(data[:mid] + flipped + data[mid + 64:])
        assert path.stat().st_size == len(data) and path.read_bytes() != data
    else:
        path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("victim", ["file", "record", "manifest"])
def test_blob_damaged_in_registry_storage_is_never_served(
    victim: str, how: str, private_registry: Registry, model: Path, tmp_path: Path
) -> None:
    """A blob changed on the registry's disk (distribution serves its files as they are)."""
    files = _files(seed=f"{victim}-{how}")  # content of its own per case
    key = store_put(write_tree(tmp_path / "art", files), model)
    url = private_registry.url("kiln/damaged")
    pushed = kiln_remote(url, "push", "--key", key)
    assert pushed.returncode == 0, pushed.stderr
    entry = _entry(key)
    manifest = Store(Path(os.environ["KILN_HOME"])).read_manifest(entry.manifest)
    digest = {"file": _sha(files["engine/part-1.bin"]), "record": manifest.config.digest,
              "manifest": entry.manifest}[victim]
    blob = private_registry.blob_file(digest)
    assert blob.is_file(), f"{blob} is not where distribution keeps {digest}"
    _damage(blob, how)
    status, _, served = _http(f"{private_registry.api('kiln/damaged')}/blobs/{digest}")
    assert status != 200 or _sha(served) != digest  # the registry now refuses it or serves other bytes

    home, dest = tmp_path / "deploy-store", tmp_path / "serving" / "engine"
    r = kiln_remote(url, "fetch", "--key", key, "--dest", str(dest), env={"KILN_HOME": str(home)}, timeout=60)
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    assert digest.split(":")[1] in r.stderr, r.stderr  # names the object (blobs/sha256/<hex>, or its digest)
    assert "refus" in r.stderr or "corrupt" in r.stderr or "incomplete" in r.stderr or "answered" in r.stderr, r.stderr
    assert not dest.exists()
    assert not (tmp_path / "serving").exists() or not any((tmp_path / "serving").iterdir())
    assert _local_keys(home) == []
    _no_downloads_left(home)
    # Nothing of the damaged blob became a local blob either.
    assert not Store(home).has_blob(digest)


# --------------------------------------------------------------------------- 2. SIGKILL mid-push


class RegistryState:
    """What a registry holds for one artifact, read over its HTTP API only (urllib, not Kiln)."""

    def __init__(self, reg: Registry, repository: str, entry: Any, manifest_bytes: bytes) -> None:
        self.api = reg.api(repository)
        self.entry = entry
        self.manifest_bytes = manifest_bytes
        self.manifest = json.loads(manifest_bytes)
        index_key = f"index/{entry.model_hex}/{entry.key}.json"
        self.object_tag = "k-" + hashlib.sha256(index_key.encode()).hexdigest()

    def blob_size(self, digest: str) -> int | None:
        status, headers, _ = _http(f"{self.api}/blobs/{digest}", "HEAD")
        assert status in (200, 404), (digest, status)
        return int(headers["content-length"]) if status == 200 else None

    def file_blobs_present(self) -> int:
        return sum(self.blob_size(layer["digest"]) is not None for layer in self.manifest["layers"])

    def check(self) -> bool:
        """Assert the invariant; return whether the artifact's tag exists."""
        status, headers, body = _http(f"{self.api}/manifests/{self.entry.key}", accept=MANIFEST)
        assert status in (200, 404), status
        tagged = status == 200
        if tagged:
            # The tag names this artifact's manifest, and everything that manifest names is there, whole.
            assert headers.get("docker-content-digest") == self.entry.manifest, headers
            assert _sha(body) == self.entry.manifest
            doc = json.loads(body)
            for desc in [doc["config"], *doc["layers"]]:
                assert self.blob_size(desc["digest"]) == desc["size"], f"tag {self.entry.key[:12]}: {desc} incomplete"
            # Kiln reads the manifest through its blob copy: that must be there too.
            assert self.blob_size(self.entry.manifest) == len(self.manifest_bytes)
        ostatus, _, obody = _http(f"{self.api}/manifests/{self.object_tag}", accept=MANIFEST)
        assert ostatus in (200, 404), ostatus
        if ostatus == 200:
            assert tagged, "the index object exists but the artifact's tag does not"
            layer = json.loads(obody)["layers"][0]
            assert self.blob_size(layer["digest"]) == layer["size"], "index object without its blob"
        return tagged

    def indexed(self) -> bool:
        """Whether the index object (what a lookup reads) is there."""
        return _http(f"{self.api}/manifests/{self.object_tag}", "HEAD", accept=MANIFEST)[0] == 200


def _calibrate(reg: Registry, repository: str, key: str, state: RegistryState, err: Path) -> tuple[float, float, float]:
    """One whole push, watched over the registry's API: seconds from its start to its first file
    blob, to its tag, and to its end (process start-up included)."""
    first = tagged = None
    with open(err, "wb") as f:
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "kiln.cli", "--remote", reg.url(repository), "push", "--key", key],
                                stdout=subprocess.DEVNULL, stderr=f, stdin=subprocess.DEVNULL)
        while proc.poll() is None:
            now = time.monotonic() - started
            if first is None and state.file_blobs_present():
                first = now
            if tagged is None and _http(f"{state.api}/manifests/{key}", "HEAD", accept=MANIFEST)[0] == 200:
                tagged = now
            time.sleep(0.01)
        end = time.monotonic() - started
    assert proc.returncode == 0, err.read_text()
    assert state.check()
    # A push so quick that the watcher missed a step: its window is the whole push.
    return first if first is not None else 0.0, tagged if tagged is not None else end, end


def test_sigkilled_push_never_tags_an_incomplete_artifact(oci_registry: Registry, model: Path, tmp_path: Path) -> None:
    """`kiln push` SIGKILLed at moments spread over a push's transfer (measured first): after
    every kill the tag of the build key, if any, names a whole artifact, and the index object
    exists only with it. Killed pushes resume in the same repository until one gets its tag
    through; then the rounds start over in an empty one."""
    files = _files(seed=7, n=8, size=3 << 20)  # ~24 MiB in 8 blobs: the transfer is a good part of a push
    key = store_put(write_tree(tmp_path / "art", files), model)
    entry = _entry(key)
    manifest_bytes = Store(Path(os.environ["KILN_HOME"])).blob_path(entry.manifest).read_bytes()
    run = uuid.uuid4().hex[:10]

    def state_of(repository: str) -> RegistryState:
        return RegistryState(oci_registry, repository, entry, manifest_bytes)

    first, tagged_at, full = _calibrate(oci_registry, f"kiln/crash-{run}-full", key, state_of(f"kiln/crash-{run}-full"),
                                        tmp_path / "calibration.err")
    # Kill times: fractions of when the tag went up, around the transfer. The estimate follows
    # what the kills find (a kill after the tag: sooner; one before any blob: later), so the kills
    # keep landing mid-push when the machine gets busier or quieter.
    estimate = tagged_at
    fractions = [0.8, 0.95, 0.7, 0.9, 1.05, 0.85, 0.75, 1.0]

    kills = before_tag = mid_push = rounds = generation = 0
    repo = f"kiln/crash-{run}-{generation}"
    last_partial: str | None = None
    unfinished: set[str] = set()  # repositories whose last push was killed
    generation_fresh = True  # the repository holds nothing yet (a round that resumes skips the blobs already up)
    while kills < 8 or mid_push < 3:
        assert rounds < 40, (f"{kills} kills, {before_tag} before the tag, {mid_push} mid-transfer in {rounds} rounds "
                             f"(first blob at {first:.2f} s, tag at {tagged_at:.2f} s, end {full:.2f} s)")
        delay = fractions[rounds % len(fractions)] * estimate
        rounds += 1
        err = tmp_path / f"push-{rounds}.err"
        with open(err, "wb") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kiln.cli", "--remote", oci_registry.url(repo), "push", "--key", key],
                stdout=subprocess.DEVNULL, stderr=f, stdin=subprocess.DEVNULL)
            try:
                proc.wait(timeout=delay)
                killed = False
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                killed = proc.returncode == -signal.SIGKILL
        if not killed:
            assert proc.returncode == 0, err.read_text()
        state = state_of(repo)
        tagged = state.check()  # the invariant, after every kill
        present = state.file_blobs_present()
        if killed:
            unfinished.add(repo)
        else:
            unfinished.discard(repo)
        if killed:
            kills += 1
            if not tagged:
                before_tag += 1
                last_partial = repo
                if present:
                    mid_push += 1  # some file blobs up, no tag: killed while transferring
                elif generation_fresh:
                    estimate *= 1.05  # before any blob of a fresh push landed: kill later
        if tagged and (killed or generation_fresh):
            estimate *= 0.93  # the tag went up before the kill: kill sooner
        generation_fresh = False
        if tagged:  # that artifact is complete: the next rounds start from an empty repository
            generation += 1
            repo = f"kiln/crash-{run}-{generation}"
            generation_fresh = True
    assert before_tag >= 3 and mid_push >= 3
    print(f"\noci: {kills} kills ({before_tag} before the tag, {mid_push} mid-transfer) in {rounds} rounds; "
          f"first blob {first:.2f} s, tag {tagged_at:.2f} s, a whole push {full:.2f} s")

    # A later push completes what each killed one left (before its tag, or after it and before
    # the index object), and a fetch into an empty store reproduces the artifact.
    assert last_partial is not None
    for repository in sorted(unfinished | {last_partial}):
        done = kiln_remote(oci_registry.url(repository), "push", "--key", key)
        assert done.returncode == 0, done.stderr
        state = state_of(repository)
        assert state.check() and state.indexed(), repository
    home, dest = tmp_path / "fresh-store", tmp_path / "dest"
    fetched = kiln_remote(oci_registry.url(last_partial), "fetch", "--key", key, "--dest", str(dest),
                          env={"KILN_HOME": str(home)})
    assert fetched.returncode == 0, fetched.stderr
    assert tree(dest) == files
    assert run_kiln("verify", env={"KILN_HOME": str(home)}).returncode == 0
    assert _local_keys(home) == [key]


# --------------------------------------------------------------------------- 3. registry down


def test_registry_down_is_a_clear_bounded_error(model: Path, tmp_path: Path) -> None:
    key = store_put(write_tree(tmp_path / "art", _files(seed=3)), model)
    port = free_port()  # nothing listens there
    url = f"oci://127.0.0.1:{port}/x?plain-http=true"
    home, dest = tmp_path / "empty", tmp_path / "dest"
    r = kiln_remote(url, "fetch", "--key", FAKE_KEY, "--dest", str(dest), env={"KILN_HOME": str(home)}, timeout=60)
    _one_line_error(r, "cannot reach registry", f"127.0.0.1:{port}")
    assert not dest.exists() and _local_keys(home) == []
    r = kiln_remote(url, "push", "--key", key, timeout=60)
    _one_line_error(r, "cannot reach registry", f"127.0.0.1:{port}")


# --------------------------------------------------------------------------- 4. hung / trickling


class _StandInServer:
    """A stand-in for a broken registry: a TCP server on loopback whose ``serve(conn)`` misbehaves.

    Every connection gets its own thread; ``stop`` closes the listener and every connection.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.conns: list[socket.socket] = []
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.serve(conn)
        except OSError:
            pass

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stopped.set()
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


class SilentRegistry(_StandInServer):
    """Stand-in for a hung registry: accepts connections, reads nothing, never answers."""

    def serve(self, conn: socket.socket) -> None:
        self.stopped.wait()


class TricklingRegistry(_StandInServer):
    """Stand-in for a stalling registry: answers with a status line, then one header byte every 0.5 s, forever."""

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        conn.recv(65536)  # the request (its head, at least)
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Trickle: ")
        while not self.stopped.wait(0.5):
            conn.sendall(b"a")


@pytest.fixture
def stand_in(request: pytest.FixtureRequest) -> Iterator[_StandInServer]:
    server = request.param()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("stand_in", [SilentRegistry], indirect=True)
def test_hung_registry_ends_with_a_clear_message(stand_in: _StandInServer, model: Path, tmp_path: Path) -> None:
    url = f"oci://{stand_in.host}/kiln/x?plain-http=true&timeout=1&deadline=3"
    home, dest = tmp_path / "empty", tmp_path / "dest"
    r = kiln_remote(url, "fetch", "--key", FAKE_KEY, "--dest", str(dest), env={"KILN_HOME": str(home)}, timeout=60)
    line = _one_line_error(r, stand_in.host)
    assert "did not answer within 1 s" in line or "took longer than" in line, line
    assert stand_in.accepted >= 1  # it was this server that did not answer, not a refused connection
    assert not dest.exists() and _local_keys(home) == []
    key = store_put(write_tree(tmp_path / "art", _files(seed=4)), model)
    r = kiln_remote(url, "push", "--key", key, timeout=60)
    line = _one_line_error(r, stand_in.host)
    assert "did not answer within 1 s" in line or "took longer than" in line, line


@pytest.mark.parametrize("stand_in", [TricklingRegistry], indirect=True)
def test_trickling_registry_ends_by_the_deadline(stand_in: _StandInServer, tmp_path: Path) -> None:
    url = f"oci://{stand_in.host}/kiln/x?plain-http=true&timeout=1&deadline=3"
    home, dest = tmp_path / "empty", tmp_path / "dest"
    r = kiln_remote(url, "fetch", "--key", FAKE_KEY, "--dest", str(dest), env={"KILN_HOME": str(home)}, timeout=60)
    _one_line_error(r, stand_in.host, "took longer than 3 s")  # each byte came within the timeout: the deadline ended it
    assert not dest.exists() and _local_keys(home) == []


# --------------------------------------------------------------------------- 5. refusing registry


class RefusingRegistry(http.server.ThreadingHTTPServer):
    """Stand-in for a registry whose backend is down: every request gets ``status`` (and ``body``)."""

    daemon_threads = True

    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body, self.requests = status, body, 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                server: RefusingRegistry = self.server  # type: ignore[assignment]
                server.requests += 1
                n = int(self.headers.get("content-length") or 0)
                if n:
                    self.rfile.read(n)
                self.send_response(server.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(server.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(server.body)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


OCI_ERROR = json.dumps({"errors": [{"code": "UNKNOWN", "message": "storage backend unavailable", "detail": {}}]}).encode()


@pytest.mark.parametrize(("status", "body", "code"), [(503, b"", "503"), (500, OCI_ERROR, "UNKNOWN")],
                         ids=["503-empty", "500-oci-error-body"])
def test_refusing_registry_is_a_clear_error(status: int, body: bytes, code: str, model: Path, tmp_path: Path) -> None:
    server = RefusingRegistry(status, body)
    try:
        url = f"oci://{server.host}/kiln/x?plain-http=true&deadline=20"
        home, dest = tmp_path / "empty", tmp_path / "dest"
        r = kiln_remote(url, "fetch", "--key", FAKE_KEY, "--dest", str(dest), env={"KILN_HOME": str(home)}, timeout=60)
        _one_line_error(r, server.host, f"answered {status}", code)
        assert not dest.exists() and _local_keys(home) == []
        key = store_put(write_tree(tmp_path / "art", _files(seed=5)), model)
        r = kiln_remote(url, "push", "--key", key, timeout=60)
        _one_line_error(r, server.host, f"answered {status}", code)
        assert 2 <= server.requests <= 12, server.requests  # both commands asked; retries are bounded
    finally:
        server.shutdown()
        server.server_close()


def test_invalid_repository_name_is_refused_before_any_request(oci_registry: Registry, model: Path, tmp_path: Path) -> None:
    key = store_put(write_tree(tmp_path / "art", _files(seed=6)), model)
    bad = f"Kiln/Upper{uuid.uuid4().hex[:8]}"
    url = oci_registry.url(bad)
    home, dest = tmp_path / "empty", tmp_path / "dest"
    r = kiln_remote(url, "fetch", "--key", FAKE_KEY, "--dest", str(dest), env={"KILN_HOME": str(home)}, timeout=60)
    _one_line_error(r, repr(bad), "not a valid OCI repository name")
    r = kiln_remote(url, "push", "--key", key, timeout=60)
    _one_line_error(r, repr(bad), "not a valid OCI repository name")
    assert bad not in oci_registry.log_text() and bad.lower() not in oci_registry.log_text()  # no request went out
    assert not dest.exists()


def test_registry_with_deletes_disabled_refuses_clearly(model: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """distribution's default (storage.delete.enabled false, set here through its environment
    override): DELETE answers 405, and Kiln says so instead of reporting the object gone."""
    monkeypatch.setenv("REGISTRY_STORAGE_DELETE_ENABLED", "false")
    reg = start_registry(tmp_path / "registry")
    try:
        remote = open_remote(reg.url("kiln/nodelete"))
        data = b'{"record": 1}'
        remote.put("models/org/name.json", data)
        blob = "blobs/sha256/" + hashlib.sha256(data).hexdigest()
        for key, what in (("models/org/name.json", "object models/org/name.json"), (blob, "blob sha256:")):
            with pytest.raises(RemoteError, match="does not allow delete") as e:
                remote.delete(key)
            assert what in str(e.value) and reg.host in str(e.value), e.value
        assert remote.get("models/org/name.json", 1 << 10) == data  # still there, whole
        assert remote.stat(blob) == len(data)
        # ... and still listed: a refused delete gives the listing back.
        assert [i.key for i in remote.list("models/")] == ["models/org/name.json"]
    finally:
        reg.stop()


# --------------------------------------------------------------------------- 6. hostile manifests


HOSTILE = ["../evil", "/abs", "oversized", "huge"]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_manifest_in_the_registry_is_refused(hostile: str, oci_registry: Registry, model: Path,
                                                    tmp_path: Path) -> None:
    repository = f"kiln/hostile-{uuid.uuid4().hex[:12]}"
    oci_url = oci_registry.url(repository)
    files = _files(seed=8)
    key = store_put(write_tree(tmp_path / "art", files), model)
    assert kiln_remote(oci_url, "push", "--key", key).returncode == 0
    entry = _entry(key)
    remote = open_remote(oci_url)
    entry_key = f"index/{entry.model_hex}/{key}.json"
    good_entry = json.loads(remote.get(entry_key, 1 << 20) or b"null")
    assert good_entry["manifest"] == entry.manifest
    manifest = json.loads(remote.get("blobs/sha256/" + entry.manifest.split(":")[1], 1 << 20) or b"null")

    absolute = Path(f"/tmp/kiln-oci-evil-{uuid.uuid4().hex}")
    layer = manifest["layers"][0]
    if hostile == "../evil":
        layer["annotations"]["org.opencontainers.image.title"] = "../evil"
    elif hostile == "/abs":
        layer["annotations"]["org.opencontainers.image.title"] = str(absolute)
    elif hostile == "oversized":  # within Kiln's bounds, but not what the registry's blob holds
        layer["size"] = layer["size"] * 1000
    else:  # beyond any bound
        layer["size"] = 1 << 50
    data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    digest = _sha(data)
    remote.put("blobs/sha256/" + digest.split(":")[1], data)  # digest-correct: only the content is hostile
    hostile_entry = dict(good_entry, manifest=digest)
    if hostile == "oversized":
        hostile_entry["size"] = sum(layer["size"] for layer in manifest["layers"])  # an entry consistent with it
    remote.put(entry_key, json.dumps(hostile_entry).encode())
    assert json.loads(remote.get(entry_key, 1 << 20) or b"null")["manifest"] == digest  # the registry holds it
    status, headers, _ = _http(f"{oci_registry.api(repository)}/manifests/{key}", accept=MANIFEST)
    assert status == 200 and headers["docker-content-digest"] == digest  # the tag names the hostile manifest

    home = tmp_path / "deploy" / "store"
    dest = tmp_path / "deploy" / "a" / "b" / "engine"
    r = kiln_remote(oci_url, "fetch", "--key", key, "--dest", str(dest), env={"KILN_HOME": str(home)}, timeout=60)
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    if hostile in ("../evil", "/abs", "huge"):
        assert "unsafe" in r.stderr and digest in r.stderr, r.stderr
        if hostile != "huge":
            assert repr(layer["annotations"]["org.opencontainers.image.title"]) in r.stderr, r.stderr
    else:
        assert "refusing" in r.stderr and layer["digest"].split(":")[1] in r.stderr, r.stderr
    assert not dest.exists()
    assert not absolute.exists()
    assert not [p for p in tmp_path.rglob("evil*")], list(tmp_path.rglob("evil*"))
    assert _local_keys(home) == []
    _no_downloads_left(home)
    stored = sum(p.stat().st_size for p in home.rglob("*") if p.is_file()) if home.exists() else 0
    assert stored < 4 << 20, f"{stored} bytes landed in the deploying store"


def test_a_dropped_connection_on_a_read_is_tried_again(oci_registry: Registry, tmp_path: Path) -> None:
    """A stand-in proxy in front of the real registry drops the first connection (closes it
    unanswered), then forwards: an idempotent GET succeeds on its next attempt."""
    import socket
    import threading

    upstream = ("127.0.0.1", oci_registry.port)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    seen = [0]
    forwarded: list[socket.socket] = []  # closed at the end: a pipe only shuts its two ends down

    def pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while chunk := a.recv(65536):
                b.sendall(chunk)
        except OSError:
            pass
        finally:
            for s_ in (a, b):
                try:
                    s_.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            seen[0] += 1
            if seen[0] == 1:
                conn.close()  # dropped, unanswered
                continue
            up = socket.create_connection(upstream)
            forwarded.extend((conn, up))
            threading.Thread(target=pipe, args=(conn, up), daemon=True).start()
            threading.Thread(target=pipe, args=(up, conn), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        direct = open_remote(oci_registry.url("kiln/retry"))
        direct.put("models/org/r.json", b"{}")
        proxied = open_remote(f"oci://127.0.0.1:{port}/kiln/retry?plain-http=true")
        assert proxied.stat("blobs/sha256/" + hashlib.sha256(b"{}").hexdigest()) == 2
        assert seen[0] >= 2, "the first connection was dropped and a second one made"
    finally:
        listener.close()
        for s_ in forwarded:  # an unclosed one is a ResourceWarning when its pipe thread ends: an error
            s_.close()
