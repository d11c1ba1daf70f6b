"""CUDA hardware classes: the first GPU CUDA would see (CUDA_VISIBLE_DEVICES), its SM and its model.

There is no GPU here: every test puts a stand-in ``nvidia-smi`` (a shell script written
below, not NVIDIA's tool) first on PATH. It answers only the two queries Kiln makes —
``--query-gpu=index,uuid,name,compute_cap --format=csv,noheader`` and ``-L`` — with rows in
nvidia-smi's own formats, and fails for anything else, so a changed query fails the tests
instead of silently reading nothing.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kiln.targets.hardware import cuda_class, cuda_sm, detect_cuda_sm, first_visible_gpu, normalize_gpu_model

pytestmark = pytest.mark.light

# Eight GPUs in nvidia-smi's csv,noheader format: a p5.48xlarge-like machine with one
# stranger (an L4) at index 3, so that picking the wrong device changes the answer.
H100 = "NVIDIA H100 80GB HBM3"
ROWS = [
    (i, f"GPU-{i:x}{i:x}{i:x}{i:x}a0b1-0000-1111-2222-33334444555{i}", "NVIDIA L4" if i == 3 else H100, "8.9" if i == 3 else "9.0")
    for i in range(8)
]
QUERY = "".join(f"{i}, {uuid}, {name}, {cap}\n" for i, uuid, name, cap in ROWS)
LIST = "".join(f"GPU {i}: {name} (UUID: {uuid})\n" for i, uuid, name, _ in ROWS)
UUID3 = ROWS[3][1]


def _stand_in(bin_dir: Path, *, query: str | None = QUERY, listing: str = LIST, fail: str = "") -> Path:
    """Write the stand-in nvidia-smi into ``bin_dir``; ``query=None`` answers like a machine without GPUs."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "query.txt").write_text(query or "")
    (bin_dir / "list.txt").write_text(listing)
    no_device = "echo 'No devices were found'; exit 6" if query is None else ""
    script = bin_dir / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        f"{fail}\n"
        f"{no_device}\n"
        'here=$(dirname "$0")\n'
        'if [ "$*" = "--query-gpu=index,uuid,name,compute_cap --format=csv,noheader" ]; then cat "$here/query.txt"; exit 0; fi\n'
        'if [ "$*" = "-L" ]; then cat "$here/list.txt"; exit 0; fi\n'
        'echo "stand-in nvidia-smi: unexpected arguments: $*" >&2; exit 2\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


