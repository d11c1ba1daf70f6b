"""LMI NeuronX 0.30+'s start-up defaults for an absent tensor_parallel_degree / max_rolling_batch_size.

Expected values are worked by hand from djl-serving's Java (NeuronSmartDefaultUtils.java and
LmiUtils.java HuggingFaceModelConfig at the 0.30.0-dlc branch; unchanged to 0.34.0-dlc), step by step
below, for Llama-2-7B's published config.json at n_positions 4096:

  getLlamaLikeParameterCount: headDim = 32 heads × 32 KV heads = 1024 (sic); qkv = 1024·4096·32·3 =
  402,653,184; o = 4096² = 16,777,216; gate = 4096·11008·3 = 135,266,304; per layer + 2·4096 →
  554,704,896; × 32 layers + 2 · (32000·4096) + 4096 = 18,012,704,768 parameters → 36.03 GB at 2 bytes.
  sequence: 4096·4096·32·2 B × 0.95 / 2^30 = 0.95 GB.
  inf2.24xlarge: 12 NeuronCores, 192 GB; core configs 1, 2, 4, 8, 12, kept where ≥ ceil(1.1·36.03/16) = 3.
  No max_rolling_batch_size: concurrency at tp 12 = pow2(min((192 − 36.03·1.22)/0.95, 32)) = 32; tp 4:
  pow2((64 − 36.03·1.06)/0.95 = 27) = 16, × 12/4 = 48 ≥ 32 → tp 4; tp 8: 32 × 1 < 48; tp 12: 32 × 1 < 48.
  → tp 4, then max_rolling_batch_size = concurrency at tp 4 = 16.
  max_rolling_batch_size 32: tp 12 fits 32 (32); tp 4 fits 16 ≠ 32 → 0; tp 8 fits 32, 32 ≥ 32 → tp 8; 12 > 8.
  tensor_parallel_degree 8 given: max_rolling_batch_size = pow2((128 − 36.03·1.14)/0.95 = 91) → 32.
"""

from __future__ import annotations

import json

import pytest

from kiln.targets.neuron.smart_defaults import smart_defaults

from ...conftest import run_kiln

LLAMA2_7B = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 32,
             "num_hidden_layers": 32, "vocab_size": 32000, "intermediate_size": 11008, "max_position_embeddings": 4096}


@pytest.mark.parametrize(("tp", "batch", "expected"), [(None, None, (4, 16)), (None, 32, (8, 32)), (8, None, (8, 32)),
                                                       (None, 4, (4, 4))])
def test_the_heuristic_as_the_java_computes_it(tp: int | None, batch: int | None, expected: tuple[int, int]) -> None:
    # (None, 4): tp 12 fits 32 → min 4 = 4 → 4; tp 4 fits 16 → 4, × 3 = 12 ≥ 4 → tp 4; tp 8: 4 × 1 < 12.
    assert smart_defaults(LLAMA2_7B, n_positions=4096, cores=12, quantized=False, tp_degree=tp,
                          max_rolling_batch=batch) == expected


def test_a_config_without_the_sizes_is_refused() -> None:
    with pytest.raises(ValueError, match="hidden_size"):
        smart_defaults({"model_type": "llama"}, n_positions=4096, cores=12, quantized=False, tp_degree=None,
                       max_rolling_batch=None)


ENV = {"HF_MODEL_ID": "meta-llama/Llama-2-7b-hf", "OPTION_ENTRYPOINT": "djl_python.transformers_neuronx",
       "OPTION_ROLLING_BATCH": "auto", "OPTION_N_POSITIONS": "4096", "OPTION_DTYPE": "fp16"}


def _plan(release: str, *args: str, **env: str) -> tuple[int, str, dict | None]:
    r = run_kiln("build", "--from-env", *args, "--dry-run", "--json",
                 env=dict(ENV, OPTION_KILN_CONSUMER=f"lmi-neuronx:{release}", **env))
    return r.returncode, r.stderr, json.loads(r.stdout) if r.returncode == 0 else None


def test_an_lmi_configuration_that_leaves_them_out_gets_the_releases_values(llama2_cache: None) -> None:
    # The published Llama-2-7B config has intermediate_size 11008 (the llama2_cache fixture writes the rest).
    for release in ("0.30.0", "0.34.0"):
        rc, err, doc = _plan(release, "--instance-type", "ml.inf2.24xlarge")
        assert rc == 0, err
        kwargs = doc["steps"][0]["invocation"]["kwargs"]  # type: ignore[index]
        assert (kwargs["tp_degree"], kwargs["batch_size"]) == (4, 16), kwargs
        rc, err, _ = _plan(release)
        assert rc == 2 and "--instance-type" in err and "Traceback" not in err
    # Up to 0.29 the recommender's own defaults: tp 1 (0.29: no GPU, not set; the handler's default), batch 32.
    rc, err, doc = _plan("0.29.0", "--instance-type", "ml.inf2.24xlarge")
    assert rc == 0, err
    kwargs = doc["steps"][0]["invocation"]["kwargs"]  # type: ignore[index]
    assert (kwargs["tp_degree"], kwargs["batch_size"]) == (1, 32)
    # 0.27/0.28 write the CUDA GPU count: 0 on Inferentia.
    rc, err, _ = _plan("0.28.0", "--instance-type", "ml.inf2.24xlarge")
    assert rc == 2 and "CUDA GPUs" in err
    # A flag gives the field: nothing left to LMI.
    rc, err, doc = _plan("0.30.0", "--instance-type", "ml.inf2.24xlarge", "--tp-degree", "8")
    assert rc == 0, err
    kwargs = doc["steps"][0]["invocation"]["kwargs"]  # type: ignore[index]
    assert (kwargs["tp_degree"], kwargs["batch_size"]) == (8, 32)
