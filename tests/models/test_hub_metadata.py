"""Hub ids resolved online from the Hub's file metadata: the snapshot's digest, without its weights.

Everything runs against ``StandInHub``, a stand-in for the Hugging Face Hub on 127.0.0.1 (not the
real Hub): it serves the API calls and downloads that huggingface_hub makes — revision info
``/api/models/{repo}/revision/{rev}``, the tree listing ``/api/models/{repo}/tree/{rev}`` and
``/{repo}/resolve/{rev}/{path}`` (HEAD and GET; a GET of an LFS file redirects to a stand-in CDN
path, as the real Hub's do, and both answer Range requests with 206 and Content-Range) — for a tiny
model whose files the test writes (real safetensors files, written by hand), and logs every
request with its Range header. The CLI runs in subprocesses with HF_ENDPOINT pointing at it (huggingface_hub
reads its settings at import), HF_HUB_OFFLINE unset, and an HF cache in tmp.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote, urlparse

import pytest

from kiln.cache import Store
from kiln.models._architecture import signature_of
from kiln.models._safetensors import MAX_HEADER_BYTES

from ..conftest import LLAMA_CONFIG, run_kiln

REPO_ID = "acme/tiny"
COMMIT = "c0ffee" + "0" * 34
AOTI = ["--target", "torch-aoti", "--n-positions", "64"]
LFS = (".safetensors", ".bin")


Tensors = dict[str, tuple[str, list[int]]]  # name → (safetensors dtype, shape)
_BYTES_PER = {"F32": 4, "BF16": 2, "F16": 2, "I64": 8}
TENSORS: Tensors = {
    "model.embed_tokens.weight": ("BF16", [512, 64]),
    "model.layers.0.self_attn.q_proj.weight": ("BF16", [64, 64]),
    "model.layers.0.self_attn.k_proj.weight": ("BF16", [32, 64]),
    "model.layers.0.input_layernorm.weight": ("F32", [64]),
    "model.norm.weight": ("F32", [64]),
    "lm_head.weight": ("BF16", [512, 64]),
}


def safetensors_file(tensors: Tensors, seed: bytes = b"weights") -> bytes:
    """A real safetensors file, written by hand as the format says (safetensors README "Format"): the
    8-byte header length, the JSON header (padded with spaces to 8 bytes, as the library pads it),
    then each tensor's bytes in order (deterministic, never all zeros)."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = _BYTES_PER[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    data = (hashlib.sha256(seed).digest() * (offset // 32 + 1))[:offset]
    return len(raw).to_bytes(8, "little") + raw + data


def header_end(data: bytes) -> int:
    """8 + the header length of a safetensors file: the first byte of tensor data."""
    return 8 + int.from_bytes(data[:8], "little")


def expected_signature(*tables: Tensors) -> dict:
    """The signature Kiln must report for these tensors (computed here from the table the test wrote)."""
    return signature_of({k: (d, tuple(s)) for k, (d, s) in t.items()} for t in tables).to_json()


def _files() -> dict[str, bytes]:
    return {
        "config.json": json.dumps(LLAMA_CONFIG).encode(),
        "generation_config.json": b'{"bos_token_id": 1}',
        "tokenizer.json": b'{"version": "1.0"}',
        "tokenizer_config.json": b'{"model_max_length": 64}',
        "model.safetensors": safetensors_file(TENSORS),
        # not loaded (model.safetensors is, and no index names it): counted in the digest, never in the signature
        "extra/model-00002.safetensors": safetensors_file({"other.weight": ("F32", [8])}, b"extra"),
        "README.md": b"docs never change an engine\n",
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "original/consolidated.pth": b"ignored duplicate",
    }


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Request:
    """One request the stand-in Hub answered: method, path (query included) and its Range header."""

    method: str
    path: str
    range: str | None

    @property
    def file(self) -> str:
        """The request's path without its query (unquoted)."""
        return unquote(urlparse(self.path).path)


