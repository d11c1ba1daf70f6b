"""Hugging Face Llama/Mistral -> TensorRT-LLM checkpoint (config.json + rank{N}.safetensors).

Runs on CPU with torch and safetensors only (no tensorrt_llm). The layout follows what
``trtllm-build`` loads (``tensorrt_llm/models/llama/convert.py``,
``tensorrt_llm/models/modeling_utils.py`` in NVIDIA/TensorRT-LLM):

config.json
    ``architecture``, ``dtype``, sizes, ``position_embedding_type="rope_gpt_neox"``,
    ``rotary_base``/``rotary_scaling``, ``mapping`` {world_size, tp_size, pp_size} and
    ``quantization`` {quant_algo, kv_cache_quant_algo, group_size, smoothquant_val,
    has_zero_point, pre_quant_scale, exclude_modules} (the QuantConfig fields that every
    TensorRT-LLM release since 0.10 accepts).

rank{N}.safetensors, per layer ``transformer.layers.{l}.``
    ``input_layernorm.weight``, ``attention.qkv.weight`` ([q|k|v] of this rank's heads,
    packed per rank), ``attention.dense.weight`` (row-parallel), ``post_layernorm.weight``,
    ``mlp.fc.weight`` (= gate_proj), ``mlp.gate.weight`` (= up_proj), ``mlp.proj.weight``
    (= down_proj, row-parallel); plus ``transformer.vocab_embedding.weight`` (full on every
    rank: ``use_parallel_embedding`` is false), ``transformer.ln_f.weight`` and
    ``lm_head.weight`` (vocab padded to a multiple of tp, split by rows; from the embedding
    when the model ties them).

SmoothQuant plugin path (``W8A8_SQ_*_PLUGIN``), names as TensorRT-LLM's
``get_tllm_linear_sq_weight`` writes them and ``SmoothQuant{Linear,RowLinear,RmsNorm,
Attention,GatedMLP}`` (``tensorrt_llm/quantization/layers.py``) declare them:

    <linear>.weight              int8 [out_local, in_local]
    <linear>.per_channel_scale   float32 [1, out_local] (per-channel, and always for qkv) or [1, 1]
                                 per-token: scale_w_quant_orig; per-tensor: scale_y_accum_quant
    <linear>.act_scale           float32 [1, 1] scale_y_quant_orig (per-tensor activations only)
    dense/proj .smoother         float32 [1, in_local]  (runtime divides the input by it)
    input_layernorm.scale_to_int / post_layernorm.scale_to_int
                                 float32 [1]: 1.0 with per-token, else scale_x_orig_quant
    attention.quantization_scaling_factor / mlp.quantization_scaling_factor
                                 float32 [1] scale_x_orig_quant of dense / proj (per-tensor only)
    attention.kv_cache_scaling_factor
                                 float32 [1] max(|q|,|k|,|v| outputs) / 127 (INT8 KV cache)

Tensor parallelism: q/k/v heads are split per rank and packed [q_r | k_r | v_r]; when
``tp_degree`` exceeds the KV heads each KV head is replicated ``tp / kv_heads`` times first
(TensorRT-LLM ``dup_kv_weight``), for weights and for their per-channel scales alike.
(TensorRT-LLM's own SmoothQuant path slices unreplicated K/V columns here, which cuts heads
in half when tp > kv_heads; Kiln replicates in both paths.)

Output is byte-deterministic: fixed tensor order and metadata, no timestamps, and only
elementwise math and reductions (no order-dependent sums) between the weights and the files.
Every floating tensor is checked to be finite in its written dtype before any file is written
(a SmoothQuant-folded RMSNorm weight can overflow float16; the cast alone would say nothing).
This module imports torch lazily so that its validation can run in light processes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from .._safetensors import save_deterministic
from .config import (
    KV_CACHE_INT8,
    QUANT_ALGOS,
    SUPPORTED_ARCHITECTURES,
    TRT_DTYPES,
    ModelShape,
    UnsupportedArchitectureError,
    build_config,
    quant_algo_for,
    read_model_shape,
    unsupported_message,
    validate_convert_args,
)

__all__ = ["convert_checkpoint", "QUANT_ALGOS", "SUPPORTED_ARCHITECTURES", "TRT_DTYPES", "UnsupportedArchitectureError",
           "ModelShape", "read_model_shape", "quant_algo_for", "unsupported_message", "validate_convert_args",
           "build_config", "KV_CACHE_INT8"]

Log = Callable[[str], None]

# ----------------------------------------------------------------------------- weights in
class _HFWeights:
    """Lazy reader of a Hugging Face safetensors checkpoint (single file or sharded)."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors import safe_open

        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in model_dir.glob("*.safetensors"))
            weight_map = {}
        if not files:
            raise ValueError(f"{model_dir} has no .safetensors weights (only safetensors checkpoints are supported)")
        self._handles = {f: safe_open(str(model_dir / f), framework="pt") for f in files}
        if not weight_map:
            for f, h in self._handles.items():
                for k in h.keys():
                    weight_map[k] = f
        self._map = weight_map

    def __contains__(self, name: str) -> bool:
        return name in self._map

    def get(self, name: str) -> Any:
        import torch

        if name not in self._map:
            raise ValueError(f"the model's weights lack {name!r}; is this a standard Hugging Face Llama/Mistral checkpoint?")
        return self._handles[self._map[name]].get_tensor(name).to(torch.float32)


