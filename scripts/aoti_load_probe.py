#!/usr/bin/env python3
"""Can this machine's torch load AOTInductor packages at all? No Kiln code on the torch side.

Compiles a three-layer MLP with torch's own ``aoti_compile_and_package`` (default inductor
settings, and Kiln's ``package_constants_in_so=False``) for the CPU and, where there is one, the
GPU, each in its own process, then loads each package in another process through torch's own
``torch._inductor.aoti_load_package`` and runs it. A load that dies (on the H200 image of
docs/benchmarks.md "GPU check", every one did, with SIGSEGV) is reported with its signal and
faulthandler's stack, and then taken apart layer by layer, each in a fresh process, to say
where the crash is:

1. ``dlopen``: the package's compiled library, extracted with Python's zipfile, opened with
   ctypes after ``import torch`` (a crash here: the library itself, e.g. a compiler or C++ ABI
   that does not match this torch);
2. ``container``: the library's own C entry point, ``AOTInductorModelContainerCreateWithDevice``
   (torch/csrc/inductor/aoti_runtime/interface.h), called through ctypes (a crash here: the
   compiled model's start-up);
3. ``runner``: torch's model runner on the extracted library, ``torch._C._aoti.
   AOTIModelContainerRunnerCpu`` / ``...Cuda``, which is what the package loader constructs
   once it has unpacked the archive (torch/csrc/inductor/aoti_package/model_package_loader.cpp),
   given the weights where the package lacks them and run against eager.

The load announces each step as it begins (the package loader, the weights, the run), so a
failure names its step. If the load crashed (a signal) inside the package loader's constructor
and every layer works, the fault is in the loader's own steps (unpacking, its temporary
directory, its set-up of the runner), and a loader that unpacks the package itself would work
on that machine. One line per case and layer, after an environment line (torch's C++ ABI,
CUDA, the C++ compiler inductor uses, glibc, the libstdc++ torch loaded); exit 0 when every
package loads and runs, 1 when one does not. Run it where scripts/gpu_check.sh fails in
torch's loader, to tell Kiln from torch (gpu_check.sh runs it itself after a crashed build).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

_COMPILE = """
import torch
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).to({device!r}).eval()
x = torch.randn(2, 16, device={device!r})
ep = torch.export.export(m, (x,), strict=True)
torch._inductor.aoti_compile_and_package(ep, package_path={package!r}, inductor_configs={configs!r})
torch.save({{"x": x.cpu(), "y": m(x).detach().cpu(), "state": {{k: v.cpu() for k, v in m.state_dict().items()}}}}, {data!r})
"""

# Each step of the load announces itself when it begins (LOAD_STEP), so a crash is placed: only one
# inside the package loader's constructor is that loader's, not the weights' or the run's.
_LOAD = """
import torch
data = torch.load({data!r})
print("LOAD_STEP package loader", flush=True)
model = torch._inductor.aoti_load_package({package!r})
if {configs!r}.get("aot_inductor.package_constants_in_so") is False:  # the weights are not in the package
    print("LOAD_STEP load_constants", flush=True)
    names = model.get_constant_fqns()
    model.load_constants({{n: data["state"][n].to({device!r}) for n in names}}, check_full_update=True)
print("LOAD_STEP run", flush=True)
y = model(data["x"].to({device!r}))
print(f"max abs difference from eager {{(y.cpu() - data['y']).abs().max().item():.2e}}")
"""
_STEP = "LOAD_STEP "

# The layers under torch's package loader, each run in a fresh process after `import torch`
# (the library resolves its symbols against the libtorch that import loaded).
_LAYERS = {
    "dlopen": """
import ctypes, torch
ctypes.CDLL({so!r})
print("opens")
""",
    "container": """
import ctypes, torch
lib = ctypes.CDLL({so!r})
create = lib.AOTInductorModelContainerCreateWithDevice
create.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_char_p, ctypes.c_char_p]
create.restype = ctypes.c_int32  # AOTIRuntimeError, 0 is AOTI_RUNTIME_SUCCESS (aoti_runtime/utils.h)
handle = ctypes.c_void_p()
rc = create(ctypes.byref(handle), 1, {device!r}.encode(), {cubin_dir!r}.encode())
if rc:
    raise SystemExit(f"AOTInductorModelContainerCreateWithDevice returned {{rc}}")
