"""Hardware classes that change a build's output, detected without importing torch.

Inductor's CPU code generator picks its vector ISA (AVX-512, AVX2, NEON…) from the build
machine, so a CPU engine is tied to an ISA class; CUDA engines are tied to the GPU's compute
capability (SM); Neuron graphs to the chip generation (inf2 / trn1).
"""

from __future__ import annotations

import functools
import platform
import shutil
import subprocess

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


@functools.lru_cache(maxsize=1)
def cuda_class() -> str | None:
    """``cuda-sm90`` for the first visible GPU, or None without a GPU/driver."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    return "cuda-sm" + out[0].replace(".", "")