_RANGE = re.compile(r"bytes=(\d+)-(\d*)\Z")
CDN = "/cdn-stand-in/"  # where a GET of an LFS file redirects (the real Hub redirects to its CDN)


class StandInHub(http.server.ThreadingHTTPServer):
    """A stand-in for the Hub: one repository at one commit (branch ``main``), a request log.

    ``no_sha256`` lists LFS files whose tree entry has no sha256 (``lfs`` without ``oid``);
    ``claimed_sizes`` overrides the size the listing gives for a file; ``lfs_paths`` are LFS files
    besides *.safetensors and *.bin. ``ignore_range`` makes it answer every GET with the whole file
    (200, as a server without Range support does), written in pieces: ``answered`` records, for each
    file so answered, the bytes the socket took and whether the client hung up before the end.
    ``range_status`` answers every Range request with that HTTP status instead. ``lie_in_ranges``
    maps a file to other bytes (of the same size) that Range requests are answered from: a source
    whose header reads say another header than the file it serves in full.
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.requests: list[Request] = []
        self.no_sha256: set[str] = set()
        self.claimed_sizes: dict[str, int] = {}
        self.lfs_paths: set[str] = set()
        self.commit_answer: object = COMMIT  # what the revision API says the commit is
        self.next_link: str | None = None  # a Link rel="next" URL on every tree page (a hostile Hub's loop)
        self.ignore_range = False
        self.range_status: int | None = None
        self.lie_in_ranges: dict[str, bytes] = {}
        self.answered: dict[str, tuple[int, bool]] = {}  # file → (bytes written, cut off) of a 200 answer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS) or path in self.lfs_paths

    def tree(self) -> list[dict]:
        out = []
        for path, data in sorted(self.files.items()):
            size = self.claimed_sizes.get(path, len(data))
            entry: dict = {"type": "file", "path": path, "size": size, "oid": _git_sha1(data)}
            if self.is_lfs(path):
                entry["oid"] = hashlib.sha1(path.encode()).hexdigest()  # the pointer's blob, not the content's
                entry["lfs"] = {"size": size, "pointerSize": 134}
                if path not in self.no_sha256:
                    entry["lfs"]["oid"] = hashlib.sha256(data).hexdigest()
            out.append(entry)
        dirs = sorted({p.rsplit("/", 1)[0] for p in self.files if "/" in p})
        return out + [{"type": "directory", "path": d, "size": 0, "oid": "d" * 40} for d in dirs]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: StandInHub
    protocol_version = "HTTP/1.1"  # keep-alive, as the real Hub: a client that stops reading must close

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: object) -> None:
        self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _error(self, code: str) -> None:
        self._send(404, b'{"error": "not found"}', {"X-Error-Code": code, "Content-Type": "application/json"})

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.server.requests.append(Request(self.command, self.path, self.headers.get("Range")))
        path = unquote(urlparse(self.path).path)
        api = f"/api/models/{REPO_ID}/"
        if path.startswith("/api/models/"):
            if not path.startswith(api):
                return self._error("RepoNotFound")
            kind, _, rest = path[len(api):].partition("/")
            rev = rest.split("/", 1)[0]
            if rev not in ("main", COMMIT):
                return self._error("RevisionNotFound")
            if kind == "revision":
                return self._json({"id": REPO_ID, "sha": self.server.commit_answer, "private": False,
                                   "siblings": [{"rfilename": p} for p in sorted(self.server.files)]})
            if kind == "tree":
                if self.server.next_link is not None:
                    body = json.dumps(self.server.tree()).encode()
                    return self._send(200, body, {"Content-Type": "application/json",
                                                  "Link": f'<{self.server.url}{self.server.next_link}>; rel="next"'})
                return self._json(self.server.tree())
            return self._error("EntryNotFound")
        if path.startswith(CDN):
            data = self.server.files.get(path[len(CDN):])
            return self._error("EntryNotFound") if data is None else self._content(path[len(CDN):], data, {})
        prefix = f"/{REPO_ID}/resolve/"
        if not path.startswith(prefix):
            return self._error("RepoNotFound")
        rev, _, name = path[len(prefix):].partition("/")
        if rev not in ("main", COMMIT):
            return self._error("RevisionNotFound")
        data = self.server.files.get(name)
        if data is None:
            return self._error("EntryNotFound")
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{_git_sha1(data)}"'}
        if self.server.is_lfs(name):
            headers.update({"X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Linked-Size": str(len(data))})
            if self.command == "GET":  # the real Hub: 302 to its CDN (HEAD answers with the metadata)
                return self._send(302, b"", {**headers, "Location": CDN + quote(name)})
        self._content(name, data, headers)

    def _content(self, name: str, data: bytes, headers: dict[str, str]) -> None:
        """A file's bytes, or the range asked of them (206, Content-Range), as the Hub and its CDN answer."""
        asked = self.headers.get("Range")
        if asked is None or self.command == "HEAD" or self.server.ignore_range:
            return self._whole(name, data, headers) if self.command == "GET" else self._send(200, data, headers)
        if self.server.range_status is not None:
            return self._send(self.server.range_status, b"server error", {"Content-Type": "text/plain"})
        data = self.server.lie_in_ranges.get(name, data)
        m = _RANGE.match(asked)
        first = int(m.group(1)) if m else len(data)
        last = min(int(m.group(2) or len(data) - 1), len(data) - 1) if m else 0
        if first > last:
            return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        self._send(206, data[first:last + 1], {**headers, "Content-Range": f"bytes {first}-{last}/{len(data)}"})

    def _whole(self, name: str, data: bytes, headers: dict[str, str]) -> None:
        """200 with the whole file, in pieces, counting what the socket took until the client hangs up."""
        self.send_response(200)
        for k, v in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(k, v)
        self.end_headers()
        piece = 1 << 20
        sent, cut_off = 0, False
        try:
            for i in range(0, len(data), piece):
                self.wfile.write(data[i:i + piece])
                sent += len(data[i:i + piece])
        except (BrokenPipeError, ConnectionResetError):
            cut_off = True
            self.close_connection = True
        self.server.answered[name] = (sent, cut_off)

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub() -> Iterator[StandInHub]:
    server = StandInHub(_files())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _env(hub: StandInHub, hf: Path, *, offline: bool = False) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(hf), "HF_HUB_CACHE": str(hf / "hub"),
            "HF_HUB_OFFLINE": "1" if offline else "0", "TRANSFORMERS_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "5",
            "HF_HUB_DISABLE_XET": "1"}


