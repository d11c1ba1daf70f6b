"""Hub ids resolved online from the Hub's file metadata: the snapshot's digest, without its weights.

Everything runs against ``StandInHub``, a stand-in for the Hugging Face Hub on 127.0.0.1 (not the
real Hub): it serves the API calls and downloads that huggingface_hub makes — revision info
``/api/models/{repo}/revision/{rev}``, the tree listing ``/api/models/{repo}/tree/{rev}`` and
``/{repo}/resolve/{rev}/{path}`` (HEAD and GET) — for a tiny model whose files the test writes,
and logs every request. The CLI runs in subprocesses with HF_ENDPOINT pointing at it (huggingface_hub
reads its settings at import), HF_HUB_OFFLINE unset, and an HF cache in tmp.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

import pytest

from ..conftest import LLAMA_CONFIG, run_kiln

REPO_ID = "acme/tiny"
COMMIT = "c0ffee" + "0" * 34
AOTI = ["--target", "torch-aoti", "--n-positions", "64"]
LFS = (".safetensors", ".bin")


def _files() -> dict[str, bytes]:
    weights = hashlib.sha256(b"weights").digest() * 512  # 16 KiB of deterministic bytes (never parsed here)
    return {
        "config.json": json.dumps(LLAMA_CONFIG).encode(),
        "generation_config.json": b'{"bos_token_id": 1}',
        "tokenizer.json": b'{"version": "1.0"}',
        "tokenizer_config.json": b'{"model_max_length": 64}',
        "model.safetensors": weights,
        "extra/model-00002.safetensors": weights[::-1],
        "README.md": b"docs never change an engine\n",
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "original/consolidated.pth": b"ignored duplicate",
    }


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class StandInHub(http.server.ThreadingHTTPServer):
    """A stand-in for the Hub: one repository at one commit (branch ``main``), a request log.

    ``no_sha256`` lists LFS files whose tree entry has no sha256 (``lfs`` without ``oid``);
    ``claimed_sizes`` overrides the size the listing gives for a file.
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.requests: list[str] = []
        self.no_sha256: set[str] = set()
        self.claimed_sizes: dict[str, int] = {}
        self.commit_answer: object = COMMIT  # what the revision API says the commit is
        self.next_link: str | None = None  # a Link rel="next" URL on every tree page (a hostile Hub's loop)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def tree(self) -> list[dict]:
        out = []
        for path, data in sorted(self.files.items()):
            size = self.claimed_sizes.get(path, len(data))
            entry: dict = {"type": "file", "path": path, "size": size, "oid": _git_sha1(data)}
            if path.endswith(LFS):
                entry["oid"] = hashlib.sha1(path.encode()).hexdigest()  # the pointer's blob, not the content's
                entry["lfs"] = {"size": size, "pointerSize": 134}
                if path not in self.no_sha256:
                    entry["lfs"]["oid"] = hashlib.sha256(data).hexdigest()
            out.append(entry)
        return out + [{"type": "directory", "path": "extra", "size": 0, "oid": "d" * 40}]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: StandInHub

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
        self.server.requests.append(f"{self.command} {self.path}")
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
        if name.endswith(LFS):
            headers.update({"X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Linked-Size": str(len(data))})
        self._send(200, data, headers)

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


def _snapshot_key(hub: StandInHub, hf: Path) -> dict:
    """The old way: snapshot_download the whole repository, then key the cached snapshot offline."""
    code = ("import sys; from huggingface_hub import snapshot_download; "
            "print(snapshot_download(sys.argv[1], cache_dir=sys.argv[2], endpoint=sys.argv[3]))")
    r = subprocess.run([sys.executable, "-c", code, REPO_ID, str(hf / "hub"), hub.url], capture_output=True,
                       text=True, env={**_env(hub, hf)}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (Path(r.stdout.strip()) / "model.safetensors").stat().st_size == len(hub.files["model.safetensors"])
    return _key(REPO_ID, _env(hub, hf, offline=True))


def _weights_requested(hub: StandInHub) -> list[str]:
    return [r for r in hub.requests if ".safetensors" in r or ".pth" in r]


def test_metadata_gives_the_snapshots_digest_and_key_without_weights(hub: StandInHub, tmp_path: Path) -> None:
    online = _key(REPO_ID, _env(hub, tmp_path / "hf-meta"))  # kiln key, then kiln lookup
    assert hub.requests and not _weights_requested(hub), hub.requests
    hub.requests.clear()
    full = _snapshot_key(hub, tmp_path / "hf-full")
    assert _weights_requested(hub)  # the snapshot did download them: the log can tell
    assert online["model"]["tree_digest"] == full["model"]["tree_digest"]
    assert online["key"] == full["key"]
    assert online["model"]["commit"] == COMMIT == full["model"]["commit"]


def test_a_pinned_commit_and_a_complete_cache_agree(hub: StandInHub, tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    pinned = _key(f"{REPO_ID}@{COMMIT}", _env(hub, hf))
    full = _snapshot_key(hub, hf)  # the same cache now holds the complete snapshot
    hub.requests.clear()
    again = _key(REPO_ID, _env(hub, hf))  # online, complete in the cache: the snapshot is hashed
    assert pinned["key"] == full["key"] == again["key"]
    assert not [r for r in hub.requests if "/resolve/" in r], hub.requests


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
    assert {r.split("?")[0].rsplit("/", 1)[-1] for r in _weights_requested(hub)} == {"model-00002.safetensors"}
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
    assert not [r for r in hub.requests if "tokenizer.json" in r]


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
