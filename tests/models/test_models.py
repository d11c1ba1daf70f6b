"""Model resolution: local directories and an offline HF cache laid out on disk."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from kiln.models import parse_model_ref, resolve_model
from kiln.cache._hashmemo import HashMemo
from kiln.errors import ModelNotFoundError, SpecError

from ..conftest import write_fake_model, write_hf_cache_model

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def _flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_local_digest_is_stable_and_ignores_docs(tmp_path: Path) -> None:
    m = write_fake_model(tmp_path / "m")
    first = resolve_model(str(m))
    (m / "README.md").write_text("edited docs\n")
    assert resolve_model(str(m)).tree_digest == first.tree_digest
    assert {f.path for f in first.files} == {"config.json", "model.safetensors", "tokenizer.json"}


@pytest.mark.parametrize("rel", [
    "README.md", "docs/guide.md", "a.mdx", "md", "LICENSE", "LICENSE.txt", "sub/LICENSE", "NOTICE", "USE_POLICY.md",
    ".gitattributes", "sub/.gitattributes", ".gitignore", "original/consolidated.00.pth", "original", "originals/x",
    ".git/HEAD", ".cache/huggingface/download/x.lock", ".huggingface/y", "config.json", "model.safetensors",
])
def test_the_ignore_rule_is_fnmatch_over_each_pattern(rel: str) -> None:
    """ignored() and directory pruning match exactly what fnmatch does pattern by pattern (they run
    as one compiled expression, for speed): the selection rule the digest's docs state."""
    from fnmatch import fnmatch

    from kiln.models._tree import MODEL_FILE_IGNORES, _pruned, ignored

    assert ignored(rel) == any(fnmatch(rel, p) for p in MODEL_FILE_IGNORES)
    assert _pruned(rel) == any(p.endswith("*") and fnmatch(rel + "/", p) for p in MODEL_FILE_IGNORES)


def test_one_byte_in_a_weight_file_changes_the_digest(tmp_path: Path) -> None:
    m = write_fake_model(tmp_path / "m", weight_bytes=10_000)
    memo = HashMemo(tmp_path / "memo")
    before = resolve_model(str(m), memo).tree_digest
    _flip_byte(m / "model.safetensors")
    assert resolve_model(str(m), memo).tree_digest != before


def test_same_bytes_elsewhere_same_digest(tmp_path: Path) -> None:
    a = write_fake_model(tmp_path / "a")
    b = write_fake_model(tmp_path / "b")
    assert resolve_model(str(a)).tree_digest == resolve_model(str(b)).tree_digest


def test_hash_memo_avoids_rehashing_and_notices_changes(tmp_path: Path) -> None:
    m = write_fake_model(tmp_path / "m", weight_bytes=1_000_000)
    memo = HashMemo(tmp_path / "memo")
    resolve_model(str(m), memo)
    first = memo.hashed_bytes
    assert first >= 1_000_000
    resolve_model(str(m), memo)
    assert memo.hashed_bytes == first  # nothing re-read
    # Rewrite with the same size and restore the mtime: ctime still moves, so it is re-hashed.
    st = os.stat(m / "model.safetensors")
    _flip_byte(m / "model.safetensors")
    os.utime(m / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))
    digest = resolve_model(str(m), memo).tree_digest
    assert memo.hashed_bytes >= first + 1_000_000
    assert digest == resolve_model(str(m), HashMemo(None)).tree_digest


def _hub_files(weights: bytes) -> dict[str, bytes]:
    return {
        "config.json": b'{"architectures": ["LlamaForCausalLM"], "num_attention_heads": 4, "max_position_embeddings": 128}',
        "model.safetensors": weights,
        "tokenizer.json": b"{}",
    }


def test_hub_id_resolves_offline_from_the_cache(tmp_path: Path) -> None:
    hub = Path(os.environ["HF_HUB_CACHE"])
    weights = os.urandom(200_000)
    write_hf_cache_model(hub, "org/tiny", _hub_files(weights), commit=COMMIT_A)
    memo = HashMemo(tmp_path / "memo")
    src = resolve_model("org/tiny", memo)
    assert src.kind == "hub" and src.repo_id == "org/tiny" and src.commit == COMMIT_A
    by_path = {f.path: f for f in src.files}
    assert by_path["model.safetensors"].sha256 == hashlib.sha256(weights).hexdigest()
    # The weights' sha256 came from the blob name: only the small files were read.
    assert memo.hashed_bytes < 1000
    # The digest equals that of a plain local copy of the same files.
    local = tmp_path / "copy"
    local.mkdir()
    for name, data in _hub_files(weights).items():
        (local / name).write_bytes(data)
    assert resolve_model(str(local)).tree_digest == src.tree_digest


def test_hub_revisions_resolve_to_their_commits(tmp_path: Path) -> None:
    hub = Path(os.environ["HF_HUB_CACHE"])
    write_hf_cache_model(hub, "org/tiny", _hub_files(b"x" * 1000), commit=COMMIT_A)
    write_hf_cache_model(hub, "org/tiny", _hub_files(b"y" * 1000), commit=COMMIT_B, ref="v2")
    main = resolve_model("org/tiny")
    v2 = resolve_model("org/tiny@v2")
    pinned = resolve_model(f"org/tiny@{COMMIT_A}")
    assert (main.commit, v2.commit, pinned.commit) == (COMMIT_A, COMMIT_B, COMMIT_A)
    assert main.tree_digest == pinned.tree_digest != v2.tree_digest


def test_hub_id_missing_offline_says_how_to_get_it() -> None:
    with pytest.raises(ModelNotFoundError, match=r"org/absent.*HF_HUB_OFFLINE=1 is set.*run `hf download org/absent`"):
        resolve_model("org/absent")
    with pytest.raises(ModelNotFoundError, match=r"`hf download org/absent --revision v2`"):
        resolve_model("org/absent@v2")


@pytest.mark.parametrize("ref", ["s3://", "s3://bucket/model?x=1", "https://x/y", "", "not a ref!"])
def test_bad_refs(ref: str) -> None:
    with pytest.raises(SpecError):
        parse_model_ref(ref)


def test_missing_local_dir() -> None:
    with pytest.raises(ModelNotFoundError, match=r"no such directory: ./no/such/dir \(./no does not exist\)"):
        resolve_model("./no/such/dir")
