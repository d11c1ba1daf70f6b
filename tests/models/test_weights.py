"""Weight files checked before a build starts any worker: every safetensors header against its file.

Each corrupt file is made from a real file written by the safetensors library, then damaged
the way downloads and hostile inputs damage files; each is also handed to the safetensors
library itself, which must refuse it too (so the check never refuses a file the library
reads), and the valid files it writes must pass.
"""

from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path
from typing import Callable

import pytest

from kiln.errors import ModelError
from kiln.models import check_safetensors, check_weight_files, resolve_model

from ..conftest import LLAMA_CONFIG, run_kiln, write_hf_cache_model

np = pytest.importorskip("numpy")
safetensors_numpy = pytest.importorskip("safetensors.numpy")


def write_valid(path: Path) -> Path:
    tensors = {
        "model.embed_tokens.weight": np.arange(64, dtype=np.float32).reshape(8, 8),
        "model.norm.weight": np.ones(8, dtype=np.float16),
        "lm_head.bias": np.zeros(0, dtype=np.float32),  # zero elements: an empty span
        "model.layers.0.mask": np.array([True, False, True]),
        "scalar": np.array(3, dtype=np.int64),
    }
    safetensors_numpy.save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def library_refuses(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            for name in f.keys():
                f.get_tensor(name)
    except Exception:
        return True
    return False


def _split(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header: object, rest: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + rest


def _edit_tensor(edit: Callable[[dict], None]) -> Callable[[bytes], bytes]:
    def damage(data: bytes) -> bytes:
        header, rest = _split(data)
        edit(header)
        return _join(header, rest)
    return damage


def _overlap(header: dict) -> None:
    header["model.norm.weight"]["data_offsets"] = list(header["model.embed_tokens.weight"]["data_offsets"][:1]) + [
        header["model.embed_tokens.weight"]["data_offsets"][0] + 16]


DAMAGES = {
    "five bytes": (lambda d: d[:5], r"it is 5 bytes, shorter than the 8-byte header length \(truncated\)"),
    "cut in the header": (lambda d: d[:40], r"header length field says \d+ bytes, past the end of the 40-byte file"),
    "absurd length": (lambda d: struct.pack("<Q", 2**63) + d[8:], r"more than safetensors allows \(100000000\)"),
    "length just over the cap": (lambda d: struct.pack("<Q", 100_000_001) + d[8:], "more than safetensors allows"),
    "garbage header": (lambda d: struct.pack("<Q", 16) + b"\xff\xfe{not json!!!" + d[24:], "its header is not UTF-8 JSON"),
    "header is an array": (lambda d: _join([1, 2, 3], b""), "its header is JSON list, not an object of tensors"),
    "deeply nested header": (lambda d: _join(None, b"")[:0] + struct.pack("<Q", 200_000) + b"[" * 200_000,
                             "its header is not UTF-8 JSON"),
    "data cut off": (lambda d: d[:-100], r"outside the \d+ bytes of data after the header \(truncated\?\)"),
    "bytes appended": (lambda d: d + b"\0" * 16, r"its tensors cover \d+ of the \d+ bytes of data after the header"),
    "shape does not match the span": (_edit_tensor(lambda h: h["model.norm.weight"].update(shape=[9])),
                                      "of dtype F16 and shape \\[9\\] needs 18 bytes, but its data_offsets span 16"),
    "absurd shape": (_edit_tensor(lambda h: h["model.norm.weight"].update(shape=[10**30, 10**30])),
                     "needs .* bytes, but its data_offsets span 16"),
    "negative shape": (_edit_tensor(lambda h: h["model.norm.weight"].update(shape=[-8])), "not a list of non-negative"),
    "overlapping tensors": (_edit_tensor(_overlap), "tensors overlap or leave a gap|needs"),
    "offsets not a pair": (_edit_tensor(lambda h: h["scalar"].update(data_offsets=[0])), r"has data_offsets \[0\], not \[begin, end\]"),
    "tensor not an object": (_edit_tensor(lambda h: h.update(scalar="x")), "is described by 'x', not an object"),
    "metadata not strings": (_edit_tensor(lambda h: h.update(__metadata__={"format": 1})), "__metadata__ is not an object of strings"),
    "random bytes": (lambda d: random.Random(0).randbytes(4096), "not a valid safetensors file"),
}


def test_files_the_library_writes_pass(tmp_path: Path) -> None:
    path = write_valid(tmp_path / "model.safetensors")
    assert check_safetensors(path) == 5 and not library_refuses(path)
    empty = tmp_path / "empty.safetensors"
    safetensors_numpy.save_file({}, str(empty))
    assert check_safetensors(empty) == 0


@pytest.mark.parametrize("name", list(DAMAGES))
def test_damaged_files_are_refused_naming_the_file_and_the_damage(tmp_path: Path, name: str) -> None:
    damage, message = DAMAGES[name]
    path = tmp_path / "model-00001-of-00002.safetensors"
    path.write_bytes(damage(write_valid(tmp_path / "valid.safetensors").read_bytes()))
    assert library_refuses(path), "the safetensors library reads it, so the check must not refuse it"
    with pytest.raises(ModelError, match=message) as info:
        check_safetensors(path)
    text = str(info.value)
    assert text.startswith(f"weight file {path} is not a valid safetensors file: ") and "\n" not in text
    assert text.endswith("re-download the model (an interrupted download?) or replace the file.")


def _model_dir(root: Path, weights: bytes) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    (root / "tokenizer.json").write_text("{}")
    (root / "model.safetensors").write_bytes(weights)
    return root


def test_a_build_with_a_truncated_weight_file_fails_before_any_worker(tmp_path: Path) -> None:
    good = write_valid(tmp_path / "good.safetensors").read_bytes()
    model = _model_dir(tmp_path / "m", good[: len(good) // 2])
    home = tmp_path / "home"
    r = run_kiln("build", str(model), "--target", "torch-aoti", "--n-positions", "32", env={"KILN_HOME": str(home)})
    assert r.returncode == 2, r.stdout + r.stderr
    # Progress lines may come first on stderr (build reports its stages there); the error is one line, last.
    errors = [line for line in r.stderr.splitlines() if line.startswith("kiln: error: ")]
    assert len(errors) == 1 and r.stderr.splitlines()[-1] == errors[0], r.stderr
    assert errors[0].startswith(f"kiln: error: weight file {model / 'model.safetensors'} is not a valid safetensors file: ")
    assert "Traceback" not in r.stderr and "worker log" not in r.stderr
    # No worker ran: no build directory, no build log, nothing published (the store's layout may
    # exist: a build checks it can write the store before any expensive check).
    assert not list((home / "builds").glob("*")) and not list((home / "logs").glob("*"))
    assert not list((home / "index").glob("**/*.json"))


def test_a_shard_index_naming_a_missing_shard_is_refused(tmp_path: Path) -> None:
    model = _model_dir(tmp_path / "m", write_valid(tmp_path / "v.safetensors").read_bytes())
    os.rename(model / "model.safetensors", model / "model-00001-of-00002.safetensors")
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ModelError, match="names the shard 'model-00002-of-00002.safetensors', which is not in the model"):
        check_weight_files(resolve_model(str(model)))
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["x"]}))
    with pytest.raises(ModelError, match="has no weight_map object"):
        check_weight_files(resolve_model(str(model)))


def test_hub_snapshots_are_checked_through_their_links(tmp_path: Path) -> None:
    valid = write_valid(tmp_path / "v.safetensors").read_bytes()
    hub = Path(os.environ["HF_HUB_CACHE"])
    write_hf_cache_model(hub, "org/good", {"config.json": json.dumps(LLAMA_CONFIG).encode(), "model.safetensors": valid},
                         commit="a" * 40)
    check_weight_files(resolve_model("org/good"))
    write_hf_cache_model(hub, "org/bad", {"config.json": json.dumps(LLAMA_CONFIG).encode(),
                                          "model.safetensors": valid[:-1]}, commit="b" * 40)
    with pytest.raises(ModelError, match="snapshots/b{40}/model.safetensors is not a valid safetensors file"):
        check_weight_files(resolve_model("org/bad"))
