"""A real OCI registry for tests: Debian's ``docker-registry`` (CNCF distribution 2.8) on 127.0.0.1.

Started per test session (or per test, for auth variants) with its storage in a temp dir, so
tests can read and damage what it stores on disk (``docker/registry/v2/blobs/sha256/…/data``).
Tests that need it skip, saying why, where the package is missing (``.ci/run`` installs it
through scripts/setup_debian.sh).
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.remote.conftest import free_port

REGISTRY = shutil.which("docker-registry") or shutil.which("registry")
needs_registry = pytest.mark.skipif(REGISTRY is None, reason="no docker-registry here (Debian: apt-get install docker-registry; "
                                    "scripts/setup_debian.sh does it)")
needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="no skopeo here (apt-get install skopeo)")


@dataclass
class Registry:
    port: int
    root: Path  # storage root
    log_path: Path
    proc: subprocess.Popen

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, repository: str = "kiln/engines") -> str:
        return f"oci://{self.host}/{repository}?plain-http=true"

    def api(self, repository: str = "kiln/engines") -> str:
        return f"http://{self.host}/v2/{repository}"

    def blob_file(self, digest: str) -> Path:
        hex_ = digest.split(":", 1)[1]
        return self.root / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_registry(workdir: Path, auth: str = "", timeout: float = 30.0) -> Registry:
    """A registry on a free port; ``auth`` is a YAML ``auth:`` block (htpasswd or token), or none."""
    assert REGISTRY is not None
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n"
        f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        + auth
    )
    log = workdir / "registry.log"
    with open(log, "wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
            break
        except urllib.error.HTTPError:
            break  # 401 with auth on: it is up
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("docker-registry did not start")
    return Registry(port, workdir / "data", log, proc)


def bcrypt_hash(password: str) -> str | None:
    """A bcrypt hash distribution's htpasswd accepts ($2a$/$2b$/$2y$: Go's bcrypt reads any minor), low cost."""
    try:
        import bcrypt  # type: ignore[import-not-found]

        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # deprecated in 3.11, gone in 3.13
    except ImportError:
        return None
    if crypt.METHOD_BLOWFISH not in crypt.methods:
        return None
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))  # cost 4: fast per request
    return hashed if hashed and hashed.startswith(("$2a$", "$2b$", "$2y$")) else None
