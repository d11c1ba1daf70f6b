"""TensorRT-LLM checkpoint writer: layout, sharding, config.json, determinism, bad input.

The unquantized checkpoints are held to the Hugging Face model itself: the reference
executor reads the written rank files back and must reproduce the HF fp32 logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from kiln.targets.trtllm.checkpoint import (
    SUPPORTED_ARCHITECTURES,
    UnsupportedArchitectureError,
    convert_checkpoint,
    validate_convert_args,
)
from kiln.targets.trtllm.reference import ReferenceExecutor

from . import hf_logits, tiny, token_ids


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        # 4 query heads over 2 KV heads: tp 4 replicates each KV head twice.
        "llama": tiny("llama", root / "llama"),
        # 8 query heads over 2 KV heads (head_dim 8): tp 4 replicates, tp 2 does not.
        "gqa8": tiny("llama", root / "gqa8", num_attention_heads=8, num_key_value_heads=2, seed=1),
        # sliding_window=16, tested past the window.
        "mistral": tiny("mistral", root / "mistral", seed=2),
        "tied": tiny("llama", root / "tied", tie_word_embeddings=True, seed=3),
        # vocab 320 over tp 3 needs one row of lm_head padding.
        "tp3": tiny("llama", root / "tp3", hidden_size=48, num_attention_heads=6, num_key_value_heads=3,
                    intermediate_size=96, seed=4),
    }  # fmt: skip


IDS = token_ids(2, 40)


@pytest.mark.parametrize(
    "name,tp",
    [("llama", 1), ("llama", 2), ("llama", 4), ("gqa8", 2), ("gqa8", 4), ("mistral", 2), ("tied", 2), ("tp3", 3)],
)
def test_unquantized_checkpoint_reproduces_hf_logits(models: dict[str, Path], tmp_path: Path, name: str, tp: int) -> None:
    want = hf_logits(models[name], IDS)
    convert_checkpoint(models[name], tmp_path / "ckpt", dtype="fp32", tp_degree=tp, log=_quiet)
    got = ReferenceExecutor(tmp_path / "ckpt").logits(IDS)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_sliding_window_matters_past_the_window(models: dict[str, Path], tmp_path: Path) -> None:
    # Guard against a vacuous Mistral test: the same weights without the window differ.
    convert_checkpoint(models["mistral"], tmp_path / "m", dtype="fp32", tp_degree=1, log=_quiet)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["sliding_window"] == 16
    ex = ReferenceExecutor(tmp_path / "m")
    windowed = ex.logits(IDS)
    ex.sliding_window = None
    full = ex.logits(IDS)
    torch.testing.assert_close(windowed[:, :16], full[:, :16])
    assert (windowed[:, 20:] - full[:, 20:]).abs().max() > 1e-3


@pytest.mark.parametrize("dtype,torch_dtype,tol", [("fp16", torch.float16, 2e-2), ("bf16", torch.bfloat16, 1e-1)])
def test_half_precision_checkpoints(models: dict[str, Path], tmp_path: Path, dtype: str, torch_dtype: torch.dtype, tol: float) -> None:
    result = convert_checkpoint(models["llama"], tmp_path / "c", dtype=dtype, tp_degree=2, log=_quiet)
    assert result["config"]["dtype"] == {"fp16": "float16", "bf16": "bfloat16"}[dtype]
    for r in range(2):
        for name, t in load_file(str(tmp_path / "c" / f"rank{r}.safetensors")).items():
            assert t.dtype == torch_dtype, name
    want = hf_logits(models["llama"], IDS)
    got = ReferenceExecutor(tmp_path / "c").logits(IDS)
    assert float((got - want).abs().max()) < tol * float(want.abs().max())


def test_names_and_shapes_per_rank_with_kv_replication(models: dict[str, Path], tmp_path: Path) -> None:
    # gqa8: hidden 64, 8 heads x 8 dims, 2 KV heads, intermediate 128, vocab 320, 2 layers.
    convert_checkpoint(models["gqa8"], tmp_path / "c", dtype="fp32", tp_degree=4, log=_quiet)
    hf = load_file(str(models["gqa8"] / "model.safetensors"))
    want_layer = {
        "input_layernorm.weight": (64,),
        "attention.qkv.weight": ((2 + 1 + 1) * 8, 64),  # 2 q heads + 1 (replicated) k + 1 v head
        "attention.dense.weight": (64, 16),
        "post_layernorm.weight": (64,),
        "mlp.fc.weight": (32, 64),
        "mlp.gate.weight": (32, 64),
        "mlp.proj.weight": (64, 32),
    }
    want = {f"transformer.layers.{l}.{k}": v for l in range(2) for k, v in want_layer.items()}
    want.update({"transformer.vocab_embedding.weight": (320, 64), "transformer.ln_f.weight": (64,), "lm_head.weight": (80, 64)})
    for r in range(4):
        tensors = load_file(str(tmp_path / "c" / f"rank{r}.safetensors"))
        assert {k: tuple(v.shape) for k, v in tensors.items()} == want
        qkv = tensors["transformer.layers.0.attention.qkv.weight"]
        q, k, v = qkv.split([16, 8, 8])
        # Rank r holds query heads 2r, 2r+1 and KV head r // 2 (each KV head on two ranks).
        torch.testing.assert_close(q, hf["model.layers.0.self_attn.q_proj.weight"][16 * r : 16 * (r + 1)])
        torch.testing.assert_close(k, hf["model.layers.0.self_attn.k_proj.weight"][8 * (r // 2) : 8 * (r // 2 + 1)])
        torch.testing.assert_close(v, hf["model.layers.0.self_attn.v_proj.weight"][8 * (r // 2) : 8 * (r // 2 + 1)])
        torch.testing.assert_close(tensors["transformer.layers.1.attention.dense.weight"],
                                   hf["model.layers.1.self_attn.o_proj.weight"][:, 16 * r : 16 * (r + 1)])  # fmt: skip
        torch.testing.assert_close(tensors["transformer.layers.1.mlp.proj.weight"],
                                   hf["model.layers.1.mlp.down_proj.weight"][:, 32 * r : 32 * (r + 1)])  # fmt: skip
        torch.testing.assert_close(tensors["lm_head.weight"], hf["lm_head.weight"][80 * r : 80 * (r + 1)])


def test_tied_embeddings_and_vocab_padding(models: dict[str, Path], tmp_path: Path) -> None:
    convert_checkpoint(models["tied"], tmp_path / "t", dtype="fp32", tp_degree=2, log=_quiet)
    emb = load_file(str(models["tied"] / "model.safetensors"))["model.embed_tokens.weight"]
    heads = [load_file(str(tmp_path / "t" / f"rank{r}.safetensors"))["lm_head.weight"] for r in range(2)]
    torch.testing.assert_close(torch.cat(heads), emb)
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True

    convert_checkpoint(models["tp3"], tmp_path / "p", dtype="fp32", tp_degree=3, log=_quiet)
    heads = [load_file(str(tmp_path / "p" / f"rank{r}.safetensors"))["lm_head.weight"] for r in range(3)]
    assert [tuple(h.shape) for h in heads] == [(107, 48)] * 3  # 320 padded to 321
    assert torch.count_nonzero(heads[2][-1]) == 0


def test_config_json_fields(models: dict[str, Path], tmp_path: Path) -> None:
    result = convert_checkpoint(models["gqa8"], tmp_path / "c", dtype="fp16", tp_degree=2, log=_quiet)
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg == result["config"]
    assert cfg["architecture"] == "LlamaForCausalLM"
    assert cfg["dtype"] == "float16"
    assert cfg["logits_dtype"] == "float32"
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (64, 2, 8, 2)
    assert (cfg["head_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["max_position_embeddings"]) == (8, 128, 320, 256)
    assert cfg["hidden_act"] == "silu"
    assert cfg["position_embedding_type"] == "rope_gpt_neox"
    assert cfg["rotary_base"] == 10000.0 and cfg["rotary_scaling"] is None
    assert cfg["norm_epsilon"] == pytest.approx(1e-5)
    assert cfg["mapping"] == {"world_size": 2, "tp_size": 2, "pp_size": 1}
    assert cfg["use_parallel_embedding"] is False
    q = cfg["quantization"]
    assert q["quant_algo"] is None and q["kv_cache_quant_algo"] is None
    assert set(q) == {"quant_algo", "kv_cache_quant_algo", "group_size", "smoothquant_val", "has_zero_point", "pre_quant_scale", "exclude_modules"}
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["config.json", "rank0.safetensors", "rank1.safetensors"]
    assert set(result["files"]) == {"config.json", "rank0.safetensors", "rank1.safetensors"}


def test_rope_scaling_reaches_config_and_reference(tmp_path: Path) -> None:
    md = tiny("llama", tmp_path / "m", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0})
    convert_checkpoint(md, tmp_path / "c", dtype="fp32", tp_degree=1, log=_quiet)
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["rotary_base"] == 5000.0
    assert cfg["rotary_scaling"]["factor"] == 2.0 and cfg["rotary_scaling"]["type"] == "linear"
    torch.testing.assert_close(ReferenceExecutor(tmp_path / "c").logits(IDS), hf_logits(md, IDS), rtol=1e-4, atol=1e-4)


def test_output_is_byte_deterministic(models: dict[str, Path], tmp_path: Path) -> None:
    for out in ("a", "b"):
        convert_checkpoint(models["gqa8"], tmp_path / out, dtype="bf16", tp_degree=4, log=_quiet)
    for name in ["config.json"] + [f"rank{r}.safetensors" for r in range(4)]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    with safe_open(str(tmp_path / "a" / "rank0.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_progress_lines(models: dict[str, Path], tmp_path: Path) -> None:
    lines: list[str] = []
    convert_checkpoint(models["llama"], tmp_path / "c", dtype="fp32", tp_degree=2, log=lines.append)
    stages = [ln.split()[1] for ln in lines if ln.startswith("stage: ")]
    # Each stage is named once, when it starts (the parent times it); the end is a plain log line.
    assert stages[0] == "convert" and stages[-1] == "write-rank1" and len(stages) == len(set(stages))
    assert "write-rank0" in stages and lines[-1].startswith("converted files=")


# ----------------------------------------------------------------------------- bad input
def _fake_model(dest: Path, **config: object) -> Path:
    dest.mkdir(parents=True)
    base = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 4,
            "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 320, "max_position_embeddings": 256}  # fmt: skip
    base.update(config)
    (dest / "config.json").write_text(json.dumps(base))
    return dest


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"smoothquant_alpha": 1.5}, "alpha must be in [0, 1]"),
        ({"smoothquant_alpha": -0.1}, "alpha must be in [0, 1]"),
        ({"smoothquant_alpha": float("nan")}, "alpha must be in [0, 1]"),
        ({"per_token": True}, "per-token scaling is a SmoothQuant option"),
        ({"per_channel": True}, "per-channel scaling is a SmoothQuant option"),
        ({"tp_degree": 3}, "tp_degree 3 does not divide the 8 attention heads"),
        ({"tp_degree": 0}, "tp_degree must be a positive integer"),
        ({"dtype": "int8"}, "dtype 'int8' is not supported"),
    ],
)
def test_bad_arguments_fail_before_any_work(tmp_path: Path, kwargs: dict, message: str) -> None:
    md = _fake_model(tmp_path / "m")  # no weights at all: any real work would fail differently
    args = {"dtype": "fp16", "tp_degree": 2, **kwargs}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        convert_checkpoint(md, tmp_path / "out", log=_quiet, **args)
    assert not (tmp_path / "out").exists()


def test_kv_heads_that_do_not_fit_tp(tmp_path: Path) -> None:
    md = _fake_model(tmp_path / "m", hidden_size=96, num_attention_heads=12, num_key_value_heads=4)
    with pytest.raises(ValueError, match="tp_degree 6 and the 4 KV heads do not fit"):
        validate_convert_args(md, dtype="fp16", tp_degree=6, smoothquant_alpha=None, per_token=False,
                              per_channel=False, int8_kv_cache=False, stats_dir=None)  # fmt: skip


@pytest.mark.parametrize("arch", ["MixtralForCausalLM", "GPT2LMHeadModel"])
def test_unsupported_architecture(tmp_path: Path, arch: str) -> None:
    md = _fake_model(tmp_path / "m", architectures=[arch])
    with pytest.raises(UnsupportedArchitectureError) as info:
        convert_checkpoint(md, tmp_path / "out", dtype="fp16", tp_degree=1, log=_quiet)
    assert arch in str(info.value)
    for supported in SUPPORTED_ARCHITECTURES:
        assert supported in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_model_and_missing_stats_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        convert_checkpoint(tmp_path / "nope", tmp_path / "out", dtype="fp16", tp_degree=1, log=_quiet)
    md = _fake_model(tmp_path / "m")
    with pytest.raises(ValueError, match="stats directory .* does not exist"):
        convert_checkpoint(md, tmp_path / "out", dtype="fp16", tp_degree=1, smoothquant_alpha=0.5,
                           stats_dir=tmp_path / "no-stats", log=_quiet)  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_reference_executor_rejects_a_tampered_checkpoint(models: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    convert_checkpoint(models["llama"], tmp_path / "c", dtype="fp32", tp_degree=2, log=_quiet)
    path = tmp_path / "c" / "rank1.safetensors"
    tensors = load_file(str(path))
    del tensors["transformer.layers.1.mlp.gate.weight"]
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="rank1.safetensors does not match config.json"):
        ReferenceExecutor(tmp_path / "c")


def test_sharded_hf_checkpoint(models: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(models["gqa8"], dtype=torch.float32).save_pretrained(sharded, max_shard_size="100KB")
    (sharded / "config.json").write_text((models["gqa8"] / "config.json").read_text())
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    convert_checkpoint(models["gqa8"], tmp_path / "a", dtype="fp16", tp_degree=2, log=_quiet)
    convert_checkpoint(sharded, tmp_path / "b", dtype="fp16", tp_degree=2, log=_quiet)
    for name in ("config.json", "rank0.safetensors", "rank1.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


# ----------------------------------------------------------------------------- finiteness
def _dead_channel_stats(model_dir: Path, out: Path, *, layer: int, channel: int) -> Path:
    """Calibration statistics set directly: every maximum 1, except one input channel of
    ``layer``'s q/k/v that never fired (absmax 0), as a real corpus can leave one. The
    metadata (model fingerprint, corpus account) is a real calibration's, on two texts."""
    from kiln.targets.trtllm.calibrate import calibrate, write_stats

    real, meta = calibrate(model_dir, None, num_samples=2, seq_len=16, log=_quiet)
    stats = {name: {"x": torch.ones_like(s["x"]), "y": torch.ones_like(s["y"]), "w": torch.ones_like(s["w"])}
             for name, s in real.items()}  # fmt: skip
    stats[f"model.layers.{layer}.self_attn.q_proj"]["x"][channel] = 0.0
    write_stats(out, stats, meta)
    return out


