"""Long steps say what they are doing on stderr (results stay on stdout)."""

from __future__ import annotations

import json
from pathlib import Path

from ..conftest import run_kiln, write_fake_model

PINS = ["--toolchain", "torch=2.0.0", "--toolchain", "transformers=5.0.0", "--toolchain", "hardware=cpu-test"]


def test_hashing_a_large_model_file_is_announced_once(tmp_path: Path) -> None:
    model = write_fake_model(tmp_path / "model")
    with open(model / "model-00002-of-00002.safetensors", "wb") as f:  # 64 MiB, sparse
        header = json.dumps({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}).encode()
        f.write(len(header).to_bytes(8, "little") + header + b"\0")
        f.truncate(64 << 20)
    args = ["key", str(model), "--target", "torch-aoti", "--n-positions", "64", *PINS]
    first = run_kiln(*args)
    assert first.returncode == 0, first.stderr
    assert "hashing model-00002-of-00002.safetensors (64.0 MiB)" in first.stderr
    assert len(first.stdout.split()) == 1  # the key alone on stdout
    second = run_kiln(*args)  # memoised: nothing to announce
    assert second.returncode == 0 and "hashing" not in second.stderr and second.stdout == first.stdout