def _key(ref: str, env: dict[str, str]) -> dict:
    """``kiln key`` and ``kiln lookup`` (a miss: the store is empty) of ``ref``: the key, the model's digest and commit."""
    r = run_kiln("key", ref, *AOTI, "--json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    miss = run_kiln("lookup", ref, *AOTI, "--json", env=env)
    assert miss.returncode == 1 and "Traceback" not in miss.stderr, miss.stdout + miss.stderr
    found = json.loads(miss.stdout)
    assert not found["hit"] and found["key"] == json.loads(r.stdout)["key"]
    return found


def _snapshot(hub: StandInHub, hf: Path) -> Path:
    """The old way: snapshot_download the whole repository (weights and all) into the cache at ``hf``."""
    code = ("import sys; from huggingface_hub import snapshot_download; "
            "print(snapshot_download(sys.argv[1], cache_dir=sys.argv[2], endpoint=sys.argv[3]))")
    r = subprocess.run([sys.executable, "-c", code, REPO_ID, str(hf / "hub"), hub.url], capture_output=True,
                       text=True, env={**os.environ, **_env(hub, hf)}, timeout=120)
    assert r.returncode == 0, r.stderr
    snap = Path(r.stdout.strip())
    assert all((snap / p).read_bytes() == data for p, data in hub.files.items())
    return snap


def _snapshot_key(hub: StandInHub, hf: Path) -> dict:
    """The old way: snapshot_download the whole repository, then key the cached snapshot offline."""
    _snapshot(hub, hf)
    return _key(REPO_ID, _env(hub, hf, offline=True))


_RESOLVE = """
import json, sys
from kiln.models import resolve_model
m = resolve_model(sys.argv[1])
print(json.dumps({"files_local": m.files_local, "tree_digest": m.tree_digest, "commit": m.commit,
                  "tensors": m.signature.to_json() if m.signature else None, "note": m.signature_note}))
"""


def _resolved(ref: str, env: dict[str, str]) -> dict:
    """``resolve_model(ref)`` in a fresh process (huggingface_hub reads its settings at import): what it says."""
    r = subprocess.run([sys.executable, "-c", _RESOLVE, ref], capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _repo_file(r: Request) -> str:
    """The repository file a /resolve/ or stand-in CDN request asks for ("" for an API call)."""
    resolve = f"/{REPO_ID}/resolve/"
    if r.file.startswith(resolve):
        return r.file[len(resolve):].partition("/")[2]
    return r.file[len(CDN):] if r.file.startswith(CDN) else ""


def _weight_requests(hub: StandInHub) -> list[Request]:
    return [r for r in hub.requests if _repo_file(r).endswith((".safetensors", ".pth", ".bin"))]


def _assert_only_headers_read(hub: StandInHub, weights: set[str]) -> None:
    """Every request for a weight file was a ranged GET ending inside its header (no tensor data byte
    asked for), and each of ``weights`` had its header read."""
    reads = _weight_requests(hub)
    for r in reads:
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", r.range or "")
        assert r.method == "GET" and m is not None, (r, hub.requests)
        assert int(m[2]) < header_end(hub.files[_repo_file(r)]), r
    assert {_repo_file(r) for r in reads} == weights, hub.requests
    for name in weights:  # the length, then the header: both asked
        asked = {r.range for r in reads if _repo_file(r) == name}
        assert asked == {"bytes=0-7", f"bytes=8-{header_end(hub.files[name]) - 1}"}, asked


def test_metadata_gives_the_snapshots_digest_signature_and_key_without_weights(hub: StandInHub,
                                                                               tmp_path: Path) -> None:
    meta_env = _env(hub, tmp_path / "hf-meta")
    online = _resolved(REPO_ID, meta_env)
    assert online["files_local"] is False  # resolved from metadata, not from a downloaded snapshot
    assert online["tensors"] == expected_signature(TENSORS) and online["note"] is None, online
    _assert_only_headers_read(hub, {"model.safetensors"})
    hub.requests.clear()
    full_env = _env(hub, tmp_path / "hf-full", offline=True)
    _snapshot(hub, tmp_path / "hf-full")
    assert [r for r in _weight_requests(hub) if r.range is None]  # the snapshot did download them: the log can tell
    full = _resolved(REPO_ID, full_env)
    assert full["files_local"] is True
    assert online["tensors"] == full["tensors"] and online["tree_digest"] == full["tree_digest"]
    hub.requests.clear()
    online_key, full_key = _key(REPO_ID, meta_env), _key(REPO_ID, full_env)  # kiln key, then kiln lookup
    _assert_only_headers_read(hub, {"model.safetensors"})
    assert online_key["model"]["tree_digest"] == full_key["model"]["tree_digest"] == full["tree_digest"]
    assert online_key["key"] == full_key["key"]
    assert online_key["model"]["commit"] == COMMIT == full_key["model"]["commit"]


INDEX = "model.safetensors.index.json"
SHARDS = {"model-00001-of-00002.safetensors": list(TENSORS)[:4], "model-00002-of-00002.safetensors": list(TENSORS)[4:]}


def _sharded_files() -> dict[str, bytes]:
    """The same tensors as ``_files()``'s model.safetensors, in two shards and their index (as transformers saves)."""
    files = {k: v for k, v in _files().items() if k != "model.safetensors"}
    weight_map = {}
    for shard, names in SHARDS.items():
        files[shard] = safetensors_file({n: TENSORS[n] for n in names}, shard.encode())
        weight_map.update({n: shard for n in names})
    files[INDEX] = json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}).encode()
    return files


