"""The model tree digest covers every file a build can read, or resolution fails naming the path.

Issue 12: the digest silently skipped unreadable and symlinked subdirectories, so two
different model trees got one key (and a lookup could return the other model's engine).
Each test here builds real trees on disk (links, FIFOs, unreadable entries) and resolves them
with the real code; the ones that could hang run the real CLI in a subprocess under a generous
timeout, so a hang fails the test instead of stalling the run.

Unreadable entries need a process that permissions apply to. When the tests run as root (as
on the project's test machine: ``id -u`` is 0), :func:`_unprivileged` drops the *effective*
uid and gid to ``nobody`` around the resolution (the real uid stays root, so it can be
restored); the trees then live in a world-traversable temporary directory, since pytest's
own (``/tmp/pytest-of-root``, mode 0700) cannot be entered as ``nobody``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from kiln.cache._hashmemo import HashMemo
from kiln.errors import ModelError
from kiln.models import locate_model, resolve_model

from ..cli._helpers import AOTI
from ..conftest import run_kiln, write_fake_model, write_hf_cache_model

NOBODY = 65534
HUNG = 120  # seconds: far past any resolution of these tiny trees; only a hang reaches it


def _digest(model: Path) -> str:
    return resolve_model(str(model), HashMemo(None)).tree_digest


def _twins(tmp_path: Path) -> tuple[Path, Path]:
    """Two model directories with identical top-level files."""
    return write_fake_model(tmp_path / "a"), write_fake_model(tmp_path / "b")


def _key(model: Path) -> subprocess.CompletedProcess:
    return run_kiln("key", str(model), *AOTI, timeout=HUNG)


def _clean_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2 with one ``kiln: error:`` line holding every needle, and no traceback."""
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("kiln: error:")]
    assert len(lines) == 1, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# --------------------------------------------------------------------------- symlinked subdirectories


def test_a_symlinked_subdirectory_is_hashed_under_the_links_path(tmp_path: Path) -> None:
    """`tokenizer -> original/tok`: original/* is ignored, so before the fix nothing of it was hashed."""
    a, b = _twins(tmp_path)
    for model, text in ((a, "A"), (b, "B")):
        (model / "original" / "tok").mkdir(parents=True)
        (model / "original" / "tok" / "tokenizer.json").write_text(text)
        (model / "tokenizer").symlink_to("original/tok")
    assert _digest(a) != _digest(b)
    files = {f.path for f in resolve_model(str(a)).files}
    assert "tokenizer/tokenizer.json" in files
    assert not any(f.startswith("original/") for f in files)


def test_a_subdirectory_linked_out_of_the_tree_is_an_error_naming_it(tmp_path: Path) -> None:
    a, b = _twins(tmp_path)
    for model, text in ((a, "A"), (b, "B")):
        shared = tmp_path / f"shared-{text}"
        shared.mkdir()
        (shared / "tokenizer.json").write_text(text)
        (model / "tokenizer").symlink_to(shared)
    with pytest.raises(ModelError, match=r"/a/tokenizer links to .*shared-A, outside the model's tree"):
        _digest(a)


def test_a_file_linked_out_of_the_tree_is_an_error_naming_it(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "m")
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("{}")
    (model / "tokenizer.json").unlink()
    (model / "tokenizer.json").symlink_to(elsewhere)
    _clean_error(_key(model), str(model / "tokenizer.json"), "outside the model's tree", str(elsewhere))


def test_a_symlink_cycle_is_refused_not_followed_forever(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "m")
    (model / "sub").mkdir()
    (model / "sub" / "again").symlink_to("..")
    _clean_error(_key(model), str(model / "sub" / "again"), "cycle")


def test_a_link_loop_is_refused(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "m")
    (model / "x.json").symlink_to("y.json")
    (model / "y.json").symlink_to("x.json")
    _clean_error(_key(model), str(model / "x.json"))