def test_a_folded_norm_that_overflows_fp16_is_refused_before_any_rank_is_written(models: dict[str, Path], tmp_path: Path) -> None:
    """At alpha 1 a dead channel's smoothing factor is the 1e-5 floor, so the folded RMSNorm weight
    g / s is 1e5 there (g is 1 in this model): past float16's 65504. Refused, naming the layer,
    the tensor and the fixes, with no rank file written; both fixes then convert."""
    md = models["llama"]
    stats = _dead_channel_stats(md, tmp_path / "stats", layer=1, channel=7)
    sq = {"tp_degree": 2, "per_token": True, "per_channel": True, "stats_dir": stats, "log": _quiet}
    out = tmp_path / "fp16"
    with pytest.raises(ValueError) as info:
        convert_checkpoint(md, out, dtype="fp16", smoothquant_alpha=1.0, **sq)
    message = str(info.value)
    assert message.startswith("layer 1 input_layernorm.weight:"), message  # layer 0 has no dead channel
    assert "float16" in message and "65504" in message and "1e+05" in message
    assert "lower --smoothquant (alpha 1 now)" in message and "--dtype bf16 or fp32" in message
    assert "\n" not in message
    assert not list(out.glob("rank*.safetensors")) and not (out / "config.json").exists()

    for dtype, alpha in (("bf16", 1.0), ("fp16", 0.5)):
        done = tmp_path / f"{dtype}-{alpha}"
        convert_checkpoint(md, done, dtype=dtype, smoothquant_alpha=alpha, **sq)
        for r in range(2):
            for name, t in load_file(str(done / f"rank{r}.safetensors")).items():
                assert not t.is_floating_point() or bool(torch.isfinite(t).all()), (dtype, alpha, name)


