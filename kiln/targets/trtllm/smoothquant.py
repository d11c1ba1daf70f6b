"""SmoothQuant math, as TensorRT-LLM's SmoothQuant *plugin* path defines it (pure torch).

Everything here is small, deterministic tensor arithmetic; the converter
(:mod:`kiln.targets.trtllm.checkpoint`) and the reference executor
(:mod:`kiln.targets.trtllm.reference`) are written against these functions, and the tests
check them against the formulas directly.

Smoothing (SmoothQuant, Xiao et al. 2022; TensorRT-LLM ``smooth_gemm`` /
``smooth_gemm_fc1_gate`` in ``tensorrt_llm/models/convert_utils.py``)::

    s_j = max|X_j| ** alpha / max_i |W_ij| ** (1 - alpha)      (per input channel j)
    X' = X / s,   W' = W * s   (column j of every weight that reads X)      =>  X' W'^T == X W^T

``max|W_ij|`` is taken over *all* weights that read the same activation (q, k and v together;
gate and up together). Where the activation comes out of an RMSNorm (q/k/v after
``input_layernorm``, gate/up after ``post_attention_layernorm``) the division is folded into
the norm weight (``g' = g / s``); for the attention output (``o_proj`` / TRT-LLM ``dense``)
and the MLP down projection (``down_proj`` / ``proj``) there is no norm to fold into, so
``s`` is stored next to the layer as ``smoother`` and the runtime divides its input by it.

INT8 scales (TensorRT-LLM ``generate_int8``; names kept because the checkpoint stores them)::

    scale_w_orig_quant = 127 / max|W'|        per output channel (per-channel) or per tensor
    scale_w_quant_orig = 1 / scale_w_orig_quant
    scale_x_orig_quant = 127 / max|X'|        per tensor (static activation scaling)
    scale_y_quant_orig = max|Y| / 127         per tensor
    scale_y_accum_quant = (127 / max|Y|) / (scale_x_orig_quant * scale_w_orig_quant)

For q/k/v "per tensor" means one scale for each of Q, K and V (TensorRT-LLM treats the fused
QKV GEMM as three matrices and always runs it with per-column scales).

Runtime arithmetic (TensorRT-LLM ``SmoothQuantLinear`` / ``smooth_quant_gemm``)::

    per-token  : x_q = round(x * 127 / max|x_row|), a = max|x_row| / 127   (dynamic, per row)
    per-tensor : x_q = round(x * scale_x_orig_quant),  a = act_scale        (static)
    y = (x_q @ w_q^T) [int32 accumulate] * a * per_channel_scale

with ``per_channel_scale = scale_w_quant_orig`` in per-token mode and
``scale_y_accum_quant`` (with ``act_scale = scale_y_quant_orig``) in per-tensor mode; in both
cases ``a * per_channel_scale`` is the dequantisation factor ``1 / (s_x * s_w)``.

Deliberate differences from TensorRT-LLM's converter (documented, all in the safe direction):
the math runs in float32 (scales and smoothing factors in float64) instead of the model's
fp16; weight maxima are clamped away from zero (TensorRT-LLM's
``weight_scales.to(float).clamp(min=1e-5)`` discards its result); and for GQA models with
per-tensor *weight* scales TensorRT-LLM multiplies the QKV weights by ``scale_w_quant_orig``
instead of ``scale_w_orig_quant`` (``weight_int8 = to_i8(weights *
scale_w_quant_orig_t_expand)``), which zeroes them; Kiln uses the orig->quant scale the
runtime expects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ...spec import parse_alpha

__all__ = [
    "INT8_MAX",
    "SCALE_EPS",
    "QuantizedLinear",
    "smoothing_factors",
    "input_channel_absmax",
    "smooth_into_norm",
    "smooth_with_smoother",
    "quantize_linear",
    "quantize_per_token",
    "quantize_static",
    "int8_gemm",
]

INT8_MAX = 127.0
# Lower bound for maxima and smoothing factors (TensorRT-LLM clamps smoothing factors to 1e-5).
SCALE_EPS = 1e-5
# Lower bound for a row's absmax before dividing by it (an all-zero row quantises to zeros).
_ROW_EPS = 1e-8


def input_channel_absmax(*weights: torch.Tensor) -> torch.Tensor:
    """``max_i |W_ij|`` over every ``[out, in]`` weight given: one value per input channel."""
    if not weights:
        raise ValueError("input_channel_absmax needs at least one weight")
    cols = [w.detach().abs().amax(dim=0).to(torch.float64) for w in weights]
    return torch.stack(cols).amax(dim=0)


def smoothing_factors(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = max|X| ** alpha / max|W| ** (1 - alpha)``, clamped to >= 1e-5 (float64).

    ``act_absmax`` and ``weight_absmax`` are per input channel. Zero maxima (a dead channel or
    an all-zero weight column) are clamped to 1e-5 first so that ``s`` is always finite.
    """
    alpha = parse_alpha(alpha)
    if act_absmax.shape != weight_absmax.shape or act_absmax.dim() != 1:
        raise ValueError(
            f"smoothing needs one activation and one weight maximum per input channel; got shapes "
            f"{tuple(act_absmax.shape)} and {tuple(weight_absmax.shape)}"
        )
    act = act_absmax.detach().to(torch.float64).clamp(min=SCALE_EPS)
    w = weight_absmax.detach().to(torch.float64).clamp(min=SCALE_EPS)
    return (act.pow(alpha) / w.pow(1.0 - alpha)).clamp(min=SCALE_EPS)


