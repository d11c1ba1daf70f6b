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

If every layer works where the package loader crashed, the fault is in the loader's own steps
(unpacking, its temporary directory), and a loader that unpacks the package itself would work
on that machine. One line per case and layer, an environment line first (torch's C++ ABI,
CUDA, the C++ compiler inductor uses, glibc, the libstdc++ torch loaded); exit 0 when every
package loads and runs, 1 when one does not. Run it where scripts/gpu_check.sh fails in
torch's loader, to tell Kiln from torch.
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

_LOAD = """
import torch
data = torch.load({data!r})
model = torch._inductor.aoti_load_package({package!r})
if {configs!r}.get("aot_inductor.package_constants_in_so") is False:  # the weights are not in the package
    names = model.get_constant_fqns()
    model.load_constants({{n: data["state"][n].to({device!r}) for n in names}}, check_full_update=True)
y = model(data["x"].to({device!r}))
print(f"max abs difference from eager {{(y.cpu() - data['y']).abs().max().item():.2e}}")
"""

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
facts.append("glibc " + "-".join(platform.libc_ver()))
with open("/proc/self/maps") as maps:
    stdcxx = sorted({line.split()[-1] for line in maps if "libstdc++" in line})
facts.append("libstdc++ " + (", ".join(stdcxx) or "not loaded"))
print(", ".join(facts))
"""

_CONFIGS = {"default": {}, "constants_not_in_so": {"aot_inductor.package_constants_in_so": False}}


def _run(code: str, timeout: float) -> tuple[int, str]:
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    try:
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"
    lines = [line[:300] for line in (r.stdout + r.stderr).splitlines()]
    return r.returncode, "\n".join(lines[-25:])


def _unpack(package: str, into: Path) -> tuple[str, str]:
    """The package's compiled model library and the directory beside it (where the package loader
    points CUDA at its kernels: ``cubin_dir``)."""
    import zipfile

    with zipfile.ZipFile(package) as archive:
        archive.extractall(into)
    libraries = sorted(into.rglob("*.so"))
    if len(libraries) != 1:
        raise RuntimeError(f"expected one compiled library in {package}, found {[str(p) for p in libraries]}")
    return str(libraries[0]), str(libraries[0].parent)


def _layers(fields: dict[str, object], into: Path, timeout: float, describe_exit) -> tuple[str, bool]:  # type: ignore[no-untyped-def]
    """Each layer under the package loader, in order; the first that fails ends the walk.
    Returns the report and whether every layer worked."""
    try:
        so, cubin_dir = _unpack(str(fields["package"]), into)
    except Exception as e:  # noqa: BLE001 - a report, whatever the archive holds
        return f"unpack FAILED ({type(e).__name__}: {e})", False
    parts = ["unpack ok"]
    for layer, code in _LAYERS.items():
        rc, out = _run(code.format(**fields, so=so, cubin_dir=cubin_dir), timeout)
        if rc != 0:
            parts.append(f"{layer} FAILED: its process {describe_exit(rc)}\n{textwrap.indent(out, '  | ')}")
            return "; ".join(parts), False
        parts.append(f"{layer} {out.splitlines()[-1]}")
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
    rc, out = _run(_ENVIRONMENT, args.timeout)
    print(f"aoti_load_probe: environment: {out.splitlines()[-1] if rc == 0 and out else describe_exit(rc)}")
    failed = 0
    loader_only: list[str] = []  # cases where only torch's package loader failed
    with tempfile.TemporaryDirectory(prefix="aoti-probe-") as tmp:
        for device in devices:
            for name in args.config or _CONFIGS:
                configs = _CONFIGS[name]
                case = f"{device} {name}"
                fields = dict(device=device, configs=configs, package=f"{tmp}/{device}-{name}.pt2",
                              data=f"{tmp}/{device}-{name}.data")
                rc, out = _run(_COMPILE.format(**fields), args.timeout)
                if rc != 0:
                    failed += 1
                    print(f"aoti_load_probe: {case}: COMPILE FAILED: its process {describe_exit(rc)}\n{textwrap.indent(out, '  | ')}")
                    continue
                rc, out = _run(_LOAD.format(**fields), args.timeout)
                if rc != 0:
                    failed += 1
                    print(f"aoti_load_probe: {case}: LOAD FAILED: its process {describe_exit(rc)}\n{textwrap.indent(out, '  | ')}")
                else:
                    print(f"aoti_load_probe: {case}: loads and runs, {out.splitlines()[-1]}")
                if args.layers == "always" or (args.layers == "failed" and rc != 0):
                    report, every_layer_works = _layers(fields, Path(tmp, f"{device}-{name}.unpacked"), args.timeout,
                                                        describe_exit)
                    print(f"aoti_load_probe: {case}: by layer: {report}")
                    if rc != 0 and every_layer_works:
                        loader_only.append(case)
    if loader_only:
        print(f"aoti_load_probe: {', '.join(loader_only)}: the compiled model opens, starts and runs without torch's "
              "package loader, so the crash is in the loader's own steps (unpacking the archive, its temporary "
              "directory), not in the compiled code")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
