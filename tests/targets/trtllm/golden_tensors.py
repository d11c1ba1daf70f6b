"""Golden table: the tensors TensorRT-LLM declares for a Llama checkpoint, per quant mode.

Data only (no Kiln import): what ``PretrainedModel.from_checkpoint`` requires of
``rank{N}.safetensors`` -- every name, its per-rank shape as a function of the model's dims and
``tp``, and its dtype -- read off TensorRT-LLM's own ``Parameter`` declarations.
``test_golden_tensors.py`` holds Kiln's written checkpoints to it, exactly.

Why the declarations are the contract: ``PretrainedModel.load`` (MODELING) raises
``Required but not provided tensors`` for any declared parameter missing from the rank file
and warns ``Provided but not required`` for extras; ``Parameter.value`` (PARAMETER) asserts
the shape equal to the declared one and only *warns* on a dtype that differs
(``Parameter was initialized as … but set to …``).

Sources, NVIDIA/TensorRT-LLM. The store keeps each file's versions under different commits
(no one commit holds them all), so each file is cited at the commit of the version read. The
older versions read declare the same names (quantization/layers.py@2340c776 and @027cd518,
models/llama/model.py@d879430b), with two differences Kiln's layout does not meet on those
versions: their SmoothQuantAttention sizes heads as hidden_size // num_attention_heads (so
head_dim x heads != hidden does not fit), and layers.py@027cd518 declares SmoothQuant weights
as float32 ``[out, in / 4]`` ("Dirty hack ... int8 weights reinterpreted as fp32").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

_R = "NVIDIA/TensorRT-LLM "
QUANT_LAYERS = _R + "tensorrt_llm/quantization/layers.py@2a9abd9536aa62ad3e4b9314be9286b1b1be523b"
QUANTIZE = _R + "tensorrt_llm/quantization/quantize.py@06148676829d7f196219f0dc5bac74837c509c1d"
QFUNCTIONAL = _R + "tensorrt_llm/quantization/functional.py@2a9abd9536aa62ad3e4b9314be9286b1b1be523b"
MODE = _R + "tensorrt_llm/quantization/mode.py@89fd9b74ab7ae753b4c6b3db25a400dca7ea54a0"
ATTENTION = _R + "tensorrt_llm/layers/attention.py@04a2cacbfd3b9ac76191bd8498ad871607b63a04"
MLP = _R + "tensorrt_llm/layers/mlp.py@04a2cacbfd3b9ac76191bd8498ad871607b63a04"
LINEAR = _R + "tensorrt_llm/layers/linear.py@04a2cacbfd3b9ac76191bd8498ad871607b63a04"
NORM = _R + "tensorrt_llm/layers/normalization.py@05316d3313360012536ace46c781518f5afae75e"
EMBEDDING = _R + "tensorrt_llm/layers/embedding.py@0f02b7afe1ccee149d2b85e503fda25288a938f0"
LLAMA = _R + "tensorrt_llm/models/llama/model.py@89fd9b74ab7ae753b4c6b3db25a400dca7ea54a0"
LLAMA_CONVERT = _R + "tensorrt_llm/models/llama/convert.py@04a2cacbfd3b9ac76191bd8498ad871607b63a04"
MODELING = _R + "tensorrt_llm/models/modeling_utils.py@01ea6d79d454bb3ab10c7510a6f706ba039090c2"
PARAMETER = _R + "tensorrt_llm/parameter.py@138f96d45f90b9667426f7c47297d8c06bafac73"
STRENUM = "irgeek/StrEnum strenum/__init__.py@27ed121b4f3368e5d5248eea1a7551133c5a0eb9"

# Declared dtypes. WEIGHT is the checkpoint's dtype (config.json "dtype": every layer gets
# ``dtype=config.dtype``, LLAMA LLaMADecoderLayer / LLaMAModel).
WEIGHT = "weight"
INT8 = "int8"
FLOAT32 = "float32"


@dataclass(frozen=True)
class Dims:
    """A Llama model's sizes (from its Hugging Face config.json) and the tensor-parallel degree."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    layers: int
    tp: int

    @property
    def heads_local(self) -> int:
        # ATTENTION Attention.num_attention_heads = num_attention_heads // tp_size
        return self.heads // self.tp

    @property
    def kv_local(self) -> int:
        # ATTENTION Attention.num_attention_kv_heads = (num_kv_heads + tp_size - 1) // tp_size:
        # one KV head per rank when tp > kv_heads (the converter replicates them)
        return -(-self.kv_heads // self.tp)

    @property
    def qkv_local(self) -> int:
        # ATTENTION Attention.qkv = ColumnLinear(hidden_size, tp_size * num_attention_heads *
        # attention_head_size + 2 * tp_size * num_attention_kv_heads * attention_head_size);
        # LINEAR Linear: local_out_features = out_features // tp_size
        return (self.heads_local + 2 * self.kv_local) * self.head_dim

    @property
    def attn_local(self) -> int:
        # ATTENTION Attention.dense = RowLinear(tp_size * num_attention_heads * attention_head_size,
        # hidden_size); RowLinear splits in_features by tp_size
        return self.heads_local * self.head_dim

    @property
    def ffn_local(self) -> int:
        return self.intermediate // self.tp

    @property
    def vocab_padded(self) -> int:
        # LLAMA LLaMAForCausalLM: vocab_size_padded = pad_vocab_size(vocab_size, tp_size)
        # (tensorrt_llm/_utils.py: ceil(vocab / tp) * tp)
        return -(-self.vocab // self.tp) * self.tp


@dataclass(frozen=True)
class Mode:
    """What Kiln can be asked to write: SmoothQuant (plugin path) and/or the INT8 KV cache."""

    smoothquant: bool = False
    per_token: bool = False
    per_channel: bool = False
    int8_kv: bool = False

    @property
    def static_act(self) -> bool:
        # MODE QuantMode.has_act_static_scaling() = not per-token (and not FP8 rowwise)
        return self.smoothquant and not self.per_token

    @property
    def id(self) -> str:
        if not self.smoothquant:
            return "int8kv" if self.int8_kv else "plain"
        name = f"sq-{'token' if self.per_token else 'tensor'}-{'channel' if self.per_channel else 'tensor'}"
        return name + ("+int8kv" if self.int8_kv else "")


Shape = Callable[[Dims, Mode], tuple[int, ...]]
When = Callable[[Mode], bool]


@dataclass(frozen=True)
class Row:
    name: str  # under transformer.layers.{l}. for layer rows, absolute for global rows
    shape: Shape
    dtype: str  # WEIGHT, INT8 or FLOAT32
    when: When
    source: str  # file@commit and the declaration (class.attribute)


def _plain(m: Mode) -> bool:
    return not m.smoothquant


def _sq(m: Mode) -> bool:
    return m.smoothquant


def _static(m: Mode) -> bool:
    return m.static_act


def _kv(m: Mode) -> bool:
    return m.int8_kv


def _per_channel(n: Shape) -> Shape:
    # QUANT_LAYERS SmoothQuantLinear/SmoothQuantRowLinear.per_channel_scale:
    # shape (1, out_features) if has_per_channel_scaling() else (1, 1), dtype float32
    return lambda d, m: n(d, m) if m.per_channel else (1, 1)


# ----------------------------------------------------------------------------- unquantized layers
# LLAMA LLaMADecoderLayer: input_layernorm = RmsNorm(hidden), attention = Attention(...,
# bias=config.attn_bias), mlp = GatedMLP(..., bias=config.mlp_bias), post_layernorm = RmsNorm;
# Kiln writes attn_bias = mlp_bias = false, so no .bias tensors are declared.
PLAIN_LAYER: tuple[Row, ...] = (
    Row("input_layernorm.weight", lambda d, m: (d.hidden,), WEIGHT, _plain,
        f"{NORM} RmsNorm.weight shape=normalized_shape; {LLAMA} LLaMADecoderLayer.input_layernorm"),
    Row("attention.qkv.weight", lambda d, m: (d.qkv_local, d.hidden), WEIGHT, _plain,
        f"{ATTENTION} Attention.qkv (ColumnLinear); {LINEAR} LinearBase.weight (out_local, in)"),
    Row("attention.dense.weight", lambda d, m: (d.hidden, d.attn_local), WEIGHT, _plain,
        f"{ATTENTION} Attention.dense (RowLinear); {LINEAR} RowLinear in_features // tp_size"),
    Row("post_layernorm.weight", lambda d, m: (d.hidden,), WEIGHT, _plain,
        f"{NORM} RmsNorm.weight; {LLAMA} LLaMADecoderLayer.post_layernorm"),
    Row("mlp.fc.weight", lambda d, m: (d.ffn_local, d.hidden), WEIGHT, _plain,
        f"{MLP} MLP.fc = ColumnLinear(hidden_size, ffn_hidden_size)"),
    Row("mlp.gate.weight", lambda d, m: (d.ffn_local, d.hidden), WEIGHT, _plain,
        f"{MLP} GatedMLP.gate = ColumnLinear(hidden_size, ffn_hidden_size)"),
    Row("mlp.proj.weight", lambda d, m: (d.hidden, d.ffn_local), WEIGHT, _plain,
        f"{MLP} MLP.proj = RowLinear(ffn_hidden_size, hidden_size)"),
)  # fmt: skip

# ----------------------------------------------------------------------------- SmoothQuant layers
# QUANTIZE smooth_quantize_plugin (quant_algo in W8A8_SQ_PLUGIN_LIST): RmsNorm ->
# SmoothQuantRmsNorm (except ln_f/ln_embed), GatedMLP -> SmoothQuantGatedMLP, Attention ->
# SmoothQuantAttention; nothing else (lm_head, vocab_embedding) is swapped.
#
# scale_to_int: declared in the model dtype, ``Parameter(shape=(1, ), dtype=dtype)``. TensorRT-LLM's
# own converter writes it as float32 anyway (LLAMA_CONVERT get_tllm_linear_sq_weight:
# ``results[last_prefix] = torch.Tensor([...]).to(torch.float32)``), the loader only warns on the
# dtype (PARAMETER Parameter.value setter) and the plugin casts it (QFUNCTIONAL
# smooth_quant_rms_norm: "RMS Norm Plugin only supports float32 scale", cast(scale, "float32")).
# The table keeps the declaration; a float32 file in a float16/bfloat16 checkpoint differs from it.
_SQ_NORM = f"{QUANT_LAYERS} SmoothQuantRmsNorm"
_SQ_LIN = f"{QUANT_LAYERS} SmoothQuantLinear"
_SQ_ROW = f"{QUANT_LAYERS} SmoothQuantRowLinear"
_SQ_ATT = f"{QUANT_LAYERS} SmoothQuantAttention"
_SQ_MLP = f"{QUANT_LAYERS} SmoothQuantMLP / SmoothQuantGatedMLP"

SQ_LAYER: tuple[Row, ...] = (
    Row("input_layernorm.weight", lambda d, m: (d.hidden,), WEIGHT, _sq, f"{_SQ_NORM}.weight shape=normalized_shape"),
    Row("input_layernorm.scale_to_int", lambda d, m: (1,), WEIGHT, _sq, f"{_SQ_NORM}.scale_to_int shape=(1,) dtype=dtype"),
    Row("post_layernorm.weight", lambda d, m: (d.hidden,), WEIGHT, _sq, f"{_SQ_NORM}.weight shape=normalized_shape"),
    Row("post_layernorm.scale_to_int", lambda d, m: (1,), WEIGHT, _sq, f"{_SQ_NORM}.scale_to_int shape=(1,) dtype=dtype"),
    # qkv: SmoothQuantAttention.qkv = SmoothQuantColumnLinear(hidden_size, tp_size * num_attention_heads
    # * attention_head_size + 2 * tp_size * num_attention_kv_heads * attention_head_size, quant_mode=
    # qkv_quant_mode), qkv_quant_mode = from_description(True, True, per_token, True): "QKV always uses
    # per channel scaling", whatever the mode's per_channel.
    Row("attention.qkv.weight", lambda d, m: (d.qkv_local, d.hidden), INT8, _sq,
        f"{_SQ_ATT}.qkv; {_SQ_LIN}.weight (out_features, in_features) dtype int8"),
    Row("attention.qkv.per_channel_scale", lambda d, m: (1, d.qkv_local), FLOAT32, _sq,
        f"{_SQ_ATT} qkv_quant_mode per-channel; {_SQ_LIN}.per_channel_scale (1, out_features) float32"),
    Row("attention.qkv.act_scale", lambda d, m: (1, 1), FLOAT32, _static,
        f"{_SQ_LIN}.act_scale (1, 1) float32 if has_act_static_scaling()"),
    Row("attention.dense.weight", lambda d, m: (d.hidden, d.attn_local), INT8, _sq,
        f"{_SQ_ATT}.dense = SmoothQuantRowLinear(tp_size * num_attention_heads * attention_head_size, "
        f"hidden_size); {_SQ_ROW}.weight int8"),
    Row("attention.dense.per_channel_scale", _per_channel(lambda d, m: (1, d.hidden)), FLOAT32, _sq,
        f"{_SQ_ROW}.per_channel_scale (1, out_features) | (1, 1)"),
    Row("attention.dense.act_scale", lambda d, m: (1, 1), FLOAT32, _static, f"{_SQ_ROW}.act_scale (1, 1) if static"),
    Row("attention.dense.smoother", lambda d, m: (1, d.attn_local), FLOAT32, _sq,
        f"{_SQ_ROW}.smoother shape=(1, in_features) dtype float32"),
    Row("attention.quantization_scaling_factor", lambda d, m: (1,), FLOAT32, _static,
        f"{_SQ_ATT}.quantization_scaling_factor (1,) float32 if has_act_static_scaling()"),
    Row("mlp.fc.weight", lambda d, m: (d.ffn_local, d.hidden), INT8, _sq,
        f"{_SQ_MLP}.fc = SmoothQuantColumnLinear(hidden_size, ffn_hidden_size); {_SQ_LIN}.weight int8"),
    Row("mlp.fc.per_channel_scale", _per_channel(lambda d, m: (1, d.ffn_local)), FLOAT32, _sq,
        f"{_SQ_LIN}.per_channel_scale (1, out_features) | (1, 1)"),
    Row("mlp.fc.act_scale", lambda d, m: (1, 1), FLOAT32, _static, f"{_SQ_LIN}.act_scale (1, 1) if static"),
    Row("mlp.gate.weight", lambda d, m: (d.ffn_local, d.hidden), INT8, _sq,
        f"{QUANT_LAYERS} SmoothQuantGatedMLP.gate = SmoothQuantColumnLinear(hidden_size, ffn_hidden_size)"),
    Row("mlp.gate.per_channel_scale", _per_channel(lambda d, m: (1, d.ffn_local)), FLOAT32, _sq,
        f"{_SQ_LIN}.per_channel_scale (1, out_features) | (1, 1)"),
    Row("mlp.gate.act_scale", lambda d, m: (1, 1), FLOAT32, _static, f"{_SQ_LIN}.act_scale (1, 1) if static"),
    Row("mlp.proj.weight", lambda d, m: (d.hidden, d.ffn_local), INT8, _sq,
        f"{_SQ_MLP}.proj = SmoothQuantRowLinear(ffn_hidden_size, hidden_size); {_SQ_ROW}.weight int8"),
    Row("mlp.proj.per_channel_scale", _per_channel(lambda d, m: (1, d.hidden)), FLOAT32, _sq,
        f"{_SQ_ROW}.per_channel_scale (1, out_features) | (1, 1)"),
    Row("mlp.proj.act_scale", lambda d, m: (1, 1), FLOAT32, _static, f"{_SQ_ROW}.act_scale (1, 1) if static"),
    Row("mlp.proj.smoother", lambda d, m: (1, d.ffn_local), FLOAT32, _sq, f"{_SQ_ROW}.smoother (1, in_features) float32"),
    Row("mlp.quantization_scaling_factor", lambda d, m: (1,), FLOAT32, _static,
        f"{QUANT_LAYERS} SmoothQuantGatedMLP.quantization_scaling_factor (1,) float32 if static"),
)  # fmt: skip

# ----------------------------------------------------------------------------- INT8 KV cache
# QUANTIZE quantize(): has_kv_cache_quant() -> kv_cache_quantize() gives every Attention /
# SmoothQuantAttention ``kv_cache_scaling_factor = Parameter(shape=(1, ), dtype='float32')``
# (both classes themselves register it as None: ATTENTION Attention, QUANT_LAYERS SmoothQuantAttention).
# Newer releases also declare kv_cache_rcp_scaling_factor; ``from_checkpoint`` derives it from
# kv_cache_scaling_factor when the rank file lacks it (MODELING preprocess_weights /
# process_kv_scaling_factor: "legacy converters do not [generate these rcp weights]. Handle it here"),
# so it is not part of what the file must hold.
KV_LAYER: tuple[Row, ...] = (
    Row("attention.kv_cache_scaling_factor", lambda d, m: (1,), FLOAT32, _kv,
        f"{QUANTIZE} kv_cache_quantize: Attention/SmoothQuantAttention.kv_cache_scaling_factor (1,) float32"),
)  # fmt: skip

LAYER_ROWS: tuple[Row, ...] = PLAIN_LAYER + SQ_LAYER + KV_LAYER


def _always(_: Mode) -> bool:
    return True


# ----------------------------------------------------------------------------- outside the layers
GLOBAL_ROWS: tuple[Row, ...] = (
    # use_parallel_embedding false (Kiln's config.json): Embedding keeps tp_size 1, sharding_dim 0.
    Row("transformer.vocab_embedding.weight", lambda d, m: (d.vocab, d.hidden), WEIGHT, _always,
        f"{LLAMA} LLaMAModel.vocab_embedding = Embedding(vocab_size, hidden_size); "
        f"{EMBEDDING} Embedding.weight (ceil(num_embeddings / tp_size), embedding_dim)"),
    Row("transformer.ln_f.weight", lambda d, m: (d.hidden,), WEIGHT, _always,
        f"{LLAMA} LLaMAModel.ln_f = RmsNorm(hidden_size); {QUANTIZE} smooth_quantize_plugin skips 'ln_f'"),
    Row("lm_head.weight", lambda d, m: (d.vocab_padded // d.tp, d.hidden), WEIGHT, _always,
        f"{LLAMA} LLaMAForCausalLM.lm_head = ColumnLinear(hidden_size, vocab_size_padded, bias=False)"),
)  # fmt: skip


def expected_tensors(mode: Mode, dims: Dims, weight_dtype: str) -> dict[str, tuple[tuple[int, ...], str, str]]:
    """``name -> (shape, dtype, source)`` that rank{N}.safetensors must hold, for every rank.

    ``weight_dtype`` is config.json's ``dtype`` ("float32", "float16" or "bfloat16").
    """
    out: dict[str, tuple[tuple[int, ...], str, str]] = {}

    def add(name: str, row: Row) -> None:
        out[name] = (tuple(row.shape(dims, mode)), weight_dtype if row.dtype == WEIGHT else row.dtype, row.source)

    for l in range(dims.layers):  # LLAMA DecoderLayerList: every layer (pp_size 1)
        for row in LAYER_ROWS:
            if row.when(mode):
                add(f"transformer.layers.{l}.{row.name}", row)
    for row in GLOBAL_ROWS:
        add(row.name, row)
    return out


# ----------------------------------------------------------------------------- config.json
# MODE ``class QuantAlgo(StrEnum)`` with ``auto()`` members, ``from strenum import StrEnum``; that
# StrEnum's auto() value is the member name (STRENUM StrEnum._generate_next_value_ returns name),
# so the strings config.json carries are exactly these names.
QUANT_ALGO_VALUES = frozenset({
    "W8A16", "W4A16", "W4A16_AWQ", "W4A8_AWQ", "W8A16_GPTQ", "W4A16_GPTQ", "W8A8_SQ_PER_CHANNEL",
    "W8A8_SQ_PER_TENSOR_PLUGIN", "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN", "W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN",
    "W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN", "W4A8_QSERVE_PER_GROUP", "W4A8_QSERVE_PER_CHANNEL", "FP8",
    "FP8_PER_CHANNEL_PER_TOKEN", "FP8_BLOCK_SCALES", "INT8", "MIXED_PRECISION", "NVFP4", "W4A8_NVFP4_FP8",
    "W4A8_MXFP4_FP8", "W4A8_MXFP4_MXFP8", "W4A16_MXFP4", "NO_QUANT",
})  # fmt: skip
# MODE W8A8_SQ_PLUGIN_LIST: the algos QuantConfig._use_plugin_sq / QUANTIZE smooth_quantize route to
# the plugin classes above (W8A8_SQ_PER_CHANNEL goes to the non-plugin Int8SmoothQuant* classes).
W8A8_SQ_PLUGIN_LIST = (
    "W8A8_SQ_PER_TENSOR_PLUGIN",
    "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN",
    "W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN",
    "W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN",
)
# MODE QuantMode.from_quant_algo: the (per_token, per_channel) each plugin algo sets via
# QuantMode.use_smooth_quant(per_token=..., per_channel=...).
SQ_PLUGIN_QUANT_ALGO = {
    (True, True): "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN",
    (False, True): "W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN",
    (True, False): "W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN",
    (False, False): "W8A8_SQ_PER_TENSOR_PLUGIN",
}
# MODE KV_CACHE_QUANT_ALGO_LIST = [QuantAlgo.FP8, QuantAlgo.INT8, QuantAlgo.NVFP4]; the INT8 KV cache
# is QuantAlgo.INT8 (from_quant_algo: kv_cache_quant_algo INT8 -> set_int8_kv_cache()).
KV_CACHE_QUANT_ALGO_LIST = ("FP8", "INT8", "NVFP4")
KV_CACHE_INT8 = "INT8"
# MODELING ``@dataclasses.dataclass class QuantConfig``: PretrainedConfig builds it with
# QuantConfig(**config["quantization"]), so any other key is a TypeError at load.
QUANT_CONFIG_FIELDS = frozenset({
    "quant_algo", "kv_cache_quant_algo", "group_size", "smoothquant_val", "clamp_val", "use_meta_recipe",
    "has_zero_point", "pre_quant_scale", "exclude_modules", "mamba_ssm_cache_dtype",
})  # fmt: skip


def quant_algo_for(mode: Mode) -> str | None:
    return SQ_PLUGIN_QUANT_ALGO[(mode.per_token, mode.per_channel)] if mode.smoothquant else None


def kv_cache_quant_algo_for(mode: Mode) -> str | None:
    return KV_CACHE_INT8 if mode.int8_kv else None


PLAIN = Mode()
INT8_KV = Mode(int8_kv=True)
SMOOTHQUANT = tuple(
    Mode(smoothquant=True, per_token=pt, per_channel=pc, int8_kv=kv)
    for kv in (False, True)
    for pt in (True, False)
    for pc in (True, False)
)
ALL_MODES = (PLAIN, INT8_KV) + SMOOTHQUANT
