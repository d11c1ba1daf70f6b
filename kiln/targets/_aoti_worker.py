"""Worker process for the ``torch-aoti`` target: build one engine, then exit.

    python -m kiln.targets._aoti_worker --model-dir D --out-dir O \\
        --batch-size B --n-positions N --dtype fp32 [--device cpu] [--gguf-file F]

Runs :func:`kiln.targets._aoti_engine.export_engine` in its own process, so that a compiler
crash, a leak or torch's global state never reaches the parent. Progress goes to stdout, one
line per event (``stage: <name>`` and timings), flushed as it happens so the parent can
stream and store it as the build log.

Exit codes:
    0  success: engine.pt2, weights.safetensors and engine.json are in the out dir
    1  the build failed (message and traceback on stderr)
    2  bad arguments (argparse) or a spec the model cannot take (message on stderr)
    3  the model's architecture is not supported by torch-aoti
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

# Torch-free on purpose: the light side of Kiln (spec validation before any expensive work)
# imports these names from here; _aoti_engine re-exports them.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_SPEC = 2
EXIT_UNSUPPORTED = 3


def unsupported_message(architecture: str) -> str:
    return (
        f"architecture {architecture} is not supported by torch-aoti yet; "
        f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def architecture_of(model_dir: Path) -> str | None:
    """``architectures[0]`` from ``model_dir/config.json``; None when there is no readable one
    (e.g. a GGUF-only directory: the engine checks after loading the config)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    archs = config.get("architectures") if isinstance(config, dict) else None
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kiln.targets._aoti_worker", description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True, type=Path, help="Hugging Face model directory")
    p.add_argument("--out-dir", required=True, type=Path, help="where the engine files go")
    p.add_argument("--batch-size", required=True, type=int)
    p.add_argument("--n-positions", required=True, type=int)
    p.add_argument("--dtype", required=True, choices=["fp32", "fp16", "bf16"])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:index]")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model-dir (auto-detected)")
    return p


def _log(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    _log(f"stage: start python={sys.version.split()[0]}")
    if not args.model_dir.is_dir():
        print(f"error: model directory {args.model_dir} does not exist", file=sys.stderr, flush=True)
        return EXIT_BAD_SPEC

    # Cheap, torch-free architecture check first: an unsupported model fails in milliseconds,
    # not after importing torch and reading its weights.
    arch = architecture_of(args.model_dir)
    if arch is not None and arch not in SUPPORTED_ARCHITECTURES:
        print(unsupported_message(arch), file=sys.stderr, flush=True)
        return EXIT_UNSUPPORTED

    try:
        import torch
        from transformers.utils import logging as hf_logging

        from kiln.targets import _aoti_engine
    except ImportError as exc:
        print(
            f"error: the torch-aoti target needs torch and transformers ({exc}); "
            "install kiln[torch]",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_FAILED
    hf_logging.disable_progress_bar()
    _log(f"stage: imports done in {time.perf_counter() - t0:.1f}s torch={torch.__version__}")

    try:
        meta = _aoti_engine.export_engine(
            args.model_dir,
            args.out_dir,
            batch_size=args.batch_size,
            n_positions=args.n_positions,
            dtype=args.dtype,
            device=args.device,
            gguf_file=args.gguf_file,
            log=_log,
        )
    except _aoti_engine.UnsupportedArchitectureError as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return EXIT_UNSUPPORTED
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_SPEC
    except Exception as exc:  # the parent stores this log with the failed build
        traceback.print_exc()
        print(f"error: torch-aoti build failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    _log(
        f"stage: finished in {time.perf_counter() - t0:.1f}s "
        f"engine={args.out_dir / 'engine.pt2'} arch={meta['architecture']}"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