def smooth_into_norm(
    norm_weight: torch.Tensor, weights: Sequence[torch.Tensor], act_absmax: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Fold smoothing into the RMSNorm that feeds ``weights``.

    Returns ``(norm_weight / s, [W * s for W in weights], s)`` in float32 (``s`` in float64).
    ``RMSNorm(x) * g / s`` is exactly the smoothed activation ``X / s``.
    """
    s = smoothing_factors(act_absmax, input_channel_absmax(*weights), alpha)
    new_norm = (norm_weight.to(torch.float64) / s).to(torch.float32)
    s32 = s.to(torch.float32).view(1, -1)
    new_ws = [w.to(torch.float32) * s32 for w in weights]
    return new_norm, new_ws, s


def smooth_with_smoother(
    weight: torch.Tensor, act_absmax: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Smoothing with no norm to fold into: ``(W * s, s)``; the runtime divides X by ``s``."""
    s = smoothing_factors(act_absmax, input_channel_absmax(weight), alpha)
    return weight.to(torch.float32) * s.to(torch.float32).view(1, -1), s


@dataclass(frozen=True)
class QuantizedLinear:
    """One linear layer in INT8, with every scale the SmoothQuant plugin path may need.

    ``weight`` is ``[out, in]`` int8; vectors are per output channel (float32) even where
    the value is per tensor (then all entries of a group are equal), so that sharding the
    output dimension is a plain slice.
    """

    weight: torch.Tensor  # int8 [out, in]
    scale_w_quant_orig: torch.Tensor  # [out]
    scale_y_accum_quant: torch.Tensor  # [out]
    scale_x_orig_quant: float  # per tensor (static activation scaling)
    scale_y_quant_orig: float  # per tensor


def quantize_linear(
    weight: torch.Tensor,
    *,
    act_absmax: torch.Tensor,
    out_absmax: torch.Tensor,
    per_channel: bool,
    groups: Sequence[int] | None = None,
) -> QuantizedLinear:
    """Quantise a (smoothed) ``[out, in]`` weight to INT8 and compute its scales.

    ``act_absmax``: per-input-channel max|X| of the activation this layer reads (already
    divided by the smoothing factors). ``out_absmax``: per-output-channel max|Y|.
    ``per_channel``: one weight scale per output channel; otherwise one per tensor, or one
    per entry of ``groups`` (output-dimension sizes; ``[q, k, v]`` for the fused QKV).
    """
    w = weight.detach().to(torch.float32)
    out_features = w.shape[0]
    row_max = w.abs().amax(dim=1).to(torch.float64).clamp(min=_ROW_EPS)
    if per_channel:
        w_max = row_max
    else:
        sizes = list(groups) if groups else [out_features]
        if sum(sizes) != out_features or any(n <= 0 for n in sizes):
            raise ValueError(f"groups {sizes} do not add up to the {out_features} output channels")
        w_max = torch.cat([part.amax().expand(n) for part, n in zip(row_max.split(sizes), sizes)])
    s_w_orig_quant = INT8_MAX / w_max
    w_scaled = w * s_w_orig_quant.to(torch.float32).view(-1, 1)
    w_int8 = w_scaled.round_().clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)

    x_max = max(float(act_absmax.detach().to(torch.float64).amax()), _ROW_EPS)
    y_max = max(float(out_absmax.detach().to(torch.float64).amax()), _ROW_EPS)
    s_x_orig_quant = INT8_MAX / x_max
    s_y_orig_quant = INT8_MAX / y_max
    return QuantizedLinear(
        weight=w_int8.contiguous(),
        scale_w_quant_orig=(1.0 / s_w_orig_quant).to(torch.float32),
        scale_y_accum_quant=(s_y_orig_quant / (s_x_orig_quant * s_w_orig_quant)).to(torch.float32),
        scale_x_orig_quant=float(torch.tensor(s_x_orig_quant, dtype=torch.float32)),
        scale_y_quant_orig=float(torch.tensor(y_max / INT8_MAX, dtype=torch.float32)),
    )