lib.AOTInductorModelContainerDelete.argtypes = [ctypes.c_void_p]
lib.AOTInductorModelContainerDelete(handle)
print("creates and deletes a model container")
""",
    "runner": """
import torch
aoti = torch._C._aoti
if {device!r} == "cpu":
    runner = aoti.AOTIModelContainerRunnerCpu({so!r}, 1)
else:
    runner = aoti.AOTIModelContainerRunnerCuda({so!r}, 1, {device!r}, {cubin_dir!r})
data = torch.load({data!r})
if {configs!r}.get("aot_inductor.package_constants_in_so") is False:
    fqns = runner.get_constant_names_to_original_fqns()
    runner.update_constant_buffer({{name: data["state"][fqn].to({device!r}) for name, fqn in fqns.items()}}, False, True)
y = runner.run([data["x"].to({device!r})])[0]
print(f"runs, max abs difference from eager {{(y.cpu() - data['y']).abs().max().item():.2e}}")
""",
}

_ENVIRONMENT = """
import platform, subprocess, torch
facts = [f"torch {torch.__version__}", f"C++11 ABI {int(torch._C._GLIBCXX_USE_CXX11_ABI)}", f"CUDA {torch.version.cuda}"]
try:
    from torch._inductor.cpp_builder import get_cpp_compiler
    cxx = get_cpp_compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    facts.append(f"compiler {cxx} ({version[0].strip() if version else 'no --version'})")
except Exception as e:  # the probe reports; it does not need every fact
    facts.append(f"compiler unknown ({type(e).__name__}: {e})")
libc, libc_version = platform.libc_ver()
facts.append(f"{libc or 'libc'} {libc_version or 'unknown'}")
with open("/proc/self/maps") as maps:
    stdcxx = sorted({line.split()[-1] for line in maps if "libstdc++" in line})
facts.append("libstdc++ " + (", ".join(stdcxx) or "not loaded"))
print(", ".join(facts))
"""

_CONFIGS = {"default": {}, "constants_not_in_so": {"aot_inductor.package_constants_in_so": False}}


def _run(code: str, timeout: float) -> tuple[int, str, str]:
    """Exit status, the whole of stdout (where the answer and the step lines are: warnings on
    stderr are common on a GPU machine and are not the answer), and the end of stdout + stderr
    (the report of a failure)."""
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    try:
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, out, "\n".join(out.splitlines()[-24:] + [f"timed out after {timeout:.0f} s"])
    lines = [line[:300] for line in r.stdout.splitlines() + r.stderr.splitlines()]
    return r.returncode, r.stdout, "\n".join(lines[-25:])


def _answer(stdout: str) -> str:
    """A step's answer: the last line it printed."""
    return (stdout.strip().splitlines()[-1:] or [""])[0][:300]


def _last_step(stdout: str) -> str | None:
    """The last step a load announced before it ended."""
    steps = [line[len(_STEP):] for line in stdout.splitlines() if line.startswith(_STEP)]
    return steps[-1] if steps else None


def _unpack(package: str, into: Path) -> tuple[str, str]:
    """The package's compiled model library and its directory, ``<archive>/data/aotinductor/model/``,
    where the package loader points CUDA at the kernels (``cubin_dir``,
    torch/csrc/inductor/aoti_package/model_package_loader.cpp). The wrapper library where there
    are several (Triton CPU packages also hold kernel and launcher libraries)."""
    import zipfile

    with zipfile.ZipFile(package) as archive:
        archive.extractall(into)
    model_dirs = [d for d in into.glob("*/data/aotinductor/model") if d.is_dir()]
    libraries = sorted(lib for d in model_dirs for lib in d.glob("*.so"))
    wrappers = [lib for lib in libraries if lib.name.endswith(".wrapper.so")]
    chosen = wrappers if len(wrappers) == 1 else libraries
    if len(chosen) != 1:
        raise LookupError(f"no one model library under data/aotinductor/model/ in {package}: "
                          f"{[lib.name for lib in libraries] or 'none'}")
    outside = sorted(p.name for p in into.rglob("*") if p.suffix == ".blob" or p.parent.name == "constants")
    if outside:  # the loader would apply these; the layers below do not
        raise LookupError(f"{package} keeps weights outside its library ({', '.join(outside[:3])}), "
                          "which these layers do not load")
    return str(chosen[0]), str(chosen[0].parent)


