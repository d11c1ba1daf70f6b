"""Worker process for the ``trtllm`` target's CPU stages: calibrate and convert, then exit.

    python -m kiln.targets.trtllm.worker calibrate --model-dir D --out-dir O \\
        [--calib-file F] [--num-samples N] [--seq-len L]
    python -m kiln.targets.trtllm.worker convert --model-dir D --out-dir O \\
        --dtype fp16 --tp-degree 2 [--smoothquant ALPHA --per-token --per-channel \\
        --int8-kv-cache --stats-dir S]

``calibrate`` writes act_stats.safetensors + act_stats.json + facts.json (see kiln.targets.trtllm.calibrate);
``convert`` writes a TensorRT-LLM checkpoint: config.json + rank{N}.safetensors (see
kiln.targets.trtllm.checkpoint). Exit codes and the progress protocol: :mod:`kiln.targets._worker_main`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...spec import parse_alpha
from .. import _worker_main as w


def _alpha(text: str) -> float:
    try:
        return parse_alpha(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    from .calibrate import DEFAULT_NUM_SAMPLES, DEFAULT_SEQ_LEN

    p = argparse.ArgumentParser(prog="python -m kiln.targets.trtllm.worker", description=(__doc__ or "").split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("calibrate", help="collect SmoothQuant activation statistics")
    c.add_argument("--model-dir", required=True, type=Path, help="Hugging Face model directory")
    c.add_argument("--out-dir", required=True, type=Path, help="where act_stats.* go")
    c.add_argument("--calib-file", type=Path, default=None, help="plain text (paragraphs), or JSONL with a 'text' field or pre-tokenised 'input_ids' (.gz read decompressed); default: Kiln's built-in corpus")
    c.add_argument("--num-samples", type=_positive, default=DEFAULT_NUM_SAMPLES, help=f"texts to run (default {DEFAULT_NUM_SAMPLES}, TensorRT-LLM's)")
    c.add_argument("--seq-len", type=_positive, default=DEFAULT_SEQ_LEN, help=f"tokens per text (default {DEFAULT_SEQ_LEN}, TensorRT-LLM's)")

    v = sub.add_parser("convert", help="write a TensorRT-LLM checkpoint")
    v.add_argument("--model-dir", required=True, type=Path, help="Hugging Face model directory")
    v.add_argument("--out-dir", required=True, type=Path, help="where config.json and rank{N}.safetensors go")
    v.add_argument("--dtype", required=True, choices=["fp32", "fp16", "bf16"])
    v.add_argument("--tp-degree", required=True, type=_positive)
    v.add_argument("--smoothquant", metavar="ALPHA", type=_alpha, default=None, help="SmoothQuant W8A8 with this alpha")
    v.add_argument("--per-token", action="store_true", help="dynamic per-token activation scales")
    v.add_argument("--per-channel", action="store_true", help="per-output-channel weight scales")
    v.add_argument("--int8-kv-cache", action="store_true", help="INT8 KV cache")
    v.add_argument("--stats-dir", type=Path, default=None, help="output of the calibrate command (default: calibrate here)")
    return p


def _calibrate(args: argparse.Namespace) -> str:
    from .calibrate import calibrate

    _, meta = calibrate(
        args.model_dir, args.out_dir, calib_file=args.calib_file,
        num_samples=args.num_samples, seq_len=args.seq_len, log=w.log,
    )  # fmt: skip
    cal = meta["calibration"]
    short = " SHORT: see the WARNING above" if cal["warnings"] else ""
    return (f"modules={meta['modules']} samples={cal['num_samples_used']} (of {cal['num_samples_requested']} requested) "
            f"tokens={cal['tokens']}{short}")


def _convert(args: argparse.Namespace) -> str:
    from .config import validate_convert_args

    # Validate before importing torch: bad input fails in milliseconds.
    validate_convert_args(
        args.model_dir, dtype=args.dtype, tp_degree=args.tp_degree, smoothquant_alpha=args.smoothquant,
        per_token=args.per_token, per_channel=args.per_channel, int8_kv_cache=args.int8_kv_cache,
        stats_dir=args.stats_dir,
    )  # fmt: skip
    from .checkpoint import convert_checkpoint

    result = convert_checkpoint(
        args.model_dir, args.out_dir, dtype=args.dtype, tp_degree=args.tp_degree,
        smoothquant_alpha=args.smoothquant, per_token=args.per_token, per_channel=args.per_channel,
        int8_kv_cache=args.int8_kv_cache, stats_dir=args.stats_dir, log=w.log,
    )  # fmt: skip
    return f"quant_algo={result['quant_algo']} files={','.join(sorted(result['files']))}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    w.stage("start", f"command={args.command} python={sys.version.split()[0]}")
    body = _calibrate if args.command == "calibrate" else _convert
    return w.run(f"trtllm {args.command}", lambda: body(args))


if __name__ == "__main__":
    sys.exit(main())