def _layer_weights(w: _HFWeights, l: int) -> dict[str, Any]:
    p = f"model.layers.{l}."
    names = {
        "ln1": "input_layernorm", "ln2": "post_attention_layernorm",
        "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
    }  # fmt: skip
    return {key: w.get(p + n + ".weight") for key, n in names.items()}


# ----------------------------------------------------------------------------- sharding
def _chunk(t: Any, tp: int, rank: int, dim: int = 0) -> Any:
    if t.shape[dim] % tp:
        raise ValueError(f"cannot split dimension {dim} of size {t.shape[dim]} into {tp} equal parts")
    return t.chunk(tp, dim=dim)[rank]


def _dup_heads(t: Any, num_heads: int, tp: int) -> Any:
    """Replicate each of ``num_heads`` row blocks ``tp // num_heads`` times (dup_kv_weight)."""
    reps = tp // num_heads
    rows = t.shape[0] // num_heads
    blocks = t.reshape(num_heads, rows, *t.shape[1:])
    return blocks.unsqueeze(1).expand(num_heads, reps, rows, *t.shape[1:]).reshape(num_heads * reps * rows, *t.shape[1:])


def _qkv_rows(t: Any, shape: ModelShape, tp: int, rank: int) -> Any:
    """This rank's [q | k | v] rows of a fused-QKV tensor (weights ``[rows, in]`` or vectors)."""
    import torch

    q, k, v = t.split([shape.q_dim, shape.kv_dim, shape.kv_dim], dim=0)
    if shape.num_kv_heads < tp:
        k, v = _dup_heads(k, shape.num_kv_heads, tp), _dup_heads(v, shape.num_kv_heads, tp)
    return torch.cat([_chunk(q, tp, rank), _chunk(k, tp, rank), _chunk(v, tp, rank)], dim=0).contiguous()


def _pad_vocab(t: Any, tp: int) -> Any:
    import torch

    pad = -t.shape[0] % tp
    if pad:
        t = torch.cat([t, t.new_zeros(pad, *t.shape[1:])], dim=0)
    return t


# ----------------------------------------------------------------------------- stats
def _check_stats(stats: Mapping[str, Mapping[str, Any]], shape: ModelShape, smoothquant: bool) -> None:
    want = {"q_proj": (shape.hidden_size, shape.q_dim), "k_proj": (shape.hidden_size, shape.kv_dim),
            "v_proj": (shape.hidden_size, shape.kv_dim)}  # fmt: skip
    if smoothquant:
        want.update({
            "o_proj": (shape.q_dim, shape.hidden_size),
            "gate_proj": (shape.hidden_size, shape.intermediate_size),
            "up_proj": (shape.hidden_size, shape.intermediate_size),
            "down_proj": (shape.intermediate_size, shape.hidden_size),
        })  # fmt: skip
    for l in range(shape.num_layers):
        for mod, (n_in, n_out) in want.items():
            name = f"model.layers.{l}.{'self_attn' if mod in ('q_proj', 'k_proj', 'v_proj', 'o_proj') else 'mlp'}.{mod}"
            entry = stats.get(name)
            if entry is None:
                raise ValueError(f"the calibration statistics lack {name}; recalibrate this model")
            if entry["x"].numel() != n_in or entry["y"].numel() != n_out:
                raise ValueError(
                    f"the calibration statistics for {name} have the wrong sizes "
                    f"({entry['x'].numel()} in / {entry['y'].numel()} out, want {n_in} / {n_out}); recalibrate"
                )