def _round_to_int8(x: torch.Tensor) -> torch.Tensor:
    # Round half to even (CUDA __float2int_rn, TensorRT's IQuantizeLayer) and saturate.
    return torch.round(x).clamp(-128.0, 127.0)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token (per-row) INT8: ``(x_q, scale)`` with ``x ~= x_q * scale``.

    ``x_q`` holds integer values in [-127, 127] (float32 storage); ``scale`` is
    ``max|x_row| / 127`` with a trailing dimension of 1.
    """
    xf = x.to(torch.float32)
    amax = xf.abs().amax(dim=-1, keepdim=True)
    safe = amax.clamp(min=_ROW_EPS)
    return _round_to_int8(xf * (INT8_MAX / safe)), amax / INT8_MAX


def quantize_static(x: torch.Tensor, scale_orig_quant: torch.Tensor | float) -> torch.Tensor:
    """Static per-tensor INT8: ``round(x * scale_orig_quant)`` saturated to [-128, 127]."""
    return _round_to_int8(x.to(torch.float32) * torch.as_tensor(scale_orig_quant, dtype=torch.float32))


def int8_gemm(
    x_q: torch.Tensor, w_q: torch.Tensor, scale_a: torch.Tensor | float, scale_b: torch.Tensor
) -> torch.Tensor:
    """``(x_q @ w_q^T) * scale_a * scale_b`` with the INT8 x INT8 product accumulated exactly.

    The product runs in float64, which holds every int32 accumulator a real layer produces
    (|sum| < 127 * 127 * in_features << 2**53), so the result equals an int32 GEMM bit for bit
    before the float32 dequantisation. ``scale_a``: per row (``[..., 1]``) or a scalar;
    ``scale_b``: per output channel (``[out]`` or ``[1, out]``) or ``[1, 1]``.
    """
    acc = torch.matmul(x_q.to(torch.float64), w_q.to(torch.float64).t())
    a = torch.as_tensor(scale_a, dtype=torch.float32)
    b = scale_b.to(torch.float32).reshape(-1)
    return acc.to(torch.float32) * a * b
