"""A plain-torch executor for TensorRT-LLM Llama checkpoints: verifies the FILES, not the writer.

``ReferenceExecutor(ckpt_dir).logits(input_ids)`` reads ``config.json`` and every
``rank{N}.safetensors`` and runs a full-sequence causal forward the way the TensorRT-LLM
engine would compute it, rank by rank:

* column-parallel layers (qkv, mlp.fc, mlp.gate, lm_head) produce each rank's slice of
  the output, and the slices are used per rank (attention heads) or concatenated (logits);
* row-parallel layers (attention.dense, mlp.proj) produce partial sums that are added
  over the ranks (the all-reduce);
* each rank uses its own copy of the replicated tensors (norms, embedding), so a rank file
  with a wrong copy shows up in the logits.

With a SmoothQuant ``quant_algo`` the linear layers run the plugin arithmetic of
:mod:`kiln.targets.trtllm.smoothquant`: the RMSNorm output is quantised per token (dynamic) or
with ``scale_to_int`` (static), the dense/proj inputs are divided by ``smoother`` and
quantised per token or with ``quantization_scaling_factor``; INT8 x INT8 products are
accumulated exactly and dequantised by ``per_channel_scale`` times the token scale (or
``act_scale``). With ``kv_cache_quant_algo=INT8`` keys (after RoPE) and values are
round-tripped through INT8 with ``kv_cache_scaling_factor``, as every token read back from
the cache during generation is (``kv_cache_roundtrip=False`` models the context phase,
whose attention reads the un-quantised K/V).

RoPE uses ``rotary_base`` and ``rotary_scaling`` (none, linear or llama3) from config.json;
attention is causal GQA (plus ``sliding_window`` when the config has one); MLP is SwiGLU.
Everything is computed in float32 on CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .config import QUANT_ALGOS, SUPPORTED_ARCHITECTURES
from .smoothquant import int8_gemm, quantize_per_token, quantize_static

__all__ = ["ReferenceExecutor", "expected_tensor_names"]


def expected_tensor_names(config: dict[str, Any]) -> set[str]:
    """Every tensor name one rank file of this config must hold (and nothing else)."""
    quant = config.get("quantization") or {}
    algo = quant.get("quant_algo")
    sq = algo is not None
    per_token = sq and "PER_TOKEN" in algo
    layer = [
        "input_layernorm.weight", "attention.qkv.weight", "attention.dense.weight",
        "post_layernorm.weight", "mlp.fc.weight", "mlp.gate.weight", "mlp.proj.weight",
    ]  # fmt: skip
    if sq:
        layer += [
            "input_layernorm.scale_to_int", "post_layernorm.scale_to_int",
            "attention.qkv.per_channel_scale", "attention.dense.per_channel_scale", "attention.dense.smoother",
            "mlp.fc.per_channel_scale", "mlp.gate.per_channel_scale",
            "mlp.proj.per_channel_scale", "mlp.proj.smoother",
        ]  # fmt: skip
        if not per_token:
            layer += ["attention.quantization_scaling_factor", "mlp.quantization_scaling_factor"]
            layer += [f"{m}.act_scale" for m in ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj")]
    if quant.get("kv_cache_quant_algo") == "INT8":
        layer.append("attention.kv_cache_scaling_factor")
    names = {f"transformer.layers.{l}.{n}" for l in range(int(config["num_hidden_layers"])) for n in layer}
    names |= {"transformer.vocab_embedding.weight", "transformer.ln_f.weight", "lm_head.weight"}
    return names


def _rope_inv_freq(config: dict[str, Any]) -> torch.Tensor:
    dim = int(config["head_size"])
    base = float(config.get("rotary_base", 10000.0))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim))
    scaling = config.get("rotary_scaling")
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type") or scaling.get("type")
    factor = float(scaling.get("factor", 1.0))
    if kind == "linear":
        return inv_freq / factor
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"the reference executor implements rope scaling none, linear and llama3, not {kind!r}")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class ReferenceExecutor:
    """Load a TensorRT-LLM checkpoint directory and compute logits with plain torch."""

    def __init__(self, ckpt_dir: Path | str, *, kv_cache_roundtrip: bool = True) -> None:
        from safetensors.torch import load_file

        self.ckpt_dir = Path(ckpt_dir)
        cfg_path = self.ckpt_dir / "config.json"
        if not cfg_path.is_file():
            raise ValueError(f"{self.ckpt_dir} is not a TensorRT-LLM checkpoint (no config.json)")
        self.config: dict[str, Any] = json.loads(cfg_path.read_text())
        c = self.config
        if c.get("architecture") not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"the reference executor runs {', '.join(SUPPORTED_ARCHITECTURES)}, not {c.get('architecture')}")
        mapping = c.get("mapping") or {}
        self.tp = int(mapping.get("tp_size", 1))
        if int(mapping.get("pp_size", 1)) != 1 or int(mapping.get("world_size", self.tp)) != self.tp:
            raise ValueError("the reference executor runs tensor parallelism only (pp_size 1, world_size == tp_size)")
        if c.get("use_parallel_embedding"):
            raise ValueError("use_parallel_embedding checkpoints are not supported by the reference executor")
        quant = c.get("quantization") or {}
        algo = quant.get("quant_algo")
        if algo is not None and algo not in QUANT_ALGOS.values():
            raise ValueError(f"quant_algo {algo} is not a SmoothQuant plugin algorithm; supported: {sorted(QUANT_ALGOS.values())}")
        self.smoothquant = algo is not None
        self.per_token = self.smoothquant and "PER_TOKEN" in algo
        self.int8_kv = quant.get("kv_cache_quant_algo") == "INT8"
        self.kv_cache_roundtrip = kv_cache_roundtrip

        want = expected_tensor_names(c)
        self.raw: list[dict[str, torch.Tensor]] = []
        for r in range(self.tp):
            path = self.ckpt_dir / f"rank{r}.safetensors"
            if not path.is_file():
                raise ValueError(f"{path} is missing: a tp_size {self.tp} checkpoint has one file per rank")
            tensors = load_file(str(path))
            missing, extra = sorted(want - set(tensors)), sorted(set(tensors) - want)
            if missing or extra:
                raise ValueError(f"{path.name} does not match config.json: missing {missing[:8]}, unexpected {extra[:8]}")
            self.raw.append(tensors)
        # Compute copies: INT8 weights stay INT8 (int8_gemm widens them), the rest float32.
        self.w = [
            {k: (t if t.dtype == torch.int8 else t.to(torch.float32)) for k, t in tensors.items()} for tensors in self.raw
        ]
        self.num_heads = int(c["num_attention_heads"])
        self.num_kv_heads = int(c.get("num_key_value_heads") or self.num_heads)
        self.head_size = int(c["head_size"])
        self.eps = float(c.get("norm_epsilon", 1e-5))
        self.vocab_size = int(c["vocab_size"])
        self.sliding_window = c.get("sliding_window")
        self.inv_freq = _rope_inv_freq(c)
        self.heads_per_rank = self.num_heads // self.tp
        self.kv_heads_per_rank = max(self.num_kv_heads // self.tp, 1)

    # ------------------------------------------------------------------ building blocks
    def _rmsnorm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        var = x.pow(2).mean(-1, keepdim=True)
        return weight * (x * torch.rsqrt(var + self.eps))

    def _column(self, t: dict[str, torch.Tensor], name: str, x: torch.Tensor, norm: str) -> torch.Tensor:
        w = t[f"{name}.weight"]
        if not self.smoothquant:
            return x @ w.t()
        if self.per_token:
            x_q, a = quantize_per_token(x)
        else:
            x_q, a = quantize_static(x, t[f"{norm}.scale_to_int"].reshape(())), t[f"{name}.act_scale"].reshape(())
        return int8_gemm(x_q, w, a, t[f"{name}.per_channel_scale"])

    def _row(self, t: dict[str, torch.Tensor], name: str, x: torch.Tensor, static: str) -> torch.Tensor:
        w = t[f"{name}.weight"]
        if not self.smoothquant:
            return x @ w.t()
        x = x / t[f"{name}.smoother"].reshape(-1)
        if self.per_token:
            x_q, a = quantize_per_token(x)
        else:
            x_q, a = quantize_static(x, t[static].reshape(())), t[f"{name}.act_scale"].reshape(())
        return int8_gemm(x_q, w, a, t[f"{name}.per_channel_scale"])

    def _attention(self, t: dict[str, torch.Tensor], p: str, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = h.shape
        hd, nq, nkv = self.head_size, self.heads_per_rank, self.kv_heads_per_rank
        x = self._rmsnorm(h, t[p + "input_layernorm.weight"])
        qkv = self._column(t, p + "attention.qkv", x, p + "input_layernorm")
        if qkv.shape[-1] != (nq + 2 * nkv) * hd:
            raise ValueError(f"{p}attention.qkv has {qkv.shape[-1]} outputs per rank, config implies {(nq + 2 * nkv) * hd}")
        q, k, v = qkv.split([nq * hd, nkv * hd, nkv * hd], dim=-1)
        q = q.view(b, s, nq, hd).transpose(1, 2)
        k = k.view(b, s, nkv, hd).transpose(1, 2)
        v = v.view(b, s, nkv, hd).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if self.int8_kv and self.kv_cache_roundtrip:
            kv_scale = t[p + "attention.kv_cache_scaling_factor"].reshape(())
            k = quantize_static(k, 1.0 / kv_scale) * kv_scale
            v = quantize_static(v, 1.0 / kv_scale) * kv_scale
        if nq != nkv:
            k = k.repeat_interleave(nq // nkv, dim=1)
            v = v.repeat_interleave(nq // nkv, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        i = torch.arange(s).view(-1, 1)
        j = torch.arange(s).view(1, -1)
        allowed = j <= i
        if self.sliding_window:
            allowed &= (i - j) < int(self.sliding_window)
        scores = scores.masked_fill(~allowed, float("-inf"))
        ctx = torch.softmax(scores, dim=-1) @ v
        ctx = ctx.transpose(1, 2).reshape(b, s, nq * hd)
        return self._row(t, p + "attention.dense", ctx, p + "attention.quantization_scaling_factor")

    def _mlp(self, t: dict[str, torch.Tensor], p: str, h: torch.Tensor) -> torch.Tensor:
        x = self._rmsnorm(h, t[p + "post_layernorm.weight"])
        g = self._column(t, p + "mlp.fc", x, p + "post_layernorm")
        u = self._column(t, p + "mlp.gate", x, p + "post_layernorm")
        return self._row(t, p + "mlp.proj", torch.nn.functional.silu(g) * u, p + "mlp.quantization_scaling_factor")

    # ------------------------------------------------------------------ forward
    @torch.inference_mode()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full-sequence causal forward: ``[batch, seq]`` token ids -> ``[batch, seq, vocab]`` float32."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        ids = input_ids.to(torch.long)
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")
        s = ids.shape[1]
        pos = torch.arange(s, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]

        # Embedding lookup on every rank (each holds the full table); they must agree.
        hs = [t["transformer.vocab_embedding.weight"][ids] for t in self.w]
        h = hs[0]
        for r, other in enumerate(hs[1:], 1):
            if not torch.equal(h, other):
                raise ValueError(f"rank{r}.safetensors holds a different vocab_embedding than rank0")
        for l in range(int(self.config["num_hidden_layers"])):
            p = f"transformer.layers.{l}."
            h = h + sum(self._attention(t, p, h, cos, sin) for t in self.w)
            h = h + sum(self._mlp(t, p, h) for t in self.w)
        outs = [self._rmsnorm(h, t["transformer.ln_f.weight"]) @ t["lm_head.weight"].t() for t in self.w]
        return torch.cat(outs, dim=-1)[..., : self.vocab_size].contiguous()