def _stat(stats: Mapping[str, Mapping[str, Any]], l: int, mod: str, kind: str) -> Any:
    group = "self_attn" if mod in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
    return stats[f"model.layers.{l}.{group}.{mod}"][kind].float()


# ----------------------------------------------------------------------------- per layer
def _f32(values: Any, shape: tuple[int, ...]) -> Any:
    import torch

    return torch.as_tensor(values, dtype=torch.float32).reshape(shape).contiguous()


def _dtype_name(dt: Any) -> str:
    return str(dt).removeprefix("torch.")


def _wider_dtypes(dt: Any) -> str | None:
    """The --dtype values with a wider range than ``dt`` (the fix for an overflow), as the CLI spells them."""
    import torch

    return {torch.float16: "bf16 or fp32", torch.bfloat16: "fp32"}.get(dt)


def _folded_norm(norm: Any, dt: Any, *, layer: int, name: str, alpha: float) -> Any:
    """Cast a SmoothQuant-folded RMSNorm weight (``g / s``) to ``dt``, refusing one that would not be finite.

    A channel that barely fires during calibration gets a tiny smoothing factor (down to
    1e-5 at alpha 1), so ``g / s`` can pass float16's 65504 and the cast would make it inf
    without a word, and the engine's activations would turn inf/NaN.
    """
    import torch

    if not bool(torch.isfinite(norm).all()):
        raise ValueError(
            f"layer {layer} {name}: the model's RMSNorm weight or its calibration statistics hold inf/NaN; "
            "check the weights and recalibrate"
        )
    out = norm.to(dt)
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        wider = _wider_dtypes(dt)
        raise ValueError(
            f"layer {layer} {name}: folding the SmoothQuant smoothing factors into the RMSNorm weight gives values up "
            f"to {float(norm.abs().max()):.3g}, past {_dtype_name(dt)}'s largest {torch.finfo(dt).max:g} "
            f"({int(bad.sum())} channel(s), ones that barely activate on the calibration text); "
            f"lower --smoothquant (alpha {alpha:g} now)" + (f" or build with --dtype {wider}" if wider else "")
        )
    return out


def _require_finite(tensors: Mapping[str, Any], where: str) -> None:
    """Refuse to write a floating tensor holding inf/NaN (a cast that overflowed, or non-finite input)."""
    import torch

    for name, t in tensors.items():
        if not t.is_floating_point():
            continue
        bad = ~torch.isfinite(t)
        if not bool(bad.any()):
            continue
        what = f"{where} {name}".strip()
        count = f"{int(bad.sum())} of {t.numel()} values"
        if t.dtype == torch.float32:  # scales and smoothers, or an fp32 build: computed, not narrowed
            raise ValueError(
                f"{what}: {count} are inf/NaN; the model's weights (or calibration statistics) are not finite "
                "or too large to scale; check the weights and recalibrate"
            )
        wider = _wider_dtypes(t.dtype)
        raise ValueError(
            f"{what}: {count} are not finite in {_dtype_name(t.dtype)} (largest {torch.finfo(t.dtype).max:g}): "
            "the model's weights exceed that range or hold inf/NaN" + (f"; build with --dtype {wider}" if wider else "")
        )