@pytest.mark.parametrize("index_in_lfs", [False, True], ids=["index-in-git", "index-in-lfs"])
def test_a_sharded_model_has_the_same_signature_both_ways(hub: StandInHub, tmp_path: Path,
                                                          index_in_lfs: bool) -> None:
    hub.files = _sharded_files()
    if index_in_lfs:  # not among the small files downloaded: read_index must download it
        hub.lfs_paths.add(INDEX)
    online = _resolved(REPO_ID, _env(hub, tmp_path / "hf-meta"))
    # How tensors are split into shards is not part of the signature: the single file's, exactly.
    assert online["tensors"] == expected_signature(TENSORS) and online["files_local"] is False, online
    _assert_only_headers_read(hub, set(SHARDS))
    assert [r for r in hub.requests if _repo_file(r) == INDEX and r.method == "GET"]
    hub.requests.clear()
    _snapshot(hub, tmp_path / "hf-full")
    full = _resolved(REPO_ID, _env(hub, tmp_path / "hf-full", offline=True))
    assert full["files_local"] is True
    assert full["tensors"] == online["tensors"] and full["tree_digest"] == online["tree_digest"]


def test_a_hub_that_ignores_range_costs_only_the_header(hub: StandInHub, tmp_path: Path) -> None:
    """A server that answers a ranged GET with the whole file (200): the client reads the header and hangs up."""
    big = {"model.embed_tokens.weight": ("F32", [16384, 1024])}  # 64 MiB of tensor data
    data = safetensors_file(big)
    hub.files["model.safetensors"] = data
    hub.ignore_range = True
    online = _resolved(REPO_ID, _env(hub, tmp_path / "hf"))
    assert online["tensors"] == expected_signature(big), online
    deadline = time.monotonic() + 60
    while "model.safetensors" not in hub.answered and time.monotonic() < deadline:
        time.sleep(0.05)
    sent, cut_off = hub.answered["model.safetensors"]
    # The socket takes what the kernel buffers on both sides (a few MiB at most), never the 64 MiB.
    assert cut_off and sent < len(data) // 4, (sent, len(data))
    assert [r.range for r in _weight_requests(hub)] == ["bytes=0-7", "bytes=0-7"]  # /resolve/, then the CDN


