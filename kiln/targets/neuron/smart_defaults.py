"""LMI NeuronX 0.30+ "smart defaults": the tensor-parallel degree and max_rolling_batch_size an LMI container
picks at start-up when its configuration leaves them out.

On an Inferentia/Trainium host, djl-serving's LmiConfigRecommender.configure runs NeuronSmartDefaultUtils
(wlm/src/main/java/ai/djl/serving/wlm/NeuronSmartDefaultUtils.java, unchanged from the 0.30.0-dlc branch to
0.34.0-dlc) before its own defaults: a memory heuristic over the instance's NeuronCores (16 GB each) and the
model's size estimated from config.json (LmiUtils.java HuggingFaceModelConfig getModelParameters /
getApproxMemoryForSingleSequence). The compiled graphs depend on the result, so Kiln computes it as the Java
does — int, long and float (IEEE single) arithmetic included — for the instance named by ``--instance-type``.
It is a port of those functions' arithmetic, not of their code structure; each step names the Java method.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Mapping

__all__ = ["smart_defaults"]

_BILLION = 1_000_000_000.0
_MAX_ROLLING_BATCH = 32  # "Current best throughput and latency balance batch size"
_MEMORY_PER_CORE = 16.0  # GB: "Currently there is only one config w/ 16 gb per core"
_INT_MAX = 2**31 - 1


def _f32(x: float) -> float:
    """Java float: every float operation rounds to IEEE single precision."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _int(x: float) -> int:
    """Java's (int) cast of a float: toward zero, saturating (±Infinity too)."""
    if x != x:  # NaN
        return 0
    if x in (float("inf"), float("-inf")):
        return _INT_MAX if x > 0 else -_INT_MAX - 1
    return max(-_INT_MAX - 1, min(_INT_MAX, int(x)))


def _field(config: Mapping[str, Any], name: str) -> int:
    """Gson into an int field: absent (or not a number) is 0; a number beyond int32 fails there, so here too."""
    value = config.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return 0
    if not -_INT_MAX - 1 <= value <= _INT_MAX:
        raise ValueError(f"config.json {name}={value} is beyond the int LMI reads it into")
    return int(value)


def _model_parameters(config: Mapping[str, Any]) -> int:
    """LmiUtils.HuggingFaceModelConfig.getModelParameters (llama/mistral: getLlamaLikeParameterCount, whose
    ``headDim`` is heads × KV heads as written there; others: getDefaultParameterCount)."""
    hidden, layers, vocab = _field(config, "hidden_size"), _field(config, "num_hidden_layers"), _field(config, "vocab_size")
    if config.get("model_type") in ("llama", "mistral"):
        heads, kv = _field(config, "num_attention_heads"), _field(config, "num_key_value_heads")
        head_dim = heads * kv
        embeddings = vocab * hidden
        qkv = head_dim * hidden * kv * 3
        o_proj = hidden * hidden
        gate = hidden * _field(config, "intermediate_size") * 3
        return embeddings + layers * (qkv + o_proj + gate + hidden + hidden) + hidden + embeddings
    positions = _field(config, "max_position_embeddings")
    block = (4 * hidden * hidden + 8 * hidden * hidden + 4 * hidden) * layers
    return (vocab + positions) * hidden + block + hidden * vocab


def _max_power_of_2(n: int) -> int:
    """NeuronSmartDefaultUtils.getMaxPowerOf2 (capped at 32; 0 stays 0)."""
    n = min(n, _MAX_ROLLING_BATCH)
    if n != 0 and n & (n - 1) == 0:
        return n
    p = 1
    while p < n:
        p *= 2
    return p // 2


