"""SmoothQuant W8A8 quality and TensorRT-LLM checkpoint conversion cost on a real model.

    .venv/bin/python scripts/bench_smoothquant.py [--model-dir .kiln-demo/SmolLM2-135M-Instruct]

1. Calibrates on Kiln's default corpus (kiln/compile/calib_default.txt) in a worker process.
2. Converts TensorRT-LLM checkpoints in worker processes, timing each and reading its peak
   RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` inside the worker process).
3. Measures perplexity on HELD_OUT below (original prose written for this benchmark, not part
   of the calibration corpus): the Hugging Face model in fp32 is the baseline; every
   checkpoint is run from its rank files by kiln.targets.trtllm.reference.

Ratios are against baselines measured in the same run (DESIGN.md): perplexity against the
HF fp32 model, conversion time and memory against the unquantized fp16 tp1 conversion.
Prints markdown tables for docs/benchmarks.md. Runs in about 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HELD_OUT = [
    "The night train to the coast was nearly empty. A conductor with a grey moustache walked the corridor every hour, "
    "checking tickets that nobody had bought since the last station, and in the dining car a young cook sat reading a "
    "paperback with his feet up on a crate of oranges. Outside, small towns slid past as clusters of orange light, each "
    "one gone before the eye could settle on a single window.",
    "To repot a houseplant, choose a container only slightly larger than the old one, with a hole in the bottom for "
    "drainage. Water the plant the day before so the root ball holds together. Tip the pot on its side, ease the plant "
    "out, and loosen any roots that circle the outside. Set it at the same depth as before, fill around it with fresh "
    "soil, press gently, and water until it runs out of the bottom.",
    "A hash function turns data of any length into a short fixed-size value. Good hash functions spread their outputs "
    "evenly, so that similar inputs produce very different results, and cryptographic ones make it practically "
    "impossible to find two inputs with the same output. That property lets a system name a file by the hash of its "
    "contents: if even one byte changes, the name changes too, and a corrupted copy can never pass for the original.",
    "The harbor market opened before sunrise. Fishermen unloaded crates of mackerel and squid under bright lamps while "
    "buyers from the restaurants walked the rows with notebooks, pointing and haggling in short, practiced phrases. By "
    "seven the best fish were gone, the ice had begun to melt into the gutters, and the gulls had gathered on the roof "
    "of the auction hall, waiting with great patience for the scraps.",
    "Clouds form when moist air rises and cools. Cooler air can hold less water vapour, so some of it condenses onto "
    "tiny particles of dust, salt or smoke, making droplets far too small to fall. Billions of them together scatter "
    "sunlight and appear white. When the droplets grow large enough by colliding and merging, they fall as rain, and "
    "if the air is cold enough high up, they freeze first and may reach the ground as snow.",
    "\"We could take the long way,\" said Tom, folding the map so that only the valley showed. \"It adds an hour, but the "
    "bridge on the short road was closed last spring.\" His sister looked at the sky, which was turning the colour of "
    "slate. \"An hour in the rain is worse than a closed bridge,\" she said. \"Let's at least go and see.\" They went to "
    "see. The bridge was open, freshly painted, and entirely dry.",
    "The report found that households in the region spent on average fourteen percent of their income on energy last "
    "winter, up from nine percent two years earlier. Rural homes were hit hardest, since many still heat with oil and "
    "have older, poorly insulated walls. The authors recommend expanding grants for insulation and heat pumps, and they "
    "estimate that the programme would pay for itself within twelve years through lower support payments.",
    "A queue is a list where items join at one end and leave at the other, in the order they arrived. Operating "
    "systems use queues to schedule work, printers to hold documents, and web servers to hold requests that arrive "
    "faster than they can be answered. When a queue grows without limit, it hides a problem rather than solving it: "
    "the delay for each new item keeps rising, and sooner or later memory runs out.",
    "My uncle kept bees at the bottom of his orchard, in four white hives he painted every spring. He worked without "
    "gloves, moving slowly and talking to the bees in a low voice, and he claimed they knew him. Whether or not that was "
    "true, he was stung far less often than the rest of us, who watched from behind the apple trees and ran whenever a "
    "bee came within a few meters.",
    "Maps always distort something. A globe is curved and paper is flat, so every projection must stretch, squeeze or "
    "cut the surface to make it fit. Some projections keep the shapes of small regions correct but exaggerate the size "
    "of lands near the poles; others keep areas accurate but bend shapes. Navigators, teachers and city planners choose "
    "different projections because each of them cares about different kinds of truth.",
    "The new footbridge over the canal was finished three weeks ahead of schedule. Made of weathering steel that will "
    "slowly turn the colour of rust, it curves low across the water so that narrow boats can still pass beneath. On "
    "opening day a brass band played at one end and a choir sang at the other, and the first person to cross, chosen by "
    "lottery, was an eighty-year-old woman who had lived beside the canal all her life.",
    "When you debug a program, change one thing at a time. Form a guess about what is wrong, find the smallest test "
    "that shows the problem, and check whether the guess explains it. Print statements and a debugger both help, but "
    "the most useful tool is often a careful description of the bug written out in plain words, because the act of "
    "explaining it exposes the assumption you had not noticed you were making.",
    "The choir rehearsed in the church hall on Thursday evenings, forty voices crowded around an upright piano that had "
    "not been tuned in years. The director, a retired schoolteacher, stopped them every few bars to fix a vowel or a "
    "breath, and nobody minded. By December they could sing the whole programme from memory, and at the concert the "
    "piano, tuned at last, sounded almost too bright among the familiar voices.",
    "Salt has shaped human history more than its price today suggests. Before refrigeration it was the main way to "
    "keep meat and fish through the winter, so towns near salt springs and mines grew rich, and roads were built to "
    "carry it inland. Governments taxed it heavily because everyone needed it, and in several countries those taxes "
    "became a cause of protest, sometimes a spark for much larger political change.",
    "The cat had decided, for reasons of its own, that the laundry basket was the only acceptable place to sleep. "
    "Clean clothes, dirty clothes, towels fresh from the dryer: it made no distinction. Whenever someone removed it, it "
    "waited a few minutes with an air of deep offence and then climbed back in. Eventually the family bought a second "
    "basket, lined it with an old sweater, and gave up the first one entirely.",
    "Batteries store energy in chemical form and release it as an electric current when a circuit connects their two "
    "terminals. Inside a lithium-ion cell, lithium ions move from one electrode to the other through an electrolyte "
    "while electrons travel through the outside circuit to power a device. Charging pushes the ions back again. Each "
    "cycle wears the materials slightly, which is why a phone battery holds less charge after a few years.",
]


def _worker_with_rss(args: list[str]) -> dict:
    """Run the trtllm worker in a fresh process; return wall time, peak RSS and output."""
    code = (
        "import resource, sys\n"
        "from kiln.targets.trtllm.worker import main\n"
        "rc = main(sys.argv[1:])\n"
        "print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n"
        "sys.exit(rc)\n"
    )
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    rss = next((int(ln.split()[1]) for ln in res.stdout.splitlines() if ln.startswith("maxrss_kb")), 0)
    return {"rc": res.returncode, "wall_s": wall, "rss_mb": rss / 1024, "stdout": res.stdout, "stderr": res.stderr.strip()}


def _perplexity(logits_fn, token_lists) -> float:  # type: ignore[no-untyped-def]
    import torch

    nll, count = 0.0, 0
    for ids in token_lists:
        x = torch.tensor([ids])
        logits = logits_fn(x)[0, :-1].float()
        nll += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
        count += len(ids) - 1
    return math.exp(nll / count)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--model-dir", type=Path, default=REPO / ".kiln-demo" / "SmolLM2-135M-Instruct")
    ap.add_argument("--num-samples", type=int, default=512, help="calibration texts (the corpus has 64: all are used)")
    ap.add_argument("--seq-len", type=int, default=512, help="calibration tokens per text")
    ap.add_argument("--max-eval-tokens", type=int, default=256, help="tokens per held-out paragraph")
    ap.add_argument("--repeats", type=int, default=2, help="conversion runs per configuration (best wall time is kept)")
    args = ap.parse_args()
    md = args.model_dir.resolve()
    if not (md / "config.json").is_file():
        print(f"error: {md} is not a Hugging Face model directory", file=sys.stderr)
        return 2

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from kiln.targets.trtllm.reference import ReferenceExecutor

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-sq-"))
    stats = work / "stats"

    cal = _worker_with_rss(["calibrate", "--model-dir", str(md), "--out-dir", str(stats),
                            "--num-samples", str(args.num_samples), "--seq-len", str(args.seq_len)])  # fmt: skip
    if cal["rc"] != 0:
        print(cal["stderr"], file=sys.stderr)
        return 1
    cal_meta = json.loads((stats / "act_stats.json").read_text())["calibration"]

    conversions = [
        # (label, tp, extra args, evaluate perplexity?)
        ("fp16 (no quantization)", 1, [], True),
        ("fp16 (no quantization)", 3, [], False),
        ("fp16 (no quantization)", 2, [], False),
        ("SQ a=0.5 per-channel + per-token", 1, ["--smoothquant", "0.5", "--per-channel", "--per-token"], True),
        ("SQ a=0.5 per-channel + per-token", 3, ["--smoothquant", "0.5", "--per-channel", "--per-token"], True),
        ("SQ a=0.5 per-channel + per-token", 2, ["--smoothquant", "0.5", "--per-channel", "--per-token"], False),
        ("SQ a=0.8 per-channel + per-token", 1, ["--smoothquant", "0.8", "--per-channel", "--per-token"], True),
        ("SQ a=0.5 per-channel + per-token + INT8 KV", 1, ["--smoothquant", "0.5", "--per-channel", "--per-token", "--int8-kv-cache"], True),
        ("SQ a=0.5 per-channel + per-tensor activations", 1, ["--smoothquant", "0.5", "--per-channel"], True),
        ("SQ a=0.8 per-channel + per-tensor activations", 1, ["--smoothquant", "0.8", "--per-channel"], True),
        ("SQ a=0.5 per-tensor", 1, ["--smoothquant", "0.5"], True),
        ("SQ a=0.8 per-tensor", 1, ["--smoothquant", "0.8"], True),
    ]
    conv_rows = []
    for i, (label, tp, extra, _) in enumerate(conversions):
        out = work / f"ckpt{i}"
        argv = ["convert", "--model-dir", str(md), "--out-dir", str(out), "--dtype", "fp16", "--tp-degree", str(tp), *extra]
        argv += ["--stats-dir", str(stats)] if extra else []
        # Best of --repeats runs (the machine is shared; wall times of a few seconds are noisy).
        runs = [_worker_with_rss(argv) for _ in range(args.repeats)]
        res = min(runs, key=lambda r: r["wall_s"])
        res["rss_mb"] = max(r["rss_mb"] for r in runs)
        size = sum(p.stat().st_size for p in out.glob("*")) if res["rc"] == 0 else 0
        conv_rows.append((label, tp, res, size, out))

    tok = AutoTokenizer.from_pretrained(md)
    token_lists = [tok(t, truncation=True, max_length=args.max_eval_tokens).input_ids for t in HELD_OUT]
    n_tokens = sum(len(t) - 1 for t in token_lists)
    hf = AutoModelForCausalLM.from_pretrained(md, dtype=torch.float32).eval()
    with torch.inference_mode():
        base_ppl = _perplexity(lambda x: hf(input_ids=x).logits, token_lists)
    del hf

    ppl_rows = []
    for (label, tp, res, _size, out), (_, _, _, evaluate) in zip(conv_rows, conversions):
        if not evaluate or res["rc"] != 0:
            continue
        ex = ReferenceExecutor(out)
        t0 = time.perf_counter()
        ppl = _perplexity(ex.logits, token_lists)
        ppl_rows.append((label, tp, ex.config["quantization"]["quant_algo"], ex.config["quantization"]["kv_cache_quant_algo"], ppl, time.perf_counter() - t0))
        del ex

    # ------------------------------------------------------------------ report
    cfg = json.loads((md / "config.json").read_text())
    print(f"### SmoothQuant W8A8 and TensorRT-LLM checkpoint conversion — {md.name}\n")
    print(f"Command: `.venv/bin/python scripts/bench_smoothquant.py` ({platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, no GPU).")  # fmt: skip
    print(f"Model: {cfg['architectures'][0]}, {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, "
          f"{cfg['num_attention_heads']} heads / {cfg['num_key_value_heads']} KV heads, vocab {cfg['vocab_size']}.")  # fmt: skip
    print(f"Calibration: Kiln default corpus, {cal_meta['num_samples_used']} texts used of {cal_meta['num_samples_requested']} "
          f"requested (seq_len {cal_meta['seq_len']}), {cal_meta['tokens']} tokens; {cal['wall_s']:.1f} s wall, "
          f"peak RSS {cal['rss_mb']:.0f} MB.")  # fmt: skip
    print(f"Held-out text: {len(HELD_OUT)} paragraphs written for this script (not in the calibration corpus), "
          f"{n_tokens} predicted tokens.\n")

    print("| checkpoint (fp16) | tp | quant_algo | kv cache | perplexity | vs HF fp32 | reference run (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| Hugging Face model, fp32 (baseline) | - | - | - | {base_ppl:.3f} | 1.000 | - |")
    for label, tp, algo, kv, ppl, secs in ppl_rows:
        print(f"| {label} | {tp} | {algo or '-'} | {kv or 'fp16'} | {ppl:.3f} | {ppl / base_ppl:.3f} | {secs:.1f} |")

    base_conv = conv_rows[0][2]
    print(f"\n| conversion (worker process, fp16; best of {args.repeats}) | tp | result | wall (s) | vs fp16 tp1 | peak RSS (MB) | vs fp16 tp1 | output (MB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, tp, res, size, _ in conv_rows:
        if res["rc"] == 0:
            print(f"| {label} | {tp} | ok | {res['wall_s']:.1f} | {res['wall_s'] / base_conv['wall_s']:.2f} | "
                  f"{res['rss_mb']:.0f} | {res['rss_mb'] / base_conv['rss_mb']:.2f} | {size / 1e6:.0f} |")  # fmt: skip
        else:
            msg = res["stderr"].splitlines()[-1] if res["stderr"] else f"exit {res['rc']}"
            print(f"| {label} | {tp} | rejected (exit {res['rc']}): {msg.removeprefix('error: ')} | - | - | - | - | - |")
    print("\nConversion wall time includes interpreter start and torch import (about 1 s); SmoothQuant "
          "conversions read the calibration statistics computed once (above) and hash the model's files "
          "to check that the statistics belong to it. Peak RSS includes the model's safetensors file, "
          f"which the converter memory-maps (about 540 MB here). Whole benchmark: {time.perf_counter() - t_start:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
