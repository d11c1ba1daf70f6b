"""Shared fixtures: an isolated store per test, fake model directories, a real HF cache layout.

Nothing here mocks the store or the filesystem: tests run the real code on real files.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.cache import Store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's store, HF cache or LMI settings."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("KILN_HOME", str(home / "kiln"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DOCKER_CONFIG", str(home / "docker"))  # registry credentials: none unless a test writes them
    for name in list(os.environ):
        if name.startswith(("OPTION_", "SERVING_")) or name in ("HF_MODEL_ID", "TENSOR_PARALLEL_DEGREE", "SM_NUM_GPUS", "KILN_REMOTE",
                                                                              "KILN_OCI_USERNAME", "KILN_OCI_PASSWORD"):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def store() -> Store:
    return Store(Path(os.environ["KILN_HOME"]))


LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "num_hidden_layers": 2,
    "max_position_embeddings": 4096,
    "vocab_size": 512,
}


def write_fake_model(dest: Path, *, config: dict | None = None, weight_bytes: int = 4096, seed: int = 0) -> Path:
    """A model directory with a config and a weights file of deterministic bytes (no torch)."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.json").write_text(json.dumps(config or LLAMA_CONFIG, indent=1))
    data = hashlib.sha256(str(seed).encode()).digest() * (weight_bytes // 32 + 1)
    (dest / "model.safetensors").write_bytes(data[:weight_bytes])
    (dest / "tokenizer.json").write_text('{"version": "1.0"}')
    (dest / "README.md").write_text("docs never change an engine\n")
    return dest


@pytest.fixture
def fake_model(tmp_path: Path) -> Path:
    return write_fake_model(tmp_path / "model")


def write_hf_cache_model(hub_cache: Path, repo_id: str, files: dict[str, bytes], *, commit: str, ref: str = "main") -> Path:
    """Lay files out exactly as huggingface_hub's cache does: blobs named by etag
    (sha256 for LFS files, git sha1 for small ones), snapshot symlinks, refs/<branch>."""
    repo_dir = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if name.endswith((".safetensors", ".bin")):
            etag = hashlib.sha256(data).hexdigest()  # LFS: the etag is the sha256
        else:
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git blob sha1
        blob = repo_dir / "blobs" / etag
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / ref).write_text(commit)
    return snap


def run_kiln(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (as a user would)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout
    )
