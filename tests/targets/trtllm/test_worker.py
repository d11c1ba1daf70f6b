"""The trtllm worker as the build runs it: a real subprocess, progress on stdout, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.targets.trtllm.reference import ReferenceExecutor

from . import hf_logits, rel_err, tiny, token_ids

REPO = Path(__file__).resolve().parents[2]


def _worker(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kiln.targets.trtllm.worker", *map(str, args)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip


def _stages(stdout: str) -> list[str]:
    return [ln.split()[1] for ln in stdout.splitlines() if ln.startswith("stage: ")]


def test_calibrate_then_convert(tmp_path: Path) -> None:
    md = tiny("mistral", tmp_path / "model")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"sample number {i}: the quick brown fox jumps over the lazy dog"}) for i in range(6)))
    cal = _worker("calibrate", "--model-dir", md, "--out-dir", tmp_path / "stats", "--calib-file", corpus,
                  "--num-samples", "4", "--seq-len", "32")  # fmt: skip
    assert cal.returncode == 0, cal.stderr
    assert _stages(cal.stdout)[0] == "start" and _stages(cal.stdout)[-1] == "calibrate"
    assert cal.stdout.splitlines()[-1].startswith("finished in")
    meta = json.loads((tmp_path / "stats" / "act_stats.json").read_text())
    assert meta["calibration"]["num_samples_used"] == 4 and meta["calibration"]["name"] == "corpus.jsonl"

    conv = _worker("convert", "--model-dir", md, "--out-dir", tmp_path / "ckpt", "--dtype", "fp16", "--tp-degree", "2",
                   "--smoothquant", "0.5", "--per-token", "--per-channel", "--int8-kv-cache",
                   "--stats-dir", tmp_path / "stats")  # fmt: skip
    assert conv.returncode == 0, conv.stderr
    stages = _stages(conv.stdout)
    assert stages[0] == "start" and stages[-1] == "write-rank1" and len(stages) == len(set(stages))
    assert conv.stdout.splitlines()[-1].startswith("finished in")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["architecture"] == "MistralForCausalLM"
    assert cfg["quantization"]["quant_algo"] == "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN"
    ids = token_ids(1, 24)
    assert rel_err(ReferenceExecutor(tmp_path / "ckpt").logits(ids), hf_logits(md, ids)) < 0.1


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--smoothquant", "1.5"], 2, "alpha must be in [0, 1]"),
        (["--per-token"], 2, "per-token scaling is a SmoothQuant option"),
        (["--tp-degree", "3"], 2, "does not divide the 4 attention heads"),
    ],
)
def test_convert_bad_input(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    md = tmp_path / "m"
    md.mkdir()
    (md / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 320,
    }))  # fmt: skip
    base = ["convert", "--model-dir", md, "--out-dir", tmp_path / "out", "--dtype", "fp16", "--tp-degree", "2"]
    res = _worker(*base, *args)
    assert res.returncode == code, res.stdout + res.stderr
    assert message in res.stderr
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_exit_code(tmp_path: Path) -> None:
    md = tmp_path / "m"
    md.mkdir()
    (md / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "n_head": 12}))
    res = _worker("convert", "--model-dir", md, "--out-dir", tmp_path / "out", "--dtype", "fp16", "--tp-degree", "1")
    assert res.returncode == 3
    assert "GPT2LMHeadModel is not supported" in res.stderr and "LlamaForCausalLM" in res.stderr
    res = _worker("calibrate", "--model-dir", tmp_path / "absent", "--out-dir", tmp_path / "s", "--num-samples", "0")
    assert res.returncode == 2 and "positive integer" in res.stderr
