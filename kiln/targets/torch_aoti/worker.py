"""Worker process for the ``torch-aoti`` target: build one engine, then exit.

    python -m kiln.targets.torch_aoti.worker --model-dir D --out-dir O \\
        --batch-size B --n-positions N --dtype fp32 [--device cpu] [--gguf-file F] [--engine-only]
    python -m kiln.targets.torch_aoti.worker --model-dir D --out-dir O --weights-for ENGINE_DIR [--gguf-file F]

Runs :func:`kiln.targets.torch_aoti.export.export_engine` in its own process (exit codes and
the progress protocol: :mod:`kiln.targets._worker_main`). On success engine.pt2,
weights.safetensors and engine.json are in the out dir. A Kiln build runs it twice: with
``--engine-only`` (the compiled engine, shared by every model of the architecture: a build
stage), then with ``--weights-for`` the stored engine (:func:`~kiln.targets.torch_aoti.export.write_weights`:
this model's weights and files beside a copy of it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .. import _worker_main as w
from ._facts import SUPPORTED_ARCHITECTURES, unsupported_message


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
    p = argparse.ArgumentParser(prog="python -m kiln.targets.torch_aoti.worker", description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True, type=Path, help="Hugging Face model directory")
    p.add_argument("--out-dir", required=True, type=Path, help="where the engine files go")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--n-positions", type=int)
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:index]")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model-dir (auto-detected)")
    p.add_argument("--engine-only", action="store_true", help="write the compiled engine only (no weights, no model files)")
    p.add_argument("--weights-for", type=Path, default=None, metavar="ENGINE_DIR",
                   help="complete the engine-only build in ENGINE_DIR with this model's weights (no compile)")
    return p


def _build(args: argparse.Namespace) -> str:
    t0 = time.perf_counter()
    if not args.model_dir.is_dir():
        raise ValueError(f"model directory {args.model_dir} does not exist")
    # Cheap, torch-free architecture check first: an unsupported model fails in milliseconds,
    # not after importing torch and reading its weights.
    arch = architecture_of(args.model_dir)
    if arch is not None and arch not in SUPPORTED_ARCHITECTURES:
        raise w.UnsupportedArchitectureError(unsupported_message(arch))
    w.stage("imports")
    import torch
    from transformers.utils import logging as hf_logging

    from . import export

    hf_logging.disable_progress_bar()
    w.log(f"imports done in {time.perf_counter() - t0:.1f}s torch={torch.__version__}")
    if args.weights_for is not None:
        meta = export.write_weights(args.model_dir, args.weights_for, args.out_dir, gguf_file=args.gguf_file, log=w.log)
        return f"weights={args.out_dir / 'weights.safetensors'} for the engine of {args.weights_for} arch={meta['architecture']}"
    if args.batch_size is None or args.n_positions is None or args.dtype is None:
        raise ValueError("--batch-size, --n-positions and --dtype are required unless --weights-for is given")
    meta = export.export_engine(
        args.model_dir, args.out_dir, batch_size=args.batch_size, n_positions=args.n_positions,
        dtype=args.dtype, device=args.device, gguf_file=args.gguf_file, engine_only=args.engine_only, log=w.log,
    )
    return f"engine={args.out_dir / 'engine.pt2'} arch={meta['architecture']}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    w.log(f"python={sys.version.split()[0]}")
    return w.run("torch-aoti build", lambda: _build(args))


if __name__ == "__main__":
    sys.exit(main())