def test_links_that_multiply_the_tree_are_bounded(tmp_path: Path) -> None:
    """Two links to the next level, 40 levels deep: 2**40 paths; resolution stops at its entry bound."""
    model = write_fake_model(tmp_path / "m")
    for level in range(40):
        d = model / "levels" / str(level)
        d.mkdir(parents=True)
        (d / "f.json").write_text(str(level))
        if level:
            for name in ("left", "right"):
                (model / "levels" / str(level - 1) / name).symlink_to(f"../{level}")
    _clean_error(_key(model), "entries")


# --------------------------------------------------------------------------- FIFOs, sockets, devices


def test_a_fifo_behind_a_symlinked_directory_is_a_clean_error(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "m")
    (model / "original" / "tok").mkdir(parents=True)
    os.mkfifo(model / "original" / "tok" / "tokenizer.json")
    (model / "tokenizer").symlink_to("original/tok")
    _clean_error(_key(model), str(model / "tokenizer" / "tokenizer.json"), "FIFO")
    lookup = run_kiln("lookup", str(model), *AOTI, timeout=HUNG)
    _clean_error(lookup, "FIFO")


def test_a_fifo_in_the_model_directory_is_a_clean_error(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "m")
    os.mkfifo(model / "generation_config.json")
    _clean_error(_key(model), str(model / "generation_config.json"), "FIFO")


def test_a_socket_is_refused(tmp_path: Path) -> None:
    import socket

    model = write_fake_model(tmp_path / "m")
    path = model / "s.sock"
    if len(str(path)) > 100:
        pytest.skip(f"socket path {path} is longer than AF_UNIX allows")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(path))
        with pytest.raises(ModelError, match=r"s\.sock is a socket"):
            _digest(model)
    finally:
        sock.close()


def test_a_device_linked_in_is_refused_before_it_is_opened(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "m")
    (model / "weights.bin").symlink_to("/dev/zero")  # out of the tree, and a device
    with pytest.raises(ModelError, match=r"weights\.bin links to /dev/zero, outside the model's tree"):
        locate_model(str(model))