@pytest.fixture
def smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = _stand_in(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return bin_dir


H100_CLASS = "cuda-sm90-nvidia-h100-80gb-hbm3"
L4_CLASS = "cuda-sm89-nvidia-l4"


@pytest.mark.parametrize(
    "visible,want",
    [
        (None, H100_CLASS),  # unset: every GPU, device 0 first
        ("3", L4_CLASS),
        ("3,0", L4_CLASS),  # enumerated in the order given
        (" 3 , 0", L4_CLASS),
        ("3gpu,0", L4_CLASS),  # read like strtol: "3gpu" is 3
        ("+3", L4_CLASS),
        ("", None),  # empty: no GPU
        ("-1", None),  # an invalid first entry hides everything
        ("NoDevFiles", None),  # what some schedulers set when they grant no GPU
        ("-1,3", None),
        ("8", None),  # past the last GPU
        ("3,3", None),  # a device named twice: CUDA shows none
        (UUID3, L4_CLASS),
        (UUID3[:12], L4_CLASS),  # a unique UUID prefix is enough
        ("GPU-", None),  # ... an ambiguous one is not
        (f"{UUID3},0", L4_CLASS),  # a UUID list stops at the first entry without the prefix
        ("GPU-ffff", None),  # no such GPU
    ],
)
def test_first_visible_gpu_follows_cuda_visible_devices(smi: Path, monkeypatch: pytest.MonkeyPatch, visible: str | None, want: str | None) -> None:
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert cuda_class() == want
    assert detect_cuda_sm() == (None if want is None else cuda_sm(want))


def test_the_environment_is_read_on_every_call(smi: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cuda_class() == H100_CLASS
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert cuda_class() == L4_CLASS
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert cuda_class() is None
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert cuda_class() == H100_CLASS


def test_mig_devices_count_as_their_parent_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # nvidia-smi -L nests a GPU's MIG devices under it; --query-gpu lists only the GPUs.
    rows = "0, GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77, NVIDIA A100-SXM4-40GB, 8.0\n1, GPU-7a7b0000-0000-0000-0000-000000000001, NVIDIA L4, 8.9\n"
    listing = (
        "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77)\n"
        "  MIG 1g.5gb      Device  0: (UUID: MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f)\n"
        "  MIG 1g.5gb      Device  1: (UUID: MIG-0a1b2c3d-0000-5de3-91c7-45d71c87eb3f)\n"
        "GPU 1: NVIDIA L4 (UUID: GPU-7a7b0000-0000-0000-0000-000000000001)\n"
    )
    bin_dir = _stand_in(tmp_path / "bin", query=rows, listing=listing)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    a100 = "cuda-sm80-nvidia-a100-sxm4-40gb"
    for visible, want in [
        ("MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f", a100),
        ("MIG-0a1b", a100),  # prefix
        ("MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f,MIG-0a1b2c3d-0000-5de3-91c7-45d71c87eb3f", a100),  # two slices: no repeat
        ("MIG-GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77/1/0", a100),  # the pre-R470 form
        ("MIG-ffff", None),
        ("1", "cuda-sm89-nvidia-l4"),
    ]:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert cuda_class() == want, visible


def test_gpu_fields_come_from_the_row_of_that_device(smi: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    gpu = first_visible_gpu()
    assert gpu is not None
    assert (gpu.index, gpu.uuid, gpu.name, gpu.sm) == (3, UUID3, "NVIDIA L4", 89)


@pytest.mark.parametrize(
    "stand_in",
    [
        {"query": None},  # nvidia-smi present, no device (exit 6)
        {"query": ""},  # no rows
        {"fail": "echo 'Field \"compute_cap\" is not a valid field to query.' >&2; exit 2"},  # driver too old
        {"query": "0, GPU-1234, NVIDIA H100 80GB HBM3, [N/A]\n"},  # no compute capability
    ],
)
def test_no_usable_gpu_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stand_in: dict) -> None:
    bin_dir = _stand_in(tmp_path / "bin", **stand_in)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert cuda_class() is None
    assert detect_cuda_sm() is None


def test_without_nvidia_smi_there_is_no_cuda_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert cuda_class() is None
    assert detect_cuda_sm() is None


@pytest.mark.parametrize(
    "name,model",
    [
        ("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"),
        ("NVIDIA A100-SXM4-40GB", "nvidia-a100-sxm4-40gb"),
        ("Tesla T4", "tesla-t4"),
        ("  NVIDIA  A10G ", "nvidia-a10g"),
        ("NVIDIA GB200", "nvidia-gb200"),
    ],
)
def test_gpu_model_normalisation(name: str, model: str) -> None:
    assert normalize_gpu_model(name) == model


@pytest.mark.parametrize(
    "hardware_class,sm",
    [
        ("cuda-sm90-nvidia-h100-80gb-hbm3", 90),
        ("cuda-sm90", 90),  # the older form, as --toolchain hardware= pins write it
        ("cuda-sm100-nvidia-b200", 100),
        ("cuda-sm120", 120),
        ("CUDA-SM86-nvidia-a10g", 86),
        ("cuda-sm90x", None),
        ("cuda-smx", None),
        ("cpu-x86_64-avx512", None),
        ("neuron-inf2", None),
        ("", None),
        (None, None),
    ],
)
def test_cuda_sm_reads_both_forms(hardware_class: str | None, sm: int | None) -> None:
    assert cuda_sm(hardware_class) == sm
