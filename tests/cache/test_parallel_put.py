"""An artifact's files are stored several at a time; one failing file stops the others.

Through the real publish path (``api.put``). The failure is a stand-in: a wrapper of
``Blobs.put_file`` that raises for one path (a full disk or an unreadable file would do the
same, but cannot be caused on one file of a temp directory reliably).
"""

from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path

import pytest

from kiln.cache import Store, _publish
from kiln.cache._blobs import Blobs
from kiln.errors import StoreError

from .test_materialize import Pub


@pytest.fixture
def pub(tmp_path: Path) -> Pub:
    return Pub(tmp_path, Store(tmp_path / "store"))


def _files(n: int, size: int) -> dict[str, bytes]:
    rng = random.Random(n)
    return {f"part-{i:02d}.bin": rng.randbytes(size) for i in range(n)}


def test_files_stored_in_parallel_keep_path_order_and_bytes(pub: Pub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_publish, "PUT_THREADS", 4)
    seen: set[str] = set()
    real = Blobs.put_file

    def recording(self, src, **kw):  # type: ignore[no-untyped-def]
        seen.add(threading.current_thread().name)
        return real(self, src, **kw)

    monkeypatch.setattr(Blobs, "put_file", recording)
    files = _files(9, 300_000)
    manifest = pub.publish(1, files)
    assert [f.path for f in manifest.files] == sorted(files)
    for f in manifest.files:
        assert f.digest == "sha256:" + hashlib.sha256(files[f.path]).hexdigest() and f.size == len(files[f.path])
    assert len({n for n in seen if n.startswith("kiln-put")}) >= 2, seen  # really in parallel


def test_one_failing_file_stops_the_others_and_publishes_nothing(pub: Pub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_publish, "PUT_THREADS", 2)
    real = Blobs.put_file

    def failing(self, src, **kw):  # type: ignore[no-untyped-def]
        if Path(src).name == "part-00.bin":
            raise StoreError(f"cannot write {src}: stand-in for a full disk")
        return real(self, src, **kw)

    monkeypatch.setattr(Blobs, "put_file", failing)
    files = _files(6, 64 << 20)  # 8 chunks each: the others notice the failure at their next chunk
    with pytest.raises(StoreError, match="stand-in for a full disk"):
        pub.publish(1, files)
    store = pub.store
    assert list(store.iter_entries()) == []
    stored = [p for p in files if store.has_blob("sha256:" + hashlib.sha256(files[p]).hexdigest())]
    assert len(stored) < len(files) - 1, f"every other file was stored anyway: {stored}"
    assert [p.name for p in (store.root / "tmp").iterdir()] == []  # no temp file stays
