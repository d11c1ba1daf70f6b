"""Remote reads are bounded in bytes, kinds of file and time, and never print credentials.

Issue 12: a download is capped at its declared size (a file-remote blob linked to /dev/zero,
an S3 GET longer than its HEAD, filled the disk); a file remote opens only regular files (a
FIFO hung every command); every S3 request and transfer has a total deadline (a server that
trickles bytes hung ``kiln lookup`` forever, as botocore's read timeout is per recv); and URL
credentials never appear in a remote's messages.

Each case goes through the real CLI in a subprocess against real files or a real HTTP server
on 127.0.0.1 (:mod:`tests.remote.hostile_s3`, a stand-in that misbehaves on demand) and
checks: exit 2, one ``kiln: error:`` line, no traceback, no temp file left in the store,
nothing published, and that the command *finished* (under a generous subprocess timeout,
with the deadline set small in the URL; nothing here asserts how fast).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Iterator

import pytest

from kiln.cache.remotes import FileRemote, open_remote
from kiln.errors import RemoteError
from tests.conftest import run_kiln
from tests.remote.conftest import aws_env, blob_key, free_port, kiln_remote, spec_args, store_put, write_tree
from tests.remote.hostile_s3 import HostileS3, hostile_s3

SECRET = "kilnUrlSecretSentinel"
EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # sha256 of b""
DEADLINE = 2  # seconds, per request; transfers of these small blobs get about as much


def _files() -> dict[str, bytes]:
    rng = random.Random(12)
    # An empty file: its blob is declared 0 bytes, which /dev/zero and a FIFO also "have".
    return {"engine/model.pt2": rng.randbytes(300_000), "weights.bin": rng.randbytes(200_000),
            "config.json": b"{}", "empty.txt": b""}


@pytest.fixture
def artifact(tmp_path: Path, model: Path) -> tuple[str, Path]:
    """An artifact pushed to a file remote: (build key, remote root)."""
    key = store_put(write_tree(tmp_path / "art", _files()), model)
    root = tmp_path / "shared"
    r = kiln_remote(str(root), "push", "--key", key)
    assert r.returncode == 0, r.stderr
    return key, root


def _entry_path(root: Path) -> Path:
    (entry,) = (root / "index").rglob("*.json")
    return entry


def _big_blob() -> tuple[str, int]:
    """(object key, size) of the artifact's largest file blob."""
    data = _files()["engine/model.pt2"]
    return blob_key("sha256:" + hashlib.sha256(data).hexdigest()), len(data)


def _assert_refused(r, home: Path, *needles: str) -> None:  # type: ignore[no-untyped-def]
    """Exit 2 with one clean error line naming ``needles``; nothing left or published in ``home``."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    # One line (`pull` reports a refused artifact as a warning, then exits 2, as `pull --all` does).
    errors = [line for line in r.stderr.splitlines() if line.startswith(("kiln: error: ", "kiln: WARNING: "))]
    assert len(errors) == 1, r.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert SECRET not in r.stdout + r.stderr, "a URL credential was printed"
    tmp = home / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir()), f"temp files left: {list(tmp.iterdir())}"
    ls = run_kiln("ls", "--json", env={"KILN_HOME": str(home)})
    assert ls.returncode == 0 and json.loads(ls.stdout) == [], ls.stdout


# --------------------------------------------------------------------------- file remotes


def test_file_remote_blob_linked_to_dev_zero_is_refused_not_copied(artifact: tuple[str, Path], tmp_path: Path) -> None:
    """A 0-byte blob replaced by a link to /dev/zero (stat says 0 bytes, reading never ends)."""
    key, root = artifact
    blob = root / blob_key(EMPTY)
    blob.unlink()
    blob.symlink_to("/dev/zero")
    home = tmp_path / "deployer"
    r = kiln_remote(str(root), "pull", "--key", key, env={"KILN_HOME": str(home)})
    _assert_refused(r, home, blob_key(EMPTY), "character device, not a regular file; remove it")


def test_fifo_in_a_file_remote_never_hangs(artifact: tuple[str, Path], model: Path, tmp_path: Path) -> None:
    key, root = artifact
    blob = root / blob_key(EMPTY)
    blob.unlink()
    os.mkfifo(blob)  # no writer will ever come: a blocking open waits forever
    home = tmp_path / "deployer"
    r = kiln_remote(str(root), "pull", "--key", key, env={"KILN_HOME": str(home)})
    _assert_refused(r, home, blob_key(EMPTY), "is a FIFO, not a regular file; remove it")

    # A FIFO where the index entry should be: a lookup reports it and finishes, a listing skips it.
    entry = _entry_path(root)
    entry.unlink()
    os.mkfifo(entry)
    r = kiln_remote(str(root), "lookup", str(model), *spec_args(), env={"KILN_HOME": str(home)})
    assert r.returncode in (1, 2), (r.returncode, r.stderr)  # a refused entry (a miss) or an error
    assert "Traceback" not in r.stderr and "is a FIFO, not a regular file" in r.stderr, r.stderr
    r = kiln_remote(str(root), "ls", "--remote", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == [], (r.stdout, r.stderr)


def test_file_remote_download_writes_at_most_the_declared_size(tmp_path: Path) -> None:
    """The cap is the remote's own (pull also compares sizes first, but a file can grow after)."""
    root = tmp_path / "remote"
    write_tree(root, {"blobs/sha256/big": bytes(1 << 20), "blobs/sha256/small": b"abc"})
    (root / "blobs/sha256/zero").symlink_to("/dev/zero")
    remote = open_remote(str(root))
    assert isinstance(remote, FileRemote)
    dest = tmp_path / "dl"
    for name, declared, says in [("big", 10, "1048576 bytes, but 10"), ("small", 5, "3 bytes, but 5"),
                                 ("zero", 0, "character device")]:
        with pytest.raises(RemoteError, match=says):
            remote.download(f"blobs/sha256/{name}", dest, declared)
        assert not dest.exists(), f"{name}: partial download left"
    remote.download("blobs/sha256/small", dest, 3)
    assert dest.read_bytes() == b"abc"


