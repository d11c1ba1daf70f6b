#!/usr/bin/env python3
"""Can this machine's torch load AOTInductor packages at all? No Kiln code on the torch side.

Compiles a three-layer MLP with torch's own ``aoti_compile_and_package`` (default inductor
settings, and Kiln's ``package_constants_in_so=False``) for the CPU and, where there is one, the
GPU, each in its own process, then loads each package in another process through torch's own
``torch._inductor.aoti_load_package`` and runs it. A load that dies (on the H200 image of
docs/benchmarks.md "GPU check", every one did, with SIGSEGV) is reported with its signal and
faulthandler's stack. One line per case; exit 0 when every package loads and runs, 1 when one
does not. Run it where scripts/gpu_check.sh fails in torch's loader, to tell Kiln from torch.
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", action="append", choices=("cpu", "cuda"),
                    help="device to try (repeatable); default: cpu, and cuda where torch sees one")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per compile or load")
    args = ap.parse_args()
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kiln.targets._worker_main import describe_exit  # wording only: the probes run torch alone

    devices = args.device or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"aoti_load_probe: torch {torch.__version__}, Python {sys.version.split()[0]}, devices {', '.join(devices)}")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="aoti-probe-") as tmp:
        for device in devices:
            for name, configs in _CONFIGS.items():
                case = f"{device} {name}"
                fields = dict(device=device, configs=configs, package=f"{tmp}/{device}-{name}.pt2",
                              data=f"{tmp}/{device}-{name}.data")
                rc, out = _run(_COMPILE.format(**fields), args.timeout)
                if rc != 0:
                    failed += 1
                    print(f"aoti_load_probe: {case}: COMPILE FAILED, {describe_exit(rc)}\n{textwrap.indent(out, '  | ')}")
                    continue
                rc, out = _run(_LOAD.format(**fields), args.timeout)
                if rc != 0:
                    failed += 1
                    print(f"aoti_load_probe: {case}: LOAD FAILED, {describe_exit(rc)}\n{textwrap.indent(out, '  | ')}")
                else:
                    print(f"aoti_load_probe: {case}: loads and runs, {out.splitlines()[-1]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
