"""A push or pull whose blob fails stops the other blobs' transfers at their next chunk.

Push and pull move several blobs at once through the pool puts and copy-outs use
(``cache/_per_file.each_file``). Before, a failing blob's error waited until every other blob in
flight had moved all its bytes (a multi-GB engine file on a slow link). Against a real
S3-protocol server (moto on loopback) and a shared directory; the failure itself is a stand-in
(a wrapper that raises for one blob once another has moved a chunk), because a network failure
at a chosen moment of one transfer cannot be caused otherwise.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest

from kiln.cache import Store
from kiln.cache._sync import blob_key, pull, push, remote_entry
from kiln.cache.remotes import S3Remote, open_remote
from kiln.errors import RemoteError
from tests.remote.conftest import RemoteView, store_put, write_tree

BIG = 48 << 20  # 48 chunks of a download (1 MiB) or 6 of a copy (8 MiB); ~10 upload parts of 5 MiB


def _fails_once_another_blob_moved(real: Any, failing_key: str, moved: threading.Event) -> Any:
    def wrapper(self: Any, *a: Any, **kw: Any) -> Any:
        key = a[1] if real.__name__ == "upload" else a[0]  # upload(path, key, progress); download(key, dest, size, progress)
        if key == failing_key:
            assert moved.wait(timeout=120), "no other blob started"  # a hang guard, not a timing
            raise RemoteError("stand-in for a network failure while another blob is midway")
        return real(self, *a, **kw)

    return wrapper


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_a_failing_blob_stops_the_others_midway(
    remote: RemoteView, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    monkeypatch.setattr(S3Remote, "PART_SIZE", 5 << 20)  # the big file's upload reports part by part
    rng = random.Random(3)
    files = {"engine.bin": rng.randbytes(BIG), "small.bin": rng.randbytes(4096)}
    builder = Store(tmp_path / "builder")
    store_put(write_tree(tmp_path / "art", files), model, env={"KILN_HOME": str(builder.root)})
    [entry] = list(builder.iter_entries())
    rem = open_remote(remote.url)
    small = next(f for f in builder.check_artifact(entry).files if f.path == "small.bin")
    moved = threading.Event()
    reported: list[int] = []

    def progress(n: int) -> None:
        reported.append(n)
        if n:
            moved.set()

    if direction == "pull":
        push(builder, rem, entry)
        name = "download"
    else:
        name = "upload"
    cls = type(rem)
    monkeypatch.setattr(cls, name, _fails_once_another_blob_moved(getattr(cls, name), blob_key(small.digest), moved))
    deployer = Store(tmp_path / "deployer")
    with pytest.raises(RemoteError, match="stand-in"):
        if direction == "pull":
            pull(deployer, rem, entry, progress)
        else:
            push(builder, rem, entry, progress)
    assert 0 < sum(reported) < BIG, f"engine.bin went on to its end after small.bin failed: {sum(reported)} bytes"
    if direction == "pull":
        assert list(deployer.iter_entries()) == []
        assert [p.name for p in (deployer.root / "tmp").iterdir()] == []  # no partial download stays
    else:
        assert remote_entry(rem, entry.model_hex, entry.key) is None  # nothing announced
        assert blob_key(small.digest) not in remote.objects()


def test_a_failing_part_stops_the_other_parts_of_an_s3_upload_midway(
    s3_view: Any, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parts of one multipart upload stop sending when one of them fails, so no part goes on
    uploading into an upload that has been aborted (S3 may keep such a part until a second abort).
    The failing part is a stand-in (a wrapper of upload_part that raises once the others started)."""
    from kiln.cache.remotes import _bounded

    part = 16 << 20
    monkeypatch.setattr(S3Remote, "PART_SIZE", part)
    size = 4 * part  # four parts, all in flight at once
    builder = Store(tmp_path / "builder")
    store_put(write_tree(tmp_path / "art", {"engine.bin": random.Random(4).randbytes(size)}), model,
              env={"KILN_HOME": str(builder.root)})
    [entry] = list(builder.iter_entries())
    rem = open_remote(s3_view.url)

    sent: dict[int, int] = {}  # bytes read from each part's body, by its start offset
    started, failed = threading.Event(), threading.Event()
    real_read = _bounded.FileSlice.read

    def counting_read(self: Any, n: int = -1) -> bytes:
        data = real_read(self, n)
        sent[self._start] = sent.get(self._start, 0) + len(data)
        if self._start and data:  # the other parts go on only once part 1 has failed: no race to win
            started.set()
            assert failed.wait(timeout=120), "part 1 never failed"  # a hang guard, not a timing
        return data

    monkeypatch.setattr(_bounded.FileSlice, "read", counting_read)
    real_upload_part = rem.client.upload_part

    def failing_part(**kw: Any) -> Any:
        if kw["PartNumber"] == 1:
            assert started.wait(timeout=120), "no other part started"  # a hang guard, not a timing
            failed.set()
            raise RemoteError("stand-in for a failed part")
        return real_upload_part(**kw)

    monkeypatch.setattr(rem.client, "upload_part", failing_part)
    with pytest.raises(RemoteError, match="stand-in"):
        push(builder, rem, entry)
    others = {start: n for start, n in sent.items() if start}
    assert others and all(n < part for n in others.values()), f"parts went on sending after part 1 failed: {others}"