def _length_field(n: int) -> bytes:
    return n.to_bytes(8, "little")


@pytest.mark.parametrize(
    "change,says",
    [
        (lambda hub: hub.files.update({"model.safetensors": _length_field(MAX_HEADER_BYTES + 1) + b"{}" * 64}),
         f"its header length field says {MAX_HEADER_BYTES + 1} bytes, more than safetensors allows "
         f"({MAX_HEADER_BYTES}); the file is garbage or not safetensors"),
        (lambda hub: hub.files.update({"model.safetensors": _length_field(128) + b" " * 100}),
         "its header length field says 128 bytes, past the end of the 108-byte file (truncated, or not safetensors)"),
        (lambda hub: hub.files.update({"model.safetensors": _length_field(8) + b"\xff" * 8}),
         "its header is not UTF-8 JSON (garbage, or not safetensors)"),
    ],
    ids=["length-beyond-bound", "length-past-listed-size", "garbage-header"],
)
def test_a_bad_header_on_the_hub_is_one_line_naming_the_file_and_fix(hub: StandInHub, tmp_path: Path, change,
                                                                     says: str) -> None:
    change(hub)
    r = run_kiln("key", REPO_ID, *AOTI, env=_env(hub, tmp_path / "hf"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    url = f"{hub.url}/{REPO_ID}/resolve/{COMMIT}/model.safetensors"
    assert r.stderr.strip().splitlines() == [
        f"kiln: error: weight file {url!r} is not a valid safetensors file: {says}; check HF_ENDPOINT, or run "
        f"`hf download {REPO_ID} --revision {COMMIT}` and pass the snapshot directory."
    ]
    if "length field" in says:  # refused from the first 8 bytes: the header was never asked for
        assert {r.range for r in _weight_requests(hub)} == {"bytes=0-7"}, hub.requests


def test_a_hub_error_on_a_header_read_is_one_line_naming_the_file_and_fix(hub: StandInHub, tmp_path: Path) -> None:
    hub.range_status = 500
    r = run_kiln("key", REPO_ID, *AOTI, env=_env(hub, tmp_path / "hf"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    url = f"{hub.url}/{REPO_ID}/resolve/{COMMIT}/model.safetensors"
    assert r.stderr.strip().splitlines() == [
        f"kiln: error: the Hub at {hub.url} answered the ranged read of the safetensors header of weight file "
        f"{url!r} with HTTP 500; check HF_ENDPOINT, or run `hf download {REPO_ID} --revision {COMMIT}` and pass "
        "the snapshot directory."
    ]


def test_a_model_without_safetensors_weights_has_no_signature_and_says_why(hub: StandInHub, tmp_path: Path) -> None:
    hub.files = {k: v for k, v in _files().items() if not k.endswith(".safetensors")}
    hub.files["pytorch_model.bin"] = b"a pickle, never read"
    online = _resolved(REPO_ID, _env(hub, tmp_path / "hf"))
    assert online["tensors"] is None and "has no model.safetensors" in online["note"], online
    assert not _weight_requests(hub), hub.requests


def test_a_body_read_in_pieces_keeps_what_it_pulled_past_a_read() -> None:
    """The reader behind a 200 answer to a ranged GET: bytes before the range skipped, none lost between reads."""
    from kiln.models._hub_api import _Body

    pulled: list[bytes] = []
    chunks = iter([b"abc", b"defgh", b"ij", b"never pulled"])
    body = _Body((pulled.append(c) or c for c in chunks), skip=4)
    assert body.read(3) == b"efg" and body.read(2) == b"hi" and body.read(1) == b"j"
    assert pulled == [b"abc", b"defgh", b"ij"]  # the last chunk is not pulled before it is needed
    assert body.read(100) == b"never pulled" and body.read(1) == b""


def test_a_pinned_commit_and_a_complete_cache_agree(hub: StandInHub, tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    pinned = _key(f"{REPO_ID}@{COMMIT}", _env(hub, hf))
    full = _snapshot_key(hub, hf)  # the same cache now holds the complete snapshot
    hub.requests.clear()
    again = _key(REPO_ID, _env(hub, hf))  # online, complete in the cache: the snapshot is hashed
    assert pinned["key"] == full["key"] == again["key"]
    assert not [r for r in hub.requests if "/resolve/" in r.file], hub.requests


@pytest.mark.parametrize(
    "ref,message",
    [
        ("acme/absent", "model acme/absent was not found on the Hub; check the spelling (org/name), and if it is "
                        "private, log in (`hf auth login` or set HF_TOKEN)."),
        (f"{REPO_ID}@v9", f"revision v9 of model {REPO_ID} does not exist on the Hub; check the branch, tag or commit "
                          "(or drop @v9 for the default branch)."),
    ],
)
def test_unknown_repository_or_revision_is_one_line_naming_the_fix(hub: StandInHub, tmp_path: Path, ref: str,
                                                                   message: str) -> None:
    r = run_kiln("key", ref, *AOTI, env=_env(hub, tmp_path / "hf"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == ["kiln: error: " + message]


def test_lfs_file_without_sha256_is_downloaded_and_hashed(hub: StandInHub, tmp_path: Path) -> None:
    """Documented in kiln/models/_hub_api.py: such a file is downloaded and hashed; the digest stays the snapshot's."""
    hub.no_sha256.add("extra/model-00002.safetensors")
    online = _key(REPO_ID, _env(hub, tmp_path / "hf-meta"))
    # Downloaded whole: only that file (the weights transformers loads: their header alone, as always).
    assert {_repo_file(r) for r in _weight_requests(hub) if r.range is None} == {"extra/model-00002.safetensors"}
    hub.no_sha256.clear()  # huggingface_hub's own listing parser needs lfs.oid: the snapshot reads the full metadata
    full = _snapshot_key(hub, tmp_path / "hf-full")
    assert online["model"]["tree_digest"] == full["model"]["tree_digest"] and online["key"] == full["key"]


def test_a_non_lfs_file_above_the_bound_is_a_clear_error(hub: StandInHub, tmp_path: Path) -> None:
    hub.claimed_sizes["tokenizer.json"] = 17 << 20  # only the listing says so: nothing that large is served
    r = run_kiln("key", REPO_ID, *AOTI, env=_env(hub, tmp_path / "hf"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"kiln: error: the Hub lists tokenizer.json of model {REPO_ID}@{COMMIT} as a non-LFS file of {17 << 20} bytes "
        f"(more than 16 MiB, which the Hub does not store outside LFS), so Kiln does not fetch it to hash it: run "
        f"`hf download {REPO_ID} --revision {COMMIT}` and run again (the downloaded snapshot is hashed instead)."
    ]
    assert not [r for r in hub.requests if "tokenizer.json" in r.file]


_FETCH = """
import sys
from kiln.errors import ModelError
from kiln.models import fetch_model_files, resolve_model
model = resolve_model(sys.argv[1])
print(model.files_local, (model.path / "model.safetensors").exists(), flush=True)
input()  # the test may change the stand-in's files here
try:
    fetch_model_files(model)
except ModelError as e:
    print("error:", e)
else:
    print("fetched", (model.path / "model.safetensors").stat().st_size, resolve_model(sys.argv[1]).tree_digest == model.tree_digest)
"""


def _fetch(hub: StandInHub, hf: Path, change: dict[str, bytes]) -> list[str]:
    """Resolve from metadata in a subprocess, then (after ``change`` to the stand-in) fetch as a build does."""
    p = subprocess.Popen([sys.executable, "-c", _FETCH, REPO_ID], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, **_env(hub, hf)})
    assert p.stdout is not None and p.stdin is not None
    first = p.stdout.readline().strip()
    hub.files.update(change)
    out, err = p.communicate("\n", timeout=120)
    assert p.returncode == 0, err
    return [first, out.strip()]


def test_a_build_fetches_the_weights_and_checks_them_against_the_key(hub: StandInHub, tmp_path: Path) -> None:
    assert _fetch(hub, tmp_path / "hf", {}) == ["False False", f"fetched {len(hub.files['model.safetensors'])} True"]


def test_weights_that_changed_on_the_hub_since_the_key_are_refused(hub: StandInHub, tmp_path: Path) -> None:
    first, out = _fetch(hub, tmp_path / "hf", {"model.safetensors": b"other weights"})
    assert first == "False False"
    assert out.startswith(f"error: the files downloaded for model {REPO_ID}@{COMMIT} (") and "expected sha256:" in out


@pytest.mark.parametrize("answer", ["../../../../../tmp/kiln-hub-escape", "", 12, None])
def test_a_commit_that_is_no_commit_hash_is_refused(hub: StandInHub, tmp_path: Path, answer: object) -> None:
    """The commit becomes a path in the HF cache: a hostile or broken endpoint must not steer it
    outside (before: any non-empty string was used as the snapshot directory's name)."""
    hub.commit_answer = answer
    r = run_kiln("key", REPO_ID, *AOTI, env=_env(hub, tmp_path / "hf"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("kiln: error: the Hub at ") and "gave no commit hash" in line, line
    assert not Path("/tmp/kiln-hub-escape").exists()


def test_a_tree_listing_whose_pages_never_end_is_refused(hub: StandInHub, tmp_path: Path) -> None:
    """A Link header pointing back at the same page (before: paged forever)."""
    hub.next_link = f"/api/models/{REPO_ID}/tree/{COMMIT}?recursive=true&cursor=again"
    r = run_kiln("key", REPO_ID, *AOTI, env=_env(hub, tmp_path / "hf"), timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "pages do not end" in r.stderr, r.stderr


def test_hub_unreachable_errors_are_known_without_httpx2(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub releases the project allows use requests, httpx or httpx2: resolution must
    not import one of them unconditionally (before: `import httpx2` failed under the others)."""
    from kiln.models import _hub_api

    monkeypatch.setitem(sys.modules, "httpx2", None)  # what an environment without it looks like
    errors = _hub_api._transport_errors()
    assert OSError in errors  # requests' ConnectionError is an OSError
    assert all(isinstance(e, type) and issubclass(e, BaseException) for e in errors)


TRTLLM = ["--target", "trtllm", "--n-positions", "64", "--toolchain", "tensorrt_llm=1,tensorrt=1,hardware=cuda-sm90"]


def test_a_target_that_holds_its_weights_reads_no_header_and_keeps_a_records_signature(hub: StandInHub,
                                                                                      tmp_path: Path) -> None:
    """trtllm engines hold their weights: no key needs the signature, so no header is read, and the
    record it keeps must not replace the one that knows the signature (a torch-aoti key needs it)."""
    env = _env(hub, tmp_path / "hf")
    aoti = _key(REPO_ID, env)  # torch-aoti: the headers are read, the record keeps the signature
    store = Store(Path(os.environ["KILN_HOME"]))
    kept = store.model_records.get(REPO_ID, COMMIT)
    assert kept is not None and kept.tensors == expected_signature(TENSORS), kept
    hub.requests.clear()
    r = run_kiln("key", REPO_ID, *TRTLLM, "--explain", "--json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["inputs"]["model"]["tree_digest"] == aoti["model"]["tree_digest"]
    assert [q for q in hub.requests if q.file.startswith(f"/api/models/{REPO_ID}/tree/")]  # resolved online
    assert not [q for q in hub.requests if q.range is not None], hub.requests  # no header read, of any file
    after = store.model_records.get(REPO_ID, COMMIT)
    assert after is not None and after.tensors == kept.tensors and after.tree_digest == kept.tree_digest, after
    # Offline, the weights never downloaded: the kept record still gives torch-aoti its key.
    again = run_kiln("key", REPO_ID, *AOTI, "--json", env=_env(hub, tmp_path / "hf", offline=True))
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["key"] == aoti["key"]


def test_header_reads_that_lie_fail_the_build_in_one_line_and_publish_nothing(hub: StandInHub,
                                                                             tmp_path: Path) -> None:
    """The key came from the ranged header reads; the weights the build downloads must have the same
    signature, or the engine would be filed under another architecture's key."""
    real = hub.files["model.safetensors"]
    renamed = {("model.norx.weight" if k == "model.norm.weight" else k): v for k, v in TENSORS.items()}
    lie = safetensors_file(renamed)
    assert len(lie) == len(real) and lie[:8] == real[:8] and lie != real  # a valid header: only a name differs
    hub.lie_in_ranges["model.safetensors"] = lie
    remote = tmp_path / "remote"
    r = run_kiln("--remote", str(remote), "build", REPO_ID, *AOTI, "--push", env=_env(hub, tmp_path / "hf"),
                 timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
    [line] = [x for x in r.stderr.strip().splitlines() if x.startswith("kiln: error:")]
    assert "tensor signature" in line, line
    assert expected_signature(TENSORS)["digest"][:19] in line and expected_signature(renamed)["digest"][:19] in line
    # The key's signature came from ranged reads; the build then downloaded the file whole (the check is after it).
    reads = _weight_requests(hub)
    assert {q.range for q in reads if _repo_file(q) == "model.safetensors"} >= {"bytes=0-7", None}, hub.requests
    store = Store(Path(os.environ["KILN_HOME"]))
    assert not list(store.iter_entries())
    assert not [p for p in remote.rglob("*") if p.is_file()]
