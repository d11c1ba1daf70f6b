#!/usr/bin/env python3
"""Build matrices: stage sharing vs independent rows, and the local vs the Ray executor.

Measured in one run on one machine (ratios, since these machines are noisy):

1. trtllm, 4 shapes of one SmoothQuant model (the CPU stages: calibration + conversion; the
   engine stage needs a GPU): one matrix in one store, where the 4 rows share one calibration
   and one checkpoint, vs each row built alone in a fresh store (what a pipeline without
   stage reuse does).
2. torch-aoti, 4 shapes of one tiny model: the local executor vs the Ray executor (a local Ray
   instance on this machine), each into a fresh store, same --jobs/CPUs.

    .venv/bin/python scripts/bench_matrix.py [--model DIR] [--calib-samples 32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def kiln(store: Path, *args: str) -> dict:
    env = dict(os.environ, KILN_HOME=str(store), RAY_USAGE_STATS_ENABLED="0", TQDM_DISABLE="1")
    r = subprocess.run([sys.executable, "-m", "kiln", *args, "--json"], capture_output=True, text=True, env=env)
    if r.returncode not in (0, 1):
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout)


def timed_matrix(store: Path, mfile: Path, *extra: str) -> tuple[float, dict]:
    t = time.perf_counter()
    report = kiln(store, "matrix", "build", str(mfile), *extra)
    return time.perf_counter() - t, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / ".kiln-demo" / "SmolLM2-135M-Instruct")
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-seq-len", type=int, default=128)
    args = ap.parse_args()
    model = Path(subprocess.run([sys.executable, str(REPO / "scripts" / "get_smollm2.py"), str(args.model)],
                                check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-matrix-"))
    try:
        # 1. trtllm stage sharing on SmolLM2.
        sq = work / "sq.yaml"
        sq.write_text(
            f"models: [{model}]\ntargets: [trtllm]\nn_positions: [512, 1024]\nbatch_sizes: [1, 4]\ntp_degrees: [1]\n"
            "dtypes: [fp16]\nquantization:\n  - {smoothquant: 0.5, per_token: true, per_channel: true}\n"
            f"options: {{calib_samples: {args.calib_samples}, calib_seq_len: {args.calib_seq_len}}}\n"
            "toolchain: {trtllm: {tensorrt_llm: '0.12.0', tensorrt: '10.3.0', hardware: cuda-sm90}}\n"
        )
        shared_s, shared = timed_matrix(work / "shared", sq, "--jobs", "1")
        rows = [r["row"] for r in shared["rows"]]
        alone_s = 0.0
        for i, row in enumerate(rows):
            s, _ = timed_matrix(work / f"alone{i}", sq, "--jobs", "1", "--row", row)
            alone_s += s

        # 2. torch-aoti: local vs Ray executor.
        from tests.tiny_models import make_tiny_model

        tiny = make_tiny_model("llama", work / "tiny", seed=5)
        aoti = work / "aoti.yaml"
        aoti.write_text(f"models: [{tiny}]\ntargets: [torch-aoti]\nn_positions: [32, 64]\nbatch_sizes: [1, 2]\ndtypes: [fp32]\n")
        local_s, local = timed_matrix(work / "local", aoti, "--jobs", "2")
        ray_s, ray = timed_matrix(work / "ray", aoti, "--executor", "ray")
        same_keys = sorted(r["key"] for r in local["rows"]) == sorted(r["key"] for r in ray["rows"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{os.cpu_count()} CPUs\n")
    print("| measure | baseline | Kiln | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| trtllm SmoothQuant, 4 shapes of SmolLM2-135M, CPU stages (calib {args.calib_samples}x{args.calib_seq_len}) "
          f"| each row alone {alone_s:.1f} s | one matrix, shared stages {shared_s:.1f} s | {alone_s / shared_s:.2f}x |")
    print(f"| torch-aoti, 4 shapes of a tiny Llama, 2 at a time | local executor {local_s:.1f} s | Ray executor {ray_s:.1f} s "
          f"| Ray/local {ray_s / local_s:.2f} |")
    print(f"\nrow statuses (shared): {[r['status'] for r in shared['rows']]}; Ray keys == local keys: {same_keys}")


if __name__ == "__main__":
    main()
