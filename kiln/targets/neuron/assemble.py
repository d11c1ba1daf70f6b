"""The weights step of a Neuron build: a stored engine stage plus one model's files, no compiler.

    python -m kiln.targets.neuron.assemble --engine-dir E --model-dir D --out-dir O

transformers-neuronx takes the weights when a model is loaded, not when its graphs are
compiled (its NEFFs are the same for every checkpoint of an architecture; optimum-neuron keys
its compile cache on the architecture for that reason), so a Kiln build compiles the graphs
once per architecture (``worker --engine-only``: ``compiled/``, ``neuron-graphs.json``,
``engine.json``) and this step writes each model's artifact: those files, and ``model/`` with
the model's own config, tokenizer and weights (what the runtime loads weights from). It needs
no Neuron SDK: plain file copies, so it runs, and is tested, anywhere.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from .._plan import BUILD_LOG
from .._worker_main import run, stage
from .worker import copy_model_files


def assemble(engine_dir: Path, model_dir: Path, out_dir: Path) -> int:
    """Copy the engine stage's files (not its build log) and ``model_dir``'s model files into ``out_dir``."""
    if not (engine_dir / "compiled").is_dir():
        raise ValueError(f"{engine_dir} holds no compiled/ directory: not a Neuron engine stage")
    if (engine_dir / "model").exists():
        raise ValueError(f"{engine_dir} already holds model/: not an engine-only Neuron build")
    out_dir.mkdir(parents=True, exist_ok=True)
    copied = 0
    for src in sorted(engine_dir.rglob("*")):
        rel = src.relative_to(engine_dir)
        if src.is_dir() or rel.as_posix() == BUILD_LOG:
            continue
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out_dir / rel)
        copied += 1
    copy_model_files(model_dir, out_dir / "model")
    return copied


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kiln.targets.neuron.assemble", description=__doc__.split("\n")[0])
    p.add_argument("--engine-dir", required=True, type=Path, help="the stored engine stage (worker --engine-only)")
    p.add_argument("--model-dir", required=True, type=Path, help="the model whose files go into model/")
    p.add_argument("--out-dir", required=True, type=Path)
    args = p.parse_args(argv)

    def work() -> str:
        stage("assemble")
        copied = assemble(args.engine_dir, args.model_dir, args.out_dir)
        return f"{copied} engine file(s) and the model's files in {args.out_dir}"

    return run("neuron assemble", work)


if __name__ == "__main__":
    sys.exit(main())
