"""scripts/gpu_check.py, the CUDA check for a GPU machine, run here on the CPU so it cannot rot.

The same script, the same build, load, token comparison and timing as on a GPU, with
``--device cpu``; without ``--device`` on a machine with no CUDA it must say so and exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def _env_with_sitecustomize(tmp_path: Path, source: str) -> dict[str, str]:
    """The environment with a ``sitecustomize`` of ``source`` first on PYTHONPATH: every Python
    process started with it runs that code at start-up (how these tests inject a crash)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(source)
    path = [str(hook), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def test_the_check_builds_loads_and_compares_tokens_on_the_cpu() -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--json", "--new-tokens", "8", "--runs", "1"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    line, data = r.stdout.strip().splitlines()[-2:]
    assert line.startswith("gpu_check: PASS") and "greedy 8 tokens match eager" in line, line
    summary = json.loads(data)
    assert summary["tokens_match"] is True and summary["device"] == "cpu" and len(summary["key"]) == 64
    # Timings are reported, not judged (a loaded machine can make any of them odd).
    assert isinstance(summary["decode_engine_ms"], float) and isinstance(summary["decode_eager_ms"], float)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_without_cuda_it_says_so_and_exits_2() -> None:
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip() == f"gpu_check: torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)"


def test_a_crashing_build_worker_leaves_its_stack_on_stderr_and_in_kept_logs(tmp_path: Path) -> None:
    """On a GPU machine the check runs once, and its work directory (with the worker's log) is
    deleted at the end: a crash must be readable from the check's own output.

    Stand-in for the fault: a sitecustomize that makes the torch-aoti build worker itself (not
    the few lines that start it, kiln.compile.worker._DIE_WITH_PARENT) dereference NULL, a real
    SIGSEGV, before it announces a stage. Seen for real on an H200 image (torch 2.11.0+cu130),
    where torch's AOTI package loader crashed (docs/benchmarks.md, "GPU check").
    """
    env = _env_with_sitecustomize(tmp_path, (
        "import sys\n"
        "if sys.orig_argv[1:3] == ['-m', 'kiln.targets.torch_aoti.worker']:\n"
        "    import ctypes\n"
        "    ctypes.string_at(0)\n"
    ))
    env.pop("PYTHONFAULTHANDLER", None)  # Kiln turns it on for its workers itself
    kept = tmp_path / "logs"
    r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--json", "--keep-logs", str(kept)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "gpu_check: | Fatal Python error: Segmentation fault" in r.stderr, r.stderr[-3000:]
    assert "sitecustomize.py" in r.stderr  # the crashing frame, from faulthandler across the exec
    # Then torch alone, on the same device: here its own package loads (only Kiln's worker crashes).
    probed = "aoti_load_probe: cpu constants_not_in_so: loads and runs, max abs difference from eager"
    assert probed in r.stderr, r.stderr[-3000:]
    last = r.stderr.rstrip().splitlines()[-1]
    assert last.startswith("gpu_check: the build failed: the torch-aoti compile worker was killed by SIGSEGV "
                           "(a crash in native code"), last
    assert "before its first stage" in last
    (log,) = kept.glob("*.log")
    assert "Fatal Python error: Segmentation fault" in log.read_text()
    assert f"Full log: {log}" in last  # the kept copy, not the deleted original
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["ok"] is False and "killed by SIGSEGV" in summary["error"]
    assert summary["probe"]["exit"] == 0, summary["probe"]
    assert any(line.startswith(probed) for line in summary["probe"]["lines"]), summary["probe"]


def test_the_aoti_load_probe_loads_torchs_own_packages_on_the_cpu() -> None:
    """scripts/aoti_load_probe.py, the Kiln-free half of a GPU-machine diagnosis: here, where
    torch's loader works, both packages load and match eager."""
    probe = SCRIPT.with_name("aoti_load_probe.py")
    r = subprocess.run([sys.executable, str(probe), "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if ": loads and runs, max abs difference from eager " in line]
    assert [line.split(":")[1].strip() for line in lines] == ["cpu default", "cpu constants_not_in_so"], r.stdout
    assert all(float(line.rsplit(" ", 1)[1]) < 1e-4 for line in lines), r.stdout


# A stand-in for a native crash in torch's loader (seen on an H200 image, docs/benchmarks.md "GPU
# check"): a sitecustomize that dereferences NULL, a real SIGSEGV, in the probe's load process as
# the step named begins (it watches the step lines the load prints), or at the start of a layer
# process whose code contains the text given.
_CRASH_HOOK = """
import ctypes, sys
code = sys.orig_argv[2] if sys.orig_argv[1:2] == ["-c"] else ""
if {layer!r} and {layer!r} in code:
    ctypes.string_at(0)
if "aoti_load_package(" in code and {step!r}:
    class Crashing:  # crashes once the step's line is out, newline and all, as print(flush=True) leaves it
        def __init__(self, out):
            self.out, self.armed = out, False
        def write(self, text):
            self.out.write(text)
            if self.armed and text.endswith("\\n"):
                self.out.flush()
                ctypes.string_at(0)
            self.armed = self.armed or text.startswith("LOAD_STEP " + {step!r})
            return len(text)
        def __getattr__(self, name):
            return getattr(self.out, name)
    sys.stdout = Crashing(sys.stdout)
"""


def _probe_with_crash(tmp_path: Path, config: str, step: str = "", layer: str = "") -> subprocess.CompletedProcess[str]:
    env = _env_with_sitecustomize(tmp_path, _CRASH_HOOK.format(step=step, layer=layer))
    probe = SCRIPT.with_name("aoti_load_probe.py")
    r = subprocess.run([sys.executable, str(probe), "--device", "cpu", "--config", config],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _close_to_eager(line: str) -> bool:
    return float(line.rsplit(" ", 1)[1]) < 1e-4


def test_the_probe_takes_a_crashing_package_load_apart_layer_by_layer(tmp_path: Path) -> None:
    """A crash inside torch's package loader, where every layer under it works: the probe opens
    the compiled library, starts its model container and runs torch's runner on it, each in a
    fresh process, and says that the fault is the loader's own."""
    out = _probe_with_crash(tmp_path, "default", step="package loader").stdout
    assert "aoti_load_probe: cpu default: LOAD FAILED in step 'package loader': its process was killed by SIGSEGV" in out, out
    assert "Fatal Python error: Segmentation fault" in out  # faulthandler's report of the load
    (layers,) = [line for line in out.splitlines() if line.startswith("aoti_load_probe: cpu default: by layer: ")]
    head, _, _ = layers.rpartition(", max abs difference from eager ")
    assert head.endswith("unpack ok; dlopen opens; container creates and deletes a model container; runner runs"), layers
    assert _close_to_eager(layers), layers
    assert out.rstrip().splitlines()[-1].startswith(
        "aoti_load_probe: cpu default: the compiled model opens, starts and runs without torch's package loader"), out
    environment = out.splitlines()[1]
    assert environment.startswith(f"aoti_load_probe: environment: torch {torch.__version__}, C++11 ABI "), environment


def test_a_crash_after_the_loader_is_not_blamed_on_it(tmp_path: Path) -> None:
    """A load that crashes when it runs the model, after torch's loader was built: the step is
    named, and the probe does not say the loader's unpacking is at fault, though every layer works."""
    out = _probe_with_crash(tmp_path, "constants_not_in_so", step="run").stdout
    assert "cpu constants_not_in_so: LOAD FAILED in step 'run': its process was killed by SIGSEGV" in out, out
    (layers,) = [line for line in out.splitlines() if ": by layer: " in line]
    assert "runner runs, max abs difference from eager" in layers and _close_to_eager(layers), layers
    assert "without torch's package loader" not in out, out


def test_the_probe_names_the_layer_that_crashes(tmp_path: Path) -> None:
    """A crash under the loader, here when the model container starts (the layer process that
    calls the library's ``AOTInductorModelContainerCreateWithDevice``), ends the walk there, named."""
    r = _probe_with_crash(tmp_path, "constants_not_in_so", step="package loader", layer="ContainerCreateWithDevice")
    (layers,) = [line for line in r.stdout.splitlines() if ": by layer: " in line]
    assert layers == ("aoti_load_probe: cpu constants_not_in_so: by layer: unpack ok; dlopen opens; "
                      "container FAILED: its process was killed by SIGSEGV (a crash in native code: a compiler, a "
                      "driver or torch)"), layers
    assert "runner" not in r.stdout.split(": by layer: ")[1]
    assert "without torch's package loader" not in r.stdout


def test_a_failure_outside_the_build_has_its_own_exit_code(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """An error after the build (loading the engine, eager, the GPU) is not "the tokens differ"
    (1) and not a failed build (3): exit 4, with its traceback and, with --json, its summary.
    Stand-in for the fault: the script's ``check`` replaced by one that raises."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def failing_check(args: object, work: Path) -> None:
        raise RuntimeError("CUDA error: out of memory (stand-in)")

    monkeypatch.setattr(module, "check", failing_check)
    monkeypatch.setattr(module.faulthandler, "enable", lambda: None)  # it needs a real fd; capsys has none
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--device", "cpu", "--json"])
    with pytest.raises(SystemExit) as ended:
        module.main()
    assert ended.value.code == 4
    out, err = capsys.readouterr()
    assert "Traceback" in err and "failing_check" in err, err
    assert err.rstrip().splitlines()[-1] == (
        "gpu_check: the check failed outside the build: RuntimeError: CUDA error: out of memory (stand-in)")
    assert json.loads(out.strip().splitlines()[-1]) == {
        "ok": False, "device": "cpu", "error": "RuntimeError: CUDA error: out of memory (stand-in)"}
