"""Hardware classes that change a build's output, detected without importing torch.

Inductor's CPU code generator picks its vector ISA (AVX-512, AVX2, NEON…) from the build
machine, so a CPU engine is tied to an ISA class; CUDA engines are tied to the GPU's compute
capability (SM); Neuron graphs to the chip generation (inf2 / trn1).
"""

from __future__ import annotations

import functools
import os
import platform
import re
from dataclasses import dataclass

_AVX512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
_X86_EXTRAS = (
    ("avx512_vnni", "vnni"), ("avx512_bf16", "bf16"), ("avx512_fp16", "fp16"),
    ("amx_tile", "amx"), ("amx_bf16", "amxbf16"), ("amx_int8", "amxint8"),
)


@functools.lru_cache(maxsize=1)
def cpu_class() -> str:
    machine = platform.machine().lower()
    if machine in ("amd64", "x86_64"):
        flags: set[str] = set()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("flags"):
                        flags = set(line.split(":", 1)[1].split())
                        break
        except OSError:
            pass
        # Inductor compiles with -march=native and picks AVX-512 VNNI/BF16 and AMX kernels
        # when present, so an engine may use any of these: they are all part of the class.
        if _AVX512 <= flags:
            extras = [name for flag, name in _X86_EXTRAS if flag in flags]
            return "cpu-x86_64-avx512" + "".join("+" + e for e in extras)
        if "avx2" in flags:
            return "cpu-x86_64-avx2" + ("+fma" if "fma" in flags else "")
        return "cpu-x86_64"
    if machine in ("arm64", "aarch64"):
        return "cpu-aarch64"
    return f"cpu-{machine}"


# ----------------------------------------------------------------------------- CUDA
#
# A CUDA engine is tied to the compute capability (SM) of the GPU it was built on, and
# TensorRT's tactic choice to the GPU itself, so the class names both: ``cuda-sm90-nvidia-h100-80gb-hbm3``.
# The ``cuda-sm<N>`` prefix is the older form of the class (and what ``--toolchain hardware=``
# pins often say); :func:`cuda_sm` reads the SM from either.

_CLASS_RE = re.compile(r"cuda-sm(\d+)(?:-|$)")


@dataclass(frozen=True)
class Gpu:
    """One GPU as ``nvidia-smi --query-gpu=index,uuid,name,compute_cap`` reports it."""

    index: int
    uuid: str  # GPU-xxxxxxxx-…
    name: str  # NVIDIA H100 80GB HBM3
    sm: int | None  # 90 for compute capability 9.0; None where nvidia-smi gave none


