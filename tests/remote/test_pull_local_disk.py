"""A pull that cannot write this machine's store says so, and does not blame the remote.

Before: the download's failed write came out as the remote's error ("cannot reach registry …:
is it up, and is the URL right?", "cannot download s3://…: OSError", "cannot download object …
from remote …"), so a user with a full disk went looking at the registry or the bucket. The
write really fails: the pull runs under a file-size limit (``RLIMIT_FSIZE``: the kernel refuses
the write with EFBIG, as it would refuse one on a full disk with ENOSPC), against a real
S3-protocol server (moto on loopback), a shared directory and a real OCI registry.
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.cache import Store
from kiln.cache._sync import push
from kiln.cache.remotes import open_remote
from tests.remote.conftest import store_put, write_tree

LIMIT = 256 << 10  # the 1 MiB engine file cannot be written; the store's small files can


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


@pytest.fixture(params=["s3", "file", "oci"])
def remote_url(request: pytest.FixtureRequest) -> str:
    if request.param == "oci":
        return str(request.getfixturevalue("oci_url"))
    return str(request.getfixturevalue("s3_view" if request.param == "s3" else "file_view").url)


def test_a_pull_that_cannot_write_the_store_names_the_store_and_the_fix(
        remote_url: str, model: Path, tmp_path: Path) -> None:
    builder = Store(tmp_path / "builder")
    files = {"engine.bin": random.Random(5).randbytes(1 << 20), "config.json": b"{}"}
    key = store_put(write_tree(tmp_path / "art", files), model, env={"KILN_HOME": str(builder.root)})
    [entry] = list(builder.iter_entries())
    push(builder, open_remote(remote_url), entry)

    home = tmp_path / "deployer"
    r = subprocess.run([sys.executable, "-m", "kiln.cli", "--remote", remote_url, "pull", "--key", key],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "KILN_HOME": str(home)},
                       preexec_fn=_limit_file_size)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    line = lines[0]
    assert f"not pulled: cannot write {home}/tmp/" in line, line  # `pull` goes on to other artifacts, then exits 2
    assert "file too large (EFBIG" in line and f"in the Kiln store at {home}" in line and "ulimit -f" in line, line
    assert "reach" not in line and "download" not in line, line  # not the remote's fault
    assert list((home / "tmp").iterdir()) == []  # no partial download stays
    assert list(Store(home).iter_entries()) == []
