"""A full disk while the store writes is one error line naming the path being written, the store
and the fix, and leaves no partial file behind.

Before (issue 12): ENOSPC came out as ``[Errno 28] No space left on device`` with no path and
no way out, and the partial temp file stayed.

The disk is really full: the store lives on a small tmpfs, mounted in a private mount
namespace (``unshare``) of the command's own, so nothing outside the test sees it. Where this
machine cannot mount one, those tests are skipped; the file-size limit test (``RLIMIT_FSIZE``,
which makes the kernel refuse writes with EFBIG) needs no privileges and always runs.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli._helpers import AOTI, artifact_dir
from tests.conftest import REPO

FIX = "free space on that filesystem, or run `kiln gc --max-size SIZE`, or set KILN_HOME elsewhere"


def _unshare() -> list[str]:
    return ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]


def _can_mount_tmpfs(tmp: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    probe = tmp / "probe"
    probe.mkdir(exist_ok=True)
    r = subprocess.run([*_unshare(), "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(probe))}"],
                       capture_output=True, text=True)
    return r.returncode == 0


@pytest.fixture
def small_fs(tmp_path: Path) -> Path:
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs here (no unshare, or mount namespaces are not allowed)")
    return tmp_path


def _on_small_fs(store: Path, size: str, script: str, out: Path) -> subprocess.CompletedProcess:
    """Run ``script`` (sh) with ``store`` a fresh tmpfs of ``size``; afterwards every file under it is
    listed into ``out`` (the mount vanishes with the namespace)."""
    store.mkdir(parents=True, exist_ok=True)
    q = shlex.quote
    full = (f"mount -t tmpfs -o size={size} tmpfs {q(str(store))} || exit 99\n{script}\nrc=$?\n"
            f"(cd {q(str(store))} && find . -type f | sort) > {q(str(out))}\nexit $rc\n")
    env = dict(os.environ, KILN_HOME=str(store), PYTHONPATH=str(REPO))
    r = subprocess.run([*_unshare(), "sh", "-c", full], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 99, r.stderr
    return r


def _kiln(*args: str) -> str:
    return " ".join(shlex.quote(a) for a in (sys.executable, "-m", "kiln.cli", *args))


def _assert_one_line_naming(stderr: str, store: Path, what: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    line = lines[0]
    assert line.startswith("kiln: error: cannot write ") and str(store) in line and what in line, line
    return line


def test_store_put_onto_a_full_disk_names_the_path_and_the_fix(small_fs: Path, fake_model: Path) -> None:
    store = small_fs / "store"
    art = artifact_dir(small_fs / "art", os.urandom(2 << 20))  # 2 MiB: cannot fit in 512 KiB
    out = small_fs / "listing"
    r = _on_small_fs(store, "512k", _kiln("store", "put", str(art), str(fake_model), *AOTI), out)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    line = _assert_one_line_naming(r.stderr, store, "no space left on device (ENOSPC)")
    assert f"{store}/tmp/" in line and str(art / "engine.pt2") in line and FIX in line, line
    files = out.read_text().split()
    assert not [f for f in files if f.startswith("./tmp/")], files  # the partial temp file is gone
    assert not [f for f in files if f.startswith("./index/")], files  # nothing was published


def test_index_entry_onto_a_full_disk_names_the_entry(small_fs: Path, fake_model: Path) -> None:
    """Store level: the blobs are in place, then the disk fills before the entry is written."""
    from tests.cli._helpers import put

    key = put(fake_model, artifact_dir(small_fs / "art"), *AOTI)  # in this test's own store, on disk
    [entry_file] = Path(os.environ["KILN_HOME"]).glob(f"index/*/{key}.json")
    store = small_fs / "store"
    out = small_fs / "listing"
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from kiln.cache import Store\n"
        "from kiln.errors import StoreError\n"
        "from kiln.manifests import IndexEntry\n"
        f"entry = IndexEntry.parse(Path({str(entry_file)!r}).read_bytes())\n"
        "store = Store()\n"
        "store.index_dir.mkdir(parents=True)\n"
        "f = open(store.root / 'filler', 'wb', buffering=0)\n"
        "try:\n"
        "    while True: f.write(b'x' * 4096)\n"
        "except OSError: pass\n"
        "try:\n"
        "    store.write_entry(entry)\n"
        "except StoreError as e:\n"
        "    print(e, file=sys.stderr); sys.exit(2)\n"
    )
    r = _on_small_fs(store, "128k", f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}", out)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    msg = r.stderr.strip()
    assert msg.startswith(f"cannot write {store}/index/") and msg.split()[2].endswith(f"{key}.json:"), msg
    assert "no space left on device" in msg and FIX in msg, msg
    assert [f for f in out.read_text().split() if f.startswith("./index/")] == [], out.read_text()


def _limit_file_size(limit: int):  # type: ignore[no-untyped-def]
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_file_size_limit_names_the_path_and_the_limit(tmp_path: Path, fake_model: Path) -> None:
    store = Path(os.environ["KILN_HOME"])
    art = artifact_dir(tmp_path / "art", os.urandom(1 << 20))
    r = subprocess.run([sys.executable, "-m", "kiln.cli", "store", "put", str(art), str(fake_model), *AOTI],
                       capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(256 << 10))
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    line = _assert_one_line_naming(r.stderr, store, "file too large (EFBIG")
    assert f"{store}/tmp/" in line and "ulimit -f" in line and "KILN_HOME" in line, line
    assert list((store / "tmp").iterdir()) == []
    assert list(store.glob("index/*/*.json")) == []
    ls = subprocess.run([sys.executable, "-m", "kiln.cli", "ls", "--json"], capture_output=True, text=True)
    assert json.loads(ls.stdout) == []