def test_check_safetensors_never_opens_a_fifo_for_reading(tmp_path: Path) -> None:
    """The public header check on a FIFO: an error, not a wait for a writer (run apart, in case it waits)."""
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    code = ("import sys\nfrom kiln.models import check_safetensors\nfrom kiln.errors import ModelError\n"
            "try:\n    check_safetensors(__import__('pathlib').Path(sys.argv[1]))\n"
            "except ModelError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=HUNG)
    assert r.returncode == 0 and "is a FIFO, not a regular file" in r.stdout, r.stdout + r.stderr


# --------------------------------------------------------------------------- unreadable entries


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary directory ``nobody`` can enter (pytest's own is 0700 under root)."""
    path = Path(tempfile.mkdtemp(prefix="kiln-tree-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for p in [path, *path.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(path)


@contextlib.contextmanager
def _unprivileged() -> Iterator[None]:
    """Run the block as a user that file permissions apply to (see the module docstring)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def _world_readable(model: Path) -> None:
    for p in [model, *model.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def test_an_unreadable_subdirectory_is_an_error_not_a_silent_skip(open_tmp: Path) -> None:
    a, b = _twins(open_tmp)
    for model, text in ((a, "A"), (b, "B")):
        (model / "tokenizer").mkdir()
        (model / "tokenizer" / "tokenizer.json").write_text(text)
        _world_readable(model)
        (model / "tokenizer").chmod(0)
    with _unprivileged():
        with pytest.raises(ModelError, match=r"cannot list model directory .*/a/tokenizer: Permission denied"):
            _digest(a)
        with pytest.raises(ModelError, match=r"/b/tokenizer"):
            _digest(b)


def test_an_unreadable_file_is_an_error_naming_it(open_tmp: Path) -> None:
    a, b = _twins(open_tmp)
    for model, text in ((a, "A"), (b, "B")):
        (model / "extra.bin").write_text(text)
        _world_readable(model)
        (model / "extra.bin").chmod(0)
    with _unprivileged():
        for model in (a, b):
            with pytest.raises(ModelError, match=rf"cannot read model file {model}/extra\.bin: Permission denied"):
                _digest(model)


def test_an_unreadable_file_is_refused_even_when_its_hash_is_memoised(open_tmp: Path) -> None:
    """The memo would answer without opening the file; the build's worker could not read it."""
    model = write_fake_model(open_tmp / "m")
    memo_dir = open_tmp / "memo"
    memo_dir.mkdir()
    _world_readable(model)
    memo_dir.chmod(0o777)
    resolve_model(str(model), HashMemo(memo_dir))
    (model / "model.safetensors").chmod(0)
    with _unprivileged():
        with pytest.raises(ModelError, match=r"model\.safetensors: Permission denied"):
            resolve_model(str(model), HashMemo(memo_dir))


def test_an_unreadable_ignored_directory_does_not_stop_resolution(open_tmp: Path) -> None:
    """original/ is never read by a build, so it is not entered (and cannot fail the resolution)."""
    model = write_fake_model(open_tmp / "m")
    (model / "original").mkdir()
    (model / "original" / "consolidated.00.pth").write_bytes(b"x")
    _world_readable(model)
    (model / "original").chmod(0)
    with _unprivileged():
        assert {f.path for f in resolve_model(str(model)).files} == {"config.json", "model.safetensors",
                                                                     "tokenizer.json"}


# --------------------------------------------------------------------------- the HF cache layout


def _hub_files(tokenizer: bytes = b"{}") -> dict[str, bytes]:
    return {
        "config.json": b'{"architectures": ["LlamaForCausalLM"], "num_attention_heads": 4, "max_position_embeddings": 4096}',
        "model.safetensors": b"w" * 1000,
        "tokenizer.json": tokenizer,
        "sub/extra.json": b"[]",
    }


def test_an_hf_snapshot_resolves_by_hub_id_and_as_a_directory(tmp_path: Path) -> None:
    """Snapshot files link to ../../blobs: outside the snapshot, inside the repository folder (the tree)."""
    hub = Path(os.environ["HF_HUB_CACHE"])
    snap = write_hf_cache_model(hub, "org/tiny", _hub_files(), commit="c" * 40)
    by_id = resolve_model("org/tiny")
    by_dir = resolve_model(str(snap))
    assert by_id.tree_digest == by_dir.tree_digest
    assert {f.path for f in by_id.files} == {"config.json", "model.safetensors", "tokenizer.json", "sub/extra.json"}


def test_an_hf_snapshot_link_out_of_the_repository_folder_is_refused(tmp_path: Path) -> None:
    hub = Path(os.environ["HF_HUB_CACHE"])
    snap = write_hf_cache_model(hub, "org/tiny", _hub_files(), commit="c" * 40)
    other = write_hf_cache_model(hub, "org/other", _hub_files(b'{"other": 1}'), commit="d" * 40)
    (snap / "tokenizer.json").unlink()
    (snap / "tokenizer.json").symlink_to(os.path.realpath(other / "tokenizer.json"))
    with pytest.raises(ModelError, match=r"tokenizer\.json links to .*models--org--other.*outside the model's tree "
                                         r".*models--org--tiny"):
        resolve_model("org/tiny")


def test_a_fifo_blob_in_the_hf_cache_is_refused(tmp_path: Path) -> None:
    hub = Path(os.environ["HF_HUB_CACHE"])
    snap = write_hf_cache_model(hub, "org/tiny", _hub_files(), commit="c" * 40)
    blob = Path(os.path.realpath(snap / "model.safetensors"))
    blob.unlink()
    os.mkfifo(blob)
    assert stat.S_ISFIFO(os.stat(snap / "model.safetensors").st_mode)
    r = run_kiln("key", "org/tiny", *AOTI, timeout=HUNG)
    _clean_error(r, str(snap / "model.safetensors"), "FIFO")
