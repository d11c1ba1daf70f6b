"""Tiny random-weight Hugging Face causal LMs (and a tokenizer) written to disk for tests.

``make_tiny_model("llama", dest)`` writes a directory that ``AutoModelForCausalLM`` and
``AutoTokenizer`` load offline: config.json, generation_config.json, model.safetensors,
tokenizer.json, tokenizer_config.json (+ special_tokens_map.json where transformers writes one).

Models are tiny (2 layers, hidden 64, 4 query heads over 2 KV heads, vocab 320) so that an
AOTInductor compile takes seconds, and deterministic: the same (kind, seed, overrides) gives
the same weights and the same files, byte for byte.

Weights use a larger init std than the usual 0.02 (1.6/sqrt(hidden_size): 0.2 at hidden 64)
so that logits are peaked enough (|logit| ~ 5-10) for greedy decoding to be stable: with
near-uniform logits, the float noise between two correct implementations (eager vs. compiled)
flips argmax ties, and token-equality tests would flake.

Kinds: "llama"; "mistral" (sliding_window=16, so tests can generate past it); "mixtral"
(4 experts, top-2, expert intermediate size 96).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["make_tiny_model", "TINY_KINDS", "TINY_VOCAB_SIZE"]

TINY_KINDS = ("llama", "mistral", "mixtral")
TINY_VOCAB_SIZE = 320

_SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2
# A fixed corpus for the BPE merges: only its content matters, so the tokenizer is the same
# on every machine and every run.
_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, this is a tiny model used for testing kiln",
    "engines are built ahead of time and kept in a content-addressed store",
    "a deployment finds a ready engine instead of compiling one",
    "once upon a time there was a small language model that liked to count: one two three four",
] * 4


def _build_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE tokenizer with exactly ``vocab_size`` entries (ids 0-2 are specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    # The corpus is small: if the trainer ran out of merges, pad with unused tokens so the
    # vocabulary size always equals config.vocab_size.
    n = tok.get_vocab_size()
    if n < vocab_size:
        tok.add_tokens([f"<extra_{i}>" for i in range(vocab_size - n)])
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"tiny tokenizer has {tok.get_vocab_size()} tokens, wanted {vocab_size}")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=256,
    )


def _config(kind: str, overrides: dict[str, Any]) -> Any:
    from transformers import LlamaConfig, MistralConfig, MixtralConfig

    common: dict[str, Any] = dict(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
        use_cache=True,
    )
    if kind == "llama":
        cls = LlamaConfig
    elif kind == "mistral":
        cls = MistralConfig
        common["sliding_window"] = 16
    elif kind == "mixtral":
        cls = MixtralConfig
        common.update(num_local_experts=4, num_experts_per_tok=2, intermediate_size=96)
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}; choose one of {', '.join(TINY_KINDS)}")
    common.update(overrides)
    # Init std scaled so that logits stay in the same range (|logit| ~ 5-10) at any width.
    common.setdefault("initializer_range", 1.6 / float(common["hidden_size"]) ** 0.5)
    return cls(**common)


def make_tiny_model(kind: str, dest: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Write a tiny random-weight ``kind`` model plus tokenizer into ``dest``; return ``dest``.

    ``overrides`` are passed to the model's config class (e.g. ``num_hidden_layers=1``,
    ``tie_word_embeddings=True``, ``sliding_window=8``). ``vocab_size`` cannot be changed
    independently of the tokenizer: it sets both.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = _config(kind, overrides)

    # Seed a private generator state, and restore the global one afterwards, so building a
    # model does not perturb the caller's randomness.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        do_sample=False,
    )
    model.save_pretrained(dest, safe_serialization=True)
    _build_tokenizer(config.vocab_size).save_pretrained(dest)
    return dest


def break_weights(model: Path) -> None:
    """Make a model's build fail in its worker: a well-formed safetensors file whose tensors do
    not fit the config (the header check before the build passes; loading the model fails)."""
    import torch
    from safetensors.torch import save_file

    save_file({"model.embed_tokens.weight": torch.zeros(2, 2)}, str(model / "model.safetensors"))
