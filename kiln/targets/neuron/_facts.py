"""Facts about the Neuron backend shared by the target and its worker (no SDK imports)."""

from __future__ import annotations

__all__ = ["MODEL_CLASSES", "MODEL_FILE_SUFFIXES", "UNSUPPORTED"]

# transformers-neuronx model classes by HF architecture (as LMI's model loader maps them: djl-serving
# ML MODEL_TYPE_TO_CLS_LOADER, v0.27.0 → 0.34.0-dlc). Only classes with save()/load() of compiled
# graphs (transformers-neuronx v0.13.0): a precompiled artifact is nothing without them.
MODEL_CLASSES = {
    "LlamaForCausalLM": "transformers_neuronx.llama.model.LlamaForSampling",
    "MistralForCausalLM": "transformers_neuronx.mistral.model.MistralForSampling",
    "MixtralForCausalLM": "transformers_neuronx.mixtral.model.MixtralForSampling",
    "GPT2LMHeadModel": "transformers_neuronx.gpt2.model.GPT2ForSampling",
    "OPTForCausalLM": "transformers_neuronx.opt.model.OPTForSampling",
    "BloomForCausalLM": "transformers_neuronx.bloom.model.BloomForSampling",
}
# Architectures transformers-neuronx runs but cannot save compiled graphs for (no save()/load() in
# gptneox/model.py, gptj/model.py at v0.13.0): refused before any work.
UNSUPPORTED = {
    "GPTNeoXForCausalLM": "transformers-neuronx's GPTNeoXForSampling has no save(): its compiled graphs cannot be "
                          "stored, every load compiles",
    "GPTJForCausalLM": "transformers-neuronx's GPTJForSampling has no save(): its compiled graphs cannot be stored, "
                       "every load compiles",
}
# Files of the HF checkpoint the runtime needs beside the compiled graphs.
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".model", ".txt", ".jinja", ".tiktoken")
