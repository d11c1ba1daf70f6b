"""Keys, policies and signed artifacts for the trust tests.

Keys are made by OpenSSL itself where it is installed (the formats users have: SEC1 with its
``EC PARAMETERS`` block, from ``openssl ecparam -genkey``), else by ``cryptography``. Artifacts
are stored with the real CLI (`kiln store put`) and signed with the real CLI (`kiln sign`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import run_kiln, write_hf_cache_model
from tests.conftest import LLAMA_CONFIG

pytest.importorskip("model_signing", reason="signatures need model-signing (pip install 'kiln-engines[signing]')")

PINS = ["--toolchain", "torch=2.0.0", "--toolchain", "transformers=5.0.0", "--toolchain", "hardware=cpu-test"]
SPEC = ["--target", "torch-aoti", "--n-positions", "256", *PINS]


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path

    @property
    def fingerprint(self) -> str:
        import hashlib

        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_public_key(self.public.read_bytes())
        pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return "sha256:" + hashlib.sha256(pem).hexdigest()


def make_key(directory: Path, name: str) -> KeyPair:
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    if shutil.which("openssl"):
        subprocess.run(["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-out", str(private)], check=True,
                       capture_output=True)
        subprocess.run(["openssl", "ec", "-in", str(private), "-pubout", "-out", str(public)], check=True,
                       capture_output=True)
    else:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                              serialization.NoEncryption()))
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(private, public)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, KeyPair]:
    """Three keys: the release key a policy trusts, another CI's, an attacker's."""
    return {name: make_key(tmp_path / "keys", name) for name in ("release", "other", "attacker")}


def write_policy(path: Path, keys: list[dict], require: str = "signed") -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"require": require, "keys": keys}, sort_keys=False))
    return path


def hub_model(repo_id: str, seed: int = 0) -> str:
    """A Hub model in the offline HF cache (the layout huggingface_hub writes); returns its id."""
    import hashlib
    import os

    files = {
        "config.json": json.dumps(LLAMA_CONFIG, indent=1).encode(),
        "model.safetensors": hashlib.sha256(f"{repo_id}{seed}".encode()).digest() * 128,
        "tokenizer.json": b'{"version": "1.0"}',
    }
    write_hf_cache_model(Path(os.environ["HF_HUB_CACHE"]), repo_id, files,
                         commit=hashlib.sha1(f"{repo_id}{seed}".encode()).hexdigest())
    return repo_id


def artifact(root: Path, payload: bytes = b"engine bytes") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "engine.pt2").write_bytes(payload)
    (root / "weights.safetensors").write_bytes(b"w" * 5000)
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "tokenizer.json").write_bytes(b'{"version": "1.0"}')
    return root


def put(art: Path, model: str, *, env: dict | None = None) -> dict:
    r = run_kiln("store", "put", str(art), model, *SPEC, "--json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def sign(key: str, signing_key: Path | str, *extra: str, env: dict | None = None) -> dict:
    r = run_kiln("sign", key, "--sign-key", str(signing_key), "--json", *extra, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)[0]


def model_signing_cli() -> Path:
    """The `model_signing` command installed beside this Python (the library's own verifier)."""
    path = Path(sys.executable).parent / "model_signing"
    if not path.exists():
        pytest.skip(f"model-signing's CLI is not installed beside {sys.executable}")
    return path