# --------------------------------------------------------------------------- S3


@pytest.fixture
def server(artifact: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[HostileS3]:
    """The stand-in, holding a copy of the file remote's objects under prefix ``p``."""
    aws_env(monkeypatch)
    _key, root = artifact
    with hostile_s3() as s:
        for p in root.rglob("*"):
            if p.is_file() and not p.name.startswith("."):
                s.objects["p/" + p.relative_to(root).as_posix()] = p.read_bytes()
        yield s


def _url(server: HostileS3, **query: object) -> str:
    """The stand-in's URL with credentials in the endpoint (they must never be printed)."""
    endpoint = server.endpoint.replace("http://", f"http://KEY:{SECRET}@")
    return f"s3://b/p?endpoint={endpoint}" + "".join(f"&{k}={v}" for k, v in query.items())


def test_trickling_s3_server_cannot_hang_lookup(server: HostileS3, model: Path, tmp_path: Path) -> None:
    """Headers one byte per 0.1 s: every recv succeeds, so only a total deadline ends the wait."""
    server.default = "trickle-headers"
    home = tmp_path / "deployer"
    r = kiln_remote(_url(server, deadline=DEADLINE), "lookup", str(model), *spec_args(), env={"KILN_HOME": str(home)})
    _assert_refused(r, home, "s3://b/p/index/", "http://***@127.0.0.1", f"deadline of {DEADLINE} s",
                    "?deadline=SECONDS", "KILN_S3_DEADLINE")


def test_trickling_s3_download_is_bounded_and_cleaned_up(
    server: HostileS3, artifact: tuple[str, Path], tmp_path: Path
) -> None:
    key, _root = artifact
    obj, _size = _big_blob()
    server.modes["p/" + obj] = "trickle-body"
    home = tmp_path / "deployer"
    r = kiln_remote(_url(server, deadline=DEADLINE), "pull", "--key", key, env={"KILN_HOME": str(home)})
    _assert_refused(r, home, f"s3://b/p/{obj}", "took longer than its deadline", "to download", "KILN_S3_DEADLINE")
    assert server.sent.get("p/" + obj, 0) > 0, "the trickle never started: the test tests nothing"


@pytest.mark.parametrize("mode", ["long", "endless", "short"])
def test_s3_get_of_another_length_than_declared_is_refused(
    mode: str, server: HostileS3, artifact: tuple[str, Path], tmp_path: Path
) -> None:
    """HEAD says the manifest's size; GET sends more (with a Content-Length, or without one,
    forever) or fewer bytes. Nothing beyond the declared size is written, and the object is named."""
    key, _root = artifact
    obj, size = _big_blob()
    server.modes["p/" + obj] = mode
    server.extra = 1000 if mode == "short" else 32 << 20
    home = tmp_path / "deployer"
    r = kiln_remote(_url(server, deadline=60), "pull", "--key", key, env={"KILN_HOME": str(home)})
    actual = {"long": str(size + server.extra), "endless": f"more than {size}", "short": str(size - 1000)}[mode]
    _assert_refused(r, home, obj, "s3://b/p at http://***@127.0.0.1", f"has {actual} bytes, but {size} were declared")


def test_endpoint_credentials_never_printed(
    server: HostileS3, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Userinfo in AWS_ENDPOINT_URL (and ?endpoint=, in the tests above) is redacted in messages."""
    home = tmp_path / "deployer"
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://KEY:{SECRET}@127.0.0.1:{free_port()}")  # nothing listens
    r = kiln_remote("s3://b/p?deadline=30", "lookup", str(model), *spec_args(), env={"KILN_HOME": str(home)})
    _assert_refused(r, home, "cannot reach the S3 endpoint http://***@127.0.0.1")

    server.default = "trickle-headers"
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint.replace("http://", f"http://KEY:{SECRET}@"))
    r = kiln_remote("s3://b/p?deadline=1", "ls", "--remote")
    assert r.returncode == 2 and "http://***@127.0.0.1" in r.stderr, r.stderr
    assert SECRET not in r.stdout + r.stderr

    r = kiln_remote(f"s3://b/p?deadline=soon&endpoint=http://KEY:{SECRET}@127.0.0.1:1", "ls", "--remote")
    assert r.returncode == 2 and "deadline 'soon' is not a positive number" in r.stderr, r.stderr
    assert SECRET not in r.stdout + r.stderr


def test_an_s3_server_without_range_support_is_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that ignores Range sends the whole object for every ranged GET. An object of one
    part downloads (that answer is the object); one of several parts is refused as a server Kiln
    cannot download from in parts, not as an object longer than declared, which it is not."""
    from kiln.cache.remotes.s3 import S3Remote

    aws_env(monkeypatch)
    monkeypatch.setattr(S3Remote, "PART_SIZE", 1 << 20)
    # One part at a time, so part 0 answers first: later parts always said it, part 0 did not.
    monkeypatch.setattr(S3Remote, "CONCURRENCY", 1)
    small, large = random.Random(3).randbytes(100_000), random.Random(4).randbytes(3 << 20)
    with hostile_s3() as server:
        server.objects.update({"p/small": small, "p/large": large})
        server.default = "no-range"
        rem = open_remote(f"s3://b/p?endpoint={server.endpoint}&deadline=60")
        assert isinstance(rem, S3Remote)

        assert rem.download("small", tmp_path / "small", len(small)) == (
            "sha256:" + hashlib.sha256(small).hexdigest(), len(small))
        assert (tmp_path / "small").read_bytes() == small

        with pytest.raises(RemoteError) as refused:
            rem.download("large", tmp_path / "large", len(large))
    message = str(refused.value)
    assert "without a Content-Range: Kiln needs a server that supports Range requests" in message, message
    assert "s3://b/p/large" in message and "were declared" not in message, message
    assert not (tmp_path / "large").exists()


def test_an_s3_answer_from_another_offset_is_refused_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that answers every ranged GET from byte 0 (a 206 of the asked length): the
    second part's Content-Range starts at 0, not where it was asked to. That is named before a
    byte of it is written, not found later by the hash as a corrupt object."""
    from kiln.cache.remotes.s3 import S3Remote

    aws_env(monkeypatch)
    monkeypatch.setattr(S3Remote, "PART_SIZE", 1 << 20)
    monkeypatch.setattr(S3Remote, "CONCURRENCY", 1)  # parts in order: the second is the first refused
    data = random.Random(5).randbytes(3 << 20)
    with hostile_s3() as server:
        server.objects["p/large"] = data
        server.default = "wrong-range"
        rem = open_remote(f"s3://b/p?endpoint={server.endpoint}&deadline=60")
        with pytest.raises(RemoteError) as refused:
            rem.download("large", tmp_path / "large", len(data))  # type: ignore[union-attr]
    message = str(refused.value)
    assert "answered a read of s3://b/p/large from byte 1048576 with Content-Range 'bytes 0-1048575/3145728'" in message, message
    assert "honours Range requests" in message, message
    assert not (tmp_path / "large").exists()
