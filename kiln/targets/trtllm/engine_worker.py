"""Worker for the trtllm engine stage: `trtllm-build` on a converted checkpoint.

    python -m kiln.targets.trtllm.engine_worker --checkpoint-dir C --tokenizer-dir T --out-dir O \\
        --max-batch-size B --max-seq-len N [--max-num-tokens K]

Runs TensorRT-LLM's documented command line (needs `tensorrt_llm` and a CUDA GPU; the
quantization and tensor-parallel mapping come from the checkpoint's config.json), then copies
the tokenizer files beside the engines so the artifact is what a runtime (or an LMI
container, which skips compiling when config.json has a build_config) loads:

    O/config.json          engine config (TensorRT-LLM writes it, with build_config)
    O/rank{N}.engine       one engine per tensor-parallel rank
    O/tokenizer*.json ...  tokenizer files of the model
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from .. import _worker_main as w
from .._model_files import GENERATION_CONFIG, TOKENIZER_FILES



def trtllm_build_argv(checkpoint_dir: str, out_dir: str, max_batch_size: int, max_seq_len: int,
                      max_num_tokens: int | str | None, exe: str = "trtllm-build") -> list[str]:
    """The trtllm-build command line (``kiln build --dry-run`` shows it with placeholder directories)."""
    argv = [
        exe,
        "--checkpoint_dir", str(checkpoint_dir),
        "--output_dir", str(out_dir),
        "--max_batch_size", str(max_batch_size),
        # One engine serves prompts up to the whole context: input may take all of n_positions.
        "--max_input_len", str(max_seq_len),
        "--max_seq_len", str(max_seq_len),
        "--gemm_plugin", "auto",
        "--gpt_attention_plugin", "auto",
    ]
    if max_num_tokens:
        argv += ["--max_num_tokens", str(max_num_tokens)]
    return argv


def build_argv(args: argparse.Namespace) -> list[str]:
    return trtllm_build_argv(args.checkpoint_dir, args.out_dir, args.max_batch_size, args.max_seq_len,
                             args.max_num_tokens, exe=shutil.which("trtllm-build") or "trtllm-build")


def _build(args: argparse.Namespace) -> str:
    if shutil.which("trtllm-build") is None:
        raise ImportError("trtllm-build is not on PATH: install tensorrt_llm (NVIDIA's index) on a CUDA machine")
    cmd = build_argv(args)
    w.stage("engine", " ".join(cmd))
    rc = subprocess.call(cmd)
    if rc != 0:
        raise RuntimeError(f"trtllm-build {w.describe_exit(rc)}")
    for name in (GENERATION_CONFIG, *TOKENIZER_FILES):
        if (args.tokenizer_dir / name).is_file():
            shutil.copyfile(args.tokenizer_dir / name, args.out_dir / name)
    return f"engines={len(list(args.out_dir.glob('rank*.engine')))}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kiln.targets.trtllm.engine_worker")
    p.add_argument("--checkpoint-dir", required=True, type=Path)
    p.add_argument("--tokenizer-dir", required=True, type=Path)
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--max-batch-size", required=True, type=int)
    p.add_argument("--max-seq-len", required=True, type=int)
    p.add_argument("--max-num-tokens", type=int, default=None)
    args = p.parse_args(argv)
    return w.run("trtllm-build", lambda: _build(args))


if __name__ == "__main__":
    sys.exit(main())