def _plain_layer(lw: Mapping[str, Any], shape: ModelShape, tp: int, dt: Any) -> list[dict[str, Any]]:
    import torch

    out = []
    qkv = torch.cat([lw["q"], lw["k"], lw["v"]], dim=0)
    for r in range(tp):
        out.append({
            "input_layernorm.weight": lw["ln1"].to(dt),
            "attention.qkv.weight": _qkv_rows(qkv, shape, tp, r).to(dt),
            "attention.dense.weight": _chunk(lw["o"], tp, r, 1).to(dt),
            "post_layernorm.weight": lw["ln2"].to(dt),
            "mlp.fc.weight": _chunk(lw["gate"], tp, r, 0).to(dt),
            "mlp.gate.weight": _chunk(lw["up"], tp, r, 0).to(dt),
            "mlp.proj.weight": _chunk(lw["down"], tp, r, 1).to(dt),
        })  # fmt: skip
    return out


def _sq_layer(
    lw: Mapping[str, Any],
    stats: Mapping[str, Mapping[str, Any]],
    l: int,
    shape: ModelShape,
    tp: int,
    dt: Any,
    *,
    alpha: float,
    per_token: bool,
    per_channel: bool,
) -> list[dict[str, Any]]:
    import torch

    from .smoothquant import quantize_linear, smooth_into_norm, smooth_with_smoother

    def st(mod: str, kind: str) -> Any:
        return _stat(stats, l, mod, kind)

    # q/k/v: smoothing folded into input_layernorm.
    ln1, (wq, wk, wv), s_qkv = smooth_into_norm(lw["ln1"], [lw["q"], lw["k"], lw["v"]], st("q_proj", "x"), alpha)
    qkv = quantize_linear(
        torch.cat([wq, wk, wv], dim=0),
        act_absmax=st("q_proj", "x") / s_qkv,
        out_absmax=torch.cat([st("q_proj", "y"), st("k_proj", "y"), st("v_proj", "y")]),
        per_channel=per_channel,
        groups=[shape.q_dim, shape.kv_dim, shape.kv_dim],
    )
    # o_proj (dense): separate smoother.
    wo, s_o = smooth_with_smoother(lw["o"], st("o_proj", "x"), alpha)
    dense = quantize_linear(wo, act_absmax=st("o_proj", "x") / s_o, out_absmax=st("o_proj", "y"), per_channel=per_channel)
    # gate/up (fc/gate): smoothing folded into post_attention_layernorm.
    ln2, (wg, wu), s_mlp = smooth_into_norm(lw["ln2"], [lw["gate"], lw["up"]], st("gate_proj", "x"), alpha)
    fc = quantize_linear(wg, act_absmax=st("gate_proj", "x") / s_mlp, out_absmax=st("gate_proj", "y"), per_channel=per_channel)
    gate = quantize_linear(wu, act_absmax=st("up_proj", "x") / s_mlp, out_absmax=st("up_proj", "y"), per_channel=per_channel)
    # down_proj (proj): separate smoother.
    wd, s_d = smooth_with_smoother(lw["down"], st("down_proj", "x"), alpha)
    proj = quantize_linear(wd, act_absmax=st("down_proj", "x") / s_d, out_absmax=st("down_proj", "y"), per_channel=per_channel)

    def out_scale(q: Any) -> Any:  # what per_channel_scale holds in this mode
        return q.scale_w_quant_orig if per_token else q.scale_y_accum_quant

    def col_scale(q: Any, r: int) -> Any:  # column-parallel (fc/gate): output dim is split
        v = out_scale(q)
        return _f32(_chunk(v, tp, r), (1, -1)) if per_channel else _f32(v[:1], (1, 1))

    def row_scale(q: Any) -> Any:  # row-parallel (dense/proj): output dim is whole
        v = out_scale(q)
        return _f32(v, (1, -1)) if per_channel else _f32(v[:1], (1, 1))

    # The folded norms are the only tensors narrowed to the model dtype after SmoothQuant math.
    ln1_dt = _folded_norm(ln1, dt, layer=l, name="input_layernorm.weight", alpha=alpha)
    ln2_dt = _folded_norm(ln2, dt, layer=l, name="post_layernorm.weight", alpha=alpha)

    out = []
    for r in range(tp):
        t: dict[str, Any] = {
            "input_layernorm.weight": ln1_dt,
            "attention.qkv.weight": _qkv_rows(qkv.weight, shape, tp, r),
            # QKV always runs with per-column scales (SmoothQuantAttention forces per-channel).
            "attention.qkv.per_channel_scale": _f32(_qkv_rows(out_scale(qkv), shape, tp, r), (1, -1)),
            "attention.dense.weight": _chunk(dense.weight, tp, r, 1).contiguous(),
            "attention.dense.per_channel_scale": row_scale(dense),
            "attention.dense.smoother": _f32(_chunk(s_o, tp, r), (1, -1)),
            "post_layernorm.weight": ln2_dt,
            "mlp.fc.weight": _chunk(fc.weight, tp, r, 0).contiguous(),
            "mlp.fc.per_channel_scale": col_scale(fc, r),
            "mlp.gate.weight": _chunk(gate.weight, tp, r, 0).contiguous(),
            "mlp.gate.per_channel_scale": col_scale(gate, r),
            "mlp.proj.weight": _chunk(proj.weight, tp, r, 1).contiguous(),
            "mlp.proj.per_channel_scale": row_scale(proj),
            "mlp.proj.smoother": _f32(_chunk(s_d, tp, r), (1, -1)),
        }
        if per_token:
            t["input_layernorm.scale_to_int"] = _f32([1.0], (1,))
            t["post_layernorm.scale_to_int"] = _f32([1.0], (1,))
        else:
            t["input_layernorm.scale_to_int"] = _f32([qkv.scale_x_orig_quant], (1,))
            t["post_layernorm.scale_to_int"] = _f32([fc.scale_x_orig_quant], (1,))
            t["attention.quantization_scaling_factor"] = _f32([dense.scale_x_orig_quant], (1,))
            t["mlp.quantization_scaling_factor"] = _f32([proj.scale_x_orig_quant], (1,))
            for name, q in (("attention.qkv", qkv), ("attention.dense", dense), ("mlp.fc", fc), ("mlp.gate", gate), ("mlp.proj", proj)):
                t[f"{name}.act_scale"] = _f32([q.scale_y_quant_orig], (1, 1))
        out.append(t)
    return out


