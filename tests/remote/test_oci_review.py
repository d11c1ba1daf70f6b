"""A hostile review of the OCI registry remote: each test here is one defect it found, now fixed.

They were written as strict xfails that demonstrated each defect (credentials sent to other
hosts, a redirect target's challenge answered, a lost listing missing a full-key lookup, gc's
grace counted from a first put, a file that looked like a manifest, manifests over the
registry's limit, bad ports and IPv6 hosts, registry text reaching the terminal raw, damaged,
deep or looping listings) and stay as regression tests.

The registry is always a real one (Debian's docker-registry, CNCF distribution 2.8, on
loopback). Where the defect needs behaviour a real registry does not produce — an upload
``Location`` on another host, a redirect to a storage host that asks for credentials, error
codes holding control characters, directory indexes nested a thousand deep — a small HTTP
server named ``StandIn…`` below plays that part, in front of the real registry where it can.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import random
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from kiln.cache import Store
from kiln.cache._sync import remote_gc
from kiln.cache.remotes import open_remote
from kiln.cache.remotes.oci import OCIRemote
from kiln.errors import RemoteError
from tests.conftest import run_kiln
from tests.remote.conftest import kiln_remote, store_put, tree, write_tree
from tests.remote.oci_registry import REGISTRY, Registry, bcrypt_hash, needs_registry, start_registry

pytestmark = needs_registry

USER = "review"
PASSWORD = "Review-s3cret-Pw-90b1"  # distinctive, so that finding it anywhere means something
CREDS = {"KILN_OCI_USERNAME": USER, "KILN_OCI_PASSWORD": PASSWORD}
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


# --------------------------------------------------------------------------- helpers


def _files(seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {"engine/model.bin": rng.randbytes(40_000), "config.json": json.dumps({"seed": seed}).encode()}


def _entry(key: str) -> Any:
    [e] = [e for e in Store(Path(os.environ["KILN_HOME"])).iter_entries() if e.key == key]
    return e


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiln: error: "), r.stderr[-3000:]
    return lines[0]


def _htpasswd_auth(workdir: Path) -> str:
    hashed = bcrypt_hash(PASSWORD)
    if hashed is None:
        pytest.skip("no bcrypt here for an htpasswd file")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "htpasswd").write_text(f"{USER}:{hashed}\n")
    return f"auth:\n  htpasswd:\n    realm: review\n    path: {workdir / 'htpasswd'}\n"


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A real registry that wants HTTP Basic credentials (htpasswd)."""
    work = tmp_path_factory.mktemp("review-basic")
    reg = start_registry(work, auth=_htpasswd_auth(work))
    yield reg
    reg.stop()


Tweak = Callable[[str, str, int, list, bytes], "tuple[int, list, bytes]"]


