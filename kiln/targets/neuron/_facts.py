"""Facts about the Neuron backend shared by the target and its worker (no SDK imports)."""

from __future__ import annotations

__all__ = ["MODEL_CLASSES", "MODEL_FILE_SUFFIXES"]

# transformers-neuronx model classes by HF architecture (as LMI's model loader maps them).
MODEL_CLASSES = {
    "LlamaForCausalLM": "transformers_neuronx.llama.model.LlamaForSampling",
    "MistralForCausalLM": "transformers_neuronx.mistral.model.MistralForSampling",
    "GPT2LMHeadModel": "transformers_neuronx.gpt2.model.GPT2ForSampling",
    "GPTNeoXForCausalLM": "transformers_neuronx.gptneox.model.GPTNeoXForSampling",
    "OPTForCausalLM": "transformers_neuronx.opt.model.OPTForSampling",
    "BloomForCausalLM": "transformers_neuronx.bloom.model.BloomForSampling",
}
# Files of the HF checkpoint the runtime needs beside the compiled graphs.
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".model", ".txt", ".jinja", ".tiktoken")