def normalize_gpu_model(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``: lowercase, every run of other characters one '-'.

    Stable across driver releases as long as nvidia-smi's product name is; the SM is in
    the class separately, so code that only cares about compatibility never parses this.
    """
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def cuda_sm(hardware_class: str | None) -> int | None:
    """The SM of a CUDA hardware class (``cuda-sm90-nvidia-h100-80gb-hbm3`` or ``cuda-sm90``) -> 90; else None."""
    if not hardware_class:
        return None
    m = _CLASS_RE.match(hardware_class.strip().lower())
    return int(m.group(1)) if m else None


def _parse_sm(compute_cap: str) -> int | None:
    major, dot, minor = compute_cap.strip().partition(".")
    if not (major.isdigit() and dot and minor.isdigit()):
        return None  # "[N/A]", "[Not Supported]"
    return int(major) * 10 + int(minor)


def parse_query_gpu(text: str) -> list[Gpu]:
    """Rows of ``nvidia-smi --query-gpu=index,uuid,name,compute_cap --format=csv,noheader``."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        # A product name with a comma would split in two: index and uuid lead, the SM ends.
        gpus.append(Gpu(int(parts[0]), parts[1], ", ".join(parts[2:-1]), _parse_sm(parts[-1])))
    return gpus


def parse_mig_parents(text: str) -> dict[str, str]:
    """``nvidia-smi -L`` -> {MIG device UUID: UUID of the GPU it is a slice of}.

    ``GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d5b…)`` lines are followed by their
    ``  MIG 1g.5gb Device 0: (UUID: MIG-c6d4…)`` lines.
    """
    parents: dict[str, str] = {}
    gpu: str | None = None
    for line in text.splitlines():
        m = re.search(r"\(UUID: ((?:GPU|MIG)-[^)\s]+)\)", line)
        if not m:
            continue
        if line.lstrip().startswith("GPU "):
            gpu = m.group(1)
        elif line.lstrip().startswith("MIG ") and gpu is not None:
            parents[m.group(1)] = gpu
    return parents


def _strtoul_prefix(entry: str) -> int:
    """The integer an ordinal entry starts with (CUDA reads it like strtol: ``1gpu2`` is 1), or -1."""
    m = re.match(r"[+-]?\d+", entry)
    return int(m.group(0)) if m else -1


def _by_prefix(entry: str, uuids: list[str]) -> int:
    """Index of the one UUID ``entry`` abbreviates; -1 when none or several match (CUDA accepts unique prefixes)."""
    hits = [i for i, u in enumerate(uuids) if u.startswith(entry)]
    return hits[0] if len(hits) == 1 else -1


def visible_gpus(gpus: list[Gpu], value: str | None, mig_parents: dict[str, str] | None = None) -> list[Gpu]:
    """The GPUs CUDA enumerates under ``CUDA_VISIBLE_DEVICES=value``, in CUDA's order.

    CUDA's documented rules (CUDA Programming Guide, "CUDA Environment Variables",
    docs.nvidia.com/cuda/cuda-programming-guide/05-appendices/environment-variables.html):
    unset = every GPU; "" = none; a comma-separated list of indices (nvidia-smi's numbering)
    or UUIDs (``GPU-…`` as ``nvidia-smi -L`` prints them, or any unique prefix; ``MIG-…``
    for MIG devices) in the order given, and an invalid entry hides itself and everything
    after it ("0,2,-1,1" is 0 and 2). So "-1" or a scheduler's "NoDevFiles" mean no GPU.
    The finer points follow PyTorch, which mirrors the driver's parser
    (pytorch/pytorch torch/cuda/__init__.py ``_parse_visible_devices`` and
    ``_transform_uuid_to_ordinals``@17e3b6a9; test/test_cuda.py ``test_env_var_parsing``):
    an index is read like strtol ("1gpu2" is 1), an index past the last GPU ends the list,
    a list that names one device twice shows none, and a list that starts with ``GPU-``
    or ``MIG-`` is read as UUIDs up to the first entry without that prefix.

    A MIG device counts as its parent GPU here (same SM, same product): ``mig_parents``
    maps MIG UUIDs to GPU UUIDs (:func:`parse_mig_parents`); the old
    ``MIG-GPU-<uuid>/<gi>/<ci>`` form names its parent itself.
    """
    if value is None:
        return list(gpus)
    value = value.strip()
    if value.startswith(("GPU-", "MIG-")):
        picked = _uuid_entries(gpus, value, mig_parents or {})
    else:
        picked = _ordinal_entries(value, len(gpus))
    return [gpus[i] for i in picked]


def _ordinal_entries(value: str, count: int) -> list[int]:
    ordinals: list[int] = []
    for entry in value.split(","):
        idx = _strtoul_prefix(entry.strip())
        if idx in ordinals:
            return []  # a device named twice: CUDA shows none
        if idx < 0:
            break  # an invalid entry hides itself and the rest ("" and "-1" hide all)
        ordinals.append(idx)
    for n, idx in enumerate(ordinals):
        if idx >= count:
            return ordinals[:n]  # an index past the last GPU ends the list
    return ordinals


def _uuid_entries(gpus: list[Gpu], value: str, mig_parents: dict[str, str]) -> list[int]:
    prefix = value[:4]
    entries: list[str] = []
    for entry in (e.strip() for e in value.split(",")):
        if entry in entries:
            return []
        if not entry.startswith(prefix):
            break
        entries.append(entry)
    uuids = [g.uuid for g in gpus]
    picked: list[int] = []
    seen: list[str] = []  # a MIG device is its own device: two slices of one GPU are not a repeat
    for entry in entries:
        if prefix == "GPU-":
            idx = _by_prefix(entry, uuids)
            key = uuids[idx] if idx >= 0 else entry
        else:
            migs = [m for m in mig_parents if m.startswith(entry)]
            key = migs[0] if len(migs) == 1 else entry
            if entry.startswith("MIG-GPU-"):  # the pre-R470 form MIG-GPU-<uuid>/<gi>/<ci> names its parent
                parent: str | None = entry[4:].split("/", 1)[0]
            else:
                parent = mig_parents[migs[0]] if len(migs) == 1 else None
            idx = _by_prefix(parent, uuids) if parent else -1
        if idx < 0:
            break
        if key in seen:
            return []
        seen.append(key)
        picked.append(idx)
    return picked


def _run_smi(smi: str, *args: str) -> str | None:
    import subprocess  # only where nvidia-smi exists: a lookup on a CPU machine never starts one

    try:
        return subprocess.run([smi, *args], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None  # no driver, no device, or a driver too old for compute_cap


@functools.lru_cache(maxsize=8)
def _gpus(smi: str) -> tuple[Gpu, ...]:
    # Keyed by the nvidia-smi path only: the GPUs of a machine do not change within a process,
    # while CUDA_VISIBLE_DEVICES may, so that is applied on every call.
    out = _run_smi(smi, "--query-gpu=index,uuid,name,compute_cap", "--format=csv,noheader")
    gpus = parse_query_gpu(out or "")
    # nvidia-smi lists GPUs by PCI bus id; rows come back in that order, but sort to be sure.
    return tuple(sorted(gpus, key=lambda g: g.index))


@functools.lru_cache(maxsize=8)
def _mig_parents(smi: str) -> tuple[tuple[str, str], ...]:
    return tuple(parse_mig_parents(_run_smi(smi, "-L") or "").items())


def first_visible_gpu() -> Gpu | None:
    """The GPU a CUDA process here would see as device 0, honouring CUDA_VISIBLE_DEVICES; None without one.

    Indices are nvidia-smi's (PCI bus order). A CUDA process enumerates fastest-first unless
    CUDA_DEVICE_ORDER=PCI_BUS_ID, which only matters on a machine that mixes GPU models.
    """
    import shutil

    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    gpus = list(_gpus(smi))
    if not gpus:
        return None
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    mig = dict(_mig_parents(smi)) if value is not None and value.strip().startswith("MIG-") else None
    visible = visible_gpus(gpus, value, mig)
    return visible[0] if visible else None


def cuda_class() -> str | None:
    """``cuda-sm90-nvidia-h100-80gb-hbm3`` for the first visible GPU, or None without a GPU/driver.

    Not cached as a whole: CUDA_VISIBLE_DEVICES is read on every call.
    """
    gpu = first_visible_gpu()
    if gpu is None or gpu.sm is None:
        return None
    model = normalize_gpu_model(gpu.name)
    return f"cuda-sm{gpu.sm}" + (f"-{model}" if model else "")


def detect_cuda_sm() -> int | None:
    """The SM (compute capability x 10: 90, 100, …) of the first visible GPU; None without one."""
    return cuda_sm(cuda_class())