def _layers(fields: dict[str, object], into: Path, timeout: float, describe_exit) -> tuple[str, bool]:  # type: ignore[no-untyped-def]
    """Each layer under the package loader, in order; the first that fails ends the walk.
    Returns the report and whether every layer worked."""
    try:
        so, cubin_dir = _unpack(str(fields["package"]), into)
    except LookupError as e:
        return f"cannot take it apart: {e}", False
    except Exception as e:  # noqa: BLE001 - a report, whatever the archive holds
        return f"unpack FAILED ({type(e).__name__}: {e})", False
    parts = ["unpack ok"]
    for layer, code in _LAYERS.items():
        rc, stdout, report = _run(code.format(**fields, so=so, cubin_dir=cubin_dir), timeout)
        if rc != 0:
            parts.append(f"{layer} FAILED: its process {describe_exit(rc)}\n{textwrap.indent(report, '  | ')}")
            return "; ".join(parts), False
        parts.append(f"{layer} {_answer(stdout)}")
    return "; ".join(parts), True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", action="append", choices=("cpu", "cuda"),
                    help="device to try (repeatable); default: cpu, and cuda where torch sees one")
    ap.add_argument("--config", action="append", choices=tuple(_CONFIGS),
                    help="inductor settings to try (repeatable); default: all")
    ap.add_argument("--layers", choices=("failed", "always", "never"), default="failed",
                    help="take a package apart layer by layer: after a failed load (default), always, or never")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per compile, load or layer")
    args = ap.parse_args()
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kiln.targets._worker_main import describe_exit  # wording only: the probes run torch alone

    devices = args.device or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"aoti_load_probe: Python {sys.version.split()[0]}, devices {', '.join(devices)}")
    rc, stdout, _ = _run(_ENVIRONMENT, args.timeout)
    print(f"aoti_load_probe: environment: {_answer(stdout) if rc == 0 else 'unknown: its process ' + describe_exit(rc)}")
    failed = 0
    loader_only: list[str] = []  # cases that crashed inside torch's package loader and nowhere below it
    with tempfile.TemporaryDirectory(prefix="aoti-probe-") as tmp:
        for device in devices:
            for name in args.config or _CONFIGS:
                configs = _CONFIGS[name]
                case = f"{device} {name}"
                fields = dict(device=device, configs=configs, package=f"{tmp}/{device}-{name}.pt2",
                              data=f"{tmp}/{device}-{name}.data")
                rc, _, report = _run(_COMPILE.format(**fields), args.timeout)
                if rc != 0:
                    failed += 1
                    print(f"aoti_load_probe: {case}: COMPILE FAILED: its process {describe_exit(rc)}\n"
                          f"{textwrap.indent(report, '  | ')}")
                    continue
                rc, stdout, report = _run(_LOAD.format(**fields), args.timeout)
                step = _last_step(stdout)
                if rc != 0:
                    failed += 1
                    print(f"aoti_load_probe: {case}: LOAD FAILED in step {step or 'before the package loader'!r}: "
                          f"its process {describe_exit(rc)}\n{textwrap.indent(report, '  | ')}")
                else:
                    print(f"aoti_load_probe: {case}: loads and runs, {_answer(stdout)}")
                if args.layers == "always" or (args.layers == "failed" and rc != 0):
                    walk, every_layer_works = _layers(fields, Path(tmp, f"{device}-{name}.unpacked"), args.timeout,
                                                      describe_exit)
                    print(f"aoti_load_probe: {case}: by layer: {walk}")
                    # Only a crash (a signal) inside the loader's constructor, where every layer under
                    # it works, is the loader's own: an exception or a later step is something else.
                    if rc < 0 and step == "package loader" and every_layer_works:
                        loader_only.append(case)
    if loader_only:
        print(f"aoti_load_probe: {', '.join(loader_only)}: the compiled model opens, starts and runs without torch's "
              "package loader, and the load crashed inside the loader's constructor, so the crash is in the "
              "loader's own steps (unpacking the archive, its temporary directory, its set-up of the runner), "
              "not in the compiled code")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
