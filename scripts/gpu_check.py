#!/usr/bin/env python3
"""The torch-aoti CUDA path on a real GPU, in one short run (scripts/gpu_check.sh sets it up).

Builds a tiny random-weight Llama into a torch-aoti engine with ``device=cuda`` through Kiln's
own build (worker subprocess, store, publish), loads it from the store, checks its greedy
tokens against eager transformers on the same GPU, times decode per token against eager, and
prints one summary line (also as JSON with --json). Exit 0 when the tokens match, 1 when they
do not, 2 when this machine cannot run the check (no CUDA, a missing package), 3 when the build
fails: the end of the worker's log is printed (--keep-logs keeps it whole), and when the worker
crashed, scripts/aoti_load_probe.py runs next on the same device (torch alone, Kiln's
``package_constants_in_so=False``) to say whether this machine's torch loads any AOTInductor
package, and if not, in which layer it crashes; 4 when the check fails outside the build (making
the model, loading the engine, eager, the GPU), with its traceback. A crash while loading the
engine in this process prints its Python stack and ends the check with that signal.

No network: the model is made here (tests/tiny_models.py), nothing is downloaded.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from kiln.errors import BuildError

REPO = Path(__file__).resolve().parents[1]
_LOG_LINES = 80  # of a failed build's worker log, printed before the work directory goes
EXIT_TOKENS_DIFFER, EXIT_CANNOT_RUN, EXIT_BUILD_FAILED, EXIT_CHECK_FAILED = 1, 2, 3, 4
_PROBE_STEP_S, _PROBE_TOTAL_S = 120, 420  # the probe's limit per compile, load or layer, and in all


def _fail(message: str, code: int = EXIT_CANNOT_RUN) -> None:
    print(f"gpu_check: {message}", file=sys.stderr)
    raise SystemExit(code)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per side; the median is reported")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON too")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: the same check on the CPU, to test this script where there is no GPU")
    ap.add_argument("--keep-logs", type=Path, metavar="DIR",
                    help="copy a failed build's worker log here (the work directory is deleted at the end)")
    ap.add_argument("--no-probe", action="store_true",
                    help="after a crashed build, do not run scripts/aoti_load_probe.py (about a minute)")
    args = ap.parse_args()
    import importlib.util

    missing = [name for name in ("torch", "transformers", "safetensors") if importlib.util.find_spec(name) is None]
    if missing:
        _fail(f"needs torch (CUDA), transformers and safetensors preinstalled; missing: {', '.join(missing)}")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        _fail(f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)")
    sys.path.insert(0, str(REPO))
    from kiln.errors import BuildError

    # The engine is loaded in this process: a crash in torch's loader prints its stack here.
    faulthandler.enable()
    work = Path(tempfile.mkdtemp(prefix="kiln-gpu-check-"))
    try:
        check(args, work)
    except BuildError as exc:
        _report_failed_build(exc, args)
    except Exception as exc:  # making the model, loading the engine, eager, the GPU: neither wrong tokens nor the build
        import traceback

        traceback.print_exc()
        if args.json:
            print(json.dumps({"ok": False, "device": args.device, "error": f"{type(exc).__name__}: {exc}"}))
        _fail(f"the check failed outside the build: {type(exc).__name__}: {exc}", code=EXIT_CHECK_FAILED)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _report_failed_build(exc: BuildError, args: argparse.Namespace) -> None:
    """Show a failed build's log now: it lies in the work directory, which is deleted at the end."""
    log = Path(exc.log_path) if exc.log_path else None
    crashed = exc.crashed
    if crashed or log is None:
        tail = exc.log_tail.splitlines()  # a crash: Kiln keeps faulthandler's whole report as the tail
    else:
        tail = [line[:300] for line in log.read_text(errors="replace").splitlines()[-_LOG_LINES:]]
    print("\n".join(f"gpu_check: | {line}" for line in tail), file=sys.stderr)
    message = str(exc)
    if log is not None:
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            kept = shutil.copy2(log, args.keep_logs / log.name)
            message = message.replace(str(log), str(kept))
        else:
            message = message.replace(str(log), f"{log} (deleted with the work directory; keep it with --keep-logs DIR)")
    probe = _probe_torch_alone(args.device) if crashed and not args.no_probe else None
    if args.json:
        print(json.dumps({"ok": False, "device": args.device, "error": message,
                          **({"probe": probe} if probe is not None else {})}))
    _fail(f"the build failed: {message}", code=EXIT_BUILD_FAILED)


