#!/usr/bin/env python3
"""Deployment cold start and per-token latency on SmolLM2-135M: JIT vs a Kiln hit.

Measured in one run, on one machine, so the ratios compare like with like:

* cold start, each in a fresh process, from process start to the first generated token:
  - "JIT": what a container without Kiln does — export + AOTInductor compile at start-up,
    then load and run;
  - "Kiln hit": `kiln` lookup + materialise (hard links) + load, then run. Nothing compiles.
* decode latency per token and prefill latency for a 128-token prompt: the loaded engine vs
  eager transformers (same weights, same prompt, greedy); engine and eager alternate, and the
  ratio is the median of the per-pair ratios.

    .venv/bin/python scripts/bench_coldstart.py [--n-positions 512] [--runs 5] [--latency-only]
    .venv/bin/python scripts/bench_coldstart.py --tiny [--runs 5]   # a tiny engine's hit vs `import torch`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Explain in two sentences why engines are compiled ahead of time."

JIT_CHILD = r"""
import sys, time, json
t0 = float(sys.argv[1])
from pathlib import Path
from kiln.targets.torch_aoti.export import export_engine
from kiln.targets.torch_aoti.runtime import load_engine
from transformers import AutoTokenizer
out = Path(sys.argv[3])
export_engine(Path(sys.argv[2]), out, batch_size=1, n_positions=int(sys.argv[4]), dtype="fp32", log=lambda s: None)
engine = load_engine(out)
tok = AutoTokenizer.from_pretrained(out)
ids = tok(sys.argv[5], return_tensors="pt")["input_ids"]
engine.generate(ids, 1, eos_token_id=[])
print(json.dumps({"ready_s": time.time() - t0}))
"""

HIT_CHILD = r"""
import sys, time, json
t0 = float(sys.argv[1])
from kiln import BuildSpec, Store, resolve
from kiln.api import load_engine
store = Store(sys.argv[3])
res = resolve(BuildSpec("torch-aoti", sys.argv[2], n_positions=int(sys.argv[4]), dtype="fp32"), store=store)
t_lookup = time.time()
loaded = load_engine(res, store=store)
t_loaded = time.time()
import torch
ids = torch.tensor([loaded.fast_tokenizer().encode(sys.argv[5], add_special_tokens=False).ids])  # tokenizers alone: no transformers import
loaded.engine.generate(ids, 1, eos_token_id=[])
heavy = sorted(m for m in ("torch._dynamo", "torch._inductor", "transformers") if m in sys.modules)
print(json.dumps({"ready_s": time.time() - t0, "resolve_s": t_lookup - t0, "materialise_load_s": t_loaded - t_lookup,
                  "heavy": heavy}))