class _Heuristic:
    def __init__(self, config: Mapping[str, Any], n_positions: int, cores: int, quantized: bool) -> None:
        # setInternalSettings
        self.cores = cores
        param_bytes = 1 if quantized else 2
        self.model_gb = _f32(_f32(float(param_bytes * _model_parameters(config))) / _f32(_BILLION))
        sequence = n_positions * _field(config, "hidden_size") * _field(config, "num_hidden_layers") * param_bytes
        self.sequence_gb = _f32(_f32(_f32(float(sequence)) * _f32(0.95)) / _f32(1024.0 * 1024.0 * 1024.0))

    def adjusted_model_gb(self, tp: int) -> float:  # getAdjustedModelSizeInGb
        return _f32(self.model_gb * _f32(1.0 + _f32(float(tp * 2 - 2) / 100.0)))

    def max_concurrency(self, memory: float, tp: int) -> int:  # getMaxConcurrency
        free = _f32(memory - self.adjusted_model_gb(tp))
        return min(_max_power_of_2(_int(_f32(free / self.sequence_gb))), _MAX_ROLLING_BATCH)

    def max_concurrency_with_batch(self, memory: float, tp: int, batch: int) -> int:  # getMaxConcurrencyWithBatch
        free = _f32(memory - self.adjusted_model_gb(tp))
        n = min(_max_power_of_2(_int(_f32(free / self.sequence_gb))), batch)
        return n if n == batch else 0

    def core_configs(self) -> list[int]:  # availableCoreConfigs / buildCoreConfigs
        configs = [i for i in (1, 2, 4, 8) if i != 4 or self.cores != 32]
        if self.cores > 8:
            configs.append(self.cores)
        per_model = math.ceil(_f32(_f32(_f32(1.1) * self.model_gb) / _MEMORY_PER_CORE))  # (int) Math.ceil(1.1F * …)
        return [c for c in configs if per_model <= c]

    def tp_degree(self, max_rolling_batch: int | None) -> int:  # setHeuristicNeuronTPDegree
        tp = self.cores
        total = _f32(tp * _MEMORY_PER_CORE)
        if max_rolling_batch is None:
            best = self.max_concurrency(total, tp)
            for c in self.core_configs():
                concurrency = self.max_concurrency(_f32(c * _MEMORY_PER_CORE), c) * (self.cores // c)
                if concurrency >= best and c <= tp:
                    tp, best = c, concurrency
            return tp
        best = self.max_concurrency_with_batch(total, tp, max_rolling_batch)
        for c in self.core_configs():
            concurrency = self.max_concurrency_with_batch(_f32(c * _MEMORY_PER_CORE), c, max_rolling_batch) * \
                (self.cores // c)
            if concurrency >= best and c <= tp:
                tp, best = c, concurrency
        return tp

    def max_rolling_batch(self, tp: int) -> int | None:  # setHeuristicNeuronMaxRollingBatch (0: left unset)
        n = self.max_concurrency(_f32(tp * _MEMORY_PER_CORE), tp)
        return n if n > 0 else None


def smart_defaults(config: Mapping[str, Any], *, n_positions: int, cores: int, quantized: bool,
                   tp_degree: int | None, max_rolling_batch: int | None, fallback_batch: int = 32) -> tuple[int, int]:
    """``(tp_degree, max_rolling_batch_size)`` as NeuronSmartDefaultUtils.applySmartDefaults leaves them on an
    instance with ``cores`` NeuronCores (None: absent from the configuration). A batch the heuristic leaves
    unset gets LmiConfigRecommender.setRollingBatchSize's ``fallback_batch`` (32; 256 for vllm)."""
    h = _Heuristic(config, n_positions, cores, quantized)
    if not h.sequence_gb or not h.model_gb:
        # The Java divides by zero here (Infinity through an int cast): no value worth reproducing.
        raise ValueError("config.json lacks hidden_size, num_hidden_layers or the sizes the estimate needs")
    tp = tp_degree if tp_degree is not None else h.tp_degree(max_rolling_batch)
    batch = max_rolling_batch if max_rolling_batch is not None else (h.max_rolling_batch(tp) or fallback_batch)
    return tp, batch
