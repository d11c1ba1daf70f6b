"""What model resolution says when it fails: each cause its own message and its own fix.

Hub failures run the real CLI in a subprocess against a real HTTP server on 127.0.0.1 that
answers as the Hub does (huggingface_hub reads HF_ENDPOINT at import, hence the subprocess).
Local-path typos are made against real directories.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from kiln.errors import ModelNotFoundError, SpecError
from kiln.models import parse_model_ref, resolve_model

from ..conftest import LLAMA_CONFIG, run_kiln, write_fake_model, write_hf_cache_model

HUB_ADVICE = ("HF_HUB_OFFLINE", "hf download", "huggingface-cli", "Hub at")


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers the revision-info call of snapshot_download the way huggingface.co does for errors."""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.path
        if "/org/gated/" in path:
            code, error = 403, "GatedRepo"
        elif "/org/real/revision/" in path:
            code, error = 404, "RevisionNotFound"
        else:
            code, error = 404, "RepoNotFound"
        body = json.dumps({"error": "Repository not found"}).encode()
        self.send_response(code)
        self.send_header("X-Error-Code", error)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def fake_hub() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _online(endpoint: str) -> dict[str, str]:
    return {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": endpoint, "HF_HUB_ETAG_TIMEOUT": "5"}


def _error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiln: error: ") and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_offline_says_offline_and_suggests_the_installed_hf_command() -> None:
    line = _error_line(run_kiln("key", "org/absent@v2", "--target", "torch-aoti"))
    assert "HF_HUB_OFFLINE=1 is set, so Kiln did not try the Hub" in line
    assert "run `hf download org/absent --revision v2` on a machine with Hub access" in line
    assert "huggingface-cli" not in line
    # The command it suggests exists in this environment, with the flag it suggests.
    hf = Path(sys.executable).parent / "hf"
    out = subprocess.run([str(hf), "download", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--revision" in out.stdout


def test_online_but_unreachable_does_not_blame_hf_hub_offline() -> None:
    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    line = _error_line(run_kiln("key", "org/absent", "--target", "torch-aoti", env=_online(endpoint)))
    assert "HF_HUB_OFFLINE" not in line
    assert f"the Hub at {endpoint} could not be reached (ConnectError: " in line
    assert "check the network (or HF_ENDPOINT), run `hf download org/absent` where the Hub is reachable" in line


@pytest.mark.parametrize(
    "ref,message",
    [
        ("org/absent", "model org/absent was not found on the Hub; check the spelling (org/name), and if it is private, "
                       "log in (`hf auth login` or set HF_TOKEN)."),
        ("org/gated", "model org/gated is gated on the Hub: accept its terms on its Hub page, then log in (`hf auth login` "
                      "or set HF_TOKEN) and run again."),
        ("org/real@v9", "revision v9 of model org/real does not exist on the Hub; check the branch, tag or commit "
                        "(or drop @v9 for the default branch)."),
    ],
)
def test_hub_answers_become_their_own_messages(fake_hub: str, ref: str, message: str) -> None:
    line = _error_line(run_kiln("key", ref, "--target", "torch-aoti", env=_online(fake_hub)))
    assert line == "kiln: error: " + message


# --------------------------------------------------------------------------- local paths


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_fake_model(tmp_path / "models" / "llama-7b")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "ref,message",
    [
        ("./models/llama-7", "no such directory: ./models/llama-7 (did you mean ./models/llama-7b?)"),
        ("models/llama-7", "no such directory: models/llama-7 (did you mean models/llama-7b?)"),
        ("./modls/llama-7b", "no such directory: ./modls/llama-7b (did you mean ./models/llama-7b?)"),
        ("./modls/other", "no such directory: ./modls/other (did you mean ./models?)"),
        ("/nonexistent-kiln-test/x", "no such directory: /nonexistent-kiln-test/x (/nonexistent-kiln-test does not exist)"),
        ("models/a/b", "no such directory: models/a/b (models/a does not exist)"),
        ("x/y/z", "no such directory: x/y/z (x does not exist)"),
        ("./nothing-like-it", "no such directory: ./nothing-like-it;"),
        ("models\\llama", "no such directory: models\\llama (paths are written with /, not \\)"),
    ],
)
def test_a_mistyped_local_path_gets_path_advice(models_dir: Path, ref: str, message: str) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(ref)
    text = str(info.value)
    assert text.startswith(message), text
    assert text.endswith("pass an existing model directory, or a Hub id (org/name[@revision]).")
    assert not any(word in text for word in HUB_ADVICE), text


def test_a_home_relative_typo_is_found_in_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_model(tmp_path / "mymodel")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match=r"^no such directory: ~/mymodle \(did you mean ~/mymodel\?\)"):
        resolve_model("~/mymodle")


def test_a_file_is_not_a_model_directory(models_dir: Path) -> None:
    (models_dir / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelNotFoundError, match=r"model path ./model.gguf is a GGUF file, not a directory; pass the "
                                                 r"directory that holds it"):
        resolve_model("./model.gguf")
    with pytest.raises(ModelNotFoundError, match="model path models/llama-7b/config.json is a file, not a directory"):
        resolve_model("models/llama-7b/config.json")


def test_a_hub_id_whose_org_is_also_a_local_directory_still_resolves_from_the_cache(tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "org").mkdir()
    monkeypatch.chdir(tmp_path)
    write_hf_cache_model(Path(os.environ["HF_HUB_CACHE"]), "org/tiny",
                         {"config.json": json.dumps(LLAMA_CONFIG).encode(), "model.safetensors": b"w" * 64}, commit="c" * 40)
    assert resolve_model("org/tiny").kind == "hub"
    with pytest.raises(ModelNotFoundError, match="no such directory: org/other"):  # not cached: the path reading
        resolve_model("org/other")


@pytest.mark.parametrize("ref", ["org/na\nme", "./a\x00b", "x" * 5000])
def test_refs_with_control_characters_or_absurd_length_are_refused(ref: str) -> None:
    with pytest.raises(SpecError, match="is not a model ref: it holds control characters or is longer than 4096") as info:
        parse_model_ref(ref)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_the_cli_prints_the_path_advice_as_one_line(models_dir: Path) -> None:
    line = _error_line(run_kiln("key", "./models/llama-7", "--target", "torch-aoti", cwd=models_dir))
    assert line.startswith("kiln: error: no such directory: ./models/llama-7 (did you mean ./models/llama-7b?)")