def _probe_torch_alone(device: str) -> dict[str, object]:
    """After a crashed build: can this torch load any AOTInductor package (an MLP built with
    Kiln's ``package_constants_in_so=False``, no Kiln code), and if not, in which layer does it
    crash? Its lines are printed to stderr when it ends; its exit status and lines are returned
    for --json. Past its time limit the probe and every process it started are killed (it runs in
    a session of its own), and what it had printed is kept."""
    import os
    import signal
    import subprocess

    probe = [sys.executable, str(REPO / "scripts" / "aoti_load_probe.py"), "--device", device,
             "--config", "constants_not_in_so", "--timeout", str(_PROBE_STEP_S)]
    print(f"gpu_check: the worker crashed; probing torch alone: {' '.join(probe[1:])}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(probe, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=_PROBE_TOTAL_S)
        status: int | str = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        status = f"timed out after {_PROBE_TOTAL_S} s"
    lines = out.splitlines() + ([f"aoti_load_probe: {status}"] if isinstance(status, str) else [])
    print("\n".join(lines), file=sys.stderr)
    return {"exit": status, "lines": lines}


def check(args: argparse.Namespace, work: Path) -> None:
    import platform

    import torch
    import transformers
    from tests.tiny_models import make_tiny_model
    from transformers import AutoModelForCausalLM

    import kiln
    from kiln.api import load_engine

    device = torch.device(args.device)
    gpu = torch.cuda.get_device_properties(device) if device.type == "cuda" else None
    name = gpu.name if gpu else f"CPU {platform.processor() or platform.machine()}"
    sm = f"sm {gpu.major}.{gpu.minor}" if gpu else "no GPU"
    sync: Callable[[], None] = torch.cuda.synchronize if gpu else (lambda: None)
    model_dir = make_tiny_model("llama", work / "tiny-llama", seed=3)
    store = kiln.Store(work / "store")
    spec = kiln.BuildSpec("torch-aoti", str(model_dir), n_positions=128, dtype="fp32", options={"device": args.device})
    t0 = time.monotonic()
    res = kiln.resolve(spec, store=store)
    built = kiln.build(res, store=store)
    build_s = time.monotonic() - t0
    loaded = load_engine(res, store=store)
    engine = loaded.engine
    eager = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()

    prompt = torch.randint(3, 300, (1, 12), generator=torch.Generator().manual_seed(7)).to(device)
    new = args.new_tokens
    with torch.no_grad():
        mine = engine.generate(prompt, new, eos_token_id=[])
        theirs = eager.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                eos_token_id=None, pad_token_id=0)
    match = mine.tolist() == theirs.tolist()

    def decode_per_token(generate) -> float:  # type: ignore[no-untyped-def]
        """Median over runs of (N tokens - 1 token) / (N - 1), each pair timed back to back, so
        that prefill cancels out and a noisy moment spoils one pair, not the subtraction."""
        generate(new), generate(1)
        sync()
        samples = []
        for _ in range(args.runs):
            t = time.perf_counter()
            generate(new)
            sync()
            t_new = time.perf_counter() - t
            t = time.perf_counter()
            generate(1)
            sync()
            samples.append((t_new - (time.perf_counter() - t)) / (new - 1))
        return statistics.median(samples)

    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        decode_e = decode_per_token(lambda n: engine.generate(prompt, n, eos_token_id=[]))
        decode_x = decode_per_token(lambda n: eager.generate(prompt, max_new_tokens=n, min_new_tokens=n, **kw))
    summary = {
        "ok": match,
        "device": args.device,
        "gpu": name,
        "compute_capability": f"{gpu.major}.{gpu.minor}" if gpu else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "key": built.entry.key,
        "build_s": round(build_s, 1),
        "tokens_match": match,
        "new_tokens": new,
        "decode_engine_ms": round(decode_e * 1000, 3),
        "decode_eager_ms": round(decode_x * 1000, 3),
        "decode_speedup": round(decode_x / decode_e, 2) if decode_e > 0 else None,
    }
    print(f"gpu_check: {'PASS' if match else 'FAIL'} {name} ({sm}), torch "
          f"{torch.__version__} CUDA {torch.version.cuda}: tiny llama torch-aoti {args.device} engine built in {build_s:.0f} s, "
          f"greedy {new} tokens {'match' if match else 'DIFFER from'} eager, decode {decode_e * 1000:.2f} ms/token vs "
          f"eager {decode_x * 1000:.2f} ms ({summary['decode_speedup']}x)")
    if args.json:
        print(json.dumps(summary))
    if not match:
        print(f"gpu_check: engine {mine.tolist()}\ngpu_check: eager  {theirs.tolist()}", file=sys.stderr)
        raise SystemExit(EXIT_TOKENS_DIFFER)


if __name__ == "__main__":
    main()