def test_the_worker_reports_the_overflow_as_one_error_line(models: dict[str, Path], tmp_path: Path) -> None:
    import subprocess
    import sys

    stats = _dead_channel_stats(models["llama"], tmp_path / "stats", layer=0, channel=3)
    r = subprocess.run(
        [sys.executable, "-m", "kiln.targets.trtllm.worker", "convert", "--model-dir", str(models["llama"]),
         "--out-dir", str(tmp_path / "out"), "--dtype", "fp16", "--tp-degree", "1", "--smoothquant", "1",
         "--per-token", "--per-channel", "--stats-dir", str(stats)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr  # bad input, not a crash
    assert "Traceback" not in r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.strip()]
    assert line.startswith("error: layer 0 input_layernorm.weight:") and "--smoothquant" in line, line
    assert not list((tmp_path / "out").glob("rank*.safetensors"))


def test_weights_beyond_fp16_are_refused_in_the_plain_path_too(tmp_path: Path) -> None:
    """No SmoothQuant: a weight past 65504 (fine in the model's fp32 file) would become inf in an fp16 checkpoint."""
    from safetensors.torch import save_file

    md = tiny("llama", tmp_path / "m", seed=5)
    path = md / "model.safetensors"
    sd = load_file(str(path))
    sd["model.layers.1.mlp.down_proj.weight"][0, 0] = 1e5
    save_file(sd, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"^layer 1 mlp\.proj\.weight: 1 of \d+ values are not finite in float16 .*--dtype bf16 or fp32$"):
        convert_checkpoint(md, tmp_path / "out", dtype="fp16", tp_degree=1, log=_quiet)
    assert not list((tmp_path / "out").glob("rank*.safetensors"))
    convert_checkpoint(md, tmp_path / "fp32", dtype="fp32", tp_degree=1, log=_quiet)  # the fix named works