class StandInProxy:
    """Stand-in for a registry front end (a load balancer, a CDN, a registry with a separate
    upload host): forwards every request unchanged to a real registry, and lets a test rewrite
    the answer (``tweak``) to produce what the real registry never says by itself. Records every
    request it received, with its headers."""

    def __init__(self, upstream_port: int, tweak: Tweak | None = None) -> None:
        self.tweak, self.log = tweak, []  # log: (method, path, lower-case headers)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                outer.log.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    conn.request(self.command, self.path, body=body if self.command in ("PUT", "POST", "PATCH") else None,
                                 headers=headers)
                    resp = conn.getresponse()
                    status, rheaders, rbody = resp.status, resp.getheaders(), resp.read()
                finally:
                    conn.close()
                if outer.tweak is not None:
                    status, rheaders, rbody = outer.tweak(self.command, self.path, status, rheaders, rbody)
                self.send_response(status)
                length = None
                for k, v in rheaders:
                    if k.lower() == "content-length":
                        length = v
                    elif k.lower() not in ("connection", "transfer-encoding", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", length if self.command == "HEAD" and length else str(len(rbody)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(rbody)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.netloc = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def authorizations(self) -> list[str]:
        return [h["authorization"] for _, _, h in self.log if "authorization" in h]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class StandInServer:
    """Stand-in answering each request with ``answer(method, path, headers) -> (status, headers, body)``."""

    def __init__(self, answer: Callable[[str, str, dict], tuple[int, dict, bytes]], host: str = "127.0.0.1") -> None:
        self.log: list[tuple[str, str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                if n:
                    self.rfile.read(n)
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.log.append((self.command, self.path, headers))
                status, rheaders, body = answer(self.command, self.path, headers)
                self.send_response(status)
                for k, v in rheaders.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.netloc = f"{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- 1. credentials to other hosts


def test_upload_location_on_another_host_gets_no_registry_credentials(basic_registry: Registry,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    other = StandInProxy(basic_registry.port)  # "another host": forwards, and records what it was sent

    def to_other_host(method: str, path: str, status: int, headers: list, body: bytes) -> tuple[int, list, bytes]:
        if method == "POST" and "/blobs/uploads/" in path and status == 202:
            headers = [(k, f"http://{other.netloc}{v[v.index('/v2/'):]}" if k.lower() == "location" else v)
                       for k, v in headers]
        return status, headers, body

    front = StandInProxy(basic_registry.port, to_other_host)
    try:
        for k, v in CREDS.items():
            monkeypatch.setenv(k, v)
        remote = open_remote(f"oci://{front.netloc}/kiln/r{uuid.uuid4().hex[:10]}?plain-http=true&deadline=20")
        try:
            remote.put("models/acme/m/record.json", b'{"review": 1}')
        except RemoteError:
            pass  # refusing to upload there is fine; handing it the password is not
        assert other.log, "the upload never went to the other host: the test did not exercise the Location"
        assert BASIC not in other.authorizations(), "the registry password was sent to another host"
    finally:
        front.stop()
        other.stop()


def test_a_redirect_targets_challenge_does_not_get_the_registry_credentials(oci_registry: Registry, oci_url: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    open_remote(oci_url).put("models/acme/m/record.json", b'{"review": 2}')  # directly: anonymous registry
    storage = StandInServer(lambda m, p, h: (
        (200, {"content-type": "application/json"}, b'{"token": "storage-token"}') if p.startswith("/token")
        else (401, {"www-authenticate": f'Bearer realm="http://{storage.netloc}/token",service="storage"'}, b"")))

    def blobs_to_storage(method: str, path: str, status: int, headers: list, body: bytes) -> tuple[int, list, bytes]:
        if method == "GET" and "/blobs/sha256:" in path and status == 200:
            return 307, [("Location", f"http://{storage.netloc}/storage{path}")], b""
        return status, headers, body

    front = StandInProxy(oci_registry.port, blobs_to_storage)
    try:
        for k, v in CREDS.items():
            monkeypatch.setenv(k, v)
        repo = oci_url.split("/", 3)[3].split("?")[0]
        remote = open_remote(f"oci://{front.netloc}/{repo}?plain-http=true&deadline=20")
        try:
            list(remote.list("models/"))
        except RemoteError:
            pass
        assert any(p.startswith("/storage/") for _, p, _ in storage.log), "the redirect was not followed"
        sent = [h.get("authorization", "") for _, p, h in storage.log if p.startswith("/token")]
        assert BASIC not in sent, "the registry credentials went to the storage host's token realm"
    finally:
        front.stop()
        storage.stop()


# --------------------------------------------------------------------------- 2. exact key lookups and listings


def test_fetch_by_full_key_finds_an_artifact_whose_listing_was_lost(oci_url: str, model: Path, tmp_path: Path) -> None:
    files = _files(1)
    key = store_put(write_tree(tmp_path / "art", files), model)
    assert kiln_remote(oci_url, "push", "--key", key).returncode == 0
    e = _entry(key)
    # What a push SIGKILLed between the entry's tag and its directory index leaves (and what the README's
    # "two pushers at the very same instant" lost update leaves): the entry object without its listing.
    remote = open_remote(oci_url)
    assert isinstance(remote, OCIRemote)
    remote._update_directory(f"index/{e.model_hex}/", f"{key}.json", None)
    assert remote.get(f"index/{e.model_hex}/{key}.json", 1 << 20) is not None  # the entry itself is there
    dest = tmp_path / "dest"
    r = kiln_remote(oci_url, "fetch", "--key", key, "--dest", str(dest), env={"KILN_HOME": str(tmp_path / "wiped")})
    assert r.returncode == 0, r.stderr
    assert tree(dest) == files


def test_a_signature_put_again_is_young_for_remote_gc(oci_url: str) -> None:
    remote = open_remote(oci_url)
    assert remote is not None
    sig = f"signatures/{'ab' * 32}/{'cd' * 32}.sig"  # of a manifest no entry references (yet)
    remote.put(sig, b"signature bytes")
    time.sleep(2.0)
    remote.put(sig, b"signature bytes")  # a push of that artifact writes it again, then its entry
    plan = remote_gc(remote, grace_s=1.5)  # runs between the two: the signature is 0 s old
    assert sig not in [k for k, _ in plan.blobs]
    assert remote.get(sig, 1 << 20) == b"signature bytes"


# --------------------------------------------------------------------------- 3. manifest peeking


def test_a_file_that_is_a_kiln_manifest_does_not_break_the_push(oci_url: str, model: Path, tmp_path: Path) -> None:
    inner = store_put(write_tree(tmp_path / "inner", _files(2)), model)
    manifest_bytes = Store(Path(os.environ["KILN_HOME"])).blob_path(_entry(inner).manifest).read_bytes()
    files = {"bundle/manifest.json": manifest_bytes, "engine/model.bin": b"x" * 1000}
    key = store_put(write_tree(tmp_path / "outer", files), model, batch_size=2)
    r = kiln_remote(oci_url, "push", "--key", key)  # only this artifact: the inner one's blobs are not there
    assert r.returncode == 0, r.stderr
    dest = tmp_path / "dest"
    assert kiln_remote(oci_url, "fetch", "--key", key, "--dest", str(dest),
                       env={"KILN_HOME": str(tmp_path / "wiped")}).returncode == 0
    assert tree(dest) == files


def test_a_manifest_over_4_mib_is_pushed_or_refused_for_its_size(oci_url: str, tmp_path: Path) -> None:
    """What `kiln push` sends for an artifact of ~3,800 files with long paths (or ~20,000 with short ones;
    MAX_FILES is 100,000): its blobs, the build record, the manifest, the entry — through the Remote
    interface, as push calls it (a store holding 3,800 files takes 30 s to build here)."""
    remote = open_remote(oci_url)
    assert remote is not None
    data, record = b"same", json.dumps({"record": 1}).encode()
    digest, record_digest = ("sha256:" + hashlib.sha256(b).hexdigest() for b in (data, record))
    remote.put("blobs/sha256/" + digest[7:], data)
    remote.put("blobs/sha256/" + record_digest[7:], record)
    seg = "d" * 240
    layers = [{"mediaType": "application/octet-stream", "digest": digest, "size": len(data),
               "annotations": {"org.opencontainers.image.title": f"{seg}/{seg}/{seg}/{i:05d}-{'f' * 200}.bin"}}
              for i in range(3800)]
    key = "ef" * 32
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "artifactType": "application/vnd.kiln.artifact.v1",
                           "config": {"mediaType": "application/vnd.kiln.build-record.v1+json", "digest": record_digest,
                                      "size": len(record)},
                           "layers": layers, "annotations": {"dev.kiln.key": key}},
                          sort_keys=True, separators=(",", ":")).encode()
    assert 4 << 20 < len(manifest) < 16 << 20
    mdigest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    path = tmp_path / "manifest.json"
    path.write_bytes(manifest)
    with pytest.raises(RemoteError, match="cannot be stored as a manifest"):
        remote.upload_manifest(path, "blobs/sha256/" + mdigest[7:])


def test_a_push_whose_manifest_is_over_the_registry_limit_is_refused_before_a_byte_moves(
        oci_registry: Registry, oci_url: str, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit lowered in-process stands in for an artifact of thousands of files (30 s to store here)."""
    from kiln import api

    files = _files(5)
    key = store_put(write_tree(tmp_path / "art", files), model)
    monkeypatch.setattr(OCIRemote, "max_manifest_bytes", 100)
    store = api.Store()
    entry = next(e for e in store.iter_entries() if e.key == key)
    with pytest.raises(RemoteError, match=r"manifest is \d+ bytes .* over the 0 MiB"):
        api.push(store, open_remote(oci_url), entry)
    repo = oci_url.split("://", 1)[1].split("/", 1)[1].split("?")[0]
    for data in files.values():  # not one file was uploaded
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        req = urllib.request.Request(f"{oci_registry.api(repo)}/blobs/{d}", method="HEAD")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(req, timeout=10)


# --------------------------------------------------------------------------- 4. URLs


@pytest.mark.parametrize("url", ["oci://registry.example:abc/kiln/x", "oci://registry.example:99999/kiln/x"])
def test_a_bad_port_is_a_one_line_error(url: str) -> None:
    r = run_kiln("--remote", url, "ls", "--remote")
    _one_line_error(r)


def _start_registry_v6(workdir: Path, auth: str = "") -> tuple[subprocess.Popen, int]:
    assert REGISTRY is not None
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = int(s.getsockname()[1])
    (workdir / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: info\n"
        f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'data'}\n  delete:\n    enabled: true\n"
        f'http:\n  addr: "[::1]:{port}"\n' + auth)
    with open(workdir / "registry.log", "wb") as out:
        proc = subprocess.Popen([REGISTRY, "serve", str(workdir / "config.yml")], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("::1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    pytest.skip("docker-registry did not start on [::1] (no IPv6 loopback here?)")


def test_ipv6_registry_urls(tmp_path: Path) -> None:
    work = tmp_path / "v6"
    proc, port = _start_registry_v6(work, _htpasswd_auth(work))
    try:
        config = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps({"auths": {f"[::1]:{port}": {
            "auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))
        problems = []
        remote = open_remote(f"oci://[::1]:{port}/kiln/v6?plain-http=true&deadline=20")
        assert remote is not None
        if remote.describe() != f"oci://[::1]:{port}/kiln/v6" or remote.origin() != f"oci://[::1]:{port}/kiln/v6":
            problems.append(f"describe {remote.describe()}, origin {remote.origin()}")
        try:
            remote.put("models/acme/m/record.json", b'{"v6": true}')  # needs the docker config's credentials
            assert remote.get("models/acme/m/record.json", 100) == b'{"v6": true}'
        except RemoteError as e:
            problems.append(f"docker config credentials for [::1]:{port}: {e}")
        portless = open_remote("oci://[::1]/kiln/v6?plain-http=true&timeout=2&deadline=4")
        assert portless is not None
        try:
            portless.stat("models/acme/m/record.json")  # port 80: nothing (or no registry) there
        except RemoteError as e:
            if "Name or service not known" in str(e) or "gaierror" in str(e):
                problems.append(f"oci://[::1]/…: {e}")
        assert not problems, problems
    finally:
        proc.terminate()
        proc.wait(10)


# --------------------------------------------------------------------------- 5. hostile answers, printed


def test_registry_error_codes_cannot_inject_lines_or_escapes(tmp_path: Path) -> None:
    # (click strips ANSI escapes when stderr is not a terminal, as here; on a terminal they are printed too)
    evil = json.dumps({"errors": [{"code": "DENIED\nkiln: pushed 3 artifacts, all verified\r"}]}).encode()
    standin = StandInServer(lambda m, p, h: (400, {"content-type": "application/json"}, evil))
    try:
        r = kiln_remote(f"oci://{standin.netloc}/kiln/x?plain-http=true&deadline=10", "ls", "--remote",
                        env={"KILN_HOME": str(tmp_path / "home")})
        line = _one_line_error(r)
        assert "\r" not in line, repr(line)
    finally:
        standin.stop()


def test_directory_index_with_a_bad_size_is_refused_not_a_traceback(oci_url: str, tmp_path: Path) -> None:
    remote = open_remote(oci_url)
    assert isinstance(remote, OCIRemote)
    model_hex, key = "ab" * 32, "cd" * 32
    # Planted through the registry's own API (Kiln's writer of directory indexes, with hostile values).
    remote._write_directory("index/", {f"{model_hex}/": {"size": 0, "added": 0}})
    remote._write_directory(f"index/{model_hex}/", {f"{key}.json": {"size": "1 KiB", "added": "yesterday"}})
    r = kiln_remote(oci_url, "ls", "--remote", env={"KILN_HOME": str(tmp_path / "home")})
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.returncode in (0, 2), r.stderr


def _directory_chain(depth: int) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Directory indexes index/ → index/a/ → index/a/a/ …,
    each listing the next: (tag → manifest, digest → blob)."""
    empty = b"{}"
    manifests, blobs = {}, {"sha256:" + hashlib.sha256(empty).hexdigest(): empty}
    directory = "index/"
    for _ in range(depth):
        body = json.dumps({"directory": directory, "entries": {"a/": {"size": 0, "added": 0}}},
                          sort_keys=True, separators=(",", ":")).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        blobs[digest] = body
        doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
               "artifactType": "application/vnd.kiln.directory.v1+json",
               "config": {"mediaType": "application/vnd.kiln.directory.v1+json", "digest": digest, "size": len(body)},
               "layers": [{"mediaType": "application/vnd.oci.empty.v1+json",
                           "digest": "sha256:" + hashlib.sha256(empty).hexdigest(), "size": 2}]}
        manifests[OCIRemote.directory_tag(directory)] = json.dumps(doc).encode()
        directory += "a/"
    return manifests, blobs


def test_deeply_nested_directory_indexes_are_bounded(tmp_path: Path) -> None:
    manifests, blobs = _directory_chain(1000)

    def answer(method: str, path: str, headers: dict) -> tuple[int, dict, bytes]:
        ref = path.split("?")[0].rsplit("/", 1)[-1]
        if "/manifests/" in path and ref in manifests:
            return 200, {"content-type": "application/vnd.oci.image.manifest.v1+json"}, manifests[ref]
        if "/blobs/" in path and ref in blobs:
            return 200, {"content-type": "application/octet-stream"}, blobs[ref]
        return 404, {"content-type": "application/json"}, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}'

    standin = StandInServer(answer)  # stand-in: the same indexes could be pushed to a real registry, 3000 requests slower
    try:
        r = kiln_remote(f"oci://{standin.netloc}/kiln/x?plain-http=true&deadline=10", "ls", "--remote",
                        env={"KILN_HOME": str(tmp_path / "home")}, timeout=120)
        assert "Traceback" not in r.stderr, r.stderr[-1500:]
        assert r.returncode in (0, 2), r.stderr[-1500:]
    finally:
        standin.stop()


def test_a_tag_list_link_that_loops_is_not_followed_thousands_of_times() -> None:
    pages = []

    def answer(method: str, path: str, headers: dict) -> tuple[int, dict, bytes]:
        if "/tags/list" in path:
            pages.append(path)
            return 200, {"content-type": "application/json",
                         "link": '</v2/kiln/x/tags/list?n=1000&last=latest>; rel="next"'}, \
                b'{"name":"kiln/x","tags":["latest"]}'
        return 404, {"content-type": "application/json"}, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}'

    standin = StandInServer(answer)  # stand-in: distribution's own Link always moves on
    try:
        remote = open_remote(f"oci://{standin.netloc}/kiln/x?plain-http=true&deadline=10")
        assert remote is not None
        done = threading.Event()

        def gc() -> None:
            try:
                remote_gc(remote, grace_s=0)
            except RemoteError:
                pass
            finally:
                done.set()

        threading.Thread(target=gc, daemon=True).start()
        done.wait(3)
        assert len(pages) <= 100, f"{len(pages)} requests for the same tag-list page (and counting)"
        assert done.is_set()
    finally:
        standin.stop()  # the rest of a runaway walk ends in connection errors
