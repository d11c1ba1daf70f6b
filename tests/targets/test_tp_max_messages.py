"""LMI's ``tensor_parallel_degree=max`` and the tp checks: messages that fit what was passed, bounded work.

Issue 12: with ``--instance-type`` given but unknown to Kiln, ``tp=max`` said "pass
--instance-type"; and the fix it should have offered, ``--tp-degree N``, did not help, since
the property was resolved (and refused) before the flag overrode it. The tp checks also list
divisors of config values: a damaged config.json must not make that listing spin. Each case
runs the real CLI in a subprocess (a spin fails by the generous timeout, not by a clock).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kiln.targets.instances import instance_devices, instance_families, unknown_instance_hint

from ..conftest import LLAMA_CONFIG, run_kiln, write_fake_model

TRTLLM_PINS = ["--toolchain", "hardware=cuda-sm90,tensorrt=10.0,tensorrt_llm=0.12", "--consumer", "lmi-trtllm:0.31.0"]
NEURON_PINS = ["--toolchain", "neuronx-cc=2.15,transformers-neuronx=0.12,torch-neuronx=2.1,libneuronxla=2.0,hardware=neuron-inf2"]
HUNG = 120  # seconds: only a spin gets near it


def _props(tmp_path: Path, model: Path, rolling_batch: str = "trtllm") -> Path:
    p = tmp_path / "serving.properties"
    p.write_text(f"option.model_id={model}\noption.rolling_batch={rolling_batch}\noption.tensor_parallel_degree=max\n")
    return p


def _error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
    (line,) = r.stderr.splitlines()
    return line


def test_tp_max_with_an_unknown_instance_type_names_it_and_the_fix(tmp_path: Path) -> None:
    props = _props(tmp_path, write_fake_model(tmp_path / "m"))
    line = _error_line(run_kiln("key", "--serving-properties", str(props), "--instance-type", "ml.g7.mega",
                                *TRTLLM_PINS, timeout=HUNG))
    assert "pass --instance-type" not in line
    assert "instance type 'ml.g7.mega'" in line and "pass --tp-degree N" in line
    assert "ml.inf2" in line and "ml.g5" in line  # the families Kiln knows


def test_tp_max_with_a_misspelt_instance_type_suggests_the_spelling(tmp_path: Path) -> None:
    props = _props(tmp_path, write_fake_model(tmp_path / "m"))
    line = _error_line(run_kiln("key", "--serving-properties", str(props), "--instance-type", "ml.g5.12xlarg",
                                *TRTLLM_PINS, timeout=HUNG))
    assert "did you mean ml.g5.12xlarge?" in line and "pass --tp-degree N" in line


def test_tp_degree_flag_wins_over_tp_max_with_an_unknown_instance_type(tmp_path: Path) -> None:
    """The fix the message gives works: --tp-degree overrides the property before it needs resolving."""
    props = _props(tmp_path, write_fake_model(tmp_path / "m"))
    r = run_kiln("key", "--serving-properties", str(props), "--instance-type", "ml.g7.mega", "--tp-degree", "2",
                 "--explain", "--json", *TRTLLM_PINS, timeout=HUNG)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["inputs"]["spec"]["tp_degree"] == 2


def test_tp_max_without_an_instance_type_still_asks_for_one(tmp_path: Path) -> None:
    props = _props(tmp_path, write_fake_model(tmp_path / "m"))
    line = _error_line(run_kiln("key", "--serving-properties", str(props), *TRTLLM_PINS, timeout=HUNG))
    assert "pass --instance-type" in line and "--tp-degree N" in line


def test_tp_max_with_a_known_instance_type_resolves(tmp_path: Path) -> None:
    props = _props(tmp_path, write_fake_model(tmp_path / "m"))
    r = run_kiln("key", "--serving-properties", str(props), "--instance-type", "ml.g5.12xlarge", "--explain",
                 "--json", *TRTLLM_PINS, timeout=HUNG)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["inputs"]["spec"]["tp_degree"] == instance_devices("ml.g5.12xlarge") == 4


def test_the_hint_lists_each_family_once() -> None:
    families = instance_families()
    assert len(families) == len(set(families)) and "ml.trn1" in families and "ml.p5" in families
    assert unknown_instance_hint("ML.INF2.24XLARGE ") == "did you mean ml.inf2.24xlarge?"  # normalised first


@pytest.mark.parametrize("field,target,pins", [
    ("num_attention_heads", "trtllm", TRTLLM_PINS),
    ("num_key_value_heads", "neuron", NEURON_PINS),
    ("n_head", "torch-aoti", ["--toolchain", "torch=2.0.0,transformers=5.0.0,hardware=cpu-test"]),
])
def test_huge_head_counts_with_a_tp_are_refused_not_enumerated(tmp_path: Path, field: str, target: str,
                                                                 pins: list[str]) -> None:
    """10**12 heads with a tp that does not divide them: the divisor listing would take hours."""
    config = {k: v for k, v in LLAMA_CONFIG.items() if k not in ("num_attention_heads", "num_key_value_heads")}
    config = {**config, "num_attention_heads": 64, field: 10**12} if field != "n_head" else {**config, field: 10**12}
    model = write_fake_model(tmp_path / "m", config=config)
    line = _error_line(run_kiln("key", str(model), "--target", target, "--tp-degree", "3", "--n-positions", "256",
                                *pins, timeout=HUNG))
    assert f"{field}=1000000000000 is larger than any model's (at most 65536)" in line