# ----------------------------------------------------------------------------- main entry
def _release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc only; a no-op elsewhere).

    Per-layer temporaries of varying sizes fragment glibc's heap; without this the peak RSS
    of a SmolLM2 conversion varied between runs from 1.2 to 2.8 GB (now a steady 0.96 GB).
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def convert_checkpoint(
    model_dir: Path | str,
    out_dir: Path | str,
    *,
    dtype: str,
    tp_degree: int,
    smoothquant_alpha: float | None = None,
    per_token: bool = False,
    per_channel: bool = False,
    int8_kv_cache: bool = False,
    stats_dir: Path | str | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Write a TensorRT-LLM checkpoint for the HF model in ``model_dir`` into ``out_dir``.

    SmoothQuant (``smoothquant_alpha`` in [0, 1]) and the INT8 KV cache need activation
    statistics: from ``stats_dir`` (written by :func:`kiln.targets.trtllm.calibrate.calibrate`;
    its model fingerprint must match) or, when None, calibrated here on Kiln's default
    corpus with TensorRT-LLM's default sample counts. Bad input raises ValueError
    (:class:`UnsupportedArchitectureError` for an unsupported model) before any work.

    Returns a summary: ``config`` (what config.json holds), ``files`` (name -> bytes),
    ``quant_algo``, ``kv_cache_quant_algo``, ``seconds``.
    """
    import torch

    t0 = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    shape, trt_dtype = validate_convert_args(
        model_dir, dtype=dtype, tp_degree=tp_degree, smoothquant_alpha=smoothquant_alpha,
        per_token=per_token, per_channel=per_channel, int8_kv_cache=int8_kv_cache, stats_dir=stats_dir,
    )  # fmt: skip
    smoothquant = smoothquant_alpha is not None
    alpha = float(smoothquant_alpha) if smoothquant else 0.5
    quant_algo = quant_algo_for(per_token, per_channel) if smoothquant else None
    kv_algo = KV_CACHE_INT8 if int8_kv_cache else None
    tp = tp_degree
    dt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[trt_dtype]
    log(
        f"stage: convert arch={shape.architecture} layers={shape.num_layers} tp={tp} dtype={trt_dtype} "
        f"quant_algo={quant_algo} kv_cache_quant_algo={kv_algo}"
        + (f" alpha={alpha:g}" if smoothquant else "")
    )

    stats: Mapping[str, Mapping[str, Any]] = {}
    if smoothquant or int8_kv_cache:
        from . import calibrate as _calibrate

        if stats_dir is not None:
            log(f"stage: load-stats dir={stats_dir}")
            stats, meta = _calibrate.load_stats(stats_dir)
            want = _calibrate.model_fingerprint(model_dir)
            if meta.get("model_fingerprint") != want:
                raise ValueError(
                    f"the statistics in {stats_dir} were computed for a different model "
                    f"(fingerprint {str(meta.get('model_fingerprint'))[:12]}…, this model {want[:12]}…); recalibrate"
                )
        else:
            log("stage: calibrate (no stats_dir given: default corpus and sample counts)")
            stats, _ = _calibrate.calibrate(model_dir, None, log=log)
        _check_stats(stats, shape, smoothquant)

    log("stage: layers")
    weights = _HFWeights(model_dir)
    ranks: list[dict[str, Any]] = [{} for _ in range(tp)]
    for l in range(shape.num_layers):
        lw = _layer_weights(weights, l)
        if smoothquant:
            per_rank = _sq_layer(lw, stats, l, shape, tp, dt, alpha=alpha, per_token=per_token, per_channel=per_channel)
        else:
            per_rank = _plain_layer(lw, shape, tp, dt)
        if int8_kv_cache:
            ys = torch.cat([_stat(stats, l, m, "y") for m in ("q_proj", "k_proj", "v_proj")])
            kv_scale = _f32([float(ys.amax()) / 127.0], (1,))
            for t in per_rank:
                t["attention.kv_cache_scaling_factor"] = kv_scale
        for r, t in enumerate(per_rank):
            _require_finite(t, f"layer {l}")  # before anything is written: a bad checkpoint never lands
            ranks[r].update({f"transformer.layers.{l}.{k}": v for k, v in t.items()})
        del lw, per_rank
        _release_freed_memory()

    embed = weights.get("model.embed_tokens.weight")
    if shape.tie_word_embeddings or "lm_head.weight" not in weights:
        lm_head = embed
    else:
        lm_head = weights.get("lm_head.weight")
    lm_head = _pad_vocab(lm_head, tp)
    ln_f = weights.get("model.norm.weight")
    for r in range(tp):
        ranks[r]["transformer.vocab_embedding.weight"] = embed.to(dt)
        ranks[r]["transformer.ln_f.weight"] = ln_f.to(dt)
        ranks[r]["lm_head.weight"] = _chunk(lm_head, tp, r, 0).to(dt)
        _require_finite({k: ranks[r][k] for k in ("transformer.vocab_embedding.weight", "transformer.ln_f.weight",
                                                  "lm_head.weight")}, "")

    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, int] = {}
    for r in range(tp):
        path = out_dir / f"rank{r}.safetensors"
        log(f"stage: write-rank{r} tensors={len(ranks[r])}")
        save_deterministic(ranks[r], path)
        files[path.name] = path.stat().st_size
        ranks[r] = {}
    config = build_config(
        shape, trt_dtype=trt_dtype, tp_degree=tp, quant_algo=quant_algo,
        kv_cache_quant_algo=kv_algo, smoothquant_alpha=smoothquant_alpha,
    )  # fmt: skip
    cfg_path = out_dir / "config.json"
    tmp = out_dir / ".config.json.tmp"
    tmp.write_text(json.dumps(config, indent=4) + "\n")
    os.replace(tmp, cfg_path)
    files["config.json"] = cfg_path.stat().st_size
    seconds = time.perf_counter() - t0
    log(f"converted files={len(files)} bytes={sum(files.values())} seconds={seconds:.1f}")
    return {
        "config": config,
        "files": files,
        "quant_algo": quant_algo,
        "kv_cache_quant_algo": kv_algo,
        "seconds": seconds,
    }