"""


def run_child(code: str, *args: str) -> dict:
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", code, repr(t0), *args], capture_output=True, text=True,
                       env=dict(os.environ, TQDM_DISABLE="1"))
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def latency(model_dir: Path, store_root: Path, n_positions: int, runs: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kiln import BuildSpec, Store, resolve
    from kiln.api import load_engine

    store = Store(store_root)
    loaded = load_engine(resolve(BuildSpec("torch-aoti", str(model_dir), n_positions=n_positions, dtype="fp32"), store=store), store=store)
    engine = loaded.engine
    tok = AutoTokenizer.from_pretrained(model_dir)
    eager = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt_128 = tok("the " * 200, return_tensors="pt")["input_ids"][:, :128]
    chat = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_tensors="pt")
    ids = chat["input_ids"] if hasattr(chat, "keys") else chat
    new = 32

    def paired(engine_fn, eager_fn) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
        """Median engine time, median eager time and median per-pair ratio (eager / engine): the
        two sides alternate, so a noisy moment on this shared machine hits both."""
        engine_fn(), eager_fn()  # warm-up
        pairs = []
        for _ in range(runs):
            t = time.perf_counter()
            engine_fn()
            t_engine = time.perf_counter() - t
            t = time.perf_counter()
            eager_fn()
            pairs.append((t_engine, time.perf_counter() - t))
        return (statistics.median(e for e, _ in pairs), statistics.median(g for _, g in pairs),
                statistics.median(g / e for e, g in pairs))

    with torch.no_grad():
        def engine_prefill() -> None:
            engine.reset()
            engine.forward(prompt_128, torch.arange(128))

        def eager_prefill() -> None:
            eager(prompt_128, use_cache=True)

        def engine_decode() -> float:
            # Per-token decode = (generate N tokens - generate 1 token) / (N - 1): prefill cancels out.
            t = time.perf_counter()
            engine.generate(ids, new, eos_token_id=[])
            t_new = time.perf_counter() - t
            t = time.perf_counter()
            engine.generate(ids, 1, eos_token_id=[])
            return (t_new - (time.perf_counter() - t)) / (new - 1)

        def eager_decode() -> float:
            t = time.perf_counter()
            eager.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
            t_new = time.perf_counter() - t
            t = time.perf_counter()
            eager.generate(ids, max_new_tokens=1, do_sample=False)
            return (t_new - (time.perf_counter() - t)) / (new - 1)

        pre_engine, pre_eager, pre_ratio = paired(engine_prefill, eager_prefill)
        decodes = [(engine_decode(), eager_decode()) for _ in range(runs + 1)][1:]  # the first warms up
        dec_engine = statistics.median(e for e, _ in decodes)
        dec_eager = statistics.median(g for _, g in decodes)
        dec_ratio = statistics.median(g / e for e, g in decodes)
        # Correctness with each side's normal EOS handling (min_new_tokens would make eager
        # suppress EOS, which the engine does not, so timings and equality use different calls).
        same = engine.generate(ids, new)[0].tolist() == eager.generate(ids, max_new_tokens=new, do_sample=False)[0].tolist()
    return {"prefill128_engine_s": pre_engine, "prefill128_eager_s": pre_eager, "prefill128_ratio": pre_ratio,
            "decode_engine_s": dec_engine, "decode_eager_s": dec_eager, "decode_ratio": dec_ratio,
            "tokens_match": same}


IMPORT_TORCH_CHILD = r"""
import sys, time, json
t0 = float(sys.argv[1])
import torch
print(json.dumps({"ready_s": time.time() - t0}))
"""


def tiny(runs: int) -> None:
    """Cold start of a hit on a tiny engine against `import torch` alone, in turns, same run."""
    sys.path.insert(0, str(REPO))
    from tests.tiny_models import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="kiln-bench-coldstart-tiny-"))
    try:
        model = make_tiny_model("llama", work / "tiny")
        store = work / "store"
        build = subprocess.run([sys.executable, "-m", "kiln", "--store", str(store), "build", str(model),
                                "--target", "torch-aoti", "--n-positions", "64", "--json"], capture_output=True, text=True)
        if build.returncode != 0:
            raise SystemExit(build.stderr)
        pairs = []
        for _ in range(runs + 1):  # the first pair warms the page cache, not counted
            pairs.append((run_child(HIT_CHILD, str(model), str(store), "64", PROMPT), run_child(IMPORT_TORCH_CHILD)))
        pairs = pairs[1:]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    hit = statistics.median(h["ready_s"] for h, _ in pairs)
    torch_s = statistics.median(t["ready_s"] for _, t in pairs)
    ratio = statistics.median(h["ready_s"] / t["ready_s"] for h, t in pairs)
    resolve_s = statistics.median(h["resolve_s"] for h, _ in pairs)
    load_s = statistics.median(h["materialise_load_s"] for h, _ in pairs)
    print(f"tiny llama (2 layers), torch-aoti fp32, batch 1, n_positions 64, {os.cpu_count()} CPUs, medians of {runs} pairs\n")
    print("| measure | baseline | Kiln | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| cold start of a hit to the first token (fresh process) | `import torch` {torch_s:.2f} s | {hit:.2f} s "
          f"(resolve {resolve_s:.2f} s, materialise+load {load_s:.2f} s) | {ratio:.2f}x `import torch` |")
    print(f"\nimported on the way: {sorted({m for h, _ in pairs for m in h['heavy']}) or 'none of torch._dynamo, torch._inductor, transformers'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-positions", type=int, default=512)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", type=Path, default=REPO / ".kiln-demo" / "SmolLM2-135M-Instruct")
    ap.add_argument("--tiny", action="store_true",
                    help="cold start of a tiny engine's hit against `import torch` (no SmolLM2 needed)")
    ap.add_argument("--latency-only", action="store_true",
                    help="decode and prefill latency only (no JIT and hit cold starts)")
    args = ap.parse_args()
    if args.tiny:
        tiny(args.runs)
        return
    model = Path(subprocess.run([sys.executable, str(REPO / "scripts" / "get_smollm2.py"), str(args.model)],
                                check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-coldstart-"))
    try:
        store = work / "store"
        build = subprocess.run([sys.executable, "-m", "kiln", "--store", str(store), "build", str(model),
                                "--target", "torch-aoti", "--n-positions", str(args.n_positions), "--json"],
                               capture_output=True, text=True)
        if build.returncode != 0:
            raise SystemExit(build.stderr)
        if not args.latency_only:
            jit = run_child(JIT_CHILD, str(model), str(work / "jit"), str(args.n_positions), PROMPT)
            hits = [run_child(HIT_CHILD, str(model), str(store), str(args.n_positions), PROMPT) for _ in range(3)]
            hit = min(hits, key=lambda h: h["ready_s"])
        lat = latency(model, store, args.n_positions, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"SmolLM2-135M-Instruct, torch-aoti fp32, batch 1, n_positions {args.n_positions}, {os.cpu_count()} CPUs\n")
    print("| measure | baseline | Kiln | ratio |")
    print("| --- | --- | --- | --- |")
    if not args.latency_only:
        print(f"| cold start to first token (fresh process) | JIT compile {jit['ready_s']:.1f} s | hit {hit['ready_s']:.2f} s "
              f"(resolve {hit['resolve_s']:.2f} s, materialise+load {hit['materialise_load_s']:.2f} s) | "
              f"{jit['ready_s'] / hit['ready_s']:.0f}x faster |")
    print(f"| decode latency per token | eager {lat['decode_eager_s'] * 1000:.1f} ms | engine {lat['decode_engine_s'] * 1000:.1f} ms | "
          f"{lat['decode_ratio']:.2f}x |")
    print(f"| prefill, 128-token prompt | eager {lat['prefill128_eager_s'] * 1000:.0f} ms | engine {lat['prefill128_engine_s'] * 1000:.0f} ms | "
          f"{lat['prefill128_ratio']:.2f}x |")
    print(f"\ngreedy tokens engine == eager (32 tokens): {lat['tokens_match']}")


if __name__ == "__main__":
    main()
